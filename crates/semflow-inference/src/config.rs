//! Inference settings: which backend, which models, how long an input may be.

use super::device;
use super::named::NamedModel;
use super::remote;
use super::tokenize::Truncation;
use crate::error::{Error, Result};

/// Which implementation runs the models (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// semflow's packed, padding-free Qwen3 forward pass on candle: mixed lengths batch
    /// together. The default.
    #[default]
    Packed,
    /// mistral.rs's pipelines (batches only equal-length inputs together); in builds with
    /// the `mistralrs` cargo feature.
    MistralRs,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "packed" => Ok(BackendKind::Packed),
            "mistralrs" | "mistral.rs" if cfg!(feature = "mistralrs") => Ok(BackendKind::MistralRs),
            "mistralrs" | "mistral.rs" => Err(without_mistralrs("--backend mistralrs")),
            other => Err(Error::InvalidArgument(format!(
                "--backend must be packed or mistralrs, got '{other}'"
            ))),
        }
    }
}

/// Refuses `what` (a flag) in a build without mistral.rs, saying how to get one.
pub fn without_mistralrs(what: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} runs on mistral.rs, which this build leaves out (built with --no-default-features): build semflow with `--features mistralrs`"
    ))
}

/// How models are placed and scheduled.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: device::DeviceSpec,
    pub dtype: device::DTypeSpec,
    /// Sequences one forward pass runs together at most (mistral.rs: its scheduler's
    /// `max_num_seqs`).
    pub max_batch: usize,
}

impl LoadOptions {
    /// The precision `backend` loads models with. bf16 on the CPU is the packed backend's
    /// alone (bf16 weights, f32 activations); mistral.rs would run candle's CPU BF16 matmul,
    /// which is unavailable.
    pub fn precision(&self, backend: BackendKind) -> Result<device::Precision> {
        let precision = self.dtype.resolve(self.device)?;
        if backend == BackendKind::MistralRs
            && self.device == device::DeviceSpec::Cpu
            && precision == device::Precision::Bf16
        {
            return Err(Error::InvalidArgument(
                "--dtype bf16 on CPU runs on the packed backend only; mistral.rs (--backend mistralrs, and the chat model) runs f32 or f16 there".into(),
            ));
        }
        Ok(precision)
    }
}

/// Engine-wide inference settings.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Hugging Face id, local directory, or `random:PRESET[:SEED]`.
    pub embed_model: String,
    pub rerank_model: String,
    pub backend: BackendKind,
    pub load: LoadOptions,
    /// Bytes the content cache (embeddings and rerank scores of every model) may hold;
    /// 0 turns caching off. Default: sized to the machine's memory.
    pub cache_size: crate::cache::CacheSize,
    /// Longest input in tokens; `None` means the model's `max_position_embeddings`.
    pub max_tokens: Option<usize>,
    /// Remote embedding endpoints (empty: the local backend).
    pub remote: remote::RemoteConfig,
    /// More models by name (`--model NAME=SPEC`), each with these settings.
    pub models: Vec<NamedModel>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            embed_model: "Qwen/Qwen3-Embedding-0.6B".into(),
            rerank_model: "Qwen/Qwen3-Reranker-0.6B".into(),
            backend: BackendKind::Packed,
            load: LoadOptions {
                device: device::DeviceSpec::Cpu,
                dtype: device::DTypeSpec::Auto,
                max_batch: 64,
            },
            cache_size: crate::cache::CacheSize::for_this_machine(),
            max_tokens: None,
            remote: remote::RemoteConfig::default(),
            models: Vec::new(),
        }
    }
}

/// Per-call options that come from the SQL session or the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct CallOptions {
    pub truncation: Truncation,
    pub use_cache: bool,
}

/// The context every Qwen3-Embedding and Qwen3-Reranker model card advertises (32k tokens).
/// Some published configs say `max_position_embeddings` 40960 (the base model's room for
/// generated text), which the embedding and reranking training never used.
pub const ADVERTISED_CONTEXT: usize = 32_768;

/// Longest input in tokens: `--max-tokens` when given (up to `max_position_embeddings`),
/// otherwise the smaller of `max_position_embeddings` and [`ADVERTISED_CONTEXT`].
pub fn token_limit(max_position_embeddings: usize, configured: Option<usize>) -> usize {
    configured.map_or(max_position_embeddings.min(ADVERTISED_CONTEXT), |m| {
        m.min(max_position_embeddings)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_limit_defaults_to_the_advertised_context() {
        // A 4B config's 40960 positions: 32k unless the user asks for more.
        assert_eq!(token_limit(40_960, None), 32_768);
        assert_eq!(token_limit(40_960, Some(40_000)), 40_000);
        assert_eq!(token_limit(40_960, Some(50_000)), 40_960);
        assert_eq!(token_limit(512, None), 512);
        assert_eq!(token_limit(512, Some(128)), 128);
    }
}
