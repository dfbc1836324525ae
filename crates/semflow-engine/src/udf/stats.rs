//! `semflow_stats()`: the inference counters (cache hits/misses, inputs, tokens) as a table.

use std::sync::Arc;

use arrow::array::{StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;

use super::model_work;
use crate::error::arg_err;
use crate::inference::Inference;

/// Table function returning one row per counter.
#[derive(Debug)]
pub struct StatsFunction {
    inference: Arc<Inference>,
}

impl StatsFunction {
    pub fn new(inference: Arc<Inference>) -> Self {
        Self { inference }
    }
}

impl TableFunctionImpl for StatsFunction {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if !args.is_empty() {
            return arg_err!("semflow_stats() takes no arguments");
        }
        let rows = self.inference.stats_rows();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// `embed_prompts()`: the embedding model's named prompts, one row each (`name`, `prompt`);
/// `embed(text, name)` prepends `prompt` to `text`.
#[derive(Debug)]
pub struct PromptsFunction {
    inference: Arc<Inference>,
}

impl PromptsFunction {
    pub fn new(inference: Arc<Inference>) -> Self {
        Self { inference }
    }
}

impl TableFunctionImpl for PromptsFunction {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if !args.is_empty() {
            return arg_err!("embed_prompts() takes no arguments");
        }
        let inference = self.inference.clone();
        let rows = model_work(async move { inference.embed_prompts().await })?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("prompt", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
            ],
        )?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}
