//! TLS and SCRAM with real clients against certificates made in the test (openssl: a CA and a
//! `localhost` leaf it signs):
//! - HTTPS: reqwest trusting the CA; a plain-HTTP request and a client without the CA fail.
//! - Postgres: `psql` with `sslmode=verify-full` and `channel_binding=require` (SCRAM-SHA-256-
//!   PLUS), tokio-postgres over rustls with `sslmode=require`, and SCRAM without TLS on
//!   loopback; wrong passwords are refused.
//! - Flight SQL: the ADBC driver over `grpc+tls://` trusting the CA.
//! - Outbound: `semflow sql` computing embed() on an HTTPS endpoint, and generate_query() on
//!   an HTTPS generator, need `--ca-cert`.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use semflow::serve::http::HttpOptions;
use semflow::serve::pg::PgOptions;
use semflow::tls::ServerTls;

const TOKEN: &str = "test-token";
const PASSWORD: &str = "s3cret pässword";

/// A CA and a leaf certificate for localhost/127.0.0.1 signed by it, in `dir`.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed to make test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=semflow test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "leaf.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

fn server_tls(certs: &Certs) -> ServerTls {
    ServerTls::load(&certs.cert, &certs.key).unwrap()
}

async fn https_server(certs: &Certs) -> SocketAddr {
    let engine = common::tiny_engine();
    let options = HttpOptions {
        listener: semflow::serve::access::Listener {
            secret: Some(TOKEN.into()),
            tls: Some(server_tls(certs)),
            ..Default::default()
        },
        ..HttpOptions::default()
    };
    common::spawn_bound(|bound| async move {
        semflow::serve::http::serve(&engine, options, std::future::pending(), bound).await
    })
    .await
}

async fn pg_server(certs: Option<&Certs>) -> SocketAddr {
    let engine = common::tiny_engine();
    let options = PgOptions {
        secret: Some(PASSWORD.into()),
        tls: certs.map(server_tls),
        ..PgOptions::default()
    };
    common::spawn_bound(|bound| async move {
        semflow::serve::pg::serve(&engine, options, std::future::pending(), bound).await
    })
    .await
}

fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_trusting_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let addr = https_server(&certs).await;
    let base = format!("https://localhost:{}", addr.port());
    let client = client_trusting(&certs.ca);

    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    let reply: serde_json::Value = client
        .post(format!("{base}/v1/embeddings"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"input": ["over TLS"]}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["data"][0]["embedding"].as_array().unwrap().len(), 64);

    // Without the CA the certificate is unknown; plain HTTP gets no answer from a TLS port.
    let untrusting = reqwest::Client::new();
    let err = untrusting
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(client
        .get(format!("http://127.0.0.1:{}/health", addr.port()))
        .send()
        .await
        .is_err());
    // The server is still there for the next client.
    let again = client.get(format!("{base}/health")).send().await.unwrap();
    assert!(again.status().is_success());
}

/// Flight SQL over TLS: the ADBC driver trusting the test CA runs the whole Flight client
/// (tests/flight.rs) on `grpc+tls://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let engine = common::tiny_engine();
    let tls = Some(server_tls(&certs));
    let addr = common::serve_flight(engine.clone(), Some(crate::flight::TOKEN), tls).await;
    let uri = format!("grpc+tls://localhost:{}", addr.port());
    let ca = certs.ca.display().to_string();
    let Some(got) = crate::flight::flight_client(uri, Some(ca)).await else {
        return;
    };
    crate::flight::check_flight_answers(&engine, &got).await;
}

