//! Arrow Flight SQL with a real client: the ADBC Flight SQL driver (Python DB-API, results as
//! pyarrow tables) against `semflow serve`'s Flight front end — queries with `embed()`,
//! vectors as fixed-size lists, prepared statements with parameters, DDL/DML, `SET` scoped to
//! one request, table metadata, errors with SQLSTATEs, bearer and username/password auth.
//! Skipped with a message when the driver is not installed, unless
//! SEMFLOW_TEST_ADBC=required (CI installs it). TLS: tests/tls.rs.

use crate::common;

use common::{close, floats, sql_vectors};
use serde_json::{json, Value};

pub const TOKEN: &str = "flight-token";

const DOCS: &str = "(VALUES (0, 'Graphene is a single layer of carbon atoms.'), \
     (1, 'The capital of France is Paris.'), (2, 'Copper conducts heat.')) AS d(id, t)";

/// Runs tests/clients/flight.py against `uri`; `None` when the driver is missing.
pub async fn flight_client(uri: String, ca: Option<String>) -> Option<Value> {
    let mut args = vec![uri, TOKEN.to_string()];
    args.extend(ca);
    common::python_client(
        "flight.py",
        args,
        "SEMFLOW_TEST_ADBC",
        "pip install adbc-driver-flightsql pyarrow",
    )
    .await
}

/// What flight.py saw must be the engine's own answers (shared with the TLS test).
pub async fn check_flight_answers(engine: &semflow::Engine, got: &Value) {
    let docs = sql_vectors(engine, &format!("SELECT embed(t) FROM {DOCS} ORDER BY id")).await;
    assert_eq!(got["fixed_size"], true, "vectors as {}", got["vector_type"]);
    assert_eq!(got["list_size"].as_u64(), Some(docs[0].len() as u64));
    for (i, want) in docs.iter().enumerate() {
        assert!(close(&floats(&got["docs"][i]), want), "doc {i}");
    }
    assert!(close(&floats(&got["param_vector"]), &docs[1]));
    assert_eq!(got["two_params"], json!([[42, "OK"]]));
    assert_eq!(got["inserted"], json!([[2]]));
    assert_eq!(got["executemany_rowcount"], 2);
    assert_eq!(
        got["notes"],
        json!([
            [1, "graphene sheets"],
            [2, "paris"],
            [3, "copper"],
            [4, "heat"]
        ])
    );
    assert_eq!(got["notes_schema"], json!(["id", "body"]));
    assert_eq!(got["vendor"], "semflow");
    assert_eq!(
        got["set_here"],
        json!([["datafusion.execution.batch_size", "7"]])
    );
    assert_eq!(
        got["set_elsewhere"],
        json!([["datafusion.execution.batch_size", "8192"]])
    );
    assert_eq!(got["basic_login"], 42);

    let errors = &got["errors"];
    let missing = errors["missing_table"].as_str().unwrap();
    assert!(
        missing.contains("nope") && missing.contains("SQLSTATE 42P01"),
        "{missing}"
    );
    let two = errors["two_queries"].as_str().unwrap();
    assert!(two.contains("one statement per request"), "{two}");
    for case in ["no_credentials", "wrong_password"] {
        let e = errors[case].as_str().unwrap();
        assert!(e.to_lowercase().contains("unauthenticated"), "{case}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_runs_semflow_sql_over_flight() {
    let engine = common::tiny_engine();
    let addr = common::serve_flight(engine.clone(), Some(TOKEN), None).await;
    let Some(got) = flight_client(format!("grpc://{addr}"), None).await else {
        return;
    };
    check_flight_answers(&engine, &got).await;
}

/// `semflow serve --flight-addr` as users start it: the same answers from the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_command_opens_the_flight_port() {
    let mut serve =
        common::spawn_serve(&["--flight-addr", "127.0.0.1:0", "--api-token", TOKEN]).await;
    let addr = serve.flight.expect("a Flight SQL address on stderr");
    let got = flight_client(format!("grpc://{addr}"), None).await;
    common::terminate_child(&mut serve.child);
    if let Some(got) = got {
        check_flight_answers(&common::tiny_engine(), &got).await;
    }
}
