//! Finding the continuous statement in a pipeline's SQL, and re-pointing its Kafka scan at
//! one micro-batch at a time.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{provider_as_source, source_as_provider, MemTable, TableProvider};
use datafusion::logical_expr::{DmlStatement, LogicalPlan, TableScan, WriteOp};

use crate::error::{Error, Result};
use crate::index::LanceTable;
use crate::kafka::KafkaTable;

/// Where the continuous INSERT writes.
pub enum Target {
    /// A Lance index: rows and offsets commit together (exactly-once).
    Index(LanceTable),
    /// Any other table (e.g. a KAFKA sink): the DML runs per batch (at-least-once).
    Other,
}

/// `INSERT INTO target SELECT … FROM <kafka table>`, taken apart.
pub struct Continuous {
    /// The whole DML plan (used for non-index targets).
    pub dml: LogicalPlan,
    /// The SELECT part (used for index targets).
    pub input: LogicalPlan,
    pub source: KafkaTable,
    pub target: Target,
}

/// `Some` when `plan` is an INSERT reading exactly one unbounded Kafka table.
pub fn continuous(plan: &LogicalPlan) -> Result<Option<Continuous>> {
    let LogicalPlan::Dml(DmlStatement {
        op: WriteOp::Insert(_),
        target,
        input,
        table_name,
        ..
    }) = plan
    else {
        return Ok(None);
    };
    let mut sources = Vec::new();
    input.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Some(k) = kafka_of(scan) {
                sources.push(k);
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    let source = match sources.len() {
        0 => return Ok(None),
        1 => sources.remove(0),
        _ => {
            return Err(Error::Pipeline(format!(
                "INSERT INTO {table_name} reads {} Kafka tables; a pipeline reads one",
                sources.len()
            )))
        }
    };
    if source.options().end != crate::kafka::options::End::Never {
        // A snapshot read is an ordinary, finite INSERT.
        return Ok(None);
    }
    let provider = source_as_provider(target)?;
    let target = match provider.downcast_ref::<LanceTable>() {
        Some(t) => Target::Index(t.clone()),
        None => Target::Other,
    };
    Ok(Some(Continuous {
        dml: plan.clone(),
        input: input.as_ref().clone(),
        source,
        target,
    }))
}

fn kafka_of(scan: &TableScan) -> Option<KafkaTable> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<KafkaTable>().cloned()
}

/// `plan` with its Kafka scan reading `batch` instead.
pub fn bind(plan: &LogicalPlan, batch: RecordBatch) -> Result<LogicalPlan> {
    let schema = batch.schema();
    let table: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, vec![vec![batch]])?);
    let bound = plan
        .clone()
        .transform_up(|node| {
            if let LogicalPlan::TableScan(scan) = &node {
                if kafka_of(scan).is_some() {
                    let replaced = TableScan::try_new(
                        scan.table_name.clone(),
                        provider_as_source(table.clone()),
                        scan.projection.clone(),
                        scan.filters.clone(),
                        scan.fetch,
                    )?;
                    return Ok(Transformed::yes(LogicalPlan::TableScan(replaced)));
                }
            }
            Ok(Transformed::no(node))
        })?
        .data;
    Ok(bound)
}
