//! Remote inference backends: OpenAI-compatible servers behind the same SQL functions.
//!
//! - [`pool`]: a pool of endpoints — least-outstanding choice, a concurrency limit per
//!   endpoint, retries elsewhere on 429/5xx/timeouts/connection errors (honouring
//!   `Retry-After`), and health probes that take a failing endpoint out of rotation until it
//!   answers again.
//! - [`embed`]: `embed()` on `/v1/embeddings` (token ids in, vectors out).
//! - [`rerank`]: `rerank()` on Cohere/Jina `/v1/rerank` or vLLM `/score`.
//!
//! semflow applies the Qwen3 formats itself wherever the server takes raw input, so a remote
//! server running the same model computes exactly what the local backend would.

pub mod embed;
pub mod pool;
pub mod rerank;

use std::time::Duration;

pub use embed::{EmbedInputKind, RemoteEmbedder};
pub use rerank::{RemoteReranker, RerankFormat};

/// The `Retry-After` header as a duration (seconds form; capped at 5 minutes).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)))
}

/// Remote-backend settings.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Embedding base URLs (up to `/v1`, or the full `/embeddings` URL).
    pub embed_endpoints: Vec<String>,
    /// Model name sent with embedding requests (servers hosting several models need it).
    pub model: Option<String>,
    /// What embedding requests carry: token ids (exact; the default) or formatted text.
    pub embed_input: EmbedInputKind,
    /// Text mode: the endpoints' embedding dimension (`None`: asked of them once).
    pub embed_dims: Option<usize>,
    /// Rerank URLs: a base up to `/v1` (Cohere/Jina `/rerank` is appended), or a full URL
    /// ending in `/rerank` or `/score` (vLLM's score API).
    pub rerank_endpoints: Vec<String>,
    /// Model name sent with rerank requests.
    pub rerank_model: Option<String>,
    /// Who builds the Qwen3 reranker prompt.
    pub rerank_format: RerankFormat,
    /// Bearer token for embedding endpoints.
    pub api_key: Option<String>,
    /// Bearer token for rerank endpoints (defaults to `api_key`).
    pub rerank_api_key: Option<String>,
    /// Seconds per request.
    pub timeout_s: f64,
    /// Tries per batch, across endpoints.
    pub max_attempts: u32,
    /// Requests in flight per endpoint at most.
    pub concurrency: usize,
    /// Seconds between health probes (`GET /health` on each endpoint's origin); 0 = none.
    pub health_interval_s: f64,
}

impl RemoteConfig {
    /// Whether embedding endpoints replace the local embedding model.
    pub fn serves_embeddings(&self) -> bool {
        !self.embed_endpoints.is_empty()
    }

    /// Whether rerank endpoints replace the local reranker.
    pub fn serves_reranking(&self) -> bool {
        !self.rerank_endpoints.is_empty()
    }
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            embed_endpoints: Vec::new(),
            model: None,
            embed_input: EmbedInputKind::Tokens,
            embed_dims: None,
            rerank_endpoints: Vec::new(),
            rerank_model: None,
            rerank_format: RerankFormat::Auto,
            api_key: None,
            rerank_api_key: None,
            timeout_s: 60.0,
            max_attempts: 4,
            concurrency: 4,
            health_interval_s: 5.0,
        }
    }
}
