//! Criterion micro-benchmarks of semflow's hot CPU paths: tokenization in the Qwen3 formats,
//! the vector functions over a 10k x 1024 table, and a packed forward pass over mixed vs
//! equal lengths (tiny random model: measures batching overhead, not model FLOPs), and Kafka
//! record decoding (JSON documents → Arrow rows). The CPU kernels of the forward pass have
//! theirs beside them: `cargo bench -p semflow-inference --bench kernels`.
//!
//!     cargo bench --bench hot_paths

use std::sync::Arc;

use arrow::array::{Array, FixedSizeListArray, Float32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datafusion::datasource::MemTable;
use semflow::inference::prompts;
use semflow::inference::tokenize::{QwenTokenizer, Truncation};
use semflow::inference::{BackendKind, Inference, InferenceConfig};
use semflow::model::config::Preset;
use semflow::model::random::{write_random_model, ModelKind, RandomModelSpec, WeightDtype};

fn docs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Document {i}: graphene is a single layer of carbon atoms arranged in a hexagonal lattice; \
                 石墨烯是一种二维材料 🦀 {}",
                "with more words about materials science ".repeat(i % 20)
            )
        })
        .collect()
}

fn tokenization(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/semflow-inference/tokenizer/qwen3-embedding-tokenizer.json"
    );
    let tok = QwenTokenizer::from_file(std::path::Path::new(path)).expect("tokenizer fixture");
    let texts = docs(256);
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("embedding inputs x256", |b| {
        b.iter(|| {
            let formatted: Vec<String> = texts
                .iter()
                .map(|t| prompts::embedding_text(t, Some("Find it")))
                .collect();
            let ids = tok.encode_batch(formatted).expect("encode");
            ids.into_iter()
                .map(|ids| {
                    QwenTokenizer::finish_embedding_ids(ids, 8192, Truncation::End)
                        .map(|v| v.len())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

fn vector_functions(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (rows, dims) = (10_000usize, 1024usize);
    let values: Vec<f32> = (0..rows * dims)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let item = Arc::new(Field::new_list_field(DataType::Float32, true));
    let vectors = FixedSizeListArray::try_new(
        item,
        dims as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .expect("vectors");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("e", vectors.data_type().clone(), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            Arc::new(vectors),
        ],
    )
    .expect("batch");
    let engine = semflow::Engine::new(InferenceConfig::default());
    engine
        .context()
        .register_table(
            "t",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("table")),
        )
        .expect("register");
    let query = format!(
        "SELECT id, cosine_similarity(e, arrow_cast(make_array({}), 'FixedSizeList({dims}, Float32)')) AS s FROM t ORDER BY s DESC LIMIT 10",
        vec!["0.5"; dims].join(",")
    );
    let mut g = c.benchmark_group("vector");
    g.throughput(Throughput::Elements(rows as u64));
    g.sample_size(20);
    g.bench_function("top10 cosine 10k x 1024", |b| {
        b.iter(|| rt.block_on(engine.run_sql(&query)).expect("query"))
    });
    g.finish();
}

fn batching(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = RandomModelSpec {
        kind: ModelKind::Embedding,
        preset: Preset::Tiny,
        seed: 1,
        dtype: WeightDtype::F32,
    };
    write_random_model(&spec, dir.path()).expect("model");
    let inference = Inference::new(InferenceConfig {
        embed_model: dir.path().to_string_lossy().into_owned(),
        backend: BackendKind::Packed,
        ..InferenceConfig::default()
    });
    let seq = |len: usize, salt: u32| -> Vec<u32> {
        let mut v: Vec<u32> = (0..len as u32 - 1)
            .map(|i| 1000 + (i * 31 + salt) % 50_000)
            .collect();
        v.push(prompts::EOS_TOKEN_ID);
        v
    };
    let equal: Vec<Vec<u32>> = (0..32).map(|i| seq(64, i)).collect();
    let mixed: Vec<Vec<u32>> = (0..32)
        .map(|i| seq(8 + (i as usize * 112) / 31, i))
        .collect();
    rt.block_on(inference.embed_token_ids(equal.clone()))
        .expect("warm-up");
    let mut g = c.benchmark_group("packed tiny");
    for (name, batch) in [("32 equal-length", &equal), ("32 mixed-length", &mixed)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(inference.embed_token_ids(batch.clone()))
                    .expect("embed")
            })
        });
    }
    g.finish();
}

fn kafka_decode(c: &mut Criterion) {
    use semflow::kafka::decode::Decoder;
    use semflow::kafka::options::Format;
    use semflow::kafka::Record;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8View, false),
        Field::new("title", DataType::Utf8View, true),
        Field::new("body", DataType::Utf8View, true),
        Field::new("_offset", DataType::Int64, false),
    ]));
    let decoder = Decoder::new(schema, Format::Json).expect("decoder");
    let records: Vec<Record> = docs(1000)
        .into_iter()
        .enumerate()
        .map(|(i, body)| Record {
            topic: "docs".into(),
            partition: 0,
            offset: i as i64,
            timestamp: Some(0),
            key: Some(format!("doc-{i}").into_bytes()),
            value: Some(
                serde_json::json!({"id": format!("doc-{i}"), "title": format!("Title {i}"), "body": body})
                    .to_string()
                    .into_bytes(),
            ),
            headers: vec![],
        })
        .collect();
    let mut group = c.benchmark_group("kafka_decode");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("json_1000_docs", |b| {
        b.iter(|| decoder.decode(&records).expect("decode").batch.num_rows())
    });
    group.finish();
}

criterion_group!(
    benches,
    tokenization,
    vector_functions,
    batching,
    kafka_decode
);
criterion_main!(benches);
