//! `semflow serve`'s request bodies against generated bad input (issue 18, part 3): for every
//! endpoint, each field of a valid body removed or replaced by each of a set of wrong values,
//! unknown fields, and bodies that are not JSON. Every answer must be a success or a 4xx whose
//! JSON error has a message — never a 5xx, never a dropped connection.

use crate::common;

use serde_json::{json, Value};

fn wrong_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(0),
        json!(-1),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1.5),
        json!(""),
        json!("x".repeat(100_000)),
        json!([]),
        json!([null]),
        json!([[1, 2], [3]]),
        json!([4_000_000_000u64]),
        json!({}),
        json!({"text": 5}),
        json!(true),
        json!([[[[[[[[["deep"]]]]]]]]]),
    ]
}

/// (path, a valid body).
fn endpoints() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/embeddings",
            json!({"input": ["a", "b"], "model": "m", "dimensions": 8, "encoding_format": "float", "instruction": "find"}),
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true, "instruction": "i"}),
        ),
        ("/v1/score", json!({"text_1": "q", "text_2": ["a", "b"]})),
        ("/v1/sql", json!({"sql": "SELECT 1 AS x", "format": "json"})),
        (
            "/v2/rerank",
            json!({"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 1}),
        ),
        (
            "/v2/embed",
            json!({"model": "m", "texts": ["a"], "input_type": "search_query", "embedding_types": ["float"], "output_dimension": 8}),
        ),
    ]
}

/// The bodies tried on one endpoint: the valid one, each field dropped, each field set to each
/// wrong value, an unknown field, and raw bodies that are not (complete) JSON objects.
fn bodies(valid: &Value) -> Vec<String> {
    let mut out = vec![valid.to_string()];
    let fields = valid.as_object().unwrap();
    for name in fields.keys() {
        let mut b = fields.clone();
        b.remove(name);
        out.push(Value::Object(b).to_string());
        for v in wrong_values() {
            let mut b = fields.clone();
            b.insert(name.clone(), v);
            out.push(Value::Object(b).to_string());
        }
    }
    let mut unknown = fields.clone();
    unknown.insert("surprise".into(), json!(1));
    out.push(Value::Object(unknown).to_string());
    for raw in [
        "",
        "null",
        "[]",
        "42",
        "\"text\"",
        "{",
        "{\"input\": ",
        "\u{0}\u{1}",
        "{}",
    ] {
        out.push(raw.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_bodies_with_a_4xx() {
    let base = format!("http://{}", common::serve_http(common::tiny_engine()).await);
    let report = tokio::task::spawn_blocking(move || {
        let (mut tried, mut ok, mut refused, mut bad) = (0, 0, 0, Vec::new());
        for (path, valid) in endpoints() {
            for body in bodies(&valid) {
                tried += 1;
                let shown: String = body.chars().take(120).collect();
                let answer = ureq::post(&format!("{base}{path}"))
                    .set("content-type", "application/json")
                    .send_string(&body);
                match answer {
                    Ok(_) => ok += 1,
                    Err(ureq::Error::Status(code, r)) if (400..500).contains(&code) => {
                        refused += 1;
                        let text = r.into_string().unwrap_or_default();
                        let message = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| v["error"]["message"].as_str().map(String::from))
                            .unwrap_or_default();
                        if message.trim().is_empty() {
                            bad.push(format!("{path} {shown}: {code} without a message: {text}"));
                        }
                    }
                    Err(ureq::Error::Status(code, r)) => bad.push(format!(
                        "{path} {shown}: {code} {}",
                        r.into_string().unwrap_or_default()
                    )),
                    Err(e) => bad.push(format!("{path} {shown}: {e}")),
                }
            }
        }
        (tried, ok, refused, bad)
    })
    .await
    .unwrap();
    let (tried, ok, refused, bad) = report;
    println!(
        "{tried} request bodies over 6 endpoints: {ok} answered, {refused} refused with a 4xx"
    );
    assert!(
        bad.is_empty(),
        "{} bad answers:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
