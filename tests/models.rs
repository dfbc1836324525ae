//! Several named models in one engine (`--model NAME=SPEC`): `embed(…, model)`,
//! `rerank(…, model)`, `embed_model(name)`, each model with its own weights and caches, the
//! HTTP API's `model` field, and the flag on the command line.

use crate::common;

use common::{random_model, tiny_config};
use semflow::model::config::Preset;
use semflow::model::random::ModelKind;
use semflow::{Engine, InferenceConfig, NamedModel};
use serde_json::{json, Value};

/// The parity models as the default, plus `wide` (another shape), `twin` (the default's
/// shape, other weights) and `judge` (a reranker).
fn engine() -> Engine {
    let named = |name: &str, kind, preset, seed| NamedModel {
        name: name.into(),
        spec: random_model(kind, preset, seed)
            .to_string_lossy()
            .into_owned(),
    };
    Engine::new(InferenceConfig {
        models: vec![
            named("wide", ModelKind::Embedding, Preset::Small, 7),
            named("twin", ModelKind::Embedding, Preset::Tiny, 8),
            named("judge", ModelKind::Reranker, Preset::Tiny, 9),
        ],
        ..tiny_config()
    })
}

async fn one_row(engine: &Engine, sql: &str) -> Vec<Value> {
    let results = engine.run_sql(sql).await.unwrap();
    let batch = &results.last().unwrap().batches[0];
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    let rows: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&writer.into_inner()).unwrap();
    rows[0].values().cloned().collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

async fn error(engine: &Engine, sql: &str) -> String {
    engine.run_sql(sql).await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_functions_pick_models_by_name() {
    let engine = engine();
    let row = one_row(
        &engine,
        "SELECT embed('hello') AS a, embed('hello', NULL, NULL, 'wide') AS wide,
                embed('hello', '', NULL, 'twin') AS twin, embed('hello', '', 8, model => 'wide') AS short",
    )
    .await;
    let [a, wide, twin, short] = [0, 1, 2, 3].map(|i| common::floats(&row[i]));
    let default_dims = a.len();
    assert_eq!(wide.len(), 256, "wide is the small preset's 256 dimensions");
    assert_eq!(twin.len(), default_dims);
    // Same text, same shape, other weights: a cache shared between models would have
    // answered twin with the default model's vector.
    assert!(
        cosine(&a, &twin) < 0.99,
        "twin answered like the default model"
    );
    let norm: f64 = wide[..8].iter().map(|x| x * x).sum::<f64>().sqrt();
    let expected: Vec<f64> = wide[..8].iter().map(|x| x / norm).collect();
    assert!(common::close(&short, &expected), "MRL of the named model");

    // Fingerprints per model.
    let row = one_row(
        &engine,
        "SELECT embed_model() AS d, embed_model('twin') AS t, embed_model(NULL) AS n",
    )
    .await;
    let (d, t, n) = (
        row[0].as_str().unwrap(),
        row[1].as_str().unwrap(),
        row[2].as_str().unwrap(),
    );
    assert_ne!(d, t);
    assert_eq!(d, n, "NULL names the default model");
    assert!(t.contains("Embedding-tiny-f32-8@"), "{t}");

    // Rerankers by name too, checked when the query is planned.
    let row = one_row(
        &engine,
        "SELECT rerank('pasta', 'boil water') AS d, rerank('pasta', 'boil water', NULL, 'judge') AS j",
    )
    .await;
    let (d, j) = (row[0].as_f64().unwrap(), row[1].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&j) && (d - j).abs() > 1e-6, "{d} {j}");

    let e = error(&engine, "SELECT embed('x', '', NULL, 'nope')").await;
    assert!(
        e.contains("no model named 'nope'") && e.contains("known: judge, twin, wide"),
        "{e}"
    );
    let e = error(&engine, "SELECT rerank('q', 'd', '', 'nope')").await;
    assert!(e.contains("rerank(): no model named 'nope'"), "{e}");
    let e = error(&engine, "SELECT embed_model('nope')").await;
    assert!(e.contains("no model named 'nope'"), "{e}");
    let e = error(
        &engine,
        "SELECT embed('x', '', NULL, m) FROM (VALUES ('wide')) AS t(m)",
    )
    .await;
    assert!(e.contains("argument 4 (model) must be a constant"), "{e}");
    let e = error(&engine, "SELECT embed('x', '', NULL, 3)").await;
    assert!(e.contains("argument 4 (model) must be a string"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_requests_pick_a_named_model_by_its_model_field() {
    let base = format!("http://{}", common::serve_http(engine()).await);
    let dims = |model: &'static str| {
        let url = format!("{base}/v1/embeddings");
        async move {
            tokio::task::spawn_blocking(move || {
                let body: Value = ureq::post(&url)
                    .send_json(json!({"input": "hello", "model": model}))
                    .unwrap()
                    .into_json()
                    .unwrap();
                assert_eq!(body["model"], model);
                body["data"][0]["embedding"].as_array().unwrap().len()
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(dims("wide").await, 256);
    // OpenAI clients send model names of their own: those get the default model.
    assert_eq!(dims("text-embedding-3-small").await, 64);
}

#[test]
fn the_flag_names_models_on_the_command_line() {
    let cache = tempfile::tempdir().unwrap();
    let out = common::semflow_command()
        .env("SEMFLOW_CACHE_DIR", cache.path())
        .args([
            "sql",
            "--model",
            "twin=random:tiny:8",
            "--model",
            "wide=random:small:7",
            "SELECT embed_model('twin') AS t, arrow_typeof(embed('x', NULL, NULL, 'wide')) AS w",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("random:tiny:8@"), "{stdout}");
    assert!(stdout.contains("FixedSizeList(256"), "{stdout}");

    let out = common::semflow_command()
        .args(["sql", "--model", "twin", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--model twin: expected NAME=MODEL"),
        "{stderr}"
    );
}
