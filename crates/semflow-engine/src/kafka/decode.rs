//! Records → Arrow rows. Metadata columns (`_key`, `_partition`, `_offset`, `_timestamp`,
//! `_headers`) are filled when the table declares them; the other columns come from the
//! value: JSON object fields by name (`json`; `avro` and `protobuf` values arrive here as
//! JSON), or the whole value/key (`raw`). A record that does not fit is reported with the
//! reason instead of failing the batch.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::ScalarValue;
use serde_json::Value;

use super::options::Format;
use super::record::Record;
use super::registry::Registry;
use crate::error::{Error, Result};

/// How one column is filled.
#[derive(Debug, Clone, Copy)]
enum Source {
    Key,
    Partition,
    Offset,
    Timestamp,
    Headers,
    /// `raw`: the whole value.
    RawValue,
    /// `raw`: the key, in a column named `key`.
    RawKey,
    /// `json`: the field with the column's name.
    Field,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    schema: SchemaRef,
    sources: Vec<Source>,
    /// `'format' 'avro'`/`'protobuf'`: where writer schemas come from (values become JSON
    /// first).
    registry: Option<Arc<Registry>>,
}

/// A record that could not become a row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index into the records given to [`Decoder::decode`].
    pub index: usize,
    pub reason: String,
}

/// Rows for the accepted records, in order, plus which records they came from.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    pub rows_from: Vec<usize>,
    pub rejected: Vec<Rejected>,
}

impl Decoder {
    /// Checks that every declared column can be filled for `format`.
    pub fn new(schema: SchemaRef, format: Format) -> Result<Self> {
        let sources = schema
            .fields()
            .iter()
            .map(|f| source_for(f, format))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            schema,
            sources,
            registry: None,
        })
    }

    /// Reads registry-framed values through `registry` (see [`super::registry`]).
    pub fn with_registry(self, registry: Arc<Registry>) -> Self {
        Self {
            registry: Some(registry),
            ..self
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// Decodes `records`; tombstones must have been taken out by the caller.
    pub fn decode(&self, records: &[Record]) -> Result<Decoded> {
        let mut columns: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(records.len()); self.sources.len()];
        let mut rows_from = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.row(record) {
                Ok(values) => {
                    for (col, v) in columns.iter_mut().zip(values) {
                        col.push(v);
                    }
                    rows_from.push(index);
                }
                Err(reason) => rejected.push(Rejected { index, reason }),
            }
        }
        let arrays = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(values, field)| {
                if values.is_empty() {
                    Ok(new_null_array(field.data_type(), 0))
                } else {
                    ScalarValue::iter_to_array(values).map_err(Error::from)
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows_from.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)?;
        Ok(Decoded {
            batch,
            rows_from,
            rejected,
        })
    }

    fn row(&self, record: &Record) -> std::result::Result<Vec<ScalarValue>, String> {
        let object = match self.sources.iter().any(|s| matches!(s, Source::Field)) {
            true => {
                let bytes = record.value.as_deref().ok_or("tombstone (null value)")?;
                match serde_json::from_slice::<Value>(bytes) {
                    Ok(Value::Object(map)) => Some(map),
                    Ok(other) => {
                        return Err(format!(
                            "value is JSON {} , not an object",
                            json_kind(&other)
                        ))
                    }
                    Err(e) => return Err(format!("value is not valid JSON: {e}")),
                }
            }
            false => None,
        };
        let mut out = Vec::with_capacity(self.sources.len());
        for (field, source) in self.schema.fields().iter().zip(&self.sources) {
            let value = match source {
                Source::Key | Source::RawKey => bytes_scalar(record.key.as_deref(), field)?,
                Source::RawValue => bytes_scalar(record.value.as_deref(), field)?,
                Source::Partition => ScalarValue::Int32(Some(record.partition)),
                Source::Offset => ScalarValue::Int64(Some(record.offset)),
                Source::Timestamp => match field.data_type() {
                    DataType::Int64 => ScalarValue::Int64(record.timestamp),
                    t => ScalarValue::TimestampMillisecond(record.timestamp, None)
                        .cast_to(t)
                        .map_err(|e| format!("_timestamp: {e}"))?,
                },
                Source::Headers => {
                    let map: serde_json::Map<String, Value> = record
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            let v = v
                                .as_deref()
                                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                                .unwrap_or(Value::Null);
                            (k.clone(), v)
                        })
                        .collect();
                    let text = Some(Value::Object(map).to_string());
                    match field.data_type() {
                        DataType::Utf8View => ScalarValue::Utf8View(text),
                        DataType::LargeUtf8 => ScalarValue::LargeUtf8(text),
                        _ => ScalarValue::Utf8(text),
                    }
                }
                Source::Field => {
                    let v = object.as_ref().and_then(|o| o.get(field.name()));
                    json_scalar(v, field).map_err(|e| format!("field {}: {e}", field.name()))?
                }
            };
            if value.is_null() && !field.is_nullable() {
                return Err(format!(
                    "field {} is missing or null (declared NOT NULL)",
                    field.name()
                ));
            }
            out.push(value);
        }
        Ok(out)
    }
}

