//! `semflow serve`'s Postgres wire protocol: real `psql` and the tokio-postgres driver against
//! a server on 127.0.0.1:0 — tables, embed(), rerank(), vector search, prepared statements
//! with parameters, result types (vectors as real[]), SQLSTATEs, `\d`, and passwords.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;

use semflow::serve::pg::{serve, PgOptions};
use tokio_postgres::{NoTls, SimpleQueryMessage};

const SETUP: &str = "CREATE TABLE docs AS SELECT * FROM (VALUES
    ('rust', 'Rust is a systems programming language focused on safety.'),
    ('kafka', 'Kafka is a distributed log for streaming data.'),
    ('pasta', 'Boil salted water and cook the pasta until al dente.')) AS t(id, body);
  CREATE TABLE idx AS SELECT id, body, embed(body) AS embedding FROM docs;";

async fn start(password: Option<&str>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let engine = common::tiny_engine();
    engine.run_sql(SETUP).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let options = PgOptions {
        secret: password.map(String::from),
        ..PgOptions::default()
    };
    tokio::spawn(async move {
        serve(
            &engine,
            options,
            async move {
                let _ = stopped.await;
            },
            move |a| {
                let _ = tx.send(a);
            },
        )
        .await
        .unwrap();
    });
    (rx.await.unwrap(), stop)
}

