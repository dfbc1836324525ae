//! Retrieval evaluation in SQL: `ir_measures(run, qrels, measures [, options])` (here),
//! evaluation sets read in place ([`beir`]) and deterministic evaluation/training splits
//! ([`holdout`]).
//!
//! `run` and `qrels` are each a table name or a query (anything with a space in it is taken as
//! a query). The run has columns `query_id`, `doc_id`, `score`; the qrels `query_id`, `doc_id`,
//! `relevance` (an integer grade); ids of any type are compared as text, as trec_eval compares
//! them. `measures` lists `ndcg@k`, `map@k`, `mrr@k`, `recall@k`, `precision@k` (`P@k`),
//! without `@k` for the whole ranking (not precision). `options` holds `judged_only` and
//! `relevance_level=N`. The result has one row per evaluated query and measure:
//! `(query_id, measure, value)`, so trec_eval's mean is
//! `SELECT measure, avg(value) FROM ir_measures(…) GROUP BY measure`.
//!
//! The measures themselves, and the conventions they follow, are in [`measures`].

pub mod beir;
pub mod holdout;
pub mod measures;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int64Type, Schema, SchemaRef,
};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::execution::context::SessionContext;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{cast, col, Expr};
use datafusion::physical_plan::ExecutionPlan;

use self::measures::{evaluate, parse_measures, Measure, MeasureError, Options, Qrels, Run};
use super::args::table_string_arg;
use crate::error::{arg_err, Error};

const NAME: &str = "ir_measures";

/// The `ir_measures` table function.
#[derive(Debug, Default)]
pub struct IrMeasuresFunction;

impl TableFunctionImpl for IrMeasuresFunction {
    fn call(&self, exprs: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if !(3..=4).contains(&exprs.len()) {
            return arg_err!(
                "{NAME}(run, qrels, measures [, options]) takes 3 or 4 arguments, got {}",
                exprs.len()
            );
        }
        let run = table_string_arg(NAME, exprs, 0, "run")?;
        let qrels = table_string_arg(NAME, exprs, 1, "qrels")?;
        let measures = parse_measures(&table_string_arg(NAME, exprs, 2, "measures")?)
            .map_err(|e| Error::sql_argument(format!("{NAME}(): {e}")))?;
        if measures.is_empty() {
            return arg_err!("{NAME}(): argument 3 (measures) names no measure");
        }
        let options = match exprs.get(3) {
            Some(_) => parse_options(&table_string_arg(NAME, exprs, 3, "options")?)?,
            None => Options::default(),
        };
        Ok(Arc::new(IrMeasures {
            run: Source::new(run),
            qrels: Source::new(qrels),
            measures,
            options,
            schema: Arc::new(Schema::new(vec![
                Field::new("query_id", DataType::Utf8, false),
                Field::new("measure", DataType::Utf8, false),
                Field::new("value", DataType::Float64, false),
            ])),
        }))
    }
}

/// `judged_only` and `relevance_level=N`, separated by commas or spaces.
fn parse_options(text: &str) -> Result<Options> {
    let mut options = Options::default();
    for item in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        match item.split_once('=') {
            None if item.eq_ignore_ascii_case("judged_only") => options.judged_only = true,
            Some((key, value)) if key.trim().eq_ignore_ascii_case("relevance_level") => {
                options.relevance_level = match value.trim().parse() {
                    Ok(level) => level,
                    Err(_) => {
                        return arg_err!(
                            "{NAME}(): relevance_level must be an integer grade, got {value:?}"
                        )
                    }
                }
            }
            _ => {
                return arg_err!(
                    "{NAME}(): unknown option {item:?} (options: judged_only, relevance_level=N)"
                )
            }
        }
    }
    Ok(options)
}

/// Where a run or qrels comes from: a table, or a query.
#[derive(Debug)]
enum Source {
    Table(String),
    Query(String),
}

impl Source {
    fn new(text: String) -> Self {
        if text.trim().contains(char::is_whitespace) {
            Source::Query(text)
        } else {
            Source::Table(text.trim().to_string())
        }
    }

    /// The source's rows with `columns` cast to the given types, checked to exist first so a
    /// missing column is named with what the function expects.
    async fn read(
        &self,
        ctx: &SessionContext,
        role: &str,
        columns: [(&str, DataType); 3],
    ) -> Result<Vec<RecordBatch>> {
        let frame = match self {
            Source::Table(name) => ctx.table(name.as_str()).await?,
            Source::Query(sql) => ctx.sql(sql).await?,
        };
        let expected = columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ");
        let mut exprs = Vec::with_capacity(columns.len());
        for (name, to) in columns {
            let field = frame.schema().field_with_unqualified_name(name).map_err(|_| {
                Error::sql_argument(format!(
                    "{NAME}(): {role} has no column {name} (expected {expected}; rename yours with AS)"
                ))
            })?;
            if to == DataType::Int64 && !field.data_type().is_integer() {
                return arg_err!(
                    "{NAME}(): {role}.{name} must be an integer grade, got {}",
                    field.data_type()
                );
            }
            exprs.push(cast(col(name), to).alias(name));
        }
        frame.select(exprs)?.collect().await
    }
}

