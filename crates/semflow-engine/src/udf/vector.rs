//! Vector functions over `FixedSizeList`/`List`/`LargeList` of `Float32`, `Float64` or `Int8`
//! (the form `int8_quantize` makes): `cosine_similarity`, `inner_product`, `l2_distance`. Results are `Float64`, accumulated in
//! f64. A constant side (the query vector of a search) is read once, not copied per row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float32Type, Float64Type, Int8Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::embed::vector_model;
use crate::error::arg_err;

/// Which vector function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorFn {
    Cosine,
    Inner,
    L2,
}

impl VectorFn {
    pub const ALL: [VectorFn; 3] = [VectorFn::Cosine, VectorFn::Inner, VectorFn::L2];

    pub fn name(self) -> &'static str {
        match self {
            VectorFn::Cosine => "cosine_similarity",
            VectorFn::Inner => "inner_product",
            VectorFn::L2 => "l2_distance",
        }
    }

    fn compute(self, a: VecRef<'_>, b: VecRef<'_>) -> f64 {
        let (mut dot, mut na, mut nb, mut sq) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let n = a.len();
        for i in 0..n {
            let (x, y) = (a.at(i), b.at(i));
            match self {
                VectorFn::Cosine => {
                    dot += x * y;
                    na += x * x;
                    nb += y * y;
                }
                VectorFn::Inner => dot += x * y,
                VectorFn::L2 => sq += (x - y) * (x - y),
            }
        }
        match self {
            // 0/0 for a zero vector: NaN, as pgvector and numpy give.
            VectorFn::Cosine => dot / (na.sqrt() * nb.sqrt()),
            VectorFn::Inner => dot,
            VectorFn::L2 => sq.sqrt(),
        }
    }
}

/// `cosine_similarity(a, b)` exactly as the SQL function computes it (f64 accumulation), for
/// Rust callers that must agree with SQL to the last bit (the synthesis filter).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    VectorFn::Cosine.compute(VecRef::F32(a), VecRef::F32(b))
}

/// Refuses to compare vectors whose field metadata names different models (an index built
/// with one model, a query embedded with another): the scores would be meaningless.
/// Vectors without a recorded model are compared.
pub fn check_same_model(function: &str, a: &Field, b: &Field) -> Result<()> {
    match (vector_model(a), vector_model(b)) {
        (Some(ma), Some(mb)) if ma != mb => arg_err!(
            "{function}(): the vectors come from different models ({ma} and {mb}); embed the query with the model that made the other side, e.g. embed(text, instruction, NULL, 'NAME') with --model NAME=MODEL"
        ),
        _ => Ok(()),
    }
}

/// A vector function as a DataFusion UDF.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorUdf {
    kind: VectorFn,
    signature: Signature,
}

impl VectorUdf {
    pub fn new(kind: VectorFn) -> Self {
        Self {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    pub fn kind(&self) -> VectorFn {
        self.kind
    }
}

fn check_vector_type(function: &str, position: usize, t: &DataType) -> Result<DataType> {
    match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f)
            if matches!(
                f.data_type(),
                DataType::Float32 | DataType::Float64 | DataType::Int8
            ) =>
        {
            Ok(t.clone())
        }
        DataType::Null => Ok(t.clone()),
        _ => arg_err!(
            "{function}(): argument {position} must be a vector (FixedSizeList or List of Float32/Float64/Int8), got {t}"
        ),
    }
}

#[derive(Clone, Copy)]
enum VecRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I8(&'a [i8]),
}

impl VecRef<'_> {
    fn len(&self) -> usize {
        match self {
            VecRef::F32(v) => v.len(),
            VecRef::F64(v) => v.len(),
            VecRef::I8(v) => v.len(),
        }
    }
    #[inline]
    fn at(&self, i: usize) -> f64 {
        match self {
            VecRef::F32(v) => v[i] as f64,
            VecRef::F64(v) => v[i],
            VecRef::I8(v) => v[i] as f64,
        }
    }
}