fn source_for(field: &Field, format: Format) -> Result<Source> {
    let t = field.data_type();
    let name = field.name().as_str();
    let bad = |want: &str| {
        Err(Error::InvalidArgument(format!(
            "STORED AS KAFKA: column {name} must be {want}, not {t}"
        )))
    };
    let textual = matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
    );
    match name {
        "_key" => {
            return if textual {
                Ok(Source::Key)
            } else {
                bad("TEXT or BYTEA")
            }
        }
        "_partition" => {
            return if *t == DataType::Int32 {
                Ok(Source::Partition)
            } else {
                bad("INT")
            }
        }
        "_offset" => {
            return if *t == DataType::Int64 {
                Ok(Source::Offset)
            } else {
                bad("BIGINT")
            }
        }
        "_timestamp" => {
            return match t {
                DataType::Int64 | DataType::Timestamp(_, None) => Ok(Source::Timestamp),
                _ => bad("TIMESTAMP or BIGINT (milliseconds)"),
            }
        }
        "_headers" => {
            return if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                Ok(Source::Headers)
            } else {
                bad("TEXT (a JSON object of header name to value)")
            }
        }
        _ => {}
    }
    match format {
        Format::Raw => match name {
            "value" if textual => Ok(Source::RawValue),
            "key" if textual => Ok(Source::RawKey),
            "value" | "key" => bad("TEXT or BYTEA"),
            _ => Err(Error::InvalidArgument(format!(
                "STORED AS KAFKA: format 'raw' fills columns value, key and the metadata columns (_key, _partition, _offset, _timestamp, _headers), not {name}"
            ))),
        },
        Format::Json | Format::Avro | Format::Protobuf => {
            if json_supported(t) {
                Ok(Source::Field)
            } else {
                bad("a text, integer, float, boolean, timestamp or list type")
            }
        }
    }
}

fn json_supported(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean => true,
        DataType::Timestamp(_, _)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..)
        | DataType::Interval(_) => true,
        t if t.is_integer() || t.is_floating() => true,
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            json_supported(item.data_type()) && !matches!(item.data_type(), DataType::List(_))
        }
        _ => false,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn bytes_scalar(bytes: Option<&[u8]>, field: &Field) -> std::result::Result<ScalarValue, String> {
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("{} is not valid UTF-8 text", field.name()))
    };
    Ok(match (field.data_type(), bytes) {
        (DataType::LargeBinary, b) => ScalarValue::LargeBinary(b.map(<[u8]>::to_vec)),
        (DataType::Binary, b) => ScalarValue::Binary(b.map(<[u8]>::to_vec)),
        (DataType::LargeUtf8, b) => ScalarValue::LargeUtf8(b.map(text).transpose()?),
        (DataType::Utf8View, b) => ScalarValue::Utf8View(b.map(text).transpose()?),
        (_, b) => ScalarValue::Utf8(b.map(text).transpose()?),
    })
}