/// One evaluation: the run and qrels are read when it is scanned.
#[derive(Debug)]
struct IrMeasures {
    run: Source,
    qrels: Source,
    measures: Vec<Measure>,
    options: Options,
    schema: SchemaRef,
}

impl IrMeasures {
    async fn read_run(&self, ctx: &SessionContext) -> Result<Run> {
        let mut run = Run::default();
        let columns = [
            ("query_id", DataType::Utf8),
            ("doc_id", DataType::Utf8),
            ("score", DataType::Float64),
        ];
        read_rows::<Float64Type>(&self.run, ctx, "run", columns, |q, d, score| {
            run.insert(q, d, score)
        })
        .await?;
        Ok(run)
    }

    async fn read_qrels(&self, ctx: &SessionContext) -> Result<Qrels> {
        let mut qrels = Qrels::default();
        let columns = [
            ("query_id", DataType::Utf8),
            ("doc_id", DataType::Utf8),
            ("relevance", DataType::Int64),
        ];
        read_rows::<Int64Type>(&self.qrels, ctx, "qrels", columns, |q, d, grade| {
            qrels.insert(q, d, grade)
        })
        .await?;
        Ok(qrels)
    }

    fn to_batch(&self, run: &Run, qrels: &Qrels) -> Result<RecordBatch> {
        let scores = evaluate(run, qrels, &self.measures, self.options);
        let rows = scores.len() * self.measures.len();
        let names: Vec<String> = self.measures.iter().map(ToString::to_string).collect();
        let mut query_ids = StringBuilder::with_capacity(rows, rows * 8);
        let mut measure = StringBuilder::with_capacity(rows, rows * 8);
        let mut value = Float64Builder::with_capacity(rows);
        for (query, values) in &scores {
            for (name, v) in names.iter().zip(values) {
                query_ids.append_value(query);
                measure.append_value(name);
                value.append_value(*v);
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(query_ids.finish()),
            Arc::new(measure.finish()),
            Arc::new(value.finish()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// Reads `source`'s (query id, document id, value) rows into `insert`, refusing NULLs and
/// what `insert` refuses with the row's number.
async fn read_rows<T: ArrowPrimitiveType>(
    source: &Source,
    ctx: &SessionContext,
    role: &str,
    columns: [(&str, DataType); 3],
    mut insert: impl FnMut(&str, &str, T::Native) -> std::result::Result<(), MeasureError>,
) -> Result<()> {
    let names = columns.clone().map(|(name, _)| name);
    let batches = source.read(ctx, role, columns).await?;
    let mut row = 0;
    for batch in &batches {
        let (queries, docs) = (
            batch.column(0).as_string::<i32>(),
            batch.column(1).as_string::<i32>(),
        );
        let values = batch.column(2).as_primitive::<T>();
        for i in 0..batch.num_rows() {
            row += 1;
            no_nulls(role, row, batch.columns(), i, names)?;
            insert(queries.value(i), docs.value(i), values.value(i))
                .map_err(|e| Error::sql_argument(format!("{NAME}(): {e}")))?;
        }
    }
    Ok(())
}

/// A session to run a table function's own queries in: the one planning it.
pub(super) fn session_of(state: &dyn Session, function: &str) -> Result<SessionContext> {
    let state = state
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| DataFusionError::Plan(format!("{function}(): no session to read from")))?;
    Ok(SessionContext::new_with_state(state.clone()))
}

/// A NULL id, score or grade is an error naming the row (1-based, in the order read).
fn no_nulls(
    role: &str,
    row: usize,
    columns: &[ArrayRef],
    i: usize,
    names: [&str; 3],
) -> Result<()> {
    match columns.iter().zip(names).find(|(c, _)| c.is_null(i)) {
        Some((_, name)) => arg_err!("{NAME}(): {role} row {row} has a NULL {name}"),
        None => Ok(()),
    }
}

#[async_trait]
impl TableProvider for IrMeasures {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let ctx = session_of(state, NAME)?;
        let run = self.read_run(&ctx).await?;
        let qrels = self.read_qrels(&ctx).await?;
        let batch = self.to_batch(&run, &qrels)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
