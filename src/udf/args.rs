//! Argument helpers shared by the inference functions: type checks that name the function and
//! argument, and row-wise access to string arguments whether they are columns or constants.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

use super::options::SemflowOptions;
use crate::inference::CallOptions;

/// The inference service as a UDF field: UDFs must be `Eq + Hash`, and two functions are the
/// same exactly when they call the same service.
#[derive(Debug, Clone)]
pub struct InferenceRef(pub std::sync::Arc<crate::inference::Inference>);

impl PartialEq for InferenceRef {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for InferenceRef {}
impl std::hash::Hash for InferenceRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (std::sync::Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

/// Is `t` acceptable where a string is expected (NULL literals included)?
pub fn is_string(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

/// Checks a string argument, naming function and argument in the error.
pub fn expect_string(
    function: &str,
    position: usize,
    name: &str,
    t: &DataType,
) -> Result<DataType> {
    if is_string(t) {
        Ok(DataType::Utf8)
    } else {
        plan_err!("{function}(): argument {position} ({name}) must be a string, got {t}")
    }
}

/// A string argument as one value per row (constants are not copied).
pub enum StringArg {
    Scalar(Option<String>),
    Array(ArrayRef),
}

impl StringArg {
    pub fn new(value: &ColumnarValue) -> Result<Self> {
        Ok(match value {
            ColumnarValue::Scalar(s) => StringArg::Scalar(scalar_string(s)?),
            ColumnarValue::Array(a) => StringArg::Array(a.clone()),
        })
    }

    /// The value at `row` (NULL as `None`).
    pub fn get(&self, row: usize) -> Option<&str> {
        match self {
            StringArg::Scalar(s) => s.as_deref(),
            StringArg::Array(a) => {
                if a.is_null(row) {
                    return None;
                }
                match a.data_type() {
                    DataType::Utf8 => Some(a.as_string::<i32>().value(row)),
                    DataType::LargeUtf8 => Some(a.as_string::<i64>().value(row)),
                    DataType::Utf8View => Some(a.as_string_view().value(row)),
                    _ => None,
                }
            }
        }
    }
}

fn scalar_string(s: &ScalarValue) -> Result<Option<String>> {
    match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
            Ok(v.clone())
        }
        ScalarValue::Null => Ok(None),
        other => datafusion::common::exec_err!("expected a string, got {}", other.data_type()),
    }
}

/// The session's `semflow.*` settings as inference call options.
pub fn call_options(config: &datafusion::config::ConfigOptions) -> Result<CallOptions> {
    let opts = config
        .extensions
        .get::<SemflowOptions>()
        .cloned()
        .unwrap_or_default();
    let truncation = opts.truncate.parse().map_err(|e: crate::error::Error| {
        datafusion::error::DataFusionError::Plan(e.to_string())
    })?;
    Ok(CallOptions {
        truncation,
        use_cache: opts.cache,
    })
}
