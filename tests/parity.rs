//! Parity with the Hugging Face transformers reference (tests/fixtures/parity/reference.json,
//! written by scripts/parity_reference.py): token ids, embeddings (full and Matryoshka 32/64)
//! and reranker P(yes), through SQL, on the same random tiny models.

use crate::common;

use common::floats;

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use semflow::inference::prompts;
use semflow::inference::tokenize::{QwenTokenizer, Truncation};
use semflow::inference::BackendKind;
use semflow::model::random::ModelKind;
use serde_json::Value;
use sha2::{Digest, Sha256};

const EMBED_TOL: f64 = 1e-4;
const RERANK_TOL: f64 = 1e-4;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/parity/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The regenerated models must be byte-identical to the ones the reference ran on.
#[test]
fn models_match_the_reference_weights() {
    let f = fixture();
    for (kind, seed, key) in [
        (ModelKind::Embedding, common::EMBED_SEED, "embedding_model"),
        (ModelKind::Reranker, common::RERANK_SEED, "reranker_model"),
    ] {
        let dir = common::tiny_model(kind, seed);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let digest = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            digest,
            f[key]["model_safetensors_sha256"].as_str().unwrap(),
            "{key}"
        );
    }
}

#[test]
fn token_ids_match_the_reference() {
    let f = fixture();
    let max_len = f["max_len"].as_u64().unwrap() as usize;
    let tok = QwenTokenizer::from_file(
        &common::tiny_model(ModelKind::Embedding, common::EMBED_SEED).join("tokenizer.json"),
    )
    .unwrap();
    for case in f["embeddings"].as_array().unwrap() {
        let text =
            prompts::embedding_text(case["text"].as_str().unwrap(), case["instruction"].as_str());
        let got = QwenTokenizer::finish_embedding_ids(
            tok.encode(&text).unwrap(),
            max_len,
            Truncation::End,
        )
        .unwrap();
        assert_eq!(got, ids(&case["token_ids"]), "{text:?}");
    }
    let rtok = QwenTokenizer::from_file(
        &common::tiny_model(ModelKind::Reranker, common::RERANK_SEED).join("tokenizer.json"),
    )
    .unwrap();
    for case in f["rerank"].as_array().unwrap() {
        let body = prompts::rerank_body(
            case["query"].as_str().unwrap(),
            case["document"].as_str().unwrap(),
            case["instruction"].as_str(),
        );
        let got = rtok
            .finish_rerank_ids(rtok.encode(&body).unwrap(), max_len, Truncation::End)
            .unwrap();
        assert_eq!(got, ids(&case["token_ids"]), "{body:?}");
    }
}

fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_reference_packed() {
    check_embeddings(BackendKind::Packed).await;
}

#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_reference_mistralrs() {
    check_embeddings(BackendKind::MistralRs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_the_reference_packed() {
    check_rerank(BackendKind::Packed).await;
}

#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_the_reference_mistralrs() {
    check_rerank(BackendKind::MistralRs).await;
}

async fn check_embeddings(backend: BackendKind) {
    let f = fixture();
    let cases = f["embeddings"].as_array().unwrap();
    let engine = semflow::Engine::new(common::tiny_config_with(backend));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("instruction", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..cases.len() as i64)),
            Arc::new(StringArray::from_iter_values(
                cases.iter().map(|c| c["text"].as_str().unwrap()),
            )),
            Arc::new(StringArray::from(
                cases
                    .iter()
                    .map(|c| opt_str(&c["instruction"]))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    engine
        .context()
        .register_table(
            "cases",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        )
        .unwrap();
    let result = engine
        .run_sql(
            "SELECT id, embed(text, instruction) AS full, embed(text, instruction, 32) AS d32, \
             embed(text, instruction, 64) AS d64 FROM cases ORDER BY id",
        )
        .await
        .unwrap();
    let batch = arrow::compute::concat_batches(&result[0].schema, &result[0].batches).unwrap();
    let mut worst = (0.0f64, 1.0f64);
    for (col, key) in [(1, "vector"), (2, "dims32"), (3, "dims64")] {
        let list = batch.column(col).as_fixed_size_list();
        for (i, case) in cases.iter().enumerate() {
            let v = list.value(i);
            let got = v.as_primitive::<Float32Type>().values();
            let want = floats(&case[key]);
            let (err, cos) = (max_abs(got, &want), cosine(got, &want));
            worst = (worst.0.max(err), worst.1.min(cos));
            assert!(
                err <= EMBED_TOL && cos >= 0.99999,
                "{backend:?}: {key} of case {i} ({:?}): max abs {err:e}, cos {cos}",
                case["text"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .take(40)
                    .collect::<String>()
            );
        }
    }
    println!(
        "embedding parity ({backend:?}): max abs error {:e}, min cosine {}",
        worst.0, worst.1
    );
}

async fn check_rerank(backend: BackendKind) {
    let f = fixture();
    let cases = f["rerank"].as_array().unwrap();
    let engine = semflow::Engine::new(common::tiny_config_with(backend));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("document", DataType::Utf8, false),
        Field::new("instruction", DataType::Utf8, true),
    ]));
    let col = |k: &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from(
            cases.iter().map(|c| opt_str(&c[k])).collect::<Vec<_>>(),
        ))
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..cases.len() as i64)),
            col("query"),
            col("document"),
            col("instruction"),
        ],
    )
    .unwrap();
    engine
        .context()
        .register_table(
            "pairs",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        )
        .unwrap();
    let result = engine
        .run_sql("SELECT id, rerank(query, document, instruction) AS p FROM pairs ORDER BY id")
        .await
        .unwrap();
    let batch = arrow::compute::concat_batches(&result[0].schema, &result[0].batches).unwrap();
    let scores = batch
        .column(1)
        .as_any()
        .downcast_ref::<Float32Array>()
        .unwrap();
    let mut worst = 0.0f64;
    for (i, case) in cases.iter().enumerate() {
        let err = (scores.value(i) as f64 - case["p_yes"].as_f64().unwrap()).abs();
        worst = worst.max(err);
        assert!(
            err <= RERANK_TOL,
            "pair {i}: P(yes) {} vs {} ({err:e})",
            scores.value(i),
            case["p_yes"]
        );
    }
    println!("rerank parity ({backend:?}): max abs error in P(yes) {worst:e}");
}
