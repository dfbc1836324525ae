//! # semflow
//!
//! A streaming SQL engine for semantic data: Apache DataFusion with `embed()` and `rerank()`
//! backed by in-process Qwen3-Embedding / Qwen3-Reranker inference (semflow's packed
//! forward pass on candle by default, or mistral.rs's pipelines).
//!
//! ```text
//!  SQL ──> engine (DataFusion session + semflow.* settings)
//!            └─ udf: embed / rerank / cosine_similarity … ──> inference core (service)
//!  HTTP / Postgres / Flight SQL ──> serve (translate, admit) ──┤ dedupe, content cache
//!                                                               ├─ prompts + tokenize once (Qwen3 formats)
//!                                                               └─ EmbedBackend / ScoreBackend:
//!                                                                  packed (candle) | mistral.rs | remote
//!
//!  Kafka topic ──> kafka (consumer thread, micro-batches) ──> pipeline (decode, SQL, DLQ)
//!                                                               └─> index (Lance commit: rows + offsets)
//! ```
//!
//! # Layout
//! A Cargo workspace whose crates are layers, so the compiler refuses an import up a layer:
//! this crate (`semflow`: the command line and the binary) over `semflow-jobs`
//! (`crates/semflow-jobs`: run, synth, reindex, eval) and `semflow-serve` (`crates/semflow-serve`:
//! serve's listeners, result formats, the metrics endpoint, listener TLS), side by side, over
//! `semflow-engine` (`crates/semflow-engine`: the SQL engine, its functions, the Kafka and
//! Lance sources, settings, the LLM client; no servers, no jobs) over `semflow-inference`
//! (`crates/semflow-inference`: models and inference, with no DataFusion, Lance, Kafka or
//! servers), so inference work builds and tests alone (`cargo test -p semflow-inference`), a
//! job cannot reach a listener nor a listener a job, and the engine cannot reach either. The
//! lower crates' modules are re-exported here under their own names (`semflow::kafka`,
//! `semflow::serve`, `semflow::inference`, …). Within each crate, layers top to bottom; a
//! module imports only from layers below it (checked in CI by `scripts/check-layers.py`: no
//! import cycle between top-level modules, no engine, source or server crate in the inference
//! crate's dependency tree and no server crate in the engine's).
//!
//! | layer | modules | what they do |
//! | --- | --- | --- |
//! | commands | [`cli`] (and `main`), [`shell`], [`bench`] | the `semflow` command line, the interactive shell, `semflow bench` |
//! | jobs (crate `semflow-jobs`) | [`synth`], [`pipeline`], [`reindex`], [`eval`] | `semflow eval` (retrieval measured per model and dimension on a BEIR set); `semflow synth` (queries, cosine filter, hard negatives, resumable rows); `semflow run` (continuous INSERT loop, dead letters); `semflow reindex` (re-embedding an index with a new model, resumable, alias swap) |
//! | front ends (crate `semflow-serve`) | [`serve`], [`output`], [`telemetry`], [`tls`] | `semflow serve` (HTTP, Postgres wire, Arrow Flight SQL); result formats and the statement spinner; Prometheus metrics and their endpoint; TLS certificates for listeners |
//! | engine (crate `semflow-engine`) | [`engine`], [`kafka`], [`index`], [`udf`], [`generation`], [`config`], [`error`], [`text`] | the DataFusion session with every function and table factory; topics and Lance datasets as tables; `embed`, `rerank`, `chunk` and the other functions; the LLM client; engine settings from flags, env and TOML; the error type; SQL literals |
//! | inference (crate `semflow-inference`) | [`inference`], [`model`] | the core every caller uses (`service`: dedupe → cache → Qwen3 formats → tokenize once → limits) over backends behind two traits (`backend`): `packed` (candle, with `cpu_kernels` on CPU), `local` (mistral.rs), `remote` (endpoint pools); model directories: configs, presets, random weights, the Hugging Face hub, fingerprints, merging |

pub mod bench;
pub mod cli;
pub mod shell;

/// The inference layer (crate `semflow-inference`), under the name the layers above use.
pub use semflow_engine::inference;
/// Model directories, from the inference crate.
pub use semflow_engine::model;
/// The engine layer (crate `semflow-engine`), its modules under the names they had here.
pub use semflow_engine::{config, engine, error, generation, index, kafka, text, udf};
/// The jobs (crate `semflow-jobs`).
pub use semflow_jobs::{eval, pipeline, reindex, synth};
/// The front ends (crate `semflow-serve`).
pub use semflow_serve::{output, serve, telemetry, tls};

pub use engine::Engine;
pub use error::{Error, Result};
pub use inference::{InferenceConfig, NamedModel};
