//! `semflow model random`: complete Qwen3 model directories with random weights.
//!
//! Random weights cost exactly the compute of trained ones and go through the same loading
//! code, so tests and benchmarks run where real weights cannot be downloaded.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use safetensors::{Dtype, View};
use sha2::{Digest, Sha256};

use super::config::{Preset, QwenConfig};
use crate::error::{Error, Result};

/// The Qwen3 tokenizer (no post-processor), committed as a fixture; see its NOTICE.md.
pub const QWEN3_TOKENIZER_JSON: &[u8] = include_bytes!("../../tokenizer/qwen3-tokenizer.json");
/// The same tokenizer with the embedding models' post-processor that appends `<|endoftext|>`.
pub const QWEN3_EMBEDDING_TOKENIZER_JSON: &[u8] =
    include_bytes!("../../tokenizer/qwen3-embedding-tokenizer.json");

/// Which kind of model directory to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// Qwen3-Embedding layout: weights without the `model.` prefix, sentence-transformers
    /// modules (last-token pooling, Normalize).
    Embedding,
    /// Qwen3-Reranker layout: a causal LM (`model.` prefix, tied LM head).
    Reranker,
}

/// Storage dtype of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    F32,
    Bf16,
}

/// Options for [`write_random_model`].
#[derive(Debug, Clone)]
pub struct RandomModelSpec {
    pub kind: ModelKind,
    pub preset: Preset,
    pub seed: u64,
    pub dtype: WeightDtype,
}

/// A tensor whose values are drawn when the writer asks for its bytes, so even an 8B model
/// is written one tensor at a time.
struct RandomTensor {
    shape: Vec<usize>,
    dtype: WeightDtype,
    /// `None`: all ones (RMSNorm weights). `Some(seed)`: N(0, 0.02) from this seed.
    seed: Option<u64>,
}

impl RandomTensor {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for RandomTensor {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n = self.numel();
        let mut values = vec![1.0f32; n];
        if let Some(seed) = self.seed {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Constant, valid parameters: this cannot fail.
            let normal = Normal::new(0.0f32, 0.02).expect("N(0, 0.02) is a valid distribution");
            for v in values.iter_mut() {
                *v = normal.sample(&mut rng);
            }
        }
        let bytes = match self.dtype {
            WeightDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightDtype::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.numel()
            * match self.dtype {
                WeightDtype::F32 => 4,
                WeightDtype::Bf16 => 2,
            }
    }
}

/// Seed of one tensor: independent of the order tensors are written in.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Everything of a model directory but the weights: config, tokenizer, and for embedders the
/// sentence-transformers files. Also the stand-in for a remote-only model (see
/// `model::dir::remote_text_model_dir`).
pub fn write_model_files(
    cfg: &QwenConfig,
    kind: ModelKind,
    torch_dtype: &str,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_json(&out.join("config.json"), &cfg.to_hf_json(torch_dtype))?;
    let tokenizer = match kind {
        ModelKind::Embedding => QWEN3_EMBEDDING_TOKENIZER_JSON,
        ModelKind::Reranker => QWEN3_TOKENIZER_JSON,
    };
    write_file(&out.join("tokenizer.json"), tokenizer)?;
    write_json(
        &out.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "Qwen2Tokenizer",
            "model_max_length": cfg.max_position_embeddings,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "bos_token": null,
            "unk_token": null,
            "add_bos_token": false,
            "padding_side": "left",
            "chat_template": "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        }),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": 151643, "eos_token_id": 151643}),
    )?;
    if kind == ModelKind::Embedding {
        write_json(
            &out.join("modules.json"),
            &serde_json::json!([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            ]),
        )?;
        let pooling = out.join("1_Pooling");
        std::fs::create_dir_all(&pooling).map_err(|e| Error::io(&pooling, e))?;
        write_json(
            &pooling.join("config.json"),
            &serde_json::json!({
                "word_embedding_dimension": cfg.hidden_size,
                "pooling_mode_cls_token": false,
                "pooling_mode_mean_tokens": false,
                "pooling_mode_max_tokens": false,
                "pooling_mode_mean_sqrt_len_tokens": false,
                "pooling_mode_weightedmean_tokens": false,
                "pooling_mode_lasttoken": true,
                "include_prompt": true
            }),
        )?;
        let normalize = out.join("2_Normalize");
        std::fs::create_dir_all(&normalize).map_err(|e| Error::io(&normalize, e))?;
        write_json(
            &out.join("config_sentence_transformers.json"),
            &serde_json::json!({
                "prompts": super::dir::DEFAULT_NAMED_PROMPTS.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
                "default_prompt_name": null,
                "similarity_fn_name": "cosine",
            }),
        )?;
    }
    Ok(())
}