/// One argument: a list-like array (a constant is a 1-row array read at row 0).
struct VecColumn {
    array: ArrayRef,
    scalar: bool,
}

impl VecColumn {
    fn new(function: &str, position: usize, value: &ColumnarValue) -> Result<Self> {
        let (array, scalar) = match value {
            ColumnarValue::Scalar(s) => (s.to_array()?, true),
            ColumnarValue::Array(a) => (a.clone(), false),
        };
        let values = match array.data_type() {
            DataType::FixedSizeList(..) => Some(array.as_fixed_size_list().values().clone()),
            DataType::List(_) => Some(array.as_list::<i32>().values().clone()),
            DataType::LargeList(_) => Some(array.as_list::<i64>().values().clone()),
            _ => None,
        };
        if values.is_some_and(|v| v.null_count() > 0) {
            return arg_err!("{function}(): argument {position} has a vector with NULL elements");
        }
        Ok(Self { array, scalar })
    }

    fn get(&self, row: usize) -> Option<VecRef<'_>> {
        let row = if self.scalar { 0 } else { row };
        if self.array.is_null(row) {
            return None;
        }
        let (values, start, end) = match self.array.data_type() {
            DataType::FixedSizeList(_, size) => {
                let a = self.array.as_fixed_size_list();
                let size = *size as usize;
                (a.values(), row * size, (row + 1) * size)
            }
            DataType::List(_) => {
                let a = self.array.as_list::<i32>();
                let o = a.value_offsets();
                (a.values(), o[row] as usize, o[row + 1] as usize)
            }
            DataType::LargeList(_) => {
                let a = self.array.as_list::<i64>();
                let o = a.value_offsets();
                (a.values(), o[row] as usize, o[row + 1] as usize)
            }
            _ => return None, // NULL literal
        };
        match values.data_type() {
            DataType::Float32 => Some(VecRef::F32(
                &values.as_primitive::<Float32Type>().values()[start..end],
            )),
            DataType::Float64 => Some(VecRef::F64(
                &values.as_primitive::<Float64Type>().values()[start..end],
            )),
            DataType::Int8 => Some(VecRef::I8(
                &values.as_primitive::<Int8Type>().values()[start..end],
            )),
            _ => None,
        }
    }
}

impl ScalarUDFImpl for VectorUdf {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return arg_err!(
                "{}() takes 2 vector arguments, got {}",
                self.name(),
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| check_vector_type(self.name(), i + 1, t))
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    /// Refuses, while planning, vectors of different models ([`check_same_model`]).
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if let [a, b] = args.arg_fields {
            check_same_model(self.name(), a, b)?;
        }
        Ok(Arc::new(Field::new(self.name(), DataType::Float64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let a = VecColumn::new(name, 1, &args.args[0])?;
        let b = VecColumn::new(name, 2, &args.args[1])?;
        let all_scalar = a.scalar && b.scalar;
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            out.push(match (a.get(row), b.get(row)) {
                (Some(x), Some(y)) => {
                    if x.len() != y.len() {
                        return arg_err!(
                            "{name}(): vectors have different lengths ({} and {}) at row {row}",
                            x.len(),
                            y.len()
                        );
                    }
                    Some(self.kind.compute(x, y))
                }
                _ => None,
            });
        }
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::Float64(out[0])))
        } else {
            Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels() {
        let a = VecRef::F32(&[1.0, 0.0]);
        let b = VecRef::F64(&[1.0, 1.0]);
        assert!((VectorFn::Cosine.compute(a, b) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(VectorFn::Inner.compute(a, b), 1.0);
        assert_eq!(VectorFn::L2.compute(a, b), 1.0);
        assert!(VectorFn::Cosine
            .compute(VecRef::F32(&[0.0, 0.0]), b)
            .is_nan());
    }
}