/// One JSON value as a scalar of the column's type: numbers in strings and integral floats
/// are accepted where that loses nothing; anything else is an error naming both types.
/// (Over 100 lines on purpose: one match arm per Arrow type, so the whole JSON-to-Arrow
/// mapping reads as one table.)
fn json_scalar(v: Option<&Value>, field: &Field) -> std::result::Result<ScalarValue, String> {
    let t = field.data_type();
    let v = match v {
        None | Some(Value::Null) => return ScalarValue::try_from(t).map_err(|e| e.to_string()),
        Some(v) => v,
    };
    let wrong = || format!("expected {t}, got JSON {} {}", json_kind(v), short(v));
    let scalar = match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                // Nested JSON is kept as its JSON text.
                _ => v.to_string(),
            };
            match t {
                DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(s)),
                DataType::Utf8View => ScalarValue::Utf8View(Some(s)),
                _ => ScalarValue::Utf8(Some(s)),
            }
        }
        DataType::Decimal128(_, scale) | DataType::Decimal256(_, scale) => {
            let text = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_string(),
                _ => return Err(wrong()),
            };
            // More fractional digits than the column keeps would be rounded away.
            let places = text
                .split_once('.')
                .map_or(0, |(_, f)| f.trim_end_matches('0').len());
            if places > (*scale).max(0) as usize {
                return Err(format!("{text} has more decimal places than {t} keeps"));
            }
            match ScalarValue::try_from_string(text.clone(), t) {
                Ok(d) if !d.is_null() => d,
                _ => return Err(format!("{text} does not fit {t}")),
            }
        }
        DataType::Interval(_) => {
            let Value::String(text) = v else {
                return Err(wrong());
            };
            match ScalarValue::try_from_string(text.clone(), t) {
                Ok(i) if !i.is_null() => i,
                _ => {
                    return Err(format!(
                        "{text} is not an interval ('1 month 2 days 3 seconds')"
                    ))
                }
            }
        }
        DataType::Boolean => match v {
            Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
            Value::String(s) if s == "true" || s == "false" => {
                ScalarValue::Boolean(Some(s == "true"))
            }
            _ => return Err(wrong()),
        },
        t if t.is_integer() => {
            let n = match v {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                }),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(wrong)?;
            ScalarValue::Int64(Some(n))
                .cast_to(t)
                .map_err(|_| format!("{n} is out of range for {t}"))?
        }
        t if t.is_floating() => {
            let f = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(wrong)?;
            ScalarValue::Float64(Some(f))
                .cast_to(t)
                .map_err(|e| e.to_string())?
        }
        DataType::Timestamp(unit, tz) => {
            let nanos = match v {
                Value::String(s) => chrono_like_parse(s).ok_or_else(wrong)?,
                Value::Number(n) => {
                    // Integers are milliseconds since the epoch, as Kafka timestamps are.
                    n.as_i64().ok_or_else(wrong)?.saturating_mul(1_000_000)
                }
                _ => return Err(wrong()),
            };
            ScalarValue::TimestampNanosecond(Some(nanos), tz.clone())
                .cast_to(&DataType::Timestamp(*unit, tz.clone()))
                .map_err(|e| e.to_string())?
        }
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            let Value::Array(items) = v else {
                return Err(wrong());
            };
            if let DataType::FixedSizeList(_, n) = t {
                if items.len() != *n as usize {
                    return Err(format!("expected {n} values, got {}", items.len()));
                }
            }
            let values = items
                .iter()
                .enumerate()
                .map(|(i, x)| json_scalar(Some(x), item).map_err(|e| format!("[{i}]: {e}")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let array = if values.is_empty() {
                new_null_array(item.data_type(), 0)
            } else {
                ScalarValue::iter_to_array(values).map_err(|e| e.to_string())?
            };
            match t {
                DataType::List(_) => ScalarValue::List(Arc::new(
                    arrow::array::ListArray::try_new(
                        item.clone(),
                        arrow::buffer::OffsetBuffer::from_lengths([array.len()]),
                        array,
                        None,
                    )
                    .map_err(|e| e.to_string())?,
                )),
                DataType::LargeList(_) => ScalarValue::LargeList(Arc::new(
                    arrow::array::LargeListArray::try_new(
                        item.clone(),
                        arrow::buffer::OffsetBuffer::from_lengths([array.len()]),
                        array,
                        None,
                    )
                    .map_err(|e| e.to_string())?,
                )),
                _ => ScalarValue::FixedSizeList(Arc::new(
                    arrow::array::FixedSizeListArray::try_new(
                        item.clone(),
                        array.len() as i32,
                        array,
                        None,
                    )
                    .map_err(|e| e.to_string())?,
                )),
            }
        }
        _ => return Err(wrong()),
    };
    Ok(scalar)
}

