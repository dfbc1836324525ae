//! Shared test helpers: random tiny models written once per build, and engines over them.
#![allow(dead_code)]

pub mod fake_llm;
pub mod hub;
pub mod kafka;
pub mod layouts;
pub mod netns;
pub mod outage;
pub mod pipeline;
pub mod raw_http;
pub mod registry;
pub mod s3;

use std::path::PathBuf;
use std::sync::OnceLock;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use semflow::inference::BackendKind;
use semflow::model::config::Preset;
use semflow::model::random::{write_random_model, ModelKind, RandomModelSpec, WeightDtype};
use semflow::{Engine, InferenceConfig};

/// Seeds of the parity fixture's models (scripts/parity_reference.py).
pub const EMBED_SEED: u64 = 42;
pub const RERANK_SEED: u64 = 43;

/// A random tiny model directory, written once under Cargo's test temp dir.
pub fn tiny_model(kind: ModelKind, seed: u64) -> PathBuf {
    random_model(kind, Preset::Tiny, seed)
}

/// A random model directory of any preset, written once under Cargo's test temp dir.
pub fn random_model(kind: ModelKind, preset: Preset, seed: u64) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    let name = match preset {
        Preset::Tiny => format!("{kind:?}-tiny-f32-{seed}"),
        other => format!("{kind:?}-{other:?}-f32-{seed}"),
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("models")
        .join(name);
    if !dir.join("model.safetensors").is_file() {
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let spec = RandomModelSpec {
            kind,
            preset,
            seed,
            dtype: WeightDtype::F32,
        };
        write_random_model(&spec, &tmp).unwrap();
        std::fs::rename(&tmp, &dir).unwrap();
    }
    dir
}

/// Engine settings over the parity models.
pub fn tiny_config() -> InferenceConfig {
    tiny_config_with(BackendKind::Packed)
}

/// Engine settings over the parity models with a chosen backend.
pub fn tiny_config_with(backend: BackendKind) -> InferenceConfig {
    InferenceConfig {
        backend,
        embed_model: tiny_model(ModelKind::Embedding, EMBED_SEED)
            .to_string_lossy()
            .into_owned(),
        rerank_model: tiny_model(ModelKind::Reranker, RERANK_SEED)
            .to_string_lossy()
            .into_owned(),
        ..InferenceConfig::default()
    }
}

pub fn tiny_engine() -> Engine {
    Engine::new(tiny_config())
}

/// A JSON array of numbers as f64s.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `semflow serve`'s HTTP API over `engine`, in-process on 127.0.0.1:0; returns its address.
pub async fn serve_http(engine: Engine) -> std::net::SocketAddr {
    use semflow::serve::http::{serve, HttpOptions};
    let options = HttpOptions::default();
    spawn_bound(|bound| async move { serve(&engine, options, std::future::pending(), bound).await })
        .await
}

/// `semflow serve`'s Flight SQL front end over `engine`, in-process on 127.0.0.1:0, with
/// `token` and `tls` as given; returns its address.
pub async fn serve_flight(
    engine: Engine,
    token: Option<&str>,
    tls: Option<semflow::tls::ServerTls>,
) -> std::net::SocketAddr {
    use semflow::serve::flight::{serve, FlightOptions};
    let options = FlightOptions {
        secret: token.map(String::from),
        tls,
        ..FlightOptions::default()
    };
    spawn_bound(|bound| async move { serve(&engine, options, std::future::pending(), bound).await })
        .await
}

/// Runs a server in the background and waits for the address it bound: `serve` gets the
/// callback that reports it.
pub async fn spawn_bound<F>(
    serve: impl FnOnce(Box<dyn FnOnce(std::net::SocketAddr) + Send>) -> F,
) -> std::net::SocketAddr
where
    F: std::future::Future<Output = semflow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = serve(Box::new(move |a| {
        let _ = tx.send(a);
    }));
    tokio::spawn(async move { server.await.unwrap() });
    rx.await.unwrap()
}

/// Runs the Python client `tests/clients/SCRIPT ARGS` (python3, or SEMFLOW_TEST_PYTHON) and
/// parses the JSON it prints. `None`, with a message, when a module it imports is missing —
/// unless the environment variable `required` is "required" (CI installs the clients), then
/// the test fails; `install` says how to get them.
pub async fn python_client(
    script: &str,
    args: Vec<String>,
    required: &str,
    install: &str,
) -> Option<serde_json::Value> {
    let script = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("SEMFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .unwrap();
    let required = std::env::var(required).as_deref() == Ok("required");
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        Ok(o) if !required && String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            eprintln!("Python clients not installed: skipped ({install})");
            None
        }
        Ok(o) => panic!(
            "Python client failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if !required => {
            eprintln!("python3 not found ({e}): skipped");
            None
        }
        Err(e) => panic!("python3: {e}"),
    }
}

