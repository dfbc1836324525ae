//! Published checkpoint layouts (tests/fixtures/parity/layouts.json, written by
//! scripts/parity_layouts.py with transformers) rebuilt from the regenerated tiny parity models:
//! the config and index exactly as transformers wrote them, the tensors converted the same way
//! (bf16, an untied head) and split into the same shards. [`tensor_digest`] proves the rebuilt
//! directory holds the very tensors the reference outputs were computed from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

use semflow::model::random::ModelKind;

const YES: usize = 9693;
const NO: usize = 2152;
/// Files besides config and weights that a model directory carries.
const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "modules.json",
    "1_Pooling/config.json",
    "config_sentence_transformers.json",
];

pub fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/parity/layouts.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A tensor by name: dtype, shape, raw little-endian bytes.
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(dir: &Path) -> Tensors {
    let mut out = Tensors::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            out.insert(
                name.to_string(),
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            );
        }
    }
    out
}

/// sha256 over (name, dtype, raw bytes) of every tensor, sorted by name (as the script does).
pub fn tensor_digest(dir: &Path) -> String {
    let mut h = Sha256::new();
    for (name, (dtype, _, data)) in read_tensors(dir) {
        let dtype = match dtype {
            Dtype::F32 => "F32",
            Dtype::BF16 => "BF16",
            other => panic!("unexpected dtype {other:?}"),
        };
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(dtype.as_bytes());
        h.update(b"\0");
        h.update(&data);
    }
    hex::encode(h.finalize())
}

fn to_bf16(data: &[u8]) -> Vec<u8> {
    data.chunks_exact(4)
        .flat_map(|c| {
            let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            half::bf16::from_f32(x).to_le_bytes()
        })
        .collect()
}

/// Rebuilds layout `name` of the fixture under `out` and returns its directory.
pub fn build(name: &str, out: &Path) -> PathBuf {
    let fx = fixture();
    let layout = &fx["layouts"][name];
    assert!(layout.is_object(), "no layout {name} in layouts.json");
    let (kind, seed) = if name.starts_with("reranker") {
        (ModelKind::Reranker, super::RERANK_SEED)
    } else {
        (ModelKind::Embedding, super::EMBED_SEED)
    };
    let src = super::tiny_model(kind, seed);
    let dir = out.join(name);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for f in SIDE_FILES {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    }
    if let Some(prompts) = layout.get("prompts") {
        let path = dir.join("config_sentence_transformers.json");
        let mut st: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        st["prompts"] = prompts.clone();
        std::fs::write(&path, st.to_string()).unwrap();
    }
    std::fs::write(dir.join("config.json"), layout["config"].to_string()).unwrap();

    let mut tensors = read_tensors(&src);
    let bf16 = layout["config"]["dtype"].as_str() == Some("bfloat16")
        || layout["config"]["torch_dtype"].as_str() == Some("bfloat16");
    if bf16 {
        for t in tensors.values_mut() {
            *t = (Dtype::BF16, t.1.clone(), to_bf16(&t.2));
        }
    }
    if layout["config"]["tie_word_embeddings"] == Value::Bool(false) {
        // The script's untied head: the embedding matrix with the yes and no rows swapped.
        let (dtype, shape, data) = tensors["model.embed_tokens.weight"].clone();
        let row = shape[1] * dtype.bitsize() / 8;
        let mut head = data;
        let (yes, no) = (YES * row, NO * row);
        let yes_row = head[yes..yes + row].to_vec();
        let no_row = head[no..no + row].to_vec();
        head[yes..yes + row].copy_from_slice(&no_row);
        head[no..no + row].copy_from_slice(&yes_row);
        tensors.insert("lm_head.weight".into(), (dtype, shape, head));
    }

    // Shard as transformers did.
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match layout["index"].as_object() {
        Some(index) => {
            std::fs::write(
                dir.join("model.safetensors.index.json"),
                layout["index"].to_string(),
            )
            .unwrap();
            for (tensor, file) in index["weight_map"].as_object().unwrap() {
                shards
                    .entry(file.as_str().unwrap().to_string())
                    .or_default()
                    .push(tensor.clone());
            }
        }
        None => {
            shards.insert(
                "model.safetensors".into(),
                tensors.keys().cloned().collect(),
            );
        }
    }
    for (file, names) in shards {
        let views: Vec<(String, TensorView)> = names
            .iter()
            .map(|n| {
                let (dtype, shape, data) = tensors
                    .get(n)
                    .unwrap_or_else(|| panic!("{name}: no tensor {n} to put in {file}"));
                (
                    n.clone(),
                    TensorView::new(*dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &dir.join(&file)).unwrap();
    }
    dir
}
