//! Engine settings from a config file (`--config semflow.toml`), flags and environment.
//! Precedence: flag or environment variable, then the config file, then the default.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::inference::cache::CacheSize;
use crate::inference::InferenceConfig;

/// Declares [`Settings`] once: each field is a command-line flag (with its environment
/// variable) and a config-file key at the same time, and [`Settings::over`] merges two sets
/// field by field. Adding a setting is one field here (plus what it configures in
/// [`inference_config`]).
macro_rules! settings {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty, )*) => {
        /// Engine settings, each `None` where not given: from flags and environment
        /// variables, or from a TOML config file (keys as the flags, with underscores).
        #[derive(Debug, Clone, Default, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$meta])* pub $name: Option<$ty>, )*
        }

        impl Settings {
            /// These settings over `under`: each one given here wins.
            pub fn over(self, under: Settings) -> Settings {
                Settings { $( $name: self.$name.filter(Given::given).or(under.$name), )* }
            }
        }
    };
}

/// Whether a flag's value counts as given: an empty list (an empty environment variable)
/// leaves the config file's in place.
trait Given {
    fn given(&self) -> bool {
        true
    }
}
impl Given for String {}
impl Given for usize {}
impl Given for f64 {}
impl Given for CacheSize {}
impl Given for Vec<String> {
    fn given(&self) -> bool {
        self.iter().any(|v| !v.trim().is_empty())
    }
}

settings! {
    /// Embedding model: a Hugging Face id, a local directory, or random:PRESET[:SEED]
    /// (random weights, for trying semflow without a download). Default Qwen/Qwen3-Embedding-0.6B.
    #[arg(long, env = "SEMFLOW_EMBED_MODEL")]
    embed_model: String,
    /// Reranker model, as --embed-model. Default Qwen/Qwen3-Reranker-0.6B.
    #[arg(long, env = "SEMFLOW_RERANK_MODEL")]
    rerank_model: String,
    /// Inference implementation: packed (default; semflow's padding-free Qwen3 forward pass,
    /// which batches mixed lengths together) or mistralrs (mistral.rs pipelines, which batch
    /// only inputs of equal token length).
    #[arg(long, env = "SEMFLOW_BACKEND")]
    backend: String,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, env = "SEMFLOW_DEVICE")]
    device: String,
    /// auto, f32, bf16 or f16. On CPU auto means f32, the only exact choice there; bf16 there
    /// keeps weights bf16 (half the memory) and computes in f32 (packed backend only).
    #[arg(long, env = "SEMFLOW_DTYPE")]
    dtype: String,
    /// Memory for the inference content cache (embeddings and rerank scores of every model),
    /// e.g. 512MiB or 2GiB; 0 turns caching off (repeats are recomputed). Default: 1/32 of the
    /// machine's memory (or its cgroup's limit), between 32 MiB and 1 GiB.
    #[arg(long, env = "SEMFLOW_CACHE_SIZE")]
    cache_size: CacheSize,
    /// Sequences the model runs together at most; higher uses more memory per forward pass.
    #[arg(long, env = "SEMFLOW_MAX_BATCH")]
    max_batch: usize,
    /// Longest input in tokens (default: the model's maximum); see SET semflow.truncate.
    #[arg(long, env = "SEMFLOW_MAX_TOKENS")]
    max_tokens: usize,
    /// Compute embed() on OpenAI-compatible /v1/embeddings endpoints (repeatable or
    /// comma-separated; semflow serve, vLLM, TEI…) instead of in-process; the local
    /// --embed-model directory still provides the tokenizer. Key: SEMFLOW_ENDPOINT_API_KEY.
    #[arg(long = "embed-endpoint", env = "SEMFLOW_EMBED_ENDPOINTS", value_delimiter = ',')]
    embed_endpoints: Vec<String>,
    /// Model name sent to the embedding endpoints.
    #[arg(long, env = "SEMFLOW_ENDPOINT_MODEL")]
    endpoint_model: String,
    /// What embedding requests carry: tokens (default: token ids formatted and tokenized
    /// here, exactly the local backend's input) or text (the formatted text, for servers
    /// that accept only strings; they tokenize and append their end token themselves).
    #[arg(long, env = "SEMFLOW_EMBED_ENDPOINT_INPUT")]
    embed_endpoint_input: String,
    /// Text mode: the endpoints' embedding dimension (default: asked of them with one request).
    #[arg(long, env = "SEMFLOW_EMBED_ENDPOINT_DIMS")]
    embed_endpoint_dims: usize,
    /// Compute rerank() on remote endpoints (repeatable or comma-separated): a base URL up
    /// to /v1 or a URL ending in /rerank (Cohere/Jina shape: semflow serve, TEI, vLLM), or
    /// URLs ending in /score (vLLM). Key: SEMFLOW_RERANK_API_KEY, else SEMFLOW_ENDPOINT_API_KEY.
    #[arg(long = "rerank-endpoint", env = "SEMFLOW_RERANK_ENDPOINTS", value_delimiter = ',')]
    rerank_endpoints: Vec<String>,
    /// Model name sent to the rerank endpoints.
    #[arg(long, env = "SEMFLOW_RERANK_ENDPOINT_MODEL")]
    rerank_endpoint_model: String,
    /// Who builds the Qwen3 reranker prompt: server (send raw query, documents and
    /// instruction: semflow serve), client (send the prompt split in two texts: vLLM with
    /// Qwen3-Reranker), or auto (client for /score URLs, server for /rerank).
    #[arg(long, env = "SEMFLOW_RERANK_FORMAT")]
    rerank_format: String,
    /// Requests in flight per remote endpoint at most (default 4).
    #[arg(long, env = "SEMFLOW_ENDPOINT_CONCURRENCY")]
    endpoint_concurrency: usize,
    /// Seconds between health probes (GET /health) of remote endpoints; an endpoint that
    /// fails one is out of rotation until one succeeds. 0 turns probes off (default 5).
    #[arg(long, env = "SEMFLOW_ENDPOINT_HEALTH_INTERVAL")]
    endpoint_health_interval: f64,
    /// More models by name, NAME=MODEL (repeatable; comma-separated in SEMFLOW_MODELS):
    /// `embed(text, instruction, dims, 'NAME')`, `rerank(q, d, instruction, 'NAME')`,
    /// `embed_model('NAME')`, and the HTTP API's `model` field.
    #[arg(long = "model", env = "SEMFLOW_MODELS", value_delimiter = ',')]
    models: Vec<String>,
}