/// RFC 3339 text → nanoseconds since the epoch (via Arrow's own parser).
fn chrono_like_parse(s: &str) -> Option<i64> {
    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s).ok()
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, Schema};

    fn record(offset: i64, value: &str) -> Record {
        Record {
            topic: "t".into(),
            partition: 2,
            offset,
            timestamp: Some(1000),
            key: Some(b"k".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "v",
                DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
                true,
            ),
            Field::new("_offset", DataType::Int64, false),
            Field::new("_headers", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn json_fields_fill_columns_and_bad_records_are_named() {
        let d = Decoder::new(schema(), Format::Json).unwrap();
        let out = d
            .decode(&[
                record(5, r#"{"id": "a", "n": "12", "v": [1, 2.5]}"#),
                record(6, r#"{"id": 7}"#),
                record(7, r#"{"n": 1}"#),
                record(8, r#"{"id": "b", "n": "x"}"#),
                record(9, "{not json"),
                record(10, "[1]"),
            ])
            .unwrap();
        assert_eq!(out.rows_from, vec![0, 1]);
        assert_eq!(out.batch.num_rows(), 2);
        let ids = out.batch.column(0).as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("a", "7"));
        assert_eq!(out.batch.column(1).as_primitive::<Int64Type>().value(0), 12);
        assert!(out.batch.column(1).is_null(1));
        assert_eq!(out.batch.column(3).as_primitive::<Int64Type>().value(1), 6);
        assert_eq!(
            out.batch.column(4).as_string::<i32>().value(0),
            r#"{"h":"v"}"#
        );
        let reasons: Vec<_> = out
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.clone()))
            .collect();
        assert!(reasons[0].1.contains("field id is missing"), "{reasons:?}");
        assert!(
            reasons[1]
                .1
                .contains("field n: expected Int64, got JSON string \"x\""),
            "{reasons:?}"
        );
        assert!(reasons[2].1.contains("not valid JSON"), "{reasons:?}");
        assert!(reasons[3].1.contains("not an object"), "{reasons:?}");
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "price",
            DataType::Decimal128(9, 2),
            true,
        )]));
        let d = Decoder::new(schema, Format::Json).unwrap();
        let out = d
            .decode(&[
                record(1, r#"{"price": "12.30"}"#),
                record(2, r#"{"price": -0.5}"#),
                record(3, r#"{"price": "1.234"}"#),
                record(4, r#"{"price": "12345678901"}"#),
                record(5, r#"{"price": true}"#),
            ])
            .unwrap();
        let prices = out
            .batch
            .column(0)
            .as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!((prices.value(0), prices.value(1)), (1230, -50));
        let reasons: Vec<_> = out.rejected.iter().map(|r| r.reason.clone()).collect();
        assert!(
            reasons[0].contains("1.234 has more decimal places"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("does not fit Decimal128(9, 2)"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].contains("expected Decimal128(9, 2)"),
            "{reasons:?}"
        );
    }

    #[test]
    fn intervals_read_from_text() {
        use arrow::datatypes::IntervalUnit;
        let t = DataType::Interval(IntervalUnit::MonthDayNano);
        let schema = Arc::new(Schema::new(vec![Field::new("wait", t, true)]));
        let d = Decoder::new(schema, Format::Json).unwrap();
        let out = d
            .decode(&[
                record(1, r#"{"wait": "1 months 2 days 3500 milliseconds"}"#),
                record(2, r#"{"wait": "soon"}"#),
            ])
            .unwrap();
        let waits = out
            .batch
            .column(0)
            .as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>();
        let wait = waits.value(0);
        assert_eq!(
            (wait.months, wait.days, wait.nanoseconds),
            (1, 2, 3_500_000_000)
        );
        assert!(out.rejected[0].reason.contains("soon is not an interval"));
    }

    #[test]
    fn raw_format_and_type_checks() {
        let s = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("value", DataType::Binary, true),
            Field::new("_partition", DataType::Int32, false),
        ]));
        let d = Decoder::new(s, Format::Raw).unwrap();
        let out = d.decode(&[record(1, "\u{0}bytes")]).unwrap();
        assert_eq!(out.batch.column(0).as_string::<i32>().value(0), "k");
        assert_eq!(
            out.batch.column(1).as_binary::<i32>().value(0),
            b"\x00bytes"
        );

        let bad = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, true)]));
        assert!(Decoder::new(bad, Format::Raw)
            .unwrap_err()
            .to_string()
            .contains("body"));
        let bad = Arc::new(Schema::new(vec![Field::new(
            "_offset",
            DataType::Utf8,
            true,
        )]));
        assert!(Decoder::new(bad, Format::Json)
            .unwrap_err()
            .to_string()
            .contains("BIGINT"));
    }
}
