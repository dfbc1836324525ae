//! Vector search served by Lance. `… ORDER BY cosine_similarity(embedding, <constant>) DESC
//! LIMIT k` (or `inner_product … DESC`, `l2_distance … ASC`, and `hamming_distance … ASC` over
//! packed bits, `binary_quantize`'s `UInt8` vectors) over a Lance table reads only the k nearest
//! rows from Lance — approximate through a vector index when one was built (`CREATE INDEX …
//! USING ivf_pq`), exact (flat) otherwise. DataFusion still computes the function on those rows
//! and sorts them, so results and scores are the SQL's own.
//!
//! Lance reads the other projected columns for the k rows only, after the search: a rescoring
//! query (`WITH c AS (SELECT id, embedding … ORDER BY hamming_distance(bits, q) LIMIT k*r)
//! SELECT … ORDER BY cosine_similarity(embedding, …)`) reads k·r float vectors, not all.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider, TableType};
use datafusion::logical_expr::{
    Expr, FetchType, Limit, LogicalPlan, Projection, SkipType, Sort, TableProviderFilterPushDown,
    TableScan,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use lance_linalg::distance::MetricType;

use super::LanceTable;
use crate::udf::options::{SearchEffort, SemflowOptions};
use crate::udf::quantize::HammingUdf;
use crate::udf::vector::{check_same_model, VectorFn, VectorUdf};

/// The optimizer rule that routes top-k vector queries on Lance tables to Lance's search.
#[derive(Debug, Default)]
pub struct LanceKnnRule;

impl OptimizerRule for LanceKnnRule {
    fn name(&self) -> &str {
        "semflow_lance_knn"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let rewritten = match &plan {
            LogicalPlan::Sort(sort) if sort.fetch.is_some() => {
                let k = sort.fetch.unwrap_or_default();
                rewrite_sort(sort, k)?.map(LogicalPlan::Sort)
            }
            LogicalPlan::Limit(limit) => match (
                limit.get_skip_type()?,
                limit.get_fetch_type()?,
                limit.input.as_ref(),
            ) {
                (
                    SkipType::Literal(skip),
                    FetchType::Literal(Some(fetch)),
                    LogicalPlan::Sort(sort),
                ) if sort.fetch.is_none() => rewrite_sort(sort, skip + fetch)?.map(|s| {
                    LogicalPlan::Limit(Limit {
                        skip: limit.skip.clone(),
                        fetch: limit.fetch.clone(),
                        input: Arc::new(LogicalPlan::Sort(s)),
                    })
                }),
                _ => None,
            },
            _ => None,
        };
        Ok(match rewritten {
            Some(p) => Transformed::yes(p),
            None => Transformed::no(plan),
        })
    }
}

/// `sort` over `[Projection →] TableScan(Lance)` ordered by one vector function of a column
/// and a constant vector: the same sort over a k-nearest scan.
fn rewrite_sort(sort: &Sort, k: usize) -> Result<Option<Sort>> {
    let [order] = sort.expr.as_slice() else {
        return Ok(None);
    };
    let (projection, scan) = match sort.input.as_ref() {
        LogicalPlan::Projection(p) => match p.input.as_ref() {
            LogicalPlan::TableScan(s) => (Some(p), s),
            _ => return Ok(None),
        },
        LogicalPlan::TableScan(s) => (None, s),
        _ => return Ok(None),
    };
    // ORDER BY an alias resolves through the projection.
    let mut key = order.expr.clone().unalias();
    if let (Expr::Column(c), Some(p)) = (&key, projection) {
        if let Ok(i) = p.schema.index_of_column(c) {
            key = p.expr[i].clone().unalias();
        }
    }
    let Expr::ScalarFunction(f) = &key else {
        return Ok(None);
    };
    let Some(search) = Search::of(&f.func) else {
        return Ok(None);
    };
    if order.asc == search.descending {
        return Ok(None);
    }
    let (column, query, query_metadata) = match f.args.as_slice() {
        [Expr::Column(c), Expr::Literal(v, m)] | [Expr::Literal(v, m), Expr::Column(c)] => {
            (c.name.clone(), v.clone(), m.clone())
        }
        _ => return Ok(None),
    };
    let Some(query) = query_vector(&query, &search) else {
        return Ok(None);
    };
    let Ok(provider) = source_as_provider(&scan.source) else {
        return Ok(None);
    };
    let Some(table) = provider.downcast_ref::<LanceTable>() else {
        return Ok(None);
    };
    let schema = table.schema();
    let Ok(column_field) = schema.field_with_name(&column) else {
        return Ok(None);
    };
    if !search.fits(column_field) {
        return Ok(None);
    }
    check_query_model(
        search.function,
        column_field,
        query.data_type(),
        query_metadata.as_ref(),
    )?;
    let knn = Arc::new(KnnScan {
        table: table.clone(),
        column,
        query,
        k,
        metric: search.metric,
    });
    let new_scan = LogicalPlan::TableScan(TableScan::try_new(
        scan.table_name.clone(),
        provider_as_source(knn),
        scan.projection.clone(),
        scan.filters.clone(),
        scan.fetch,
    )?);
    let input = match projection {
        Some(p) => {
            LogicalPlan::Projection(Projection::try_new(p.expr.clone(), Arc::new(new_scan))?)
        }
        None => new_scan,
    };
    Ok(Some(Sort {
        expr: sort.expr.clone(),
        input: Arc::new(input),
        fetch: sort.fetch,
    }))
}

/// The search a sort key asks for: Lance's metric, and which way the key orders.
struct Search {
    function: &'static str,
    metric: MetricType,
    descending: bool,
}

impl Search {
    fn of(udf: &datafusion::logical_expr::ScalarUDF) -> Option<Self> {
        if let Some(udf) = udf.inner().downcast_ref::<VectorUdf>() {
            let (metric, descending) = match udf.kind() {
                VectorFn::Cosine => (MetricType::Cosine, true),
                VectorFn::Inner => (MetricType::Dot, true),
                VectorFn::L2 => (MetricType::L2, false),
            };
            return Some(Search {
                function: udf.kind().name(),
                metric,
                descending,
            });
        }
        udf.inner().downcast_ref::<HammingUdf>().map(|_| Search {
            function: "hamming_distance",
            metric: MetricType::Hamming,
            descending: false,
        })
    }

    /// Whether Lance can search `column` this way: a fixed-size vector of [`Self::compares`].
    fn fits(&self, column: &Field) -> bool {
        matches!(column.data_type(), DataType::FixedSizeList(item, _) if self.compares(item.data_type()))
    }

    /// The element type this metric compares in Lance: floats by the float metrics, packed
    /// `UInt8` bits by Hamming (other forms stay with DataFusion, which computes them all).
    fn compares(&self, element: &DataType) -> bool {
        match self.metric {
            MetricType::Hamming => *element == DataType::UInt8,
            _ => element.is_floating(),
        }
    }
}

/// Refuses a query vector of another model than `column`'s. The query was folded to a
/// constant by now; its literal's metadata still names its model.
fn check_query_model(
    function: &str,
    column: &Field,
    query_type: &DataType,
    metadata: Option<&datafusion::common::metadata::FieldMetadata>,
) -> Result<()> {
    let Some(metadata) = metadata else {
        return Ok(());
    };
    let query = metadata.add_to_field(Field::new("query", query_type.clone(), true));
    check_same_model(function, column, &query)
}

/// The values of a constant, non-null vector literal of the elements `search` compares.
fn query_vector(v: &ScalarValue, search: &Search) -> Option<ArrayRef> {
    let values = match v {
        ScalarValue::FixedSizeList(a) if !a.is_null(0) => a.value(0),
        ScalarValue::List(a) if !a.is_null(0) => a.value(0),
        _ => return None,
    };
    (values.null_count() == 0 && search.compares(values.data_type())).then_some(values)
}

/// A Lance table read through `nearest(column, query, k)`.
#[derive(Clone)]
struct KnnScan {
    table: LanceTable,
    column: String,
    query: ArrayRef,
    k: usize,
    metric: MetricType,
}

impl fmt::Debug for KnnScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LanceKnn({}, {}, k={}, {:?})",
            self.table.uri(),
            self.column,
            self.k,
            self.metric
        )
    }
}