/// The vectors in the first column of `sql`'s first batch.
pub async fn sql_vectors(engine: &Engine, sql: &str) -> Vec<Vec<f64>> {
    let result = engine.run_sql(sql).await.unwrap();
    let batch = &result[0].batches[0];
    let list = batch.column(0).as_fixed_size_list();
    (0..list.len())
        .map(|i| {
            let v = list.value(i);
            v.as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|x| *x as f64)
                .collect()
        })
        .collect()
}

/// Vectors equal to 1e-6 in every component.
pub fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6)
}

/// Whether `psql` can be run; CI (SEMFLOW_TEST_PSQL=required) fails instead of skipping.
pub fn psql_available() -> bool {
    let required = std::env::var("SEMFLOW_TEST_PSQL").as_deref() == Ok("required");
    if std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!required, "psql is not installed");
        eprintln!("psql not installed: skipped");
        return false;
    }
    true
}

/// A `semflow serve` process over the tiny models, and the addresses it bound.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub http: std::net::SocketAddr,
    pub pg: std::net::SocketAddr,
    /// The Flight SQL address, when ARGS turned it on (`--flight-addr 127.0.0.1:0`).
    pub flight: Option<std::net::SocketAddr>,
}

/// The `semflow` binary under test: `SEMFLOW_TEST_BIN` when set (e.g. a release build, for
/// the soak's memory figures), else the one cargo built with these tests.
pub fn semflow_bin() -> PathBuf {
    std::env::var_os("SEMFLOW_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_semflow").into())
}

/// Runs `command` to completion and returns what it wrote to stdout; fails the test with its
/// stderr when it did not succeed.
pub fn stdout_of(command: &mut std::process::Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `semflow` run from the repository root with the tiny random models as its embedding and
/// reranking models (a test's own flags or environment override them).
pub fn semflow_command() -> std::process::Command {
    with_tiny_models(std::process::Command::new(semflow_bin()))
}

/// [`semflow_command`] inside the network namespace `ns`.
pub fn semflow_command_in(ns: &netns::Namespace) -> std::process::Command {
    with_tiny_models(ns.command(&semflow_bin()))
}

fn with_tiny_models(mut command: std::process::Command) -> std::process::Command {
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "SEMFLOW_EMBED_MODEL",
            tiny_model(ModelKind::Embedding, EMBED_SEED),
        )
        .env(
            "SEMFLOW_RERANK_MODEL",
            tiny_model(ModelKind::Reranker, RERANK_SEED),
        );
    command
}

/// Starts `semflow serve ARGS` on free loopback ports (from the repository root) and waits
/// for both front ends; the rest of its stderr is drained.
pub async fn spawn_serve(args: &[&str]) -> ServeProcess {
    use std::io::BufRead;
    let mut child = semflow_command()
        .arg("serve")
        .args(args)
        .args(["--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let want_flight = args.contains(&"--flight-addr");
    let (http, pg, flight) = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let (mut http, mut pg, mut flight) = (None, None, None);
        while http.is_none() || pg.is_none() || (want_flight && flight.is_none()) {
            let line = lines.next().expect("serve exited").unwrap();
            if let Some(a) = line.strip_prefix("serving http://") {
                http = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("serving postgres://") {
                pg = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(a) = line.strip_prefix("serving grpc://") {
                flight = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (http.unwrap(), pg.unwrap(), flight)
    })
    .await
    .unwrap();
    ServeProcess {
        child,
        http,
        pg,
        flight,
    }
}

/// SIGTERM to `child`; it must exit cleanly.
pub fn terminate_child(child: &mut std::process::Child) {
    let status = sigterm(child);
    assert!(
        status.success(),
        "SIGTERM must finish cleanly, got {status}"
    );
}

/// SIGTERM to `child`, and how it exited.
pub fn sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    child.wait().unwrap()
}

/// Sends signal `name` (TERM, STOP, CONT…) to `child`.
pub fn signal(child: &std::process::Child, name: &str) {
    std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
}

/// Stream positions of `topic`: (partition, next offset) pairs.
pub fn offsets(topic: &str, entries: &[(i32, i64)]) -> semflow::index::SourceOffsets {
    let mut o = semflow::index::SourceOffsets::default();
    for (p, next) in entries {
        o.set(topic, *p, *next);
    }
    o
}

/// Runs one test alone in a fresh process of this test binary, for tests that measure the
/// process itself (its resident memory): every test shares one binary, and the others'
/// models and tables would count too. Returns `true` in the parent, which then has nothing
/// left to do; `false` in the child, which runs the test's body.
pub fn run_alone(test: &str) -> bool {
    const CHILD: &str = "SEMFLOW_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    // Indented, so the child's own "test result" line is not counted as a second test.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  [alone] {line}");
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test} failed in its own process");
    true
}

/// Held by the tests that run worker processes against timing (session timeouts, SIGSTOP,
/// SIGKILL at random points, paced load): one at a time, as when each file was its own test
/// binary, while the light tests still run beside them.
pub async fn one_heavy_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Waits until `condition` holds, checking every 20 ms; panics naming `what` after `limit`.
/// Tests wait for conditions, never for fixed time.
pub async fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
