//! Per-dimension calibrated int8: the calibration and the quantization that uses it.
//!
//! - `int8_calibration(v)` (aggregate) → `{min: [..], max: [..]}`, each dimension's smallest
//!   and largest value over the vectors aggregated (a sample of the corpus, or all of it).
//! - `int8_quantize(v, calibration)` maps each dimension's `[min, max]` onto −128..127:
//!   `round((x − min) · 255 / (max − min)) − 128`, values outside the range clamped to its
//!   ends, a dimension with `max = min` quantized to 0. This is sentence-transformers'
//!   `quantize_embeddings(…, "int8", calibration_embeddings=…)` except that it rounds to the
//!   nearest step where numpy's `astype(int8)` truncates, and clamps where numpy would wrap.
//!
//! A calibration is a plain struct, so one computed elsewhere can be given as
//! `named_struct('min', [...], 'max', [...])`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, ListArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float32Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

use super::{is_float_vector, FloatRows};
use crate::error::arg_err;

const MIN: &str = "min";
const MAX: &str = "max";

fn item() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Float32, true))
}

fn list_type() -> DataType {
    DataType::List(item())
}

/// `{min: List<Float32>, max: List<Float32>}`.
fn struct_fields() -> Fields {
    Fields::from(vec![
        Field::new(MIN, list_type(), true),
        Field::new(MAX, list_type(), true),
    ])
}

/// The type `int8_quantize`'s second argument is read as: a struct with float lists `min` and
/// `max` (NULL is allowed and gives NULL).
pub fn coerce(t: &DataType) -> Result<DataType> {
    let ok = match t {
        DataType::Null => true,
        DataType::Struct(fields) => [MIN, MAX].iter().all(|name| {
            fields
                .iter()
                .any(|f| f.name() == name && is_float_vector(f.data_type()))
        }),
        _ => false,
    };
    if !ok {
        return arg_err!(
            "int8_quantize(): argument 2 must be a calibration (int8_calibration()'s result: a struct of float lists min and max), got {t}"
        );
    }
    Ok(t.clone())
}

/// The calibration argument, one per row.
pub struct Calibration {
    array: ArrayRef,
    min: Option<ListArray>,
    max: Option<ListArray>,
}

impl Calibration {
    pub fn new(array: &ArrayRef) -> Result<Self> {
        let bound = |name: &str| -> Result<Option<ListArray>> {
            let Some(s) = array.as_struct_opt() else {
                return Ok(None);
            };
            let Some(column) = s.column_by_name(name) else {
                return Ok(None);
            };
            Ok(Some(cast(column, &list_type())?.as_list::<i32>().clone()))
        };
        Ok(Self {
            min: bound(MIN)?,
            max: bound(MAX)?,
            array: array.clone(),
        })
    }

    /// Row `row`'s vector `v` quantized by row `row`'s calibration; `None` where the
    /// calibration is NULL.
    pub fn quantize(&self, row: usize, v: &[f32]) -> Result<Option<Vec<i8>>> {
        let (Some(min), Some(max)) = (&self.min, &self.max) else {
            return Ok(None);
        };
        if self.array.is_null(row) || min.is_null(row) || max.is_null(row) {
            return Ok(None);
        }
        let (min, max) = (min.value(row), max.value(row));
        if min.null_count() > 0 || max.null_count() > 0 {
            return arg_err!("int8_quantize(): the calibration at row {row} has NULL elements");
        }
        let (min, max) = (
            min.as_primitive::<Float32Type>().values(),
            max.as_primitive::<Float32Type>().values(),
        );
        if min.len() != v.len() || max.len() != v.len() {
            return arg_err!(
                "int8_quantize(): the vector at row {row} has {} components, its calibration {} (min) and {} (max)",
                v.len(),
                min.len(),
                max.len()
            );
        }
        Ok(Some(
            v.iter()
                .zip(min.iter().zip(max))
                .map(|(x, (lo, hi))| calibrated(*x, *lo, *hi))
                .collect(),
        ))
    }
}

/// One component: `[lo, hi]` onto −128..127.
fn calibrated(x: f32, lo: f32, hi: f32) -> i8 {
    let range = hi - lo;
    if range <= 0.0 || !range.is_finite() {
        return 0;
    }
    ((x - lo) * (255.0 / range) - 128.0)
        .round()
        .clamp(-128.0, 127.0) as i8
}

/// `int8_calibration(v)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Int8CalibrationUdf {
    signature: Signature,
}

