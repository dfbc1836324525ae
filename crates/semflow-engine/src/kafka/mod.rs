//! Kafka topics as SQL tables, and the consumer that feeds pipelines.
//!
//! - [`options`]: `STORED AS KAFKA` options (semflow's own, plus librdkafka pass-through).
//! - [`record`]: records copied out of the client.
//! - [`registry`]: registry-framed values (Confluent wire format) read as JSON, writer
//!   schemas by id from the schema registry (cached); [`avro`] and [`protobuf`] decode them,
//!   and `avro` also writes Kafka sink rows.
//! - [`decode`]: records → Arrow rows (JSON fields or raw bytes, metadata columns).
//! - [`intake`]: a micro-batch sorted into rows, deletions and failures (for scans and
//!   pipelines alike).
//! - [`consumer`]: the polling thread: micro-batches, pause on backpressure, positions from
//!   the index on every assignment.
//! - [`producer`]: produce-and-wait, for dead letters and sinks.
//! - [`table`]: the table provider (stream or snapshot scans, JSON sink).

pub mod avro;
pub mod consumer;
pub mod decode;
pub mod envelope;
pub mod intake;
pub mod options;
pub mod producer;
pub mod protobuf;
pub mod record;
pub mod registry;
pub mod table;

pub use consumer::{Consumer, MicroBatch, Mode, PositionStore};
pub use options::KafkaOptions;
pub use record::Record;
pub use table::{KafkaTable, KafkaTableFactory};
