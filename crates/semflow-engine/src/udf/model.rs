//! `embed_model([name])` → the embedding model's fingerprint, `<model id>@<weights digest>`,
//! so indexed rows can record which model produced their vectors; `name` picks a
//! `--model NAME=SPEC` (none or NULL: the default model).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::args::{expect_string, model_name, model_service, ModelsRef};
use super::model_work;
use crate::error::arg_err;
use crate::inference::Models;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EmbedModelUdf {
    models: ModelsRef,
    signature: Signature,
}

impl EmbedModelUdf {
    pub fn new(models: Arc<Models>) -> Self {
        Self {
            models: super::args::ByPtr(models),
            // The models cannot change within a session.
            signature: Signature::user_defined(Volatility::Stable),
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

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [] => Ok(vec![]),
            [t] => Ok(vec![expect_string("embed_model", 1, "model", t)?]),
            _ => arg_err!(
                "embed_model() takes 0 or 1 arguments ([model]), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = model_name("embed_model", 1, args.args.first())?;
        let inference = model_service(&self.models.0, "embed_model", name.as_deref())?;
        let id = model_work(async move {
            inference
                .embed_model_dir()
                .await
                .map(|d| format!("{}@{}", d.id, d.weights_digest))
        })?;
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(id))))
    }
}
