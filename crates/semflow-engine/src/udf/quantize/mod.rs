//! Quantized vector forms and their distance:
//! - `int8_quantize(v)` → `Int8` components, `round(x · 127 / max|x|)` per vector (symmetric
//!   scalar quantization; a zero vector stays zero). A quarter of float32's bytes; cosine and
//!   inner product work on it directly (`cosine_similarity` reads `Int8` vectors), and since the
//!   scale is per vector, cosine between two int8 vectors approximates the float cosine.
//! - `int8_quantize(v, calibration)` → per-dimension calibrated `Int8`: each dimension's range
//!   `[min, max]` over a sample (`int8_calibration(v)`, [`calibration`]) mapped onto −128..127.
//! - `binary_quantize(v)` → the sign bits, `x > 0` as 1, packed 8 per `UInt8`, most significant
//!   bit first (numpy's `packbits(v > 0)`, sentence-transformers' `ubinary`): 1/32 of float32.
//! - `hamming_distance(a, b)` → `Int64` count of differing bits of two packed vectors (lists
//!   of `UInt8` or `Int8`, or binary values of equal length).
//!
//! `FixedSizeList` in, `FixedSizeList` out; `List` in, `List` out; NULL in, NULL out. The
//! quantized vectors keep the input field's metadata (the model that made them), so
//! comparisons across models are refused as for float vectors.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Int64Array, ListArray, PrimitiveArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, FieldRef, Float32Type, Int8Type, UInt8Type,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::arg_err;

pub mod calibration;

/// Which quantized form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    Int8,
    Binary,
}

impl Form {
    pub const ALL: [Form; 2] = [Form::Int8, Form::Binary];

    pub fn name(self) -> &'static str {
        match self {
            Form::Int8 => "int8_quantize",
            Form::Binary => "binary_quantize",
        }
    }

    /// Components out for `dims` components in.
    fn width(self, dims: usize) -> usize {
        match self {
            Form::Int8 => dims,
            Form::Binary => dims.div_ceil(8),
        }
    }

    fn item(self) -> FieldRef {
        Arc::new(Field::new_list_field(
            match self {
                Form::Int8 => DataType::Int8,
                Form::Binary => DataType::UInt8,
            },
            true,
        ))
    }
}

/// `int8_quantize` of one vector.
pub fn int8(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return vec![0; v.len()];
    }
    let scale = 127.0 / max;
    v.iter().map(|x| (x * scale).round() as i8).collect()
}

/// `binary_quantize` of one vector.
pub fn binary(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, x)| byte | (u8::from(*x > 0.0) << (7 - i)))
        })
        .collect()
}

/// A quantizing function as a DataFusion UDF.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct QuantizeUdf {
    form: Form,
    signature: Signature,
}

