//! # semflow-engine
//!
//! semflow's engine layer: the DataFusion session with every semflow function and table
//! factory, the data sources behind those tables, and the services they call. It sits on
//! `semflow-inference` (models and inference) and under the `semflow` crate (jobs — `run`,
//! `synth`, `reindex`, `eval` — the front ends of `serve`, and the command line), so none of
//! these modules can reach a job, a listener or the CLI: the compiler refuses it.
//!
//! # Layout
//! Layers top to bottom; a module imports only from layers below it (checked in CI by
//! `scripts/check-layers.py`: no import cycle between top-level modules).
//!
//! | layer | modules | what they do |
//! | --- | --- | --- |
//! | SQL engine | [`engine`] | the DataFusion session with every function and table factory registered |
//! | data sources | [`kafka`], [`index`] | topics as tables (JSON, raw, registry-framed Avro/Protobuf, Debezium envelopes) and the pipeline consumer; Lance datasets as tables with rows and Kafka offsets in one commit, aliases |
//! | SQL functions | [`udf`] | `embed`, `rerank`, `chunk`, `generate_query`, vector functions, `ir_measures`, `beir`, `holdout` (retrieval evaluation), `semflow.*` settings |
//! | services | [`generation`], [`config`] | the LLM client and recipe behind query generation; engine settings from flags, env and TOML |
//! | inference (crate `semflow-inference`) | [`inference`], [`model`] | models and the inference core every caller uses |
//! | leaves | [`error`], [`text`] | the engine's error type (the inference crate's errors inside it); SQL literals and `${VAR}` substitution |

pub mod config;
pub mod engine;
pub mod error;
pub mod generation;
pub mod index;
pub mod kafka;
pub mod text;
pub mod udf;

/// The inference layer (crate `semflow-inference`), under the name the layers above use.
pub use semflow_inference as inference;
/// Model directories, from the inference crate.
pub use semflow_inference::model;

pub use engine::Engine;
pub use error::{Error, Result};
pub use inference::{InferenceConfig, NamedModel};
