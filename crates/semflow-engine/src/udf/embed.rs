//! `embed(text [, instruction [, dims [, model]]])` → `FixedSizeList<Float32, dims>`,
//! L2-normalised. `model` names a `--model NAME=SPEC` (NULL: the default model); NULL `dims`
//! keeps the model's full dimension. Named arguments work after the positional ones:
//! `embed(body, '', 256, model => 'v2')`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use super::args::{
    call_options, expect_string, model_name, model_name_at_plan, model_service, ModelsRef,
    StringArg,
};
use super::model_work;
use crate::error::arg_err;
use crate::inference::{truncate_dims, EmbedInput, Models};

/// The `embed` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EmbedUdf {
    models: ModelsRef,
    signature: Signature,
}

/// `embed`'s parameters, for named arguments.
const PARAMETERS: [&str; 4] = ["text", "instruction", "dims", "model"];

impl EmbedUdf {
    pub fn new(models: Arc<Models>) -> Self {
        Self {
            models: super::args::ByPtr(models),
            signature: super::args::named_signature(&PARAMETERS),
        }
    }
}

/// Field metadata of `embed()`'s vectors: which model (id and weights digest) made them and how
/// many of its components they keep. Lance columns keep them (the index knows its model).
pub const MODEL_KEY: &str = "semflow.model";
pub const WEIGHTS_KEY: &str = "semflow.weights";
pub const DIMS_KEY: &str = "semflow.dims";

/// The model that made a vector column, `<model id>@<weights digest>` (as `embed_model()`
/// says), when its field metadata records one.
pub fn vector_model(field: &Field) -> Option<String> {
    let md = field.metadata();
    Some(format!("{}@{}", md.get(MODEL_KEY)?, md.get(WEIGHTS_KEY)?))
}

/// `len` rows of `dims`-component vectors: `vectors[i]` (its first `dims` components,
/// re-normalised when fewer than all) at row `rows[i]`, NULL elsewhere.
pub fn vector_array(
    len: usize,
    dims: usize,
    rows: &[usize],
    vectors: &[Arc<[f32]>],
) -> crate::error::Result<FixedSizeListArray> {
    let mut values = vec![0.0f32; len * dims];
    let mut valid = vec![false; len];
    for (&row, v) in rows.iter().zip(vectors) {
        if v.len() < dims {
            return Err(semflow_inference::Error::Inference(format!(
                "the model returned {} components, need {dims}",
                v.len()
            ))
            .into());
        }
        let slot = &mut values[row * dims..(row + 1) * dims];
        if dims == v.len() {
            slot.copy_from_slice(v);
        } else {
            slot.copy_from_slice(&truncate_dims(v, dims));
        }
        valid[row] = true;
    }
    let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
    Ok(FixedSizeListArray::try_new(
        vector_item_field(),
        dims as i32,
        Arc::new(Float32Array::from(values)) as ArrayRef,
        nulls,
    )?)
}

/// The element field of semflow's vectors.
pub fn vector_item_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Float32, true))
}

/// The type `embed` returns for `dims` components.
pub fn vector_type(dims: usize) -> DataType {
    DataType::FixedSizeList(vector_item_field(), dims as i32)
}

struct ModelInfo {
    id: String,
    digest: String,
    hidden: usize,
}

impl EmbedUdf {
    fn model_info(&self, model: Option<&str>) -> Result<ModelInfo> {
        let inference = model_service(&self.models.0, "embed", model)?;
        let info = model_work(async move {
            inference.embed_model_dir().await.map(|d| ModelInfo {
                id: d.id.clone(),
                digest: d.weights_digest.clone(),
                hidden: d.config.hidden_size,
            })
        })?;
        Ok(info)
    }
}

