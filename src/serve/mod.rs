//! `semflow serve`: the engine for applications.
//!
//! - [`api`]: OpenAI embeddings and Cohere/Jina rerank request/response bodies.
//! - [`http`]: the axum server — routes, limits, bearer-token auth, metrics, `/v1/sql`.
//! - [`pg`]: the Postgres wire protocol (psql, drivers) over the same session.

pub mod api;
pub mod http;
pub mod pg;
