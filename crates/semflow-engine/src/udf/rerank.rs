//! `rerank(query, document [, instruction [, model]])` → `Float32` P(yes) from Qwen3-Reranker;
//! `model` names a `--model NAME=SPEC` (NULL: the default reranker).

use std::sync::Arc;

use arrow::array::Float32Array;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use super::args::{
    call_options, expect_string, model_name, model_name_at_plan, model_service, named_signature,
    ModelsRef, StringArg,
};
use super::model_work;
use crate::error::arg_err;
use crate::inference::{Models, RerankInput};

/// The `rerank` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RerankUdf {
    models: ModelsRef,
    signature: Signature,
}

/// `rerank`'s parameters, for named arguments.
const PARAMETERS: [&str; 4] = ["query", "document", "instruction", "model"];

impl RerankUdf {
    pub fn new(models: Arc<Models>) -> Self {
        Self {
            models: super::args::ByPtr(models),
            signature: named_signature(&PARAMETERS),
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
        if arg_types.len() < 2 || arg_types.len() > 4 {
            return arg_err!(
                "rerank() takes 2 to 4 arguments (query, document [, instruction [, model]]), got {}",
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .zip(PARAMETERS)
            .enumerate()
            .map(|(i, (t, name))| expect_string("rerank", i + 1, name, t))
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float32)
    }

    /// Checks the model's name while planning, so a typo fails before any row is read.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let model = model_name_at_plan("rerank", 4, args.scalar_arguments.get(3))?;
        model_service(&self.models.0, "rerank", model.as_deref())?;
        Ok(Arc::new(Field::new(self.name(), DataType::Float32, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let opts = call_options(&args.config_options)?;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let inference = model_service(
            &self.models.0,
            "rerank",
            model_name("rerank", 4, args.args.get(3))?.as_deref(),
        )?;
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
            let rows_for_errors = row_ids.clone();
            model_work(async move { inference.rerank(inputs, rows_for_errors, opts).await })?
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
