//! `rerank(query, document [, instruction])` → `Float32` P(yes) from Qwen3-Reranker.

use std::sync::Arc;

use arrow::array::Float32Array;
use arrow::datatypes::DataType;
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::args::{call_options, expect_string, InferenceRef, StringArg};
use crate::inference::{block_on, Inference, RerankInput};

/// The `rerank` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RerankUdf {
    inference: InferenceRef,
    signature: Signature,
}

impl RerankUdf {
    pub fn new(inference: Arc<Inference>) -> Self {
        Self {
            inference: InferenceRef(inference),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for RerankUdf {
    fn name(&self) -> &str {
        "rerank"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() < 2 || arg_types.len() > 3 {
            return plan_err!(
                "rerank() takes 2 or 3 arguments (query, document [, instruction]), got {}",
                arg_types.len()
            );
        }
        let names = ["query", "document", "instruction"];
        arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| expect_string("rerank", i + 1, names[i], t))
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let opts = call_options(&args.config_options)?;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let query = StringArg::new(&args.args[0])?;
        let document = StringArg::new(&args.args[1])?;
        let instruction = match args.args.get(2) {
            Some(v) => StringArg::new(v)?,
            None => StringArg::Scalar(None),
        };
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut inputs = Vec::new();
        let mut row_ids = Vec::new();
        for row in 0..rows {
            if let (Some(q), Some(d)) = (query.get(row), document.get(row)) {
                inputs.push(RerankInput {
                    query: q.to_string(),
                    document: d.to_string(),
                    instruction: instruction
                        .get(row)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                });
                row_ids.push(row);
            }
        }
        let scores = if inputs.is_empty() {
            Vec::new()
        } else {
            let inference = self.inference.0.clone();
            let rows_for_errors = row_ids.clone();
            block_on(async move { inference.rerank(inputs, rows_for_errors, opts).await })??
        };
        let mut out: Vec<Option<f32>> = vec![None; rows];
        for (row, s) in row_ids.into_iter().zip(scores) {
            out[row] = Some(s);
        }
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::Float32(out[0])))
        } else {
            Ok(ColumnarValue::Array(Arc::new(Float32Array::from(out))))
        }
    }
}
