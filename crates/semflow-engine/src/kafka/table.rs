//! `STORED AS KAFKA` tables: a topic read as an unbounded stream (or a snapshot up to the
//! high watermarks at start), and written as JSON rows by INSERT.

use std::fmt;
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, DataFusionError};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, LogicalPlan};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::consumer::{Consumer, Mode};
use super::decode::Decoder;
use super::intake::{intake, Reader};
use super::options::{End, KafkaOptions, OnError};
use super::producer::{json_rows, Outgoing, Producer};
use crate::error::{Error, Result};

/// A Kafka topic as a table.
#[derive(Debug, Clone)]
pub struct KafkaTable {
    options: KafkaOptions,
    decoder: Decoder,
}

impl KafkaTable {
    pub fn new(options: KafkaOptions, schema: SchemaRef) -> Result<Self> {
        if schema.fields().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "STORED AS KAFKA {}: declare the columns, e.g. (id TEXT NOT NULL, body TEXT)",
                options.topic
            )));
        }
        let mut decoder = Decoder::new(schema, options.format)?;
        if let Some(url) = &options.schema_registry {
            let registry = super::registry::Registry::new(url, options.format)?
                .with_basic_auth(options.schema_registry_auth.clone());
            decoder = decoder.with_registry(Arc::new(registry));
        }
        Ok(Self { options, decoder })
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}

