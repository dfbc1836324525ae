//! # semflow-inference
//!
//! The bottom layer of semflow's workspace: turning texts into embeddings and (query,
//! document) pairs into relevance, for every caller above it (the SQL functions, pipelines,
//! synth, reindex and the front ends of `semflow serve`, in the `semflow` crate). It depends
//! on candle, tokenizers, safetensors, the Hugging Face hub client and an HTTP client only —
//! no DataFusion, Lance, Kafka or servers — so inference work builds and tests without the
//! engine (`cargo test -p semflow-inference`), and CI checks that it stays so
//! (`scripts/check-layers.py`).
//!
//! Layout, top down:
//! - [`named`]: the engine's models, the default one and those named with `--model`.
//! - [`service`]: the core, [`Inference`]: dedupe → cache → format and tokenize once →
//!   length limits → backend, for every caller.
//! - [`backend`]: the [`EmbedBackend`](backend::EmbedBackend) and
//!   [`ScoreBackend`](backend::ScoreBackend) traits and their loaders, over [`packed`]
//!   (semflow's forward pass, with [`cpu_kernels`]), `local` (mistral.rs, in builds with the
//!   `mistralrs` cargo feature) and [`remote`]
//!   (endpoint pools).
//! - Leaves: [`config`] (settings), [`prompts`] and [`tokenize`] (the Qwen3 formats),
//!   [`cache`], [`stats`], [`vector`] (normalisation, Matryoshka), [`runtime`] (the thread
//!   pool model work runs on), [`device`], [`single_token`].
//! - [`model`]: model directories: configs, presets, random weights, the Hugging Face hub,
//!   fingerprints, merging.
//! - [`outbound`] (HTTP clients that trust `--ca-cert`), [`error`], [`allocator`] (the
//!   memory allocator's settings every binary applies at start-up).
//! - [`bench`]: the model workloads (W1–W5) `semflow bench` runs, and this crate's `bench`
//!   example runs without the engine (`cargo run --release -p semflow-inference --example
//!   bench`).

pub mod allocator;
pub mod backend;
pub mod bench;
pub mod cache;
pub mod config;
pub mod cpu_kernels;
pub mod device;
pub mod error;
#[cfg(feature = "mistralrs")]
pub mod local;
pub mod model;
pub mod named;
pub mod outbound;
pub mod packed;
pub mod prompts;
pub mod remote;
pub mod runtime;
pub mod service;
pub mod single_token;
pub mod stats;
pub mod tokenize;
pub mod vector;

pub use self::config::{
    token_limit, BackendKind, CallOptions, InferenceConfig, ADVERTISED_CONTEXT,
};
pub use self::error::{Error, Result};
pub use self::named::{Models, NamedModel};
pub use self::runtime::block_on;
pub use self::service::{EmbedInput, Inference, RerankInput};
pub use self::stats::Stats;
pub use self::vector::{normalize, truncate_dims};