impl ScalarUDFImpl for EmbedUdf {
    fn name(&self) -> &str {
        "embed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.is_empty() || arg_types.len() > 4 {
            return arg_err!(
                "embed() takes 1 to 4 arguments (text [, instruction [, dims [, model]]]), got {}",
                arg_types.len()
            );
        }
        let mut out = vec![expect_string("embed", 1, "text", &arg_types[0])?];
        if let Some(t) = arg_types.get(1) {
            out.push(expect_string("embed", 2, "instruction", t)?);
        }
        if let Some(t) = arg_types.get(2) {
            if *t == DataType::Null {
                out.push(DataType::Null);
            } else if t.is_integer() {
                out.push(DataType::Int64);
            } else {
                return arg_err!("embed(): argument 3 (dims) must be an integer, got {t}");
            }
        }
        if let Some(t) = arg_types.get(3) {
            out.push(expect_string("embed", 4, "model", t)?);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        // Only reachable through return_field_from_args, which knows `dims`.
        plan_err!("embed(): return type depends on arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let model = model_name_at_plan("embed", 4, args.scalar_arguments.get(3))?;
        let info = self.model_info(model.as_deref())?;
        let dims = match args.scalar_arguments.get(2) {
            None | Some(Some(ScalarValue::Int64(None))) | Some(Some(ScalarValue::Null)) => {
                info.hidden
            }
            Some(Some(v)) => match v {
                ScalarValue::Int8(Some(_))
                | ScalarValue::Int16(Some(_))
                | ScalarValue::Int32(Some(_))
                | ScalarValue::Int64(Some(_))
                | ScalarValue::UInt8(Some(_))
                | ScalarValue::UInt16(Some(_))
                | ScalarValue::UInt32(Some(_))
                | ScalarValue::UInt64(Some(_)) => {
                    let d = v.cast_to(&DataType::Int64)?;
                    let ScalarValue::Int64(Some(d)) = d else {
                        return arg_err!("embed(): argument 3 (dims) must be an integer");
                    };
                    if d < 1 || d as usize > info.hidden {
                        return arg_err!(
                            "embed(): argument 3 (dims) must be between 1 and {} (the model's dimension), got {d}",
                            info.hidden
                        );
                    }
                    d as usize
                }
                other => {
                    return arg_err!(
                    "embed(): argument 3 (dims) must be an integer constant (NULL: the model's dimension), got {other}"
                )
                }
            },
            Some(None) => {
                return arg_err!("embed(): argument 3 (dims) must be a constant, not a column")
            }
        };
        let instruction = match args.scalar_arguments.get(1) {
            None => Some(String::new()),
            Some(Some(v)) => Some(
                match v {
                    ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                        s.clone()
                    }
                    _ => None,
                }
                .unwrap_or_default(),
            ),
            Some(None) => None, // varies per row
        };
        let mut metadata = HashMap::from([
            (MODEL_KEY.to_string(), info.id.clone()),
            (WEIGHTS_KEY.to_string(), info.digest.clone()),
            (DIMS_KEY.to_string(), dims.to_string()),
        ]);
        let instr_meta = instruction.clone().unwrap_or_else(|| "<per row>".into());
        metadata.insert("semflow.instruction".into(), instr_meta.clone());
        let fp = crate::inference::cache::cache_key(&[
            info.id.as_bytes(),
            info.digest.as_bytes(),
            dims.to_string().as_bytes(),
            instr_meta.as_bytes(),
        ]);
        metadata.insert("semflow.fingerprint".into(), format!("{fp:032x}"));
        Ok(Arc::new(
            Field::new(self.name(), vector_type(dims), true).with_metadata(metadata),
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let DataType::FixedSizeList(_, dims) = args.return_field.data_type() else {
            return exec_err!(
                "embed(): unexpected return type {}",
                args.return_field.data_type()
            );
        };
        let dims = *dims as usize;
        let opts = call_options(&args.config_options)?;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let model = model_name("embed", 4, args.args.get(3))?;
        let text = StringArg::new(&args.args[0])?;
        let instruction = match args.args.get(1) {
            Some(v) => StringArg::new(v)?,
            None => StringArg::Scalar(None),
        };
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut inputs = Vec::new();
        let mut row_ids = Vec::new();
        for row in 0..rows {
            if let Some(t) = text.get(row) {
                inputs.push(EmbedInput {
                    text: t.to_string(),
                    instruction: instruction
                        .get(row)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                });
                row_ids.push(row);
            }
        }
        let vectors = if inputs.is_empty() {
            Vec::new()
        } else {
            let inference = model_service(&self.models.0, "embed", model.as_deref())?;
            let rows_for_errors = row_ids.clone();
            model_work(async move { inference.embed(inputs, rows_for_errors, opts).await })?
        };
        let array = vector_array(rows, dims, &row_ids, &vectors)?;
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::FixedSizeList(Arc::new(
                array,
            ))))
        } else {
            debug_assert_eq!(array.len(), args.number_rows);
            Ok(ColumnarValue::Array(Arc::new(array)))
        }
    }
}
