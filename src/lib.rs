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
//! A Cargo workspace whose crates are layers: this crate (`semflow`, the engine, its sources,
//! jobs and front ends, and the binary) over `semflow-inference` (`crates/semflow-inference`:
//! models and inference, with no DataFusion, Lance, Kafka or servers), so the compiler refuses
//! an import up a layer and inference work builds and tests alone
//! (`cargo test -p semflow-inference`). Within this crate, layers top to bottom; a module
//! imports only from layers below it (checked in CI by `scripts/check-layers.py`: no import
//! cycle between top-level modules, and no engine crate in the inference crate's dependency
//! tree).
//!
//! | layer | modules | what they do |
//! | --- | --- | --- |
//! | commands | [`cli`] (and `main`), [`shell`], [`bench`] | the `semflow` command line, the interactive shell, `semflow bench` |
//! | jobs and front ends | [`synth`], [`pipeline`], [`reindex`], [`eval`], [`serve`], [`output`] | `semflow eval` (retrieval measured per model and dimension on a BEIR set); `semflow synth` (queries, cosine filter, hard negatives, resumable rows); `semflow run` (continuous INSERT loop, dead letters); `semflow reindex` (re-embedding an index with a new model, resumable, alias swap); `semflow serve` (HTTP, Postgres wire, Arrow Flight SQL); result formats and the statement spinner |
//! | SQL engine | [`engine`] | the DataFusion session with every function and table factory registered |
//! | data sources | [`kafka`], [`index`] | topics as tables (JSON, raw, registry-framed Avro/Protobuf, Debezium envelopes) and the pipeline consumer; Lance datasets as tables with rows and Kafka offsets in one commit, aliases |
//! | SQL functions | [`udf`] | `embed`, `rerank`, `chunk`, `generate_query`, vector functions, `ir_measures`, `beir`, `holdout` (retrieval evaluation), `semflow.*` settings |
//! | services | [`generation`], [`config`], [`telemetry`] | the LLM client and recipe behind query generation; engine settings from flags, env and TOML; Prometheus metrics |
//! | inference (crate `semflow-inference`) | [`inference`] | the core every caller uses (`service`: dedupe → cache → Qwen3 formats → tokenize once → limits) over backends behind two traits (`backend`): `packed` (candle, with `cpu_kernels` on CPU), `local` (mistral.rs), `remote` (endpoint pools) |
//! | models (crate `semflow-inference`) | [`model`] | model directories: configs, presets, random weights, the Hugging Face hub, fingerprints, merging |
//! | leaves | [`error`], [`text`], [`tls`] | the library's error type (the inference crate's errors inside it); SQL literals and `${VAR}` substitution; TLS certificates for listeners |

pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generation;
pub mod index;
pub mod kafka;
pub mod output;
pub mod pipeline;
pub mod reindex;
pub mod serve;
pub mod shell;
pub mod synth;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod udf;

/// The inference layer (crate `semflow-inference`), under the name the layers above use.
pub use semflow_inference as inference;
/// Model directories, from the inference crate.
pub use semflow_inference::model;

pub use engine::Engine;
pub use error::{Error, Result};
pub use inference::{InferenceConfig, NamedModel};