/// The tensors of a Qwen3 model of `cfg`'s shape, by name.
fn tensors(cfg: &QwenConfig, spec: &RandomModelSpec) -> BTreeMap<String, RandomTensor> {
    let prefix = match spec.kind {
        ModelKind::Embedding => "",
        ModelKind::Reranker => "model.",
    };
    let (h, hd, i) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_key_value_heads * hd;
    let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![
        (
            format!("{prefix}embed_tokens.weight"),
            vec![cfg.vocab_size, h],
            true,
        ),
        (format!("{prefix}norm.weight"), vec![h], false),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("{prefix}layers.{l}.");
        shapes.extend([
            (format!("{p}input_layernorm.weight"), vec![h], false),
            (
                format!("{p}post_attention_layernorm.weight"),
                vec![h],
                false,
            ),
            (format!("{p}self_attn.q_proj.weight"), vec![q, h], true),
            (format!("{p}self_attn.k_proj.weight"), vec![kv, h], true),
            (format!("{p}self_attn.v_proj.weight"), vec![kv, h], true),
            (format!("{p}self_attn.o_proj.weight"), vec![h, q], true),
            (format!("{p}self_attn.q_norm.weight"), vec![hd], false),
            (format!("{p}self_attn.k_norm.weight"), vec![hd], false),
            (format!("{p}mlp.gate_proj.weight"), vec![i, h], true),
            (format!("{p}mlp.up_proj.weight"), vec![i, h], true),
            (format!("{p}mlp.down_proj.weight"), vec![h, i], true),
        ]);
    }
    if spec.kind == ModelKind::Reranker && !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, h], true));
    }
    shapes
        .into_iter()
        .map(|(name, shape, random)| {
            let seed = random.then(|| tensor_seed(spec.seed, &name));
            (
                name,
                RandomTensor {
                    shape,
                    dtype: spec.dtype,
                    seed,
                },
            )
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_file(path, text.as_bytes())
}

/// Writes a complete, loadable Qwen3 model directory with random weights to `out`.
pub fn write_random_model(spec: &RandomModelSpec, out: &Path) -> Result<QwenConfig> {
    let cfg = QwenConfig::preset(spec.preset);
    let torch_dtype = match spec.dtype {
        WeightDtype::F32 => "float32",
        WeightDtype::Bf16 => "bfloat16",
    };
    write_model_files(&cfg, spec.kind, torch_dtype, out)?;
    let weights = out.join("model.safetensors");
    // One metadata key only: safetensors keeps metadata in a HashMap, so with several keys the
    // header order (and the file's bytes) would change from run to run.
    let info = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_json(
        &out.join("semflow_random.json"),
        &serde_json::json!({"preset": format!("{:?}", spec.preset), "seed": spec.seed, "kind": format!("{:?}", spec.kind)}),
    )?;
    safetensors::serialize_to_file(tensors(&cfg, spec), Some(info), &weights)
        .map_err(|e| Error::Safetensors(format!("{}: {e}", weights.display())))?;
    Ok(cfg)
}

/// A random `tiny` model of `kind` (F32 weights) in a new temporary directory: the fixture the
/// crate's unit tests load.
#[cfg(test)]
pub(crate) fn tiny_model_dir(kind: ModelKind, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = RandomModelSpec {
        kind,
        preset: Preset::Tiny,
        seed,
        dtype: WeightDtype::F32,
    };
    write_random_model(&spec, dir.path()).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_models_are_deterministic_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RandomModelSpec {
            kind: ModelKind::Embedding,
            preset: Preset::Tiny,
            seed: 7,
            dtype: WeightDtype::Bf16,
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_random_model(&spec, &a).unwrap();
        write_random_model(&spec, &b).unwrap();
        let wa = std::fs::read(a.join("model.safetensors")).unwrap();
        let digest = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
        assert_eq!(
            digest(&wa),
            digest(&std::fs::read(b.join("model.safetensors")).unwrap())
        );
        for f in [
            "config.json",
            "tokenizer.json",
            "modules.json",
            "1_Pooling/config.json",
        ] {
            assert!(a.join(f).exists(), "{f} missing");
        }
        let st = safetensors::SafeTensors::deserialize(&wa).unwrap();
        let emb = st.tensor("embed_tokens.weight").unwrap();
        assert_eq!(emb.shape(), &[151_936, 64]);
        let norm = st.tensor("layers.1.self_attn.q_norm.weight").unwrap();
        assert!(norm
            .data()
            .chunks(2)
            .all(|c| half::bf16::from_le_bytes([c[0], c[1]]) == half::bf16::ONE));
        // N(0, 0.02): the sample standard deviation of a big tensor is close to 0.02.
        let vals: Vec<f32> = emb
            .data()
            .chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let var = vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32;
        assert!((var.sqrt() - 0.02).abs() < 0.001, "std {}", var.sqrt());

        let other = RandomModelSpec { seed: 8, ..spec };
        write_random_model(&other, &b).unwrap();
        assert_ne!(
            digest(&wa),
            digest(&std::fs::read(b.join("model.safetensors")).unwrap())
        );
    }

    #[test]
    fn reranker_layout_has_model_prefix() {
        let dir = tiny_model_dir(ModelKind::Reranker, 1);
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensor("model.layers.0.mlp.up_proj.weight").is_ok());
        assert!(!dir.path().join("modules.json").exists());
    }
}