#[async_trait]
impl TableProvider for KnnScan {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Lance applies them before the search (prefilter), exactly.
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.table.schema();
        let projected = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let Some(ds) = self
            .table
            .latest()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(Arc::new(EmptyExec::new(projected)));
        };
        let columns: Vec<String> = projected
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let options = state
            .config_options()
            .extensions
            .get::<SemflowOptions>()
            .cloned()
            .unwrap_or_default();
        let external = |e: crate::error::Error| DataFusionError::External(Box::new(e));
        let effort = SearchEffort::from_options(&options).map_err(external)?;
        let mut scanner = nearest(
            &ds,
            &self.column,
            self.query.as_ref(),
            self.k,
            self.metric,
            effort,
        )
        .map_err(external)?;
        scanner.project(&columns)?;
        if let Some(filter) = filters.iter().cloned().reduce(Expr::and) {
            scanner.filter_expr(filter);
        }
        Ok(scanner.create_plan().await?)
    }
}

/// Lance's top-k search for `query` over `column` as semflow runs it: through the vector
/// index when there is one (rows it does not cover yet are searched exactly), probing and
/// re-ranking quantized candidates by their exact vectors as `effort` says, filters applied
/// before the search.
pub fn nearest(
    ds: &lance::Dataset,
    column: &str,
    query: &dyn Array,
    k: usize,
    metric: MetricType,
    effort: SearchEffort,
) -> crate::error::Result<lance::dataset::scanner::Scanner> {
    let search = |e: lance::Error| crate::error::Error::Index(format!("{}: search: {e}", ds.uri()));
    let mut scanner = ds.scan();
    scanner.disable_scoring_autoprojection();
    scanner.nearest(column, query, k).map_err(search)?;
    scanner.distance_metric(metric);
    scanner.prefilter(true);
    scanner.search_effort(effort.effort).map_err(search)?;
    scanner.refine(effort.refine);
    Ok(scanner)
}
