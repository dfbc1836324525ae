//! Checkpoints in the layouts the published models and their fine-tunes use (written by
//! transformers: tests/fixtures/parity/layouts.json), against transformers' own outputs on
//! them; named prompts; token-id checks at load.

use crate::common;

use arrow::array::{Array, AsArray, Float32Array};
use arrow::datatypes::Float32Type;
use semflow::inference::BackendKind;
use semflow::model::random::ModelKind;
use semflow::{Engine, InferenceConfig};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn engine(embed: &std::path::Path, rerank: &std::path::Path, backend: BackendKind) -> Engine {
    Engine::new(InferenceConfig {
        backend,
        embed_model: embed.to_string_lossy().into_owned(),
        rerank_model: rerank.to_string_lossy().into_owned(),
        ..InferenceConfig::default()
    })
}

fn sql_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn vectors(engine: &Engine, exprs: &[String]) -> Vec<Vec<f32>> {
    let cols: Vec<String> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{e} AS c{i}"))
        .collect();
    let result = engine
        .run_sql(&format!("SELECT {}", cols.join(", ")))
        .await
        .unwrap_or_else(|e| panic!("{exprs:?}: {e}"));
    let batch = &result[0].batches[0];
    (0..exprs.len())
        .map(|i| {
            let v = batch.column(i).as_fixed_size_list().value(0);
            v.as_primitive::<Float32Type>().values().to_vec()
        })
        .collect()
}