async fn connect(
    addr: SocketAddr,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut conf = format!("host={} port={} user=semflow", addr.ip(), addr.port());
    if let Some(p) = password {
        conf.push_str(&format!(" password={p}"));
    }
    let (client, conn) = tokio_postgres::connect(&conf, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread")]
async fn driver_queries_prepared_statements_types_and_errors() {
    let (addr, _stop) = start(None).await;
    let client = connect(addr, None).await.unwrap();

    // Extended protocol with a parameter, as drivers send it.
    let rows = client
        .query("SELECT id FROM docs WHERE id = $1", &[&"kafka"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "kafka");

    // Vectors come back as real[] (FLOAT4_ARRAY), unit length.
    let rows = client
        .query("SELECT embed('hello world') AS v", &[])
        .await
        .unwrap();
    assert_eq!(
        rows[0].columns()[0].type_(),
        &tokio_postgres::types::Type::FLOAT4_ARRAY
    );
    let v: Vec<f32> = rows[0].get(0);
    assert_eq!(v.len(), 64);
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-5);

    // Vector search over the table with the query as a parameter, then rerank.
    let rows = client
        .query(
            "SELECT id, cosine_similarity(embedding, embed($1)) AS score FROM idx ORDER BY score DESC LIMIT 2",
            &[&"streaming logs"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let s0: f64 = rows[0].get(1);
    let s1: f64 = rows[1].get(1);
    assert!(s0 >= s1);
    let rows = client
        .query(
            "SELECT id, rerank($1, body) AS p FROM docs ORDER BY p DESC",
            &[&"how to cook pasta"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let p: f32 = rows[0].get(1);
    assert!((0.0..=1.0).contains(&p));

    // The same rows through a prepared statement executed twice.
    let stmt = client
        .prepare("SELECT count(*) FROM docs WHERE length(body) > $1")
        .await
        .unwrap();
    let all: i64 = client.query_one(&stmt, &[&0i32]).await.unwrap().get(0);
    let none: i64 = client.query_one(&stmt, &[&10_000i32]).await.unwrap().get(0);
    assert_eq!((all, none), (3, 0));

    // Errors carry SQLSTATEs.
    let err = client.simple_query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01", "{err}");
    let err = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42601", "{err}");
    let err = client
        .simple_query("SELECT embed('x', 'instr', 100000)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023", "{err}");
    // The message starts with what went wrong (no "External error:" wrapping).
    let db = err.as_db_error().unwrap();
    assert!(
        db.message().starts_with("embed(): argument 3 (dims)"),
        "{db:?}"
    );
    // DataFusion's own kinds: an unknown column, and an unknown function (known by its
    // wording: this fails if a DataFusion upgrade rewords it).
    let err = client
        .simple_query("SELECT nope FROM docs")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42703", "{err}");
    let err = client.simple_query("SELECT nope(1)").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42883", "{err}");

    // Simple protocol still works after errors; tables are listed for clients.
    let msgs = client
        .simple_query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
        .await
        .unwrap();
    let names: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["docs", "idx"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_is_required_when_set() {
    let (addr, _stop) = start(Some("s3cret")).await;
    let Err(err) = connect(addr, Some("wrong")).await else {
        panic!("wrong password accepted")
    };
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    assert!(connect(addr, None).await.is_err(), "no password accepted");
    let client = connect(addr, Some("s3cret")).await.unwrap();
    let rows = client.query("SELECT 1::BIGINT", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_session() {
    if !common::psql_available() {
        return;
    }
    let (addr, _stop) = start(None).await;
    let script = "\\set VERBOSITY verbose
CREATE TABLE notes AS SELECT 'a' AS id, 'semflow speaks the Postgres protocol' AS body;
SELECT id, array_length(embed(body), 1) AS dims FROM notes;
SELECT embed('short', 'a query', 3) AS v;
SELECT id, round(rerank('what protocol', body) * 0 + 1) AS one FROM notes;
PREPARE by_id(TEXT) AS SELECT body FROM docs WHERE id = $1;
EXECUTE by_id('pasta');
\\d
SELECT * FROM missing_table;
";
    let port = addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "semflow", "-X", "-c"])
            .arg("SELECT 1")
            .output()
            .unwrap();
        let mut child = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "semflow",
                "-X",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert!(stdout.contains(" a  |   64"), "{all}");
    assert!(stdout.contains("Boil salted water"), "{all}");
    // A vector comes back as a real[] literal of three floats.
    let vector_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{') && l.matches(',').count() == 2)
        .unwrap_or_else(|| panic!("no 3-element array in {all}"));
    assert!(vector_line.trim().ends_with('}'), "{vector_line}");
    for table in ["docs", "idx", "notes"] {
        assert!(stdout.contains(table), "\\d lists {table}: {all}");
    }
    assert!(stderr.contains("ERROR:  42P01"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_serve_command_runs_both_front_ends() {
    let common::ServeProcess {
        mut child,
        http,
        pg,
        ..
    } = common::spawn_serve(&["--init", "examples/serve-init.sql"]).await;
    let client = connect(pg, None).await.unwrap();
    let rows = client
        .query(
            "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed($1)) DESC LIMIT 2",
            &[&"streaming"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let body = tokio::task::spawn_blocking(move || {
        let r = ureq::post(&format!("http://{http}/v1/rerank"))
            .send_json(serde_json::json!({"query": "cook pasta", "documents": ["Boil salted water", "Kafka is a log"], "top_n": 1}))
            .unwrap();
        r.into_json::<serde_json::Value>().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    // SIGTERM: both front ends stop and the process exits cleanly.
    tokio::task::spawn_blocking(move || common::terminate_child(&mut child))
        .await
        .unwrap();
}

/// The Postgres front end plans with its own session: its vector rule and its SETs stay there,
/// while tables are shared with the HTTP front end and the engine.
#[tokio::test(flavor = "multi_thread")]
async fn front_ends_keep_their_own_session_state() {
    let engine = common::tiny_engine();
    engine.run_sql(SETUP).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let options = PgOptions::default();
    let pg_engine = engine.clone();
    tokio::spawn(async move {
        serve(&pg_engine, options, std::future::pending(), move |a| {
            let _ = tx.send(a);
        })
        .await
        .unwrap();
    });
    let pg = connect(rx.await.unwrap(), None).await.unwrap();
    let http = format!("http://{}/v1/sql", common::serve_http(engine.clone()).await);
    let long = "SELECT embed(repeat('graphene ', 700)) IS NOT NULL AS ok";

    // psql: vectors are real[] (the front end's rule), and a SET changes its own session.
    let row = pg
        .query_one("SELECT embed('hello', '', 4)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<f32>>(0).len(), 4);
    pg.batch_execute("SET semflow.truncate = 'error'; CREATE TABLE made_in_pg AS SELECT 7 AS x")
        .await
        .unwrap();
    let err = pg.query(long, &[]).await.unwrap_err();
    let message = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(message.contains("exceeds the model's maximum"), "{message}");

    // The engine's session (what /v1/sql and SQL callers plan with) saw neither the rule nor
    // the setting, but sees the table.
    let results = engine
        .run_sql("SELECT embed('hello', '', 4) AS v")
        .await
        .unwrap();
    assert!(
        matches!(
            results[0].schema.field(0).data_type(),
            arrow::datatypes::DataType::FixedSizeList(_, 4)
        ),
        "{:?}",
        results[0].schema
    );
    let body = tokio::task::spawn_blocking(move || {
        let ok = ureq::post(&http)
            .send_json(serde_json::json!({ "sql": long }))
            .unwrap()
            .into_json::<serde_json::Value>()
            .unwrap();
        let shared = ureq::post(&http)
            .send_json(serde_json::json!({ "sql": "SELECT x FROM made_in_pg" }))
            .unwrap()
            .into_json::<serde_json::Value>()
            .unwrap();
        (ok, shared)
    })
    .await
    .unwrap();
    assert_eq!(body.0["rows"][0]["ok"], true, "{}", body.0);
    assert_eq!(body.1["rows"][0]["x"], 7, "{}", body.1);
}
