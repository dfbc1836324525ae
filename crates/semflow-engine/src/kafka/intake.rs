//! What a micro-batch's records become before any SQL runs — one path for ad-hoc scans of a
//! Kafka table and for pipelines: registry-framed values read as JSON, change events
//! unwrapped, tombstones, values over `max_value_bytes`, and records the decoder rejects are
//! sorted out here, each failure with its reason; [`Failure::error`] is how
//! `on_error = 'fail'` reports one. (What else happens to failures differs: a scan skips
//! them, a pipeline skips them or dead-letters them before its commit.)

use arrow::record_batch::RecordBatch;

use super::decode::Decoder;
use super::envelope::{unwrap_debezium, Envelope};
use super::options::{Format, KafkaOptions};
use super::record::Record;
use super::registry::Registry;
use crate::error::{Error, Result};

/// A record that could not become a row, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub record: Record,
    pub reason: String,
}

impl Failure {
    /// The error that stops a scan or a pipeline with `on_error = 'fail'`.
    pub fn error(&self) -> Error {
        Error::Kafka(format!(
            "record {} (key {:?}): {}",
            self.record.position(),
            self.record.key_text(),
            self.reason
        ))
    }
}

/// Who reads the records: a scan shows every record; a pipeline applies them to an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Tombstones are no rows (raw-format tables show them, with a null value).
    Scan,
    /// Only the newest valid record per key counts (an update or a delete); tombstones are
    /// deletions of their key.
    Pipeline,
}

/// A micro-batch sorted out.
#[derive(Debug)]
pub struct Intake {
    /// The decoded rows.
    pub batch: RecordBatch,
    /// The records with a value that went to the decoder; `rows_from[i]` indexes row i's.
    pub values: Vec<Record>,
    pub rows_from: Vec<usize>,
    /// Keys deleted by tombstones (pipelines only).
    pub deletes: Vec<String>,
    pub failures: Vec<Failure>,
}

/// Sorts `records` into rows, deletions and failures for `reader`. Registry-framed Avro or
/// Protobuf becomes JSON first and change events their plain records; dead letters still
/// carry the records as they arrived.
pub async fn intake(
    records: &[Record],
    options: &KafkaOptions,
    decoder: &Decoder,
    reader: Reader,
) -> Result<Intake> {
    let arrived = records;
    let rewritten = decoder.registry().is_some() || options.envelope != Envelope::None;
    let mut failures = Vec::new();
    let transcoded;
    let records = match decoder.registry() {
        None => records,
        Some(registry) => {
            let keys_as_json = options.envelope == Envelope::Debezium;
            transcoded =
                from_registry(registry, records, keys_as_json, options, &mut failures).await?;
            &transcoded[..]
        }
    };
    let unwrapped;
    let records = match options.envelope {
        Envelope::None => records,
        Envelope::Debezium => {
            unwrapped = unwrap_envelopes(records, options, &mut failures);
            &unwrapped[..]
        }
    };
    let mut tombstones = Vec::new();
    let mut values = Vec::new();
    // Where each of `values` stands in `records`.
    let mut value_at = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let fail = |reason: String| Failure {
            record: record.clone(),
            reason,
        };
        match (&record.value, &record.key, reader) {
            (None, _, Reader::Scan) if options.format != Format::Raw => {}
            (None, None, Reader::Pipeline) => failures.push(fail(
                "tombstone (null value) without a key: nothing to delete".into(),
            )),
            (None, Some(key), Reader::Pipeline) => match std::str::from_utf8(key) {
                Ok(k) => tombstones.push((i, k.to_string())),
                Err(_) => failures.push(fail("tombstone key is not UTF-8 text".into())),
            },
            (Some(v), _, _) if v.len() > options.max_value_bytes => failures.push(fail(format!(
                "value of {} bytes exceeds max_value_bytes ({})",
                v.len(),
                options.max_value_bytes
            ))),
            _ => {
                values.push(record.clone());
                value_at.push(i);
            }
        }
    }
    let decoded = decoder.decode(&values)?;
    failures.extend(decoded.rejected.iter().map(|r| Failure {
        record: values[r.index].clone(),
        reason: r.reason.clone(),
    }));
    if rewritten {
        as_arrived(&mut failures, arrived);
    }
    let (batch, rows_from, deletes) = match reader {
        Reader::Scan => (decoded.batch, decoded.rows_from, Vec::new()),
        Reader::Pipeline => newest_per_key(records, &value_at, decoded, tombstones)?,
    };
    Ok(Intake {
        batch,
        values,
        rows_from,
        deletes,
        failures,
    })
}

/// Registry-framed values (and keys) as JSON records; a record that cannot be read is a
/// failure. Oversized values are left for the size check, unread.
async fn from_registry(
    registry: &Registry,
    records: &[Record],
    keys_as_json: bool,
    options: &KafkaOptions,
    failures: &mut Vec<Failure>,
) -> Result<Vec<Record>> {
    let oversized = |r: &Record| {
        r.value
            .as_ref()
            .is_some_and(|v| v.len() > options.max_value_bytes)
    };
    registry
        .fetch_schemas(records.iter().filter(|r| !oversized(r)))
        .await?;
    // In batch order: downstream, the newest record of a key wins.
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        if oversized(record) {
            out.push(record.clone());
            continue;
        }
        match registry.record_to_json(record, keys_as_json) {
            Ok(json) => out.push(json),
            Err(reason) => failures.push(Failure {
                record: record.clone(),
                reason,
            }),
        }
    }
    Ok(out)
}

