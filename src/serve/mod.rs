//! `semflow serve`: the engine for applications.
//!
//! - [`api`]: OpenAI embeddings and Cohere/Jina rerank request/response bodies.
//! - [`http`]: the axum server — routes, limits, bearer-token auth, metrics.

pub mod api;
pub mod http;
