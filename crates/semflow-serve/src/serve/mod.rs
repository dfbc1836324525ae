//! `semflow serve`: the engine for applications.
//!
//! - [`api`]: OpenAI embeddings and Cohere/Jina rerank request/response bodies.
//! - [`http`]: the axum server — routes, limits, bearer-token auth, metrics, `/v1/sql`.
//! - [`chat`]: `/v1/chat/completions` on a self-hosted Qwen3 model (`--chat-model`).
//! - [`pg`]: the Postgres wire protocol (psql, drivers) over the same session.
//! - [`flight`]: Arrow Flight SQL (ADBC, JDBC, pyarrow) over gRPC.
//! - [`admission`]: the one budget of running and queued requests all listeners draw on.
//! - [`sqlstate`]: the SQLSTATE of an error, for every front end.
//! - [`access`]: what every listener requires beyond loopback (auth, TLS), token checks.

pub mod access;
pub mod admission;
pub mod api;
pub mod chat;
pub mod flight;
pub mod http;
pub mod pg;
pub mod sqlstate;
