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
use semflow::inference::device::DTypeSpec;
use semflow::inference::prompts;
use semflow::inference::tokenize::{QwenTokenizer, Truncation};
use semflow::inference::BackendKind;
use semflow::model::random::ModelKind;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A precision and how close to the f32 reference it must come.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    dtype: DTypeSpec,
    /// Largest absolute difference of an embedding component.
    embed_abs: f64,
    /// Smallest cosine of an embedding to its reference.
    embed_cos: f64,
    /// Largest absolute difference of a P(yes).
    p_yes: f64,
}

/// F32: exact up to summation order.
const F32: Bounds = Bounds {
    dtype: DTypeSpec::F32,
    embed_abs: 1e-4,
    embed_cos: 0.99999,
    p_yes: 1e-4,
};

/// `--dtype bf16` on the CPU (bf16 weights, f32 activations), against the same f32
/// reference: the bounds of issue 35 (cosine ≥ 0.999, |ΔP(yes)| ≤ 0.01).
const BF16_CPU: Bounds = Bounds {
    dtype: DTypeSpec::Bf16,
    embed_abs: f64::INFINITY,
    embed_cos: 0.999,
    p_yes: 0.01,
};

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
    check_embeddings(BackendKind::Packed, F32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_reference_packed_bf16() {
    check_embeddings(BackendKind::Packed, BF16_CPU).await;
}

#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_reference_mistralrs() {
    check_embeddings(BackendKind::MistralRs, F32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_the_reference_packed() {
    check_rerank(BackendKind::Packed, F32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_the_reference_packed_bf16() {
    check_rerank(BackendKind::Packed, BF16_CPU).await;
}

#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_the_reference_mistralrs() {
    check_rerank(BackendKind::MistralRs, F32).await;
}

/// The tiny models on `backend` at `bounds`' precision.
fn engine(backend: BackendKind, bounds: Bounds) -> semflow::Engine {
    let mut config = common::tiny_config_with(backend);
    config.load.dtype = bounds.dtype;
    semflow::Engine::new(config)
}

async fn check_embeddings(backend: BackendKind, bounds: Bounds) {
    let f = fixture();
    let cases = f["embeddings"].as_array().unwrap();
    let engine = engine(backend, bounds);
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
                err <= bounds.embed_abs && cos >= bounds.embed_cos,
                "{backend:?} {:?}: {key} of case {i} ({:?}): max abs {err:e}, cos {cos}",
                bounds.dtype,
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
        "embedding parity ({backend:?}, {:?}): max abs error {:e}, min cosine {}",
        bounds.dtype, worst.0, worst.1
    );
}

async fn check_rerank(backend: BackendKind, bounds: Bounds) {
    let f = fixture();
    let cases = f["rerank"].as_array().unwrap();
    let engine = engine(backend, bounds);
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
            err <= bounds.p_yes,
            "pair {i}: P(yes) {} vs {} ({err:e})",
            scores.value(i),
            case["p_yes"]
        );
    }
    println!(
        "rerank parity ({backend:?}, {:?}): max abs error in P(yes) {worst:e}",
        bounds.dtype
    );
}
