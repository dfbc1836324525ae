//! # semflow-jobs
//!
//! semflow's jobs: long-running work driven through the engine. It sits on `semflow-engine`
//! (and through it `semflow-inference`) and under the `semflow` crate's command line; the
//! front ends (`semflow-serve`) are beside it, and neither can import the other.
//!
//! # Layout
//! Each job imports only from the engine (the modules below are independent of each other).
//!
//! | module | what it does |
//! | --- | --- |
//! | [`pipeline`] | `semflow run`: pipeline files, the continuous INSERT loop over a Kafka source, dead letters |
//! | [`synth`] | `semflow synth`: queries from an LLM, the cosine filter, hard negatives, resumable rows |
//! | [`reindex`] | `semflow reindex`: re-embedding an index with a new model, resumable, the alias swap |
//! | [`eval`] | `semflow eval`: retrieval measured per model and dimension on a BEIR set |

pub mod eval;
pub mod pipeline;
pub mod reindex;
pub mod synth;

// The engine's modules under the paths the jobs name them by (`crate::index`, …).
use semflow_engine::{engine, error, generation, index, inference, kafka, model, text, udf};