/// Failures of rewritten records (Avro read as JSON, unwrapped change events) carry the
/// record as it arrived, so a dead letter can be replayed as it was sent.
fn as_arrived(failures: &mut [Failure], arrived: &[Record]) {
    let by_position: std::collections::HashMap<(&str, i32, i64), &Record> = arrived
        .iter()
        .map(|r| ((r.topic.as_str(), r.partition, r.offset), r))
        .collect();
    for failure in failures {
        let r = &failure.record;
        if let Some(original) = by_position.get(&(r.topic.as_str(), r.partition, r.offset)) {
            failure.record = (*original).clone();
        }
    }
}

/// Change events as the plain records they stand for (upserts, tombstones); an event that
/// cannot be applied is a failure of the record as it arrived. Oversized values are left for
/// the size check, unread.
fn unwrap_envelopes(
    records: &[Record],
    options: &KafkaOptions,
    failures: &mut Vec<Failure>,
) -> Vec<Record> {
    records
        .iter()
        .filter_map(|record| {
            if record
                .value
                .as_ref()
                .is_some_and(|v| v.len() > options.max_value_bytes)
            {
                return Some(record.clone());
            }
            unwrap_debezium(record)
                .map_err(|reason| {
                    failures.push(Failure {
                        record: record.clone(),
                        reason,
                    })
                })
                .ok()
        })
        .collect()
}

/// What a pipeline applies of a batch: per key, only its newest record that decoded (a row)
/// or is a tombstone (a deletion); keyless rows all count. A record that failed (a
/// dead letter) does not hide an earlier valid one of its key, so what a document ends up
/// with does not depend on where batches were cut.
fn newest_per_key(
    records: &[Record],
    value_at: &[usize],
    decoded: super::decode::Decoded,
    tombstones: Vec<(usize, String)>,
) -> Result<(RecordBatch, Vec<usize>, Vec<String>)> {
    let row_records: Vec<usize> = decoded.rows_from.iter().map(|v| value_at[*v]).collect();
    let mut newest: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for i in row_records.iter().chain(tombstones.iter().map(|(i, _)| i)) {
        if let Some(key) = records[*i].key.as_deref() {
            let at = newest.entry(key).or_insert(*i);
            *at = (*at).max(*i);
        }
    }
    let is_newest = |i: usize| {
        records[i]
            .key
            .as_deref()
            .is_none_or(|k| newest.get(k) == Some(&i))
    };
    let keep: Vec<bool> = row_records.iter().map(|i| is_newest(*i)).collect();
    let rows_from = decoded
        .rows_from
        .iter()
        .zip(&keep)
        .filter_map(|(v, k)| k.then_some(*v))
        .collect();
    let batch = if keep.iter().all(|k| *k) {
        decoded.batch
    } else {
        let mask = arrow::array::BooleanArray::from(keep);
        arrow::compute::filter_record_batch(&decoded.batch, &mask)?
    };
    let deletes = tombstones
        .into_iter()
        .filter(|(i, _)| is_newest(*i))
        .map(|(_, key)| key)
        .collect();
    Ok((batch, rows_from, deletes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: None,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    /// What a pipeline takes of `records`: (row bodies, deleted keys, failed offsets).
    async fn taken(records: &[Record]) -> (Vec<String>, Vec<String>, Vec<i64>) {
        let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, true)]));
        let decoder = Decoder::new(schema, Format::Json).unwrap();
        let client = [("bootstrap.servers".to_string(), "127.0.0.1:9".to_string())];
        let options = KafkaOptions::parse("t", &client.into_iter().collect()).unwrap();
        let out = intake(records, &options, &decoder, Reader::Pipeline)
            .await
            .unwrap();
        let bodies = out.batch.column(0).as_string::<i32>();
        let rows = (0..out.batch.num_rows())
            .map(|i| bodies.value(i).to_string())
            .collect();
        let failed = out.failures.iter().map(|f| f.record.offset).collect();
        assert_eq!(out.rows_from.len(), out.batch.num_rows());
        (rows, out.deletes, failed)
    }

    #[tokio::test]
    async fn newest_record_per_key_wins_and_keyless_records_all_count() {
        let (rows, deletes, failed) = taken(&[
            record(0, Some("a"), Some(r#"{"body": "a1"}"#)),
            record(1, None, Some(r#"{"body": "x"}"#)),
            record(2, Some("a"), Some(r#"{"body": "a2"}"#)),
            record(3, None, Some(r#"{"body": "y"}"#)),
            record(4, Some("b"), Some(r#"{"body": "b1"}"#)),
            record(5, Some("b"), None),
            record(6, Some("c"), None),
            record(7, Some("c"), Some(r#"{"body": "c1"}"#)),
        ])
        .await;
        assert_eq!(rows, ["x", "a2", "y", "c1"]);
        assert_eq!(deletes, ["b"]);
        assert!(failed.is_empty());
    }

    /// A poison record after a valid update of its key is dead-lettered, and the update is
    /// still applied: the outcome must not depend on whether both fell in one batch.
    #[tokio::test]
    async fn a_failed_record_does_not_hide_an_earlier_valid_one() {
        let (rows, deletes, failed) = taken(&[
            record(0, Some("a"), Some(r#"{"body": "a1"}"#)),
            record(1, Some("a"), Some("not json")),
            record(2, Some("b"), None),
            record(3, Some("b"), Some("{")),
            record(4, Some("c"), Some("{")),
            record(5, Some("c"), Some(r#"{"body": "c1"}"#)),
        ])
        .await;
        assert_eq!(rows, ["a1", "c1"]);
        assert_eq!(deletes, ["b"]);
        // Every failed record is reported, also one a later record of its key replaced.
        assert_eq!(failed, [1, 3, 4]);
    }
}
