//! Engine settings from a config file (`--config semflow.toml`), flags and environment.
//! Precedence: flag or environment variable, then the config file, then the default.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::inference::InferenceConfig;

/// Engine settings, each `None` where not given: read from a TOML config file (keys as the
/// flags, with underscores) or collected from flags and environment variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub embed_model: Option<String>,
    pub rerank_model: Option<String>,
    pub backend: Option<String>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub cache_size: Option<usize>,
    pub max_batch: Option<usize>,
    pub max_tokens: Option<usize>,
    /// OpenAI-compatible `/v1/embeddings` base URLs that compute embed() instead of the
    /// local model (semflow still tokenizes and formats with the local model directory).
    pub embed_endpoints: Option<Vec<String>>,
    /// Model name sent to the embedding endpoints.
    pub endpoint_model: Option<String>,
    /// What embedding requests carry: tokens (default) or text.
    pub embed_endpoint_input: Option<String>,
    /// Text mode: the endpoints' embedding dimension.
    pub embed_endpoint_dims: Option<usize>,
    /// Cohere/Jina `/rerank` or vLLM `/score` URLs that compute rerank().
    pub rerank_endpoints: Option<Vec<String>>,
    /// Model name sent to the rerank endpoints.
    pub rerank_endpoint_model: Option<String>,
    /// Who builds the reranker prompt: auto, server or client.
    pub rerank_format: Option<String>,
    /// Requests in flight per endpoint at most.
    pub endpoint_concurrency: Option<usize>,
    /// Seconds between endpoint health probes; 0 turns them off.
    pub endpoint_health_interval: Option<f64>,
}

impl Settings {
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }
}

/// Merges flag/env settings over file settings over the defaults.
pub fn inference_config(file: &Settings, over: &Settings) -> Result<InferenceConfig> {
    let mut cfg = InferenceConfig::default();
    if let Some(m) = over
        .embed_model
        .clone()
        .or_else(|| file.embed_model.clone())
    {
        cfg.embed_model = m;
    }
    if let Some(m) = over
        .rerank_model
        .clone()
        .or_else(|| file.rerank_model.clone())
    {
        cfg.rerank_model = m;
    }
    if let Some(b) = over.backend.as_ref().or(file.backend.as_ref()) {
        cfg.backend = b.parse()?;
    }
    if let Some(d) = over.device.as_ref().or(file.device.as_ref()) {
        cfg.load.device = d.parse()?;
    }
    if let Some(d) = over.dtype.as_ref().or(file.dtype.as_ref()) {
        cfg.load.dtype = d.parse()?;
    }
    if let Some(c) = over.cache_size.or(file.cache_size) {
        cfg.cache_capacity = c;
    }
    if let Some(b) = over.max_batch.or(file.max_batch) {
        if b == 0 {
            return Err(Error::InvalidArgument(
                "--max-batch must be at least 1".into(),
            ));
        }
        cfg.load.max_batch = b;
    }
    if let Some(t) = over.max_tokens.or(file.max_tokens) {
        if t < 2 {
            return Err(Error::InvalidArgument(
                "--max-tokens must be at least 2".into(),
            ));
        }
        cfg.max_tokens = Some(t);
    }
    let urls = |o: &Option<Vec<String>>, f: &Option<Vec<String>>| {
        o.clone()
            .filter(|e| !e.is_empty())
            .or_else(|| f.clone())
            .map(|e| e.into_iter().filter(|u| !u.trim().is_empty()).collect())
    };
    if let Some(e) = urls(&over.embed_endpoints, &file.embed_endpoints) {
        cfg.remote.embed_endpoints = e;
    }
    if let Some(i) = over
        .embed_endpoint_input
        .as_ref()
        .or(file.embed_endpoint_input.as_ref())
    {
        cfg.remote.embed_input = i.parse()?;
    }
    if let Some(d) = over.embed_endpoint_dims.or(file.embed_endpoint_dims) {
        if d == 0 {
            return Err(Error::InvalidArgument(
                "--embed-endpoint-dims must be at least 1".into(),
            ));
        }
        cfg.remote.embed_dims = Some(d);
    }
    if let Some(e) = urls(&over.rerank_endpoints, &file.rerank_endpoints) {
        cfg.remote.rerank_endpoints = e;
    }
    if let Some(m) = over
        .rerank_endpoint_model
        .clone()
        .or_else(|| file.rerank_endpoint_model.clone())
    {
        cfg.remote.rerank_model = Some(m);
    }
    if let Some(f) = over.rerank_format.as_ref().or(file.rerank_format.as_ref()) {
        cfg.remote.rerank_format = f.parse()?;
    }
    if let Some(c) = over.endpoint_concurrency.or(file.endpoint_concurrency) {
        if c == 0 {
            return Err(Error::InvalidArgument(
                "--endpoint-concurrency must be at least 1".into(),
            ));
        }
        cfg.remote.concurrency = c;
    }
    if let Some(h) = over
        .endpoint_health_interval
        .or(file.endpoint_health_interval)
    {
        if !h.is_finite() || h < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "--endpoint-health-interval must be 0 (off) or a number of seconds, got {h}"
            )));
        }
        cfg.remote.health_interval_s = h;
    }
    if let Some(m) = over
        .endpoint_model
        .clone()
        .or_else(|| file.endpoint_model.clone())
    {
        cfg.remote.model = Some(m);
    }
    // The key comes from the environment only, never from files or flags.
    let key = |name: &str| std::env::var(name).ok().filter(|k| !k.is_empty());
    cfg.remote.api_key = key("SEMFLOW_ENDPOINT_API_KEY");
    cfg.remote.rerank_api_key = key("SEMFLOW_RERANK_API_KEY");
    // A dtype that cannot run on the device is a configuration error, found before any query.
    cfg.load.dtype.resolve(cfg.load.device)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file: Settings =
            toml::from_str("embed_model = 'file-model'\ncache_size = 5\ndevice = 'cpu'").unwrap();
        let over = Settings {
            embed_model: Some("flag-model".into()),
            ..Default::default()
        };
        let cfg = inference_config(&file, &over).unwrap();
        assert_eq!(cfg.embed_model, "flag-model");
        assert_eq!(cfg.cache_capacity, 5);
        assert_eq!(cfg.rerank_model, "Qwen/Qwen3-Reranker-0.6B");
        let bad = Settings {
            dtype: Some("bf16".into()),
            ..Default::default()
        };
        assert!(inference_config(&file, &bad)
            .unwrap_err()
            .to_string()
            .contains("bf16"));
        assert!(toml::from_str::<Settings>("nope = 1").is_err());
    }
}