/// The Kafka tables `plan` reads without an end (`'end' 'never'`, the default): a query over
/// them that waits for its input's end (an aggregate, a sort) can never finish.
pub fn unbounded_scans(plan: &LogicalPlan) -> Vec<String> {
    let mut tables = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let unbounded = datafusion::datasource::source_as_provider(&scan.source)
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<KafkaTable>()
                        .map(|t| t.options.end == End::Never)
                });
            if unbounded == Some(true) {
                tables.push(scan.table_name.to_string());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let partition: Arc<dyn PartitionStream> = Arc::new(TopicStream {
            table: self.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            self.schema(),
            vec![partition],
            projection,
            vec![],
            self.options.end == End::Never,
            limit,
        )?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return exec_err!(
                "{}: a Kafka topic only supports INSERT INTO",
                self.options.topic
            );
        }
        let sink = KafkaSink {
            options: self.options.clone(),
            schema: self.schema(),
            registry: self.decoder.registry().cloned(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// The one partition stream of a topic table (the consumer spreads over partitions itself).
#[derive(Debug)]
struct TopicStream {
    table: KafkaTable,
}

impl PartitionStream for TopicStream {
    fn schema(&self) -> &SchemaRef {
        self.table.decoder.schema()
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let table = self.table.clone();
        let schema = self.schema().clone();
        let stream =
            futures::stream::unfold((None::<Consumer>, table), |(consumer, table)| async move {
                let mut consumer = match consumer {
                    Some(c) => c,
                    None => {
                        let options = table.options.clone();
                        let mode = match options.end {
                            End::LatestAtStart => Mode::Snapshot,
                            End::Never => Mode::Stream,
                        };
                        let started =
                            tokio::task::spawn_blocking(move || Consumer::start(&options, mode))
                                .await;
                        match started {
                            Ok(Ok(c)) => c,
                            Ok(Err(e)) => return Some((Err(e.into()), (None, table))),
                            Err(e) => {
                                return Some((
                                    Err(DataFusionError::External(Box::new(e))),
                                    (None, table),
                                ))
                            }
                        }
                    }
                };
                loop {
                    let batch = match consumer.next().await? {
                        Ok(b) => b,
                        Err(e) => return Some((Err(e.into()), (Some(consumer), table))),
                    };
                    consumer.ack(batch.seq, None);
                    let intake =
                        match intake(&batch.records, &table.options, &table.decoder, Reader::Scan)
                            .await
                        {
                            Ok(i) => i,
                            Err(e) => return Some((Err(e.into()), (Some(consumer), table))),
                        };
                    if let Some(bad) = intake.failures.first() {
                        if table.options.on_error == OnError::Fail {
                            return Some((Err(bad.error().into()), (Some(consumer), table)));
                        }
                        // A scan has no dead-letter side effects: it skips, and says so.
                        tracing::warn!(
                            skipped = intake.failures.len(),
                            "{}: skipping records that are not rows, first {}: {}",
                            table.options.topic,
                            bad.record.position(),
                            bad.reason
                        );
                    }
                    if intake.batch.num_rows() > 0 {
                        return Some((Ok(intake.batch), (Some(consumer), table)));
                    }
                }
            });
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

/// INSERT INTO a Kafka table: one JSON object per row (vectors as arrays), or with
/// `'format' 'avro'` one registry-framed Avro record (the table's schema, registered under
/// `<topic>-value` on the first write); keyed by the `key` option's column as text.
/// At-least-once: a failed statement may have produced some rows; consumers that upsert by
/// key make retries harmless.
#[derive(Debug)]
struct KafkaSink {
    options: KafkaOptions,
    schema: SchemaRef,
    registry: Option<Arc<super::registry::Registry>>,
}

/// How a registry-framed sink encodes its rows: the writer schema and its registered id.
enum Encoding {
    Avro(apache_avro::Schema, u32),
    Protobuf(super::protobuf::ProtoSchema, u32),
}

impl KafkaSink {
    /// Registers the table's schema under `<topic>-value` in the table's format.
    async fn register(&self, registry: &super::registry::Registry) -> Result<Encoding> {
        let topic = &self.options.topic;
        let subject = format!("{topic}-value");
        match self.options.format {
            super::options::Format::Protobuf => {
                let proto = super::protobuf::writer_schema(topic, &self.schema)?;
                let id = registry.register_protobuf(&subject, &proto).await?;
                let schema = super::protobuf::ProtoSchema::parse(&proto).map_err(Error::Kafka)?;
                Ok(Encoding::Protobuf(schema, id))
            }
            _ => {
                let schema = super::avro::writer_schema(topic, &self.schema)?;
                let id = registry.register(&subject, &schema).await?;
                Ok(Encoding::Avro(schema, id))
            }
        }
    }
}

impl DisplayAs for KafkaSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaSink: {}", self.options.topic)
    }
}

#[async_trait]
impl DataSink for KafkaSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::common::Result<u64> {
        let producer = Producer::new(&self.options)?;
        let topic = &self.options.topic;
        let encoding = match &self.registry {
            Some(registry) => Some(self.register(registry).await?),
            None => None,
        };
        let mut written = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let keys = row_keys(&batch, self.options.key_column.as_deref())?;
            let values = match &encoding {
                Some(Encoding::Avro(schema, id)) => super::avro::encode_rows(&batch, schema, *id)?,
                Some(Encoding::Protobuf(schema, id)) => schema.encode_rows(&batch, *id)?,
                None => json_rows(&batch)?,
            };
            let records = keyed(values, keys);
            written += records.len() as u64;
            producer.send_all(topic, records).await?;
        }
        Ok(written)
    }
}

/// Rows of `batch` as JSON objects, keyed by `key_column`'s text.
pub fn json_records(batch: &RecordBatch, key_column: Option<&str>) -> Result<Vec<Outgoing>> {
    Ok(keyed(json_rows(batch)?, row_keys(batch, key_column)?))
}

/// Encoded rows with their keys, as messages.
fn keyed(values: Vec<Vec<u8>>, keys: Vec<Option<Vec<u8>>>) -> Vec<Outgoing> {
    values
        .into_iter()
        .zip(keys)
        .map(|(value, key)| Outgoing {
            key,
            value: Some(value),
            headers: vec![],
        })
        .collect()
}

/// Each row's message key: `key_column`'s text (none without a key column, or for NULL).
fn row_keys(batch: &RecordBatch, key_column: Option<&str>) -> Result<Vec<Option<Vec<u8>>>> {
    let Some(name) = key_column else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let column = batch.column_by_name(name).ok_or_else(|| {
        Error::InvalidArgument(format!("KAFKA sink: key column {name} is not in the rows"))
    })?;
    let f = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
    Ok((0..batch.num_rows())
        .map(|i| (!column.is_null(i)).then(|| f.value(i).to_string().into_bytes()))
        .collect())
}

/// `STORED AS KAFKA`.
#[derive(Debug, Default)]
pub struct KafkaTableFactory;

#[async_trait]
impl TableProviderFactory for KafkaTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let options = KafkaOptions::parse(&cmd.location, &cmd.options)?;
        let schema: SchemaRef = Arc::new(cmd.schema.as_arrow().clone());
        Ok(Arc::new(KafkaTable::new(options, schema)?))
    }
}
