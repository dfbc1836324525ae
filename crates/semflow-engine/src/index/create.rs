//! `CREATE INDEX [name] ON <lance table> USING ivf_pq|ivf_flat (column) [WITH (…)]`: builds
//! a Lance vector index, which top-k vector queries then use (see `knn`).
//! `USING inverted (column)` builds a BM25 full-text index on a text column, which
//! `full_text_search()` queries (see `fts`).
//!
//! WITH options: `num_partitions` (default √rows, 1..=256), `num_sub_vectors` (ivf_pq;
//! default dims/16 rounded to a divisor of dims), `metric` ('cosine' default, 'l2', 'dot').

use datafusion::execution::context::SessionContext;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CreateIndex, Expr as SqlExpr, IndexType as SqlIndexType, Value,
};
use lance::index::vector::VectorIndexParams;
use lance_linalg::distance::MetricType;

use super::LanceTable;
use crate::error::{Error, Result};

/// Runs a CREATE INDEX statement.
pub async fn create_index(ctx: &SessionContext, stmt: &CreateIndex) -> Result<()> {
    let table_name = stmt.table_name.to_string();
    let provider = ctx.table_provider(table_name.as_str()).await?;
    let table = provider.downcast_ref::<LanceTable>().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "CREATE INDEX: {table_name} is not a Lance table (STORED AS LANCE)"
        ))
    })?;
    let kind = match &stmt.using {
        Some(SqlIndexType::Custom(ident)) => ident.value.to_ascii_lowercase(),
        None => "ivf_pq".to_string(),
        Some(other) => other.to_string().to_ascii_lowercase(),
    };
    let [column] = stmt.columns.as_slice() else {
        return Err(invalid("index exactly one vector column"));
    };
    let column = column.column.expr.to_string();
    let name = stmt.name.as_ref().map(|n| n.to_string());
    if kind == "inverted" {
        if !stmt.with.is_empty() {
            return Err(invalid("USING inverted takes no WITH options"));
        }
        return table.create_text_index(&column, name).await;
    }
    let VectorOptions {
        num_partitions,
        num_sub_vectors,
        metric,
    } = vector_options(&stmt.with)?;
    let (rows, dims) = table.vector_shape(&column).await?;
    let num_partitions =
        num_partitions.unwrap_or_else(|| ((rows as f64).sqrt() as usize).clamp(1, 256));
    let params = match kind.as_str() {
        "ivf_pq" => {
            if rows < PQ_TRAINING_ROWS {
                return Err(invalid(&format!(
                    "USING ivf_pq on {rows} rows: product quantization trains {PQ_TRAINING_ROWS} centroids per sub-vector and needs at least {PQ_TRAINING_ROWS} rows; load more rows first, or use ivf_flat (or no index: queries then search exactly)"
                )));
            }
            let sub = num_sub_vectors.unwrap_or_else(|| default_sub_vectors(dims));
            if !dims.is_multiple_of(sub) {
                return Err(invalid(&format!(
                    "num_sub_vectors = {sub} must divide the vector length {dims}"
                )));
            }
            VectorIndexParams::ivf_pq(num_partitions, 8, sub, metric, 50)
        }
        "ivf_flat" => VectorIndexParams::ivf_flat(num_partitions, metric),
        other => {
            return Err(invalid(&format!(
                "USING {other}: supported index types are ivf_pq, ivf_flat and inverted"
            )))
        }
    };
    table.create_vector_index(&column, name, &params).await
}

/// Rows IVF_PQ needs to train its codebooks (8-bit codes: 256 centroids per sub-vector).
const PQ_TRAINING_ROWS: usize = 256;

/// A vector index's WITH options.
struct VectorOptions {
    num_partitions: Option<usize>,
    num_sub_vectors: Option<usize>,
    metric: MetricType,
}

/// Parses `WITH (num_partitions = …, num_sub_vectors = …, metric = '…')`.
fn vector_options(with: &[SqlExpr]) -> Result<VectorOptions> {
    let mut o = VectorOptions {
        num_partitions: None,
        num_sub_vectors: None,
        metric: MetricType::Cosine,
    };
    for option in with {
        let SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = option
        else {
            return Err(invalid(&format!(
                "WITH option {option}: expected name = value"
            )));
        };
        let name = left.to_string().to_ascii_lowercase();
        let value = match right.as_ref() {
            SqlExpr::Value(v) => match &v.value {
                Value::Number(n, _) => n.clone(),
                Value::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        };
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    invalid(&format!(
                        "WITH {name} = {value}: expected a positive integer"
                    ))
                })
        };
        match name.as_str() {
            "num_partitions" => o.num_partitions = Some(number()?),
            "num_sub_vectors" => o.num_sub_vectors = Some(number()?),
            "metric" => {
                o.metric = match value.to_ascii_lowercase().as_str() {
                    "cosine" => MetricType::Cosine,
                    "l2" => MetricType::L2,
                    "dot" => MetricType::Dot,
                    v => {
                        return Err(invalid(&format!(
                            "WITH metric = '{v}': expected cosine, l2 or dot"
                        )))
                    }
                }
            }
            other => {
                return Err(invalid(&format!(
                    "unknown WITH option {other} (known: num_partitions, num_sub_vectors, metric)"
                )))
            }
        }
    }
    Ok(o)
}

/// dims/16 (at least 1), lowered to a divisor of `dims`.
fn default_sub_vectors(dims: usize) -> usize {
    let mut sub = (dims / 16).max(1);
    while !dims.is_multiple_of(sub) {
        sub -= 1;
    }
    sub
}

fn invalid(message: &str) -> Error {
    Error::InvalidArgument(format!("CREATE INDEX: {message}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sub_vectors_divide_dims() {
        assert_eq!(super::default_sub_vectors(1024), 64);
        assert_eq!(super::default_sub_vectors(64), 4);
        assert_eq!(super::default_sub_vectors(100), 5);
        assert_eq!(super::default_sub_vectors(8), 1);
    }
}
