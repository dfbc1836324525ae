//! D1: decoding throughput of Kafka records into rows, JSON against registry-framed Avro
//! (issue 19). The K1 documents become records `{id, title, body, n, at}`, once as JSON text
//! and once as Avro of one schema (known to the registry client beforehand, so no HTTP is
//! timed); both go through the intake a pipeline uses (Avro → JSON objects → columns),
//! in micro-batches of 1,000, alternating for `rounds` rounds. Medians of records/s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use apache_avro::types::Value as Avro;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::Serialize;

use super::median;
use crate::error::{Error, Result};
use crate::kafka::decode::Decoder;
use crate::kafka::intake::{intake, Reader};
use crate::kafka::options::{Format, KafkaOptions};
use crate::kafka::record::Record;
use crate::kafka::registry::{enframe, Registry, WriterSchema};

const BATCH: usize = 1000;
const SCHEMA_ID: u32 = 1;
const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Doc", "fields": [
    {"name": "id", "type": "string"},
    {"name": "title", "type": ["null", "string"], "default": null},
    {"name": "body", "type": "string"},
    {"name": "n", "type": "long"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;

/// What D1 measured (medians over rounds).
#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub records: usize,
    pub json_bytes: usize,
    pub avro_bytes: usize,
    pub json_records_per_s: f64,
    pub avro_records_per_s: f64,
    /// Avro's rate over JSON's.
    pub avro_vs_json: f64,
}

fn record(offset: usize, value: Vec<u8>) -> Record {
    Record {
        topic: "d1".into(),
        partition: 0,
        offset: offset as i64,
        timestamp: None,
        key: Some(format!("k1-{offset}").into_bytes()),
        value: Some(value),
        headers: Vec::new(),
    }
}

/// The same documents as JSON records and as registry-framed Avro records.
fn records(seed: u64, docs: usize) -> Result<(Vec<Record>, Vec<Record>)> {
    let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA)
        .map_err(|e| Error::InvalidArgument(format!("D1 schema: {e}")))?;
    let (mut json, mut avro) = (Vec::new(), Vec::new());
    for (i, (id, body)) in super::ingest::documents(seed, docs).into_iter().enumerate() {
        let at = 1_700_000_000_000 + i as i64;
        let value = serde_json::json!({"id": id, "title": "t", "body": body, "n": i, "at": at});
        json.push(record(i, value.to_string().into_bytes()));
        let datum = Avro::Record(vec![
            ("id".into(), Avro::String(id)),
            (
                "title".into(),
                Avro::Union(1, Box::new(Avro::String("t".into()))),
            ),
            ("body".into(), Avro::String(body)),
            ("n".into(), Avro::Long(i as i64)),
            ("at".into(), Avro::TimestampMillis(at)),
        ]);
        let body = apache_avro::to_avro_datum(&schema, datum)
            .map_err(|e| Error::InvalidArgument(format!("D1 record: {e}")))?;
        avro.push(record(i, enframe(SCHEMA_ID, &body)));
    }
    Ok((json, avro))
}

fn decoder(format: Format) -> Result<(KafkaOptions, Decoder)> {
    let mut options = HashMap::from([("bootstrap.servers".to_string(), "unused:9092".into())]);
    let table = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("body", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]));
    let mut decoder = Decoder::new(table, format)?;
    if format == Format::Avro {
        options.insert("format.format".into(), "avro".into());
        options.insert("schema.registry.url".into(), "http://127.0.0.1:1".into());
        let registry = Registry::new("http://127.0.0.1:1", Format::Avro)?;
        let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA)
            .map_err(|e| Error::InvalidArgument(format!("D1 schema: {e}")))?;
        registry.insert(SCHEMA_ID, WriterSchema::Avro(schema));
        decoder = decoder.with_registry(Arc::new(registry));
    }
    Ok((KafkaOptions::parse("d1", &options)?, decoder))
}

/// Seconds to take `records` in, batch by batch, as a pipeline does.
async fn timed(records: &[Record], options: &KafkaOptions, decoder: &Decoder) -> Result<f64> {
    let started = Instant::now();
    for batch in records.chunks(BATCH) {
        let taken = intake(batch, options, decoder, Reader::Pipeline).await?;
        if !taken.failures.is_empty() || taken.batch.num_rows() != batch.len() {
            return Err(Error::InvalidArgument(format!(
                "D1: {} of {} records failed, first: {:?}",
                taken.failures.len(),
                batch.len(),
                taken.failures.first().map(|f| &f.reason)
            )));
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(seed: u64, docs: usize, rounds: usize) -> Result<DecodeResult> {
    let (json, avro) = records(seed, docs.max(1))?;
    let (json_options, json_decoder) = decoder(Format::Json)?;
    let (avro_options, avro_decoder) = decoder(Format::Avro)?;
    // Warm-up: allocator and caches.
    timed(&json, &json_options, &json_decoder).await?;
    timed(&avro, &avro_options, &avro_decoder).await?;
    let (mut json_s, mut avro_s) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        json_s.push(timed(&json, &json_options, &json_decoder).await?);
        avro_s.push(timed(&avro, &avro_options, &avro_decoder).await?);
    }
    let bytes = |r: &[Record]| {
        r.iter()
            .filter_map(|r| r.value.as_ref())
            .map(Vec::len)
            .sum()
    };
    let json_rate = json.len() as f64 / median(json_s);
    let avro_rate = avro.len() as f64 / median(avro_s);
    Ok(DecodeResult {
        records: json.len(),
        json_bytes: bytes(&json),
        avro_bytes: bytes(&avro),
        json_records_per_s: json_rate,
        avro_records_per_s: avro_rate,
        avro_vs_json: avro_rate / json_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_and_avro_records_decode_to_the_same_rows() {
        let (json, avro) = records(7, 20).unwrap();
        let (jo, jd) = decoder(Format::Json).unwrap();
        let (ao, ad) = decoder(Format::Avro).unwrap();
        let a = intake(&json, &jo, &jd, Reader::Pipeline).await.unwrap();
        let b = intake(&avro, &ao, &ad, Reader::Pipeline).await.unwrap();
        assert_eq!(a.batch.num_rows(), 20);
        assert_eq!(a.batch, b.batch);
        let result = run(7, 50, 1).await.unwrap();
        assert_eq!(result.records, 50);
        assert!(result.avro_bytes < result.json_bytes);
        assert!(result.json_records_per_s > 0.0 && result.avro_records_per_s > 0.0);
    }
}
