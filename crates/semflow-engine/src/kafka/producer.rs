//! Producing to Kafka and waiting until the broker has every record: the dead-letter topic
//! (before the index commit that moves past the records) and `STORED AS KAFKA` sinks.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use arrow::record_batch::RecordBatch;

use super::options::KafkaOptions;
use crate::error::{Error, Result};

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// `batch` with each column whose type `casts` maps to a list of types cast through them in
/// turn (the last is the column's new type); other columns as they are. Prepares rows for an
/// encoder that wants other representations than Arrow's JSON gives.
pub fn recast(
    batch: &RecordBatch,
    casts: impl Fn(&arrow::datatypes::DataType) -> Vec<arrow::datatypes::DataType>,
) -> Result<RecordBatch> {
    use arrow::datatypes::{Field, Schema};
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let mut column = column.clone();
        let mut field = field.clone();
        for t in casts(field.data_type()) {
            column = arrow::compute::cast(&column, &t)?;
            field = std::sync::Arc::new(Field::new(field.name(), t, field.is_nullable()));
        }
        columns.push(column);
        fields.push(field);
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Each row of `batch` as a JSON object (vectors as arrays).
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
        writer.write(batch)?;
        writer.finish()?;
    }
    let lines: Vec<Vec<u8>> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if lines.len() != batch.num_rows() {
        return Err(Error::Kafka(format!(
            "encoding rows as JSON gave {} lines for {} rows",
            lines.len(),
            batch.num_rows()
        )));
    }
    Ok(lines)
}

pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    /// A producer with the table's client properties (consumer-only ones dropped).
    pub fn new(options: &KafkaOptions) -> Result<Self> {
        let mut config = ClientConfig::new();
        for (k, v) in &options.client {
            if CONSUMER_ONLY.contains(&k.as_str()) {
                continue;
            }
            config.set(k, v);
        }
        config.set("message.timeout.ms", "30000");
        let inner = config
            .create()
            .map_err(|e| Error::Kafka(format!("creating a producer: {e}")))?;
        Ok(Self { inner })
    }

    /// Produces `records` to `topic` and returns once the broker acknowledged all of them.
    pub async fn send_all(&self, topic: &str, records: Vec<Outgoing>) -> Result<()> {
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k.as_str(),
                    value: Some(v.as_slice()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            self.inner.send(record, Duration::from_secs(30))
        });
        for result in join_all(sends).await {
            if let Err((e, _)) = result {
                return Err(Error::Kafka(format!("producing to {topic}: {e}")));
            }
        }
        Ok(())
    }
}

const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "isolation.level",
];
