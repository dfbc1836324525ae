//! # semflow
//!
//! A streaming SQL engine for semantic data: Apache DataFusion with `embed()` and `rerank()`
//! backed by in-process Qwen3-Embedding / Qwen3-Reranker inference (semflow's packed
//! forward pass on candle by default, or mistral.rs's pipelines).
//!
//! ```text
//!  SQL ──> engine (DataFusion session + semflow.* settings)
//!            └─ udf: embed / rerank / cosine_similarity … ──> inference
//!                                                               ├─ dedupe, content cache
//!                                                               ├─ prompts + tokenize (Qwen3 formats)
//!                                                               └─ backend: packed (candle) | mistral.rs ── model dir
//!
//!  Kafka topic ──> kafka (consumer thread, micro-batches) ──> pipeline (decode, SQL, DLQ)
//!                                                               └─> index (Lance commit: rows + offsets)
//! ```
//!
//! # Layout
//! - [`cli`], [`shell`]: the `semflow` command line and interactive shell.
//! - [`bench`]: `semflow bench` workloads, the peer process, reports.
//! - [`config`]: engine settings from flags, environment and TOML files.
//! - [`engine`]: builds the DataFusion session and runs SQL.
//! - [`udf`]: the SQL functions.
//! - [`kafka`]: topics as tables (stream/snapshot scans, JSON sink) and the pipeline consumer.
//! - [`index`]: Lance datasets as tables; upserts, deletes and Kafka offsets in one commit.
//! - [`pipeline`]: `semflow run`: the continuous INSERT loop, dead letters, metrics.
//! - [`serve`]: `semflow serve`: the HTTP API (embeddings, rerank, health, metrics).
//! - [`synth`]: `semflow synth`: LLM-written queries, the cosine filter, hard negatives,
//!   training rows (resumable).
//! - [`telemetry`]: Prometheus metrics shared by `run` and `serve`.
//! - [`inference`]: dedupe, caching, Qwen3 formats, tokenization, and the two backends
//!   (`packed`: padding-free forward pass on its own thread; `local`: mistral.rs).
//! - [`model`]: model directories: config, presets, random weights, hub download, fingerprints.
//! - [`output`]: result formats (table, CSV, JSON, NDJSON, Parquet).
//! - [`error`]: the library's error type.

pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod index;
pub mod inference;
pub mod kafka;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod serve;
pub mod shell;
pub mod synth;
pub mod telemetry;
pub mod udf;

pub use engine::Engine;
pub use error::{Error, Result};
pub use inference::InferenceConfig;
