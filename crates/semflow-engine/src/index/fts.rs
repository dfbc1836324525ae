//! `full_text_search(table, column, query [, k])`: BM25 keyword search over a Lance table's
//! text column, as a table of the table's columns plus `_score` (Float32, higher is better),
//! best first, at most `k` rows (default 10).
//!
//! Served by the column's inverted index (`CREATE INDEX … USING inverted (column)`); rows
//! written after the index was built are searched exhaustively and merged, so fresh rows are
//! found too. With [`crate::udf`]'s `embed()` and a window function this makes hybrid search
//! (reciprocal-rank fusion of keyword and vector rankings) plain SQL: see README.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use lance_index::scalar::FullTextSearchQuery;

use super::LanceTable;
use crate::error::{arg_err, Error};
use crate::udf::args::table_string_arg;

/// The score column Lance's full-text search adds.
const SCORE: &str = "_score";
const DEFAULT_K: usize = 10;

/// The `full_text_search` table function.
#[derive(Debug, Default)]
pub struct FullTextSearchFunction;

impl TableFunctionImpl for FullTextSearchFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if !(3..=4).contains(&exprs.len()) {
            return arg_err!(
                "full_text_search(table, column, query [, k]) takes 3 or 4 arguments, got {}",
                exprs.len()
            );
        }
        let table_name = table_string_arg("full_text_search", exprs, 0, "table")?;
        let column = table_string_arg("full_text_search", exprs, 1, "column")?;
        let query = table_string_arg("full_text_search", exprs, 2, "query")?;
        let k = match exprs.get(3) {
            None => DEFAULT_K,
            Some(Expr::Literal(v, _)) => match v.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(k))) if k > 0 => k as usize,
                _ => {
                    return arg_err!(
                        "full_text_search(): argument 4 (k) must be a positive integer, got {v}"
                    )
                }
            },
            Some(other) => {
                return arg_err!(
                    "full_text_search(): argument 4 (k) must be a constant, got {other}"
                )
            }
        };
        let table = lance_table(args.session(), &table_name)?;
        let schema = table.schema();
        match schema
            .field_with_name(&column)
            .map(|f| f.data_type().clone())
        {
            Ok(DataType::Utf8 | DataType::LargeUtf8) => {}
            Ok(t) => {
                return arg_err!(
                    "full_text_search(): column {column} of {table_name} is {t}, not text"
                )
            }
            Err(_) => return arg_err!("full_text_search(): {table_name} has no column {column}"),
        }
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(SCORE, DataType::Float32, true));
        Ok(Arc::new(FullTextSearch {
            table,
            column,
            query,
            k,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

/// The Lance table registered as `name` in the session.
fn lance_table(session: &dyn Session, name: &str) -> Result<LanceTable> {
    let state = session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| DataFusionError::Plan("full_text_search(): no session catalog".into()))?;
    let schema = state.schema_for_ref(name)?;
    let table_ref = datafusion::common::TableReference::from(name);
    // Catalog lookups of registered tables complete at once; nothing here waits on I/O.
    let provider = futures::executor::block_on(schema.table(table_ref.table()))?
        .ok_or_else(|| Error::sql_argument(format!("full_text_search(): no table {name}")))?;
    provider
        .downcast_ref::<LanceTable>()
        .cloned()
        .ok_or_else(|| {
            Error::sql_argument(format!(
                "full_text_search(): {name} is not a Lance table (STORED AS LANCE)"
            ))
        })
}

/// One full-text query over one table.
#[derive(Debug)]
struct FullTextSearch {
    table: LanceTable,
    column: String,
    query: String,
    k: usize,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for FullTextSearch {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let out_schema = Arc::new(self.schema.project(&wanted)?);
        let Some(ds) = self
            .table
            .latest()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(Arc::new(EmptyExec::new(out_schema)));
        };
        let k = limit.map_or(self.k, |l| l.min(self.k));
        let query = FullTextSearchQuery::new(self.query.clone())
            .with_column(self.column.clone())
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .limit(Some(k as i64));
        let mut scan = ds.scan();
        scan.full_text_search(query)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // `_score` asked for by name: Lance's implicit one WARNs on every search.
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        scan.disable_scoring_autoprojection();
        scan.project(&columns)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let plan = scan
            .create_plan()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // Lance decides where `_score` goes; select the projection by name.
        let plan_schema = plan.schema();
        let exprs = wanted
            .iter()
            .map(|&i| {
                let name = self.schema.field(i).name();
                let index = plan_schema.index_of(name)?;
                Ok((
                    Arc::new(Column::new(name, index)) as Arc<dyn PhysicalExpr>,
                    name.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}