impl Default for Int8CalibrationUdf {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Int8CalibrationUdf {
    fn name(&self) -> &str {
        "int8_calibration"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [t] if is_float_vector(t) || *t == DataType::Null => Ok(vec![t.clone()]),
            [t] => arg_err!(
                "int8_calibration(): argument 1 must be a float vector (FixedSizeList or List of Float32/Float64), got {t}"
            ),
            _ => arg_err!(
                "int8_calibration() takes 1 argument (a vector), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(struct_fields()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(format!("{}[min]", args.name), list_type(), true)),
            Arc::new(Field::new(format!("{}[max]", args.name), list_type(), true)),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<Range>::default())
    }
}

/// Each dimension's smallest and largest value so far (empty before the first vector).
#[derive(Debug, Default)]
struct Range {
    min: Vec<f32>,
    max: Vec<f32>,
}

impl Range {
    /// Widens the range by `lo` and `hi` (one vector: both the same).
    fn add(&mut self, lo: &[f32], hi: &[f32]) -> Result<()> {
        if self.min.is_empty() {
            self.min = lo.to_vec();
            self.max = hi.to_vec();
            return Ok(());
        }
        if lo.len() != self.min.len() {
            return arg_err!(
                "int8_calibration(): vectors have different lengths ({} and {})",
                self.min.len(),
                lo.len()
            );
        }
        for (m, x) in self.min.iter_mut().zip(lo) {
            *m = m.min(*x);
        }
        for (m, x) in self.max.iter_mut().zip(hi) {
            *m = m.max(*x);
        }
        Ok(())
    }

    /// `values` as a one-row `List<Float32>`, NULL when empty (no vector seen).
    fn list(values: &[f32]) -> Result<ListArray> {
        if values.is_empty() {
            return Ok(ListArray::new_null(item(), 1));
        }
        Ok(ListArray::try_new(
            item(),
            OffsetBuffer::from_lengths([values.len()]),
            Arc::new(Float32Array::from(values.to_vec())),
            None,
        )?)
    }
}

impl Accumulator for Range {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(rows) = FloatRows::of(&values[0], "int8_calibration")? else {
            return Ok(()); // all NULL
        };
        for (start, end) in rows.ranges.into_iter().flatten() {
            let v = &rows.values.values()[start..end];
            self.add(v, v)?;
        }
        Ok(())
    }

    /// Other accumulators' states: rows of (min, max) lists, both NULL where one saw nothing.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (Some(lows), Some(highs)) = (
            FloatRows::of(&states[0], "int8_calibration")?,
            FloatRows::of(&states[1], "int8_calibration")?,
        ) else {
            return Ok(());
        };
        for (lo, hi) in lows.ranges.into_iter().zip(highs.ranges) {
            if let (Some((a, b)), Some((c, d))) = (lo, hi) {
                self.add(&lows.values.values()[a..b], &highs.values.values()[c..d])?;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::List(Arc::new(Self::list(&self.min)?)),
            ScalarValue::List(Arc::new(Self::list(&self.max)?)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let fields = struct_fields();
        if self.min.is_empty() {
            return ScalarValue::try_from(DataType::Struct(fields));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Self::list(&self.min)?),
            Arc::new(Self::list(&self.max)?),
        ];
        let array = StructArray::try_new(fields, columns, None)?;
        Ok(ScalarValue::Struct(Arc::new(array)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + (self.min.capacity() + self.max.capacity()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dimension_range_maps_onto_the_int8_range() {
        assert_eq!(calibrated(-1.0, -1.0, 1.0), -128);
        assert_eq!(calibrated(1.0, -1.0, 1.0), 127);
        // Half way is 127.5 steps − 128 = −0.5, rounded half away from zero.
        assert_eq!(calibrated(0.0, -1.0, 1.0), -1);
        assert_eq!(calibrated(0.003, -1.0, 1.0), 0);
        assert_eq!(calibrated(5.0, -1.0, 1.0), 127);
        assert_eq!(calibrated(-5.0, -1.0, 1.0), -128);
        assert_eq!(calibrated(0.3, 0.3, 0.3), 0);
    }

    #[test]
    fn ranges_widen_per_dimension_and_refuse_other_lengths() {
        let mut r = Range::default();
        r.add(&[1.0, -2.0], &[1.0, -2.0]).unwrap();
        r.add(&[0.5, 3.0], &[0.5, 3.0]).unwrap();
        assert_eq!(r.min, [0.5, -2.0]);
        assert_eq!(r.max, [1.0, 3.0]);
        assert!(r.add(&[1.0], &[1.0]).is_err());
    }

    /// Partial aggregates (DataFusion's partitions) merge through their states; a partition
    /// that saw no vector contributes NULL lists.
    #[test]
    fn states_merge_into_the_whole_range() {
        let (mut a, mut b, mut empty) = (Range::default(), Range::default(), Range::default());
        a.add(&[1.0, -2.0], &[1.0, -2.0]).unwrap();
        b.add(&[0.5, 3.0], &[0.5, 3.0]).unwrap();
        let mut whole = Range::default();
        for part in [&mut a, &mut empty, &mut b] {
            let states: Vec<ArrayRef> = part
                .state()
                .unwrap()
                .iter()
                .map(|s| s.to_array().unwrap())
                .collect();
            whole.merge_batch(&states).unwrap();
        }
        assert_eq!(whole.min, [0.5, -2.0]);
        assert_eq!(whole.max, [1.0, 3.0]);
    }
}