impl QuantizeUdf {
    pub fn new(form: Form) -> Self {
        Self {
            form,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn is_float_vector(t: &DataType) -> bool {
    matches!(t, DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f)
        if matches!(f.data_type(), DataType::Float32 | DataType::Float64))
}

/// The rows of a list-like array as (start, end) into its values, `None` for NULL rows.
fn row_ranges(array: &dyn Array) -> Option<Vec<Option<(usize, usize)>>> {
    let valid = |i: usize| array.is_valid(i);
    let ranges = match array.data_type() {
        DataType::FixedSizeList(_, size) => {
            let size = *size as usize;
            (0..array.len())
                .map(|i| valid(i).then_some((i * size, (i + 1) * size)))
                .collect()
        }
        DataType::List(_) => {
            let o = array.as_list::<i32>().value_offsets();
            (0..array.len())
                .map(|i| valid(i).then_some((o[i] as usize, o[i + 1] as usize)))
                .collect()
        }
        DataType::LargeList(_) => {
            let o = array.as_list::<i64>().value_offsets();
            (0..array.len())
                .map(|i| valid(i).then_some((o[i] as usize, o[i + 1] as usize)))
                .collect()
        }
        _ => return None,
    };
    Some(ranges)
}

/// The child values of a list-like array.
fn list_values(array: &dyn Array) -> Option<ArrayRef> {
    match array.data_type() {
        DataType::FixedSizeList(..) => Some(array.as_fixed_size_list().values().clone()),
        DataType::List(_) => Some(array.as_list::<i32>().values().clone()),
        DataType::LargeList(_) => Some(array.as_list::<i64>().values().clone()),
        _ => None,
    }
}

/// Float vectors read as f32: each row's range into `values` (`None` for NULL rows).
struct FloatRows {
    ranges: Vec<Option<(usize, usize)>>,
    values: arrow::array::Float32Array,
}

impl FloatRows {
    /// `array`'s vectors; `None` for a NULL literal (no list). A vector with NULL elements is
    /// refused in `function`'s name.
    fn of(array: &dyn Array, function: &str) -> Result<Option<Self>> {
        let (Some(ranges), Some(values)) = (row_ranges(array), list_values(array)) else {
            return Ok(None);
        };
        if values.null_count() > 0 {
            return arg_err!("{function}(): a vector has NULL elements");
        }
        let values = cast(&values, &DataType::Float32)?
            .as_primitive::<Float32Type>()
            .clone();
        Ok(Some(Self { ranges, values }))
    }
}

impl ScalarUDFImpl for QuantizeUdf {
    fn name(&self) -> &str {
        self.form.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let calibrated = self.form == Form::Int8 && arg_types.len() == 2;
        match arg_types {
            [t, ..] if !(is_float_vector(t) || *t == DataType::Null) => arg_err!(
                "{}(): argument 1 must be a float vector (FixedSizeList or List of Float32/Float64), got {t}",
                self.name()
            ),
            [t] => Ok(vec![t.clone()]),
            [t, c] if calibrated => Ok(vec![t.clone(), calibration::coerce(c)?]),
            _ if self.form == Form::Int8 => arg_err!(
                "int8_quantize() takes a vector and optionally a calibration (int8_calibration()'s result), got {} arguments",
                arg_types.len()
            ),
            _ => arg_err!(
                "{}() takes 1 argument (a vector), got {}",
                self.name(),
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match arg_types.first() {
            Some(DataType::FixedSizeList(_, n)) => {
                DataType::FixedSizeList(self.form.item(), self.form.width(*n as usize) as i32)
            }
            _ => DataType::List(self.form.item()),
        })
    }

    /// The input's metadata (the model that made the vector) carried over.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let field = Field::new(self.name(), self.return_type(&types)?, true);
        Ok(Arc::new(match args.arg_fields.first() {
            Some(input) => field.with_metadata(input.metadata().clone()),
            None => field,
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // A constant vector with a calibration per row is quantized once per row.
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if scalar { 1 } else { args.number_rows };
        let array = args.args[0].to_array(rows)?;
        let out_type = self.return_type(&[array.data_type().clone()])?;
        let Some(FloatRows { ranges, values }) = FloatRows::of(&array, self.name())? else {
            // A NULL literal.
            let nulls = ScalarValue::try_from(&out_type)?;
            return Ok(ColumnarValue::Scalar(nulls));
        };
        let values = values.values();
        let out = match (self.form, args.args.get(1)) {
            (Form::Int8, None) => {
                build::<Int8Type>(&ranges, &out_type, self.form, values, |_, v| {
                    Ok(Some(int8(v)))
                })?
            }
            (Form::Int8, Some(calibration)) => {
                let calibration = calibration::Calibration::new(&calibration.to_array(rows)?)?;
                build::<Int8Type>(&ranges, &out_type, self.form, values, |row, v| {
                    calibration.quantize(row, v)
                })?
            }
            (Form::Binary, _) => {
                build::<UInt8Type>(&ranges, &out_type, self.form, values, |_, v| {
                    Ok(Some(binary(v)))
                })?
            }
        };
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// The quantized rows as an array of `out_type` (a FixedSizeList or a List). `quantize` maps
/// row `i`'s values to its quantized form, `None` for a NULL row.
fn build<T: ArrowPrimitiveType>(
    ranges: &[Option<(usize, usize)>],
    out_type: &DataType,
    form: Form,
    values: &[f32],
    quantize: impl Fn(usize, &[f32]) -> Result<Option<Vec<T::Native>>>,
) -> Result<ArrayRef> {
    let mut rows = Vec::with_capacity(ranges.len());
    for (row, range) in ranges.iter().enumerate() {
        rows.push(match range {
            Some((start, end)) => quantize(row, &values[*start..*end])?,
            None => None,
        });
    }
    let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
    match out_type {
        DataType::FixedSizeList(item, width) => {
            let width = *width as usize;
            let mut out = Vec::with_capacity(rows.len() * width);
            for row in rows {
                match row {
                    Some(q) => out.extend(q),
                    None => out.extend(std::iter::repeat_n(T::Native::default(), width)),
                }
            }
            Ok(Arc::new(FixedSizeListArray::try_new(
                item.clone(),
                width as i32,
                Arc::new(PrimitiveArray::<T>::from_iter_values(out)),
                Some(nulls),
            )?))
        }
        _ => {
            let lengths: Vec<usize> = rows
                .iter()
                .map(|q| q.as_ref().map_or(0, Vec::len))
                .collect();
            Ok(Arc::new(ListArray::try_new(
                form.item(),
                OffsetBuffer::from_lengths(lengths),
                Arc::new(PrimitiveArray::<T>::from_iter_values(
                    rows.into_iter().flatten().flatten(),
                )),
                Some(nulls),
            )?))
        }
    }
}

/// `hamming_distance(a, b)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HammingUdf {
    signature: Signature,
}

impl Default for HammingUdf {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn is_packed(t: &DataType) -> bool {
    match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            matches!(f.data_type(), DataType::UInt8 | DataType::Int8)
        }
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => true,
        _ => false,
    }
}

/// One side of `hamming_distance`: its bytes per row (a constant is read at row 0).
struct Packed {
    array: ArrayRef,
    scalar: bool,
    /// Lists: row ranges into `bytes`; binary arrays are read directly.
    ranges: Option<Vec<Option<(usize, usize)>>>,
    bytes: Vec<u8>,
}

impl Packed {
    fn new(value: &ColumnarValue) -> Result<Self> {
        let (array, scalar) = match value {
            ColumnarValue::Scalar(s) => (s.to_array()?, true),
            ColumnarValue::Array(a) => (a.clone(), false),
        };
        let (ranges, bytes) = match (row_ranges(&array), list_values(&array)) {
            (Some(ranges), Some(values)) => {
                let bytes: Vec<u8> = match values.data_type() {
                    DataType::UInt8 => values.as_primitive::<UInt8Type>().values().to_vec(),
                    // The same bits: sentence-transformers' signed "binary" form is ubinary − 128.
                    DataType::Int8 => values
                        .as_primitive::<Int8Type>()
                        .values()
                        .iter()
                        .map(|b| *b as u8)
                        .collect(),
                    _ => Vec::new(),
                };
                (Some(ranges), bytes)
            }
            _ => (None, Vec::new()),
        };
        Ok(Self {
            array,
            scalar,
            ranges,
            bytes,
        })
    }

    fn get(&self, row: usize) -> Option<&[u8]> {
        let row = if self.scalar { 0 } else { row };
        if self.array.is_null(row) {
            return None;
        }
        match &self.ranges {
            Some(ranges) => ranges[row].map(|(s, e)| &self.bytes[s..e]),
            None => match self.array.data_type() {
                DataType::Binary => Some(self.array.as_binary::<i32>().value(row)),
                DataType::LargeBinary => Some(self.array.as_binary::<i64>().value(row)),
                DataType::FixedSizeBinary(_) => Some(self.array.as_fixed_size_binary().value(row)),
                _ => None,
            },
        }
    }
}

impl ScalarUDFImpl for HammingUdf {
    fn name(&self) -> &str {
        "hamming_distance"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return arg_err!(
                "hamming_distance() takes 2 packed bit vectors, got {} arguments",
                arg_types.len()
            );
        }
        for (i, t) in arg_types.iter().enumerate() {
            if !(is_packed(t) || *t == DataType::Null) {
                return arg_err!(
                    "hamming_distance(): argument {} must be packed bits (a list of UInt8/Int8, as binary_quantize returns, or binary), got {t}",
                    i + 1
                );
            }
        }
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = Packed::new(&args.args[0])?;
        let b = Packed::new(&args.args[1])?;
        let all_scalar = a.scalar && b.scalar;
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            out.push(match (a.get(row), b.get(row)) {
                (Some(x), Some(y)) if x.len() == y.len() => Some(
                    x.iter()
                        .zip(y)
                        .map(|(p, q)| i64::from((p ^ q).count_ones()))
                        .sum::<i64>(),
                ),
                (Some(x), Some(y)) => {
                    return arg_err!(
                        "hamming_distance(): vectors have different lengths ({} and {} bytes) at row {row}",
                        x.len(),
                        y.len()
                    )
                }
                _ => None,
            });
        }
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::Int64(out[0])))
        } else {
            Ok(ColumnarValue::Array(Arc::new(Int64Array::from(out))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_scales_by_the_largest_component() {
        assert_eq!(int8(&[0.5, -1.0, 0.25, 0.0]), [64, -127, 32, 0]);
        assert_eq!(int8(&[0.0, 0.0]), [0, 0]);
    }

    /// As numpy: `np.packbits(np.array(v) > 0)`.
    #[test]
    fn binary_packs_sign_bits_most_significant_first() {
        let v = [0.3, -0.1, 0.0, 2.0, -5.0, 1.0, 1.0, -1.0, 0.7];
        assert_eq!(binary(&v), [0b1001_0110, 0b1000_0000]);
    }
}
