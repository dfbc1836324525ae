//! The subset of a Qwen3 `config.json` semflow reads, and the presets of the real shapes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Architectures semflow runs: transformers' causal LM (the published Qwen3-Embedding and
/// Qwen3-Reranker checkpoints) and the bare decoder that sentence-transformers saves when it
/// fine-tunes Qwen3-Embedding. Both hold the same decoder weights.
pub const ARCHITECTURES: [&str; 2] = ["Qwen3ForCausalLM", "Qwen3Model"];

/// Fields of a Hugging Face Qwen3 `config.json` that semflow needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct QwenConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `config.json` as written: transformers 4.x puts `rope_theta` at the top level, 5.x moves
/// it into `rope_parameters` (with a `rope_type`).
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    #[serde(default)]
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_type: Option<String>,
}

/// Qwen3's default when a config names no theta.
const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;

impl TryFrom<RawConfig> for QwenConfig {
    type Error = String;

    fn try_from(raw: RawConfig) -> std::result::Result<Self, String> {
        let nested = raw.rope_parameters.as_ref();
        let rope_type = nested.and_then(|p| p.rope_type.as_deref()).or_else(|| {
            raw.rope_scaling
                .as_ref()
                .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
                .and_then(|t| t.as_str())
        });
        // Scaled RoPE (yarn, linear, dynamic…) changes every position's angles; running it as
        // plain RoPE would silently give different vectors.
        if let Some(t) = rope_type.filter(|t| *t != "default") {
            return Err(format!(
                "rope type '{t}' is not supported (semflow runs Qwen3's default RoPE)"
            ));
        }
        let rope_theta = match (raw.rope_theta, nested.and_then(|p| p.rope_theta)) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "rope_theta {a} and rope_parameters.rope_theta {b} disagree"
                ))
            }
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => DEFAULT_ROPE_THETA,
        };
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(format!("rope_theta {rope_theta} must be a positive number"));
        }
        Ok(QwenConfig {
            architectures: raw.architectures,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads,
            head_dim: raw.head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: raw.tie_word_embeddings,
        })
    }
}

impl QwenConfig {
    /// Reads and checks `config.json` in a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let cfg: QwenConfig =
            serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
        if !cfg
            .architectures
            .iter()
            .any(|a| ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(Error::model(
                dir.display(),
                format!(
                    "config.json architectures {:?} is none of {ARCHITECTURES:?}; semflow runs Qwen3-Embedding and Qwen3-Reranker models and their fine-tunes",
                    cfg.architectures
                ),
            ));
        }
        Ok(cfg)
    }

    /// Per-head dimension (explicit in Qwen3 configs, derived otherwise).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The config of a named preset (real Qwen3 shapes; `tiny` for tests).
    pub fn preset(preset: Preset) -> Self {
        let (hidden, layers, heads, kv, head_dim, inter, max_pos) = match preset {
            Preset::Tiny => (64, 2, 4, 2, 16, 128, 512),
            Preset::Small => (256, 4, 4, 2, 64, 768, 32768),
            Preset::Q0_6b => (1024, 28, 16, 8, 128, 3072, 32768),
            Preset::Q4b => (2560, 36, 32, 8, 128, 9728, 32768),
            Preset::Q8b => (4096, 36, 32, 8, 128, 12288, 32768),
        };
        QwenConfig {
            architectures: vec!["Qwen3ForCausalLM".into()],
            vocab_size: 151_936,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: Some(head_dim),
            max_position_embeddings: max_pos,
            rms_norm_eps: 1e-6,
            rope_theta: DEFAULT_ROPE_THETA,
            // 0.6B ties input and output embeddings; 4B and 8B reranker checkpoints do too.
            tie_word_embeddings: true,
        }
    }

    /// The full `config.json` for this shape, as Hugging Face transformers writes it.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        serde_json::json!({
            "architectures": self.architectures,
            "model_type": "qwen3",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "sliding_window": null,
            "use_sliding_window": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }
}

/// Model shapes `semflow model random` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 2 layers, hidden 64: fast enough for unit tests.
    Tiny,
    /// 4 layers, hidden 256: for CPU benchmarks that must finish in minutes.
    Small,
    /// Qwen3-0.6B shape.
    #[value(name = "0.6b")]
    Q0_6b,
    /// Qwen3-4B shape.
    #[value(name = "4b")]
    Q4b,
    /// Qwen3-8B shape.
    #[value(name = "8b")]
    Q8b,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_real_shapes() {
        let c = QwenConfig::preset(Preset::Q0_6b);
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_dim()),
            (1024, 28, 128)
        );
        let c = QwenConfig::preset(Preset::Q8b);
        assert_eq!((c.hidden_size, c.intermediate_size), (4096, 12288));
        let json = c.to_hf_json("bfloat16");
        let back: QwenConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    fn with(
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Result<QwenConfig, String> {
        let mut json = QwenConfig::preset(Preset::Tiny).to_hf_json("bfloat16");
        edit(json.as_object_mut().unwrap());
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn rope_theta_is_read_from_either_place() {
        let nested = with(|m| {
            m.remove("rope_theta");
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": 5000.0, "rope_type": "default"}),
            );
        })
        .unwrap();
        assert_eq!(nested.rope_theta, 5000.0);
        let absent = with(|m| {
            m.remove("rope_theta");
        })
        .unwrap();
        assert_eq!(absent.rope_theta, 1_000_000.0);
        let both_agree = with(|m| {
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": 1e6}),
            );
        })
        .unwrap();
        assert_eq!(both_agree.rope_theta, 1e6);
        let err = with(|m| {
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": 10.0}),
            );
        })
        .unwrap_err();
        assert!(err.contains("disagree"), "{err}");
        let err = with(|m| {
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": 1e6, "rope_type": "yarn"}),
            );
        })
        .unwrap_err();
        assert!(err.contains("'yarn'"), "{err}");
        let err = with(|m| {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": "linear", "factor": 2.0}),
            );
        })
        .unwrap_err();
        assert!(err.contains("'linear'"), "{err}");
    }

    #[test]
    fn fine_tuned_architecture_is_accepted_and_others_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |arch: &str| {
            let mut json = QwenConfig::preset(Preset::Tiny).to_hf_json("bfloat16");
            json["architectures"] = serde_json::json!([arch]);
            std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
            QwenConfig::from_dir(dir.path())
        };
        assert!(write("Qwen3Model").is_ok());
        assert!(write("Qwen3ForCausalLM").is_ok());
        let err = write("LlamaForCausalLM").unwrap_err().to_string();
        assert!(
            err.contains("LlamaForCausalLM") && err.contains("Qwen3Model"),
            "{err}"
        );
    }
}
