//! semflow's integration tests, one module per area, linked into one test binary: each
//! binary links the whole engine (DataFusion, Lance, candle: ~0.7 GB unoptimised), so one per
//! file cost ~19 GB of disk and a link step each on a fresh build.
//!
//! Run one area with its module path, e.g. `cargo test --test integration parity::`.
//! Shared helpers are in `common/`. The tests that run worker processes against time are in
//! the second binary, `tests/workers.rs`.

mod common;

mod backpressure;
mod batching;
mod checkpoints;
mod cli;
mod docker;
mod documents;
mod eval;
mod flight;
mod fuzz_decode;
mod fuzz_http;
mod fuzz_inputs;
mod hub;
mod index;
mod ir_measures;
mod maintenance;
mod models;
mod parity;
mod pg;
mod pipeline;
mod pipeline_files;
mod reindex;
mod remote;
mod sdk;
mod serve;
mod sql_functions;
mod sqllogictests;
mod synth;
mod tls;
mod tokenizer;