fn psql(addr: SocketAddr, conninfo: &str, password: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg(format!(
            "host=localhost port={} user=semflow dbname=semflow {conninfo}",
            addr.port()
        ))
        .args(["-X", "-A", "-t", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_verifies_the_server_and_binds_scram_to_its_certificate() {
    if !common::psql_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let addr = pg_server(Some(&certs)).await;
    let ca = certs.ca.display().to_string();
    let secure = format!("sslmode=verify-full sslrootcert={ca} channel_binding=require");

    let out = tokio::task::spawn_blocking(move || {
        psql(
            addr,
            &secure,
            PASSWORD,
            "SELECT array_length(embed('hello'), 1)",
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "psql over TLS with SCRAM-SHA-256-PLUS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "64");

    let secure = format!("sslmode=verify-full sslrootcert={ca}");
    let out = tokio::task::spawn_blocking(move || psql(addr, &secure, "wrong", "SELECT 1"))
        .await
        .unwrap();
    assert!(!out.status.success(), "a wrong password was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Password authentication failed"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_over_rustls_and_scram() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let addr = pg_server(Some(&certs)).await;

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&certs.ca).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let conf = |password: &str| {
        format!(
            "host=localhost port={} user=semflow password='{password}' sslmode=require",
            addr.port()
        )
    };
    let (client, conn) = tokio_postgres::connect(&conf(PASSWORD), tls.clone())
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT embed('over TLS', '', 8)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<f32>>(0).len(), 8);
    assert!(tokio_postgres::connect(&conf("wrong"), tls).await.is_err());

    // SCRAM without TLS, on loopback (where plain connections stay allowed).
    let plain = pg_server(None).await;
    let conf = format!(
        "host=127.0.0.1 port={} user=semflow password='{PASSWORD}'",
        plain.port()
    );
    let (client, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        client
            .query_one("SELECT 1 + 1", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Runs the `semflow` command `build` makes twice, in a blocking task: without `--ca-cert`,
/// then with `ca`.
async fn without_and_with_ca(
    build: impl Fn() -> Command + Send + 'static,
    ca: PathBuf,
) -> (std::process::Output, std::process::Output) {
    tokio::task::spawn_blocking(move || {
        let run = |ca: Option<&Path>| {
            let mut cmd = build();
            cmd.env_remove("SEMFLOW_CA_CERT");
            if let Some(ca) = ca {
                cmd.arg("--ca-cert").arg(ca);
            }
            cmd.output().unwrap()
        };
        (run(None), run(Some(&ca)))
    })
    .await
    .unwrap()
}

/// embed() on a remote HTTPS endpoint from the `semflow` binary: refused without the
/// endpoint's CA, computed with `--ca-cert`.
#[tokio::test(flavor = "multi_thread")]
async fn outbound_https_trusts_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let addr = https_server(&certs).await;
    let endpoint = format!("https://localhost:{}/v1", addr.port());
    let model = common::tiny_model(
        semflow::model::random::ModelKind::Embedding,
        common::EMBED_SEED,
    );
    let (without, with) = without_and_with_ca(
        move || {
            let mut cmd = common::semflow_command();
            // A column, not a literal: the planner would try to fold embed('…') once per pass.
            cmd.args([
                "sql",
                "SELECT array_length(embed(t), 1) AS n FROM (VALUES ('remote')) AS v(t)",
            ])
            .args(["--embed-endpoint", &endpoint])
            .args(["--endpoint-health-interval", "0"])
            .env("SEMFLOW_EMBED_MODEL", &model)
            .env("SEMFLOW_ENDPOINT_API_KEY", TOKEN);
            cmd
        },
        certs.ca.clone(),
    )
    .await;
    assert!(!without.status.success(), "an unknown CA was trusted");
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("64"));
}

/// generate_query() towards an HTTPS generator: an unknown CA is a connection error, with
/// `--ca-cert` the query comes back.
#[tokio::test(flavor = "multi_thread")]
async fn generator_over_https_trusts_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let llm =
        common::fake_llm::FakeLlm::start_tls(common::fake_llm::Mode::default(), server_tls(&certs))
            .await;
    let sql = format!(
        "SET semflow.generator_url = '{}';
         SELECT g['query'] AS query, g['error'] AS error
         FROM (SELECT generate_query('Rust is a language for systems work.') AS g)",
        llm.base_url()
    );
    let model = common::tiny_model(
        semflow::model::random::ModelKind::Embedding,
        common::EMBED_SEED,
    );
    let (without, with) = without_and_with_ca(
        move || {
            let mut cmd = common::semflow_command();
            cmd.args(["sql", &sql, "--format", "json"])
                .env("SEMFLOW_EMBED_MODEL", &model);
            cmd
        },
        certs.ca.clone(),
    )
    .await;
    let out = String::from_utf8_lossy(&without.stdout);
    assert!(
        out.contains("connection") && !out.contains("about Rust"),
        "{out}"
    );
    let out = String::from_utf8_lossy(&with.stdout);
    assert!(
        out.contains("about Rust is a language for"),
        "{out}{}",
        String::from_utf8_lossy(&with.stderr)
    );
}
