//! # semflow-serve
//!
//! semflow's front ends: they translate a protocol into engine calls, the engine decides. It
//! sits on `semflow-engine` (and `semflow-inference`) and under the `semflow` crate's command
//! line; the jobs (`semflow-jobs`) are beside it, and neither can import the other.
//!
//! # Layout
//! Layers top to bottom; a module imports only from layers below it.
//!
//! | layer | modules | what they do |
//! | --- | --- | --- |
//! | listeners | [`serve`] | `semflow serve`: HTTP (a module per API dialect), the Postgres wire protocol, Arrow Flight SQL, chat, one admission budget |
//! | output | [`output`], [`telemetry`], [`tls`] | result formats and the statement spinner; Prometheus metrics and their endpoint; listener TLS |

pub mod output;
pub mod serve;
pub mod telemetry;
pub mod tls;

// The engine's modules under the paths the front ends name them by (`crate::udf`, …).
#[cfg(feature = "mistralrs")]
use semflow_engine::model;
use semflow_engine::{engine, error, index, inference, kafka, Engine};
