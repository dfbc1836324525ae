//! The subset of a Qwen3 `config.json` semflow reads, and the presets of the real shapes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Fields of a Hugging Face Qwen3 `config.json` that semflow needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rope_theta() -> f64 {
    1_000_000.0
}

impl QwenConfig {
    /// Reads and checks `config.json` in a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let cfg: QwenConfig =
            serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
        if !cfg.architectures.iter().any(|a| a == "Qwen3ForCausalLM") {
            return Err(Error::model(
                dir.display(),
                format!(
                    "config.json architectures {:?} is not Qwen3ForCausalLM; semflow runs Qwen3-Embedding and Qwen3-Reranker models",
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
            rope_theta: 1_000_000.0,
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
}