impl Settings {
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }
}

/// The inference configuration `s` asks for (settings already merged: flags and
/// environment over the config file), over the defaults.
pub fn inference_config(s: &Settings) -> Result<InferenceConfig> {
    let mut cfg = InferenceConfig::default();
    let at_least = |value: usize, min: usize, flag: &str| {
        if value < min {
            Err(Error::InvalidArgument(format!(
                "--{flag} must be at least {min}"
            )))
        } else {
            Ok(value)
        }
    };
    let urls = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().filter(|u| !u.trim().is_empty()).cloned().collect())
    };
    if let Some(m) = &s.embed_model {
        cfg.embed_model = m.clone();
    }
    if let Some(m) = &s.rerank_model {
        cfg.rerank_model = m.clone();
    }
    if let Some(b) = &s.backend {
        cfg.backend = b.parse()?;
    }
    if let Some(d) = &s.device {
        cfg.load.device = d.parse()?;
    }
    if let Some(d) = &s.dtype {
        cfg.load.dtype = d.parse()?;
    }
    if let Some(c) = s.cache_size {
        cfg.cache_size = c;
    }
    if let Some(b) = s.max_batch {
        cfg.load.max_batch = at_least(b, 1, "max-batch")?;
    }
    if let Some(t) = s.max_tokens {
        cfg.max_tokens = Some(at_least(t, 2, "max-tokens")?);
    }
    if let Some(e) = urls(&s.embed_endpoints) {
        cfg.remote.embed_endpoints = e;
    }
    if let Some(i) = &s.embed_endpoint_input {
        cfg.remote.embed_input = i.parse()?;
    }
    if let Some(d) = s.embed_endpoint_dims {
        cfg.remote.embed_dims = Some(at_least(d, 1, "embed-endpoint-dims")?);
    }
    if let Some(e) = urls(&s.rerank_endpoints) {
        cfg.remote.rerank_endpoints = e;
    }
    if let Some(m) = &s.rerank_endpoint_model {
        cfg.remote.rerank_model = Some(m.clone());
    }
    if let Some(f) = &s.rerank_format {
        cfg.remote.rerank_format = f.parse()?;
    }
    if let Some(c) = s.endpoint_concurrency {
        cfg.remote.concurrency = at_least(c, 1, "endpoint-concurrency")?;
    }
    if let Some(h) = s.endpoint_health_interval {
        if !h.is_finite() || h < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "--endpoint-health-interval must be 0 (off) or a number of seconds, got {h}"
            )));
        }
        cfg.remote.health_interval_s = h;
    }
    if let Some(m) = &s.models {
        cfg.models = crate::inference::named::parse_all(m)?;
    }
    if let Some(m) = &s.endpoint_model {
        cfg.remote.model = Some(m.clone());
    }
    // The key comes from the environment only, never from files or flags.
    let key = |name: &str| std::env::var(name).ok().filter(|k| !k.is_empty());
    cfg.remote.api_key = key("SEMFLOW_ENDPOINT_API_KEY");
    cfg.remote.rerank_api_key = key("SEMFLOW_RERANK_API_KEY");
    // A dtype that cannot run on the device is a configuration error, found before any query.
    cfg.load.precision(cfg.backend)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file: Settings =
            toml::from_str("embed_model = 'file-model'\ncache_size = '5MiB'\ndevice = 'cpu'")
                .unwrap();
        let over = Settings {
            embed_model: Some("flag-model".into()),
            ..Default::default()
        };
        let cfg = inference_config(&over.over(file.clone())).unwrap();
        assert_eq!(cfg.embed_model, "flag-model");
        assert_eq!(cfg.cache_size.bytes(), 5 << 20);
        assert_eq!(cfg.rerank_model, "Qwen/Qwen3-Reranker-0.6B");
        // bf16 on the CPU: the packed backend's (bf16 weights), not mistral.rs's.
        let bf16 = Settings {
            dtype: Some("bf16".into()),
            ..Default::default()
        };
        let cfg = inference_config(&bf16.clone().over(file.clone())).unwrap();
        assert_eq!(cfg.load.dtype, crate::inference::device::DTypeSpec::Bf16);
        if cfg!(feature = "mistralrs") {
            let on_mistralrs = Settings {
                backend: Some("mistralrs".into()),
                ..bf16
            };
            assert!(inference_config(&on_mistralrs.over(file.clone())).is_err());
        }
        assert!(toml::from_str::<Settings>("nope = 1").is_err());
        // An empty list (an empty environment variable) leaves the file's in place.
        let file: Settings = toml::from_str("embed_endpoints = ['http://a/v1']").unwrap();
        let empty = Settings {
            embed_endpoints: Some(vec![String::new()]),
            ..Default::default()
        };
        let merged = empty.over(file);
        assert_eq!(
            merged.embed_endpoints,
            Some(vec!["http://a/v1".to_string()])
        );
    }
}