fn max_abs(a: &[f32], b: &Value) -> f64 {
    let b: Vec<f64> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn rebuild(name: &str, out: &std::path::Path) -> std::path::PathBuf {
    let dir = common::layouts::build(name, out);
    let want = common::layouts::fixture()["layouts"][name]["tensor_digest"].clone();
    assert_eq!(
        Value::from(common::layouts::tensor_digest(&dir)),
        want,
        "{name}: the rebuilt layout does not hold the tensors transformers saved"
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentence_transformers_fine_tune_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "embedding-st-sharded-bf16";
    let dir = rebuild(name, tmp.path());
    let layout = &common::layouts::fixture()["layouts"][name];
    assert_eq!(layout["config"]["architectures"][0], "Qwen3Model");
    assert!(dir.join("model.safetensors.index.json").is_file());
    let rerank = common::tiny_model(ModelKind::Reranker, common::RERANK_SEED);
    let engine = engine(&dir, &rerank, BackendKind::Packed);
    let refs = layout["embeddings"].as_array().unwrap();
    // The fine-tune's own prompts: 'query' is its prefix, not Qwen3's default, and 'passage'
    // exists only in its config_sentence_transformers.json.
    let exprs = vec![
        format!(
            "embed({})",
            sql_lit(refs[0]["model_text"].as_str().unwrap())
        ),
        "embed('what is graphene', 'query')".to_string(),
        "embed('Graphene conducts heat.', 'passage')".to_string(),
        format!(
            "embed({})",
            sql_lit(refs[3]["model_text"].as_str().unwrap())
        ),
        // A literal instruction equal to the fine-tune's query prompt's gives the same text.
        "embed('what is graphene', 'Find scientific facts')".to_string(),
    ];
    let got = vectors(&engine, &exprs).await;
    for (i, want) in [0, 1, 2, 3, 1].into_iter().enumerate() {
        let err = max_abs(&got[i], &refs[want]["vector"]);
        assert!(err <= TOL, "{}: max abs {err:e}", exprs[i]);
    }
    let prompts = engine
        .run_sql("SELECT name, prompt FROM embed_prompts() ORDER BY name")
        .await
        .unwrap();
    let batch = &prompts[0].batches[0];
    let names: Vec<&str> = (0..batch.num_rows())
        .map(|i| batch.column(0).as_string::<i32>().value(i))
        .collect();
    assert_eq!(names, vec!["document", "passage", "query"]);
    let query = batch.column(1).as_string::<i32>().value(2);
    assert_eq!(query, "Instruct: Find scientific facts\nQuery:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_query_prompt_is_the_default_instruction() {
    let embed = common::tiny_model(ModelKind::Embedding, common::EMBED_SEED);
    let rerank = common::tiny_model(ModelKind::Reranker, common::RERANK_SEED);
    let engine = engine(&embed, &rerank, BackendKind::Packed);
    let got = vectors(
        &engine,
        &[
            "embed('what is graphene', 'query')".into(),
            "embed('what is graphene', 'Given a web search query, retrieve relevant passages that answer the query')".into(),
            "embed('what is graphene', 'document')".into(),
            "embed('what is graphene')".into(),
        ],
    )
    .await;
    assert_eq!(got[0], got[1]);
    assert_eq!(got[2], got[3]);
    assert_ne!(got[0], got[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rope_theta_in_rope_parameters_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "embedding-rope-theta-10000";
    let dir = rebuild(name, tmp.path());
    let layout = &common::layouts::fixture()["layouts"][name];
    assert!(layout["config"].get("rope_theta").is_none());
    assert_eq!(layout["config"]["rope_parameters"]["rope_theta"], 10000.0);
    let rerank = common::tiny_model(ModelKind::Reranker, common::RERANK_SEED);
    let theta = engine(&dir, &rerank, BackendKind::Packed);
    let default = engine(
        &common::tiny_model(ModelKind::Embedding, common::EMBED_SEED),
        &rerank,
        BackendKind::Packed,
    );
    let long = layout["embeddings"][3]["model_text"].as_str().unwrap();
    let expr = vec![format!("embed({})", sql_lit(long))];
    let got = vectors(&theta, &expr).await;
    let err = max_abs(&got[0], &layout["embeddings"][3]["vector"]);
    assert!(err <= TOL, "theta 10000: max abs {err:e}");
    // Same weights, default theta: a different vector.
    let other = vectors(&default, &expr).await;
    let diff = max_abs(&other[0], &layout["embeddings"][3]["vector"]);
    assert!(diff > 100.0 * TOL, "theta had no effect ({diff:e})");
    // mistral.rs cannot read rope_parameters: a clear error, not a wrong vector (and in a
    // build without it, the error says how to get it).
    let mistral = engine(&dir, &rerank, BackendKind::MistralRs);
    let err = mistral.run_sql("SELECT embed('x')").await.unwrap_err();
    let expected = if cfg!(feature = "mistralrs") {
        "--backend packed"
    } else {
        "--features mistralrs"
    };
    assert!(
        err.user_message().contains(expected),
        "{}",
        err.user_message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untied_reranker_head_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "reranker-untied-sharded";
    let dir = rebuild(name, tmp.path());
    let layout = &common::layouts::fixture()["layouts"][name];
    assert_eq!(layout["config"]["tie_word_embeddings"], false);
    assert_eq!(layout["config"]["max_position_embeddings"], 40960);
    let embed = common::tiny_model(ModelKind::Embedding, common::EMBED_SEED);
    let engine = engine(&embed, &dir, BackendKind::Packed);
    for case in layout["rerank"].as_array().unwrap() {
        let sql = format!(
            "SELECT rerank({}, {}) AS p",
            sql_lit(case["query"].as_str().unwrap()),
            sql_lit(case["document"].as_str().unwrap())
        );
        let result = engine.run_sql(&sql).await.unwrap();
        let p = result[0].batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap()
            .value(0) as f64;
        let want = case["p_yes"].as_f64().unwrap();
        assert!((p - want).abs() <= TOL, "P(yes) {p} vs {want}");
    }
}

/// A copy of a tiny model whose tokenizer maps `token` to another id.
fn with_remapped_token(kind: ModelKind, seed: u64, token: &str, out: &std::path::Path) {
    let src = common::tiny_model(kind, seed);
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).unwrap();
        let dst = out.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dst).unwrap();
    }
    let path = out.join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let id = vocab[token].clone();
    // Swap ids with a neighbour so the vocabulary stays a bijection.
    let other = vocab
        .iter()
        .find(|(_, v)| v.as_u64() == id.as_u64().map(|i| i + 1))
        .map(|(k, _)| k.clone())
        .unwrap();
    let other_id = vocab[&other].clone();
    vocab.insert(token.to_string(), other_id);
    vocab.insert(other, id);
    std::fs::write(&path, tok.to_string()).unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reranker_with_other_yes_no_ids_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("rr");
    with_remapped_token(ModelKind::Reranker, common::RERANK_SEED, "yes", &bad);
    let embed = common::tiny_model(ModelKind::Embedding, common::EMBED_SEED);
    let engine = engine(&embed, &bad, BackendKind::Packed);
    let err = engine
        .run_sql("SELECT rerank('q', 'd')")
        .await
        .unwrap_err()
        .user_message();
    assert!(err.contains("\"yes\"") && err.contains("9693"), "{err}");
}
