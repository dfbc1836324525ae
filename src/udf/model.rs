//! `embed_model()` → the embedding model's fingerprint, `<model id>@<weights digest>`, so
//! indexed rows can record which model produced their vectors.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::args::InferenceRef;
use crate::inference::{block_on, Inference};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EmbedModelUdf {
    inference: InferenceRef,
    signature: Signature,
}

impl EmbedModelUdf {
    pub fn new(inference: Arc<Inference>) -> Self {
        Self {
            inference: InferenceRef(inference),
            // The model cannot change within a session.
            signature: Signature::exact(vec![], Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for EmbedModelUdf {
    fn name(&self) -> &str {
        "embed_model"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if !arg_types.is_empty() {
            return plan_err!("embed_model() takes no arguments");
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let inference = self.inference.0.clone();
        let id = block_on(async move {
            inference
                .embed_model_dir()
                .await
                .map(|d| format!("{}@{}", d.id, d.weights_digest))
        })??;
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(id))))
    }
}
