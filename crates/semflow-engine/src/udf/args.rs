//! Argument helpers shared by the inference functions: type checks that name the function and
//! argument, and row-wise access to string arguments whether they are columns or constants.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

use super::options::SemflowOptions;
use crate::error::{arg_err, Error};
use crate::inference::CallOptions;

/// A shared service as a UDF field: UDFs must be `Eq + Hash`, and two functions are the same
/// exactly when they call the same service.
#[derive(Debug)]
pub struct ByPtr<T>(pub std::sync::Arc<T>);

/// The inference service of one model.
pub type InferenceRef = ByPtr<crate::inference::Inference>;
/// The engine's models, default and named.
pub type ModelsRef = ByPtr<crate::inference::Models>;

impl<T> Clone for ByPtr<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}
impl<T> PartialEq for ByPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T> Eq for ByPtr<T> {}
impl<T> std::hash::Hash for ByPtr<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (std::sync::Arc::as_ptr(&self.0) as *const () as usize).hash(state);
    }
}

/// A variadic signature whose arguments can also be passed by name (`model => 'v2'`).
pub fn named_signature(parameters: &[&str]) -> datafusion::logical_expr::Signature {
    use datafusion::logical_expr::{Signature, Volatility};
    Signature::user_defined(Volatility::Immutable)
        .with_parameter_names(parameters.to_vec())
        // Only fixed-arity signatures can refuse names; a user-defined one takes any.
        .unwrap_or_else(|_| Signature::user_defined(Volatility::Immutable))
}

/// The model a call names in its argument at `position` (1-based): a string constant, or
/// NULL / absent for the default. Read at plan time, when the result type depends on it.
pub fn model_name_at_plan(
    function: &str,
    position: usize,
    argument: Option<&Option<&ScalarValue>>,
) -> Result<Option<String>> {
    match argument {
        None => Ok(None),
        Some(Some(v)) => scalar_string(v).map_err(|_| {
            Error::sql_argument(format!(
                "{function}(): argument {position} (model) must be a model name, got {}",
                v.data_type()
            ))
        }),
        Some(None) => {
            arg_err!("{function}(): argument {position} (model) must be a constant, not a column")
        }
    }
}

/// The model a call names in its argument at `position` (1-based), at execution.
pub fn model_name(
    function: &str,
    position: usize,
    argument: Option<&ColumnarValue>,
) -> Result<Option<String>> {
    match argument {
        None => Ok(None),
        Some(ColumnarValue::Scalar(s)) => scalar_string(s),
        Some(ColumnarValue::Array(_)) => {
            arg_err!("{function}(): argument {position} (model) must be a constant, not a column")
        }
    }
}

/// The service for `name` on `models`, as a DataFusion error naming the function.
pub fn model_service(
    models: &crate::inference::Models,
    function: &str,
    name: Option<&str>,
) -> Result<std::sync::Arc<crate::inference::Inference>> {
    models
        .get(name)
        .cloned()
        .map_err(|e| Error::sql_argument(format!("{function}(): {e}")))
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
    if *t == DataType::Null {
        // Kept untyped: a cast would hide the constant from planning (`embed_model(NULL)`).
        Ok(DataType::Null)
    } else if is_string(t) {
        Ok(DataType::Utf8)
    } else {
        arg_err!("{function}(): argument {position} ({name}) must be a string, got {t}")
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
        other => arg_err!("expected a string, got {}", other.data_type()),
    }
}

/// The session's `semflow.*` settings as inference call options.
pub fn call_options(config: &datafusion::config::ConfigOptions) -> Result<CallOptions> {
    let opts = config
        .extensions
        .get::<SemflowOptions>()
        .cloned()
        .unwrap_or_default();
    let truncation = opts
        .truncate
        .parse()
        .map_err(|e: semflow_inference::Error| Error::sql_argument(e.to_string()))?;
    Ok(CallOptions {
        truncation,
        use_cache: opts.cache,
    })
}

/// Argument `i` (0-based) of table function `function`, which must be a string constant.
pub(crate) fn table_string_arg(
    function: &str,
    exprs: &[datafusion::logical_expr::Expr],
    i: usize,
    name: &str,
) -> Result<String> {
    match &exprs[i] {
        datafusion::logical_expr::Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Ok(s.clone()),
        other => arg_err!(
            "{function}(): argument {} ({name}) must be a string constant, got {other}",
            i + 1
        ),
    }
}
