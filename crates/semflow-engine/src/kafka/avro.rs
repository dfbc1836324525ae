//! Avro records for Kafka tables (`'format' 'avro'`): a value read with its writer schema
//! becomes the JSON object the one decoding path reads ([`super::registry`] finds the schema),
//! and rows written to a Kafka table become Avro of a schema derived from the table.
//!
//! Logical types become what the JSON path reads unambiguously: timestamps as RFC 3339 text
//! (milliseconds precision kept as numbers), dates and times as ISO text, UUIDs as text, bytes
//! and fixed as base64, decimals as exact decimal text (DECIMAL columns read it), durations as
//! interval text (`1 months 2 days 3 milliseconds`, for INTERVAL columns).

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use serde_json::{Map, Value as Json};

use super::producer::json_rows;
use super::registry::enframe;
use crate::error::{Error, Result};

/// A writer schema from the registry. Field defaults are dropped first: they only matter when
/// a reader resolves one schema against another, which semflow never does (it reads each
/// value with its own writer schema), and apache-avro refuses some the Avro spec allows
/// (a string default for a `bytes` decimal, which Confluent's serializers register).
pub fn parse_writer_schema(text: &str) -> std::result::Result<Schema, String> {
    let mut json: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    drop_field_defaults(&mut json);
    Schema::parse(&json).map_err(|e| e.to_string())
}

fn drop_field_defaults(json: &mut Json) {
    match json {
        Json::Object(map) => {
            if let Some(Json::Array(fields)) = map.get_mut("fields") {
                for field in fields.iter_mut() {
                    if let Json::Object(f) = field {
                        f.remove("default");
                    }
                }
            }
            map.values_mut().for_each(drop_field_defaults);
        }
        Json::Array(items) => items.iter_mut().for_each(drop_field_defaults),
        _ => {}
    }
}

/// A registry-framed value's Avro body (after magic byte and id), read with `schema`.
pub fn decode(schema: &Schema, mut body: &[u8]) -> std::result::Result<Json, String> {
    let value = apache_avro::from_avro_datum(schema, &mut body, None)
        .map_err(|e| format!("not Avro of its schema: {e}"))?;
    if !body.is_empty() {
        return Err(format!("{} bytes left over after the record", body.len()));
    }
    let value = if has_decimal(&value) {
        // Only the schema knows a decimal's scale: its values become exact text first.
        let resolved = apache_avro::schema::ResolvedSchema::try_from(schema)
            .map_err(|e| format!("schema: {e}"))?;
        decimals_as_text(value, schema, resolved.get_names(), "")?
    } else {
        value
    };
    to_json(value, "")
}

/// Whether `value` holds a decimal anywhere.
fn has_decimal(value: &Avro) -> bool {
    match value {
        Avro::Decimal(_) | Avro::BigDecimal(_) => true,
        Avro::Union(_, inner) => has_decimal(inner),
        Avro::Array(items) => items.iter().any(has_decimal),
        Avro::Map(entries) => entries.values().any(has_decimal),
        Avro::Record(fields) => fields.iter().any(|(_, v)| has_decimal(v)),
        _ => false,
    }
}

/// `value` with its decimals as exact decimal text (`"-12.34"`), read with the scale `schema`
/// gives them; the JSON decoder reads the text into DECIMAL columns.
fn decimals_as_text(
    value: Avro,
    schema: &Schema,
    names: &apache_avro::schema::NamesRef,
    path: &str,
) -> std::result::Result<Avro, String> {
    use apache_avro::schema::Schema as S;
    let schema = match schema {
        S::Ref { name } => names
            .get(name)
            .copied()
            .ok_or_else(|| format!("{path}: unknown schema name {name}"))?,
        other => other,
    };
    let at = |name: &str| match path {
        "" => name.to_string(),
        _ => format!("{path}.{name}"),
    };
    Ok(match (value, schema) {
        (Avro::Decimal(d), S::Decimal(decimal)) => {
            Avro::String(decimal_text(&d, decimal.scale).map_err(|e| format!("{path}: {e}"))?)
        }
        (Avro::BigDecimal(d), _) => Avro::String(d.to_string()),
        (Avro::Union(i, inner), S::Union(union)) => {
            let variant = union
                .variants()
                .get(i as usize)
                .ok_or_else(|| format!("{path}: union branch {i} is not in the schema"))?;
            Avro::Union(i, Box::new(decimals_as_text(*inner, variant, names, path)?))
        }
        (Avro::Array(items), S::Array(array)) => Avro::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| decimals_as_text(v, &array.items, names, &format!("{path}[{i}]")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        (Avro::Map(entries), S::Map(map)) => Avro::Map(
            entries
                .into_iter()
                .map(|(k, v)| Ok((k.clone(), decimals_as_text(v, &map.types, names, &at(&k))?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        (Avro::Record(fields), S::Record(record)) => Avro::Record(
            fields
                .into_iter()
                .map(|(k, v)| {
                    let v = match record.lookup.get(&k).map(|i| &record.fields[*i].schema) {
                        Some(field) => decimals_as_text(v, field, names, &at(&k))?,
                        None => v,
                    };
                    Ok((k, v))
                })
                .collect::<std::result::Result<_, String>>()?,
        ),
        (other, _) => other,
    })
}

/// An Avro decimal (big-endian two's complement unscaled value) as text with `scale` digits
/// after the point. Up to 38 digits (Arrow's Decimal128).
fn decimal_text(
    decimal: &apache_avro::Decimal,
    scale: usize,
) -> std::result::Result<String, String> {
    let bytes: Vec<u8> = decimal
        .try_into()
        .map_err(|e: apache_avro::Error| e.to_string())?;
    if bytes.len() > 16 {
        return Err(format!(
            "a decimal of {} bytes is wider than 128 bits",
            bytes.len()
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut full = [if negative { 0xff } else { 0 }; 16];
    full[16 - bytes.len()..].copy_from_slice(&bytes);
    let unscaled = i128::from_be_bytes(full);
    let digits = unscaled.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    Ok(match scale {
        0 => format!("{sign}{whole}"),
        _ => format!("{sign}{whole}.{fraction}"),
    })
}

/// The Avro schema semflow registers for rows of `table` written to `topic`: a record of the
/// table's columns, nullable ones as `["null", T]` with a null default (so readers of later
/// versions can drop or add them).
pub fn writer_schema(topic: &str, table: &arrow::datatypes::Schema) -> Result<Schema> {
    let name = super::registry::schema_name(topic);
    let fields = table
        .fields()
        .iter()
        .map(|f| {
            let t = avro_type(f.data_type()).map_err(|e| {
                Error::InvalidArgument(format!(
                    "KAFKA sink {topic}: column {} ({}) cannot be written as Avro: {e}",
                    f.name(),
                    f.data_type()
                ))
            })?;
            Ok(match f.is_nullable() {
                true => serde_json::json!({"name": f.name(), "type": ["null", t], "default": null}),
                false => serde_json::json!({"name": f.name(), "type": t}),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let record = serde_json::json!({"type": "record", "name": name, "namespace": "semflow", "fields": fields});
    Schema::parse(&record).map_err(|e| Error::InvalidArgument(format!("KAFKA sink {topic}: {e}")))
}

/// An Arrow type as an Avro type (JSON schema fragment).
fn avro_type(t: &arrow::datatypes::DataType) -> std::result::Result<Json, String> {
    use arrow::datatypes::{DataType as T, TimeUnit};
    Ok(match t {
        T::Utf8 | T::LargeUtf8 | T::Utf8View => "string".into(),
        T::Boolean => "boolean".into(),
        T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 => "int".into(),
        T::Int64 | T::UInt32 => "long".into(),
        T::Float32 => "float".into(),
        T::Float64 => "double".into(),
        T::Date32 => serde_json::json!({"type": "int", "logicalType": "date"}),
        T::Decimal128(precision, scale) if *scale >= 0 => serde_json::json!(
            {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}
        ),
        T::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => {
            serde_json::json!({"type": "long", "logicalType": "timestamp-millis"})
        }
        T::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _) => {
            serde_json::json!({"type": "long", "logicalType": "timestamp-micros"})
        }
        T::List(item) | T::LargeList(item) | T::FixedSizeList(item, _) => {
            let items = avro_type(item.data_type())?;
            let items = match item.is_nullable() {
                true => serde_json::json!(["null", items]),
                false => items,
            };
            serde_json::json!({"type": "array", "items": items})
        }
        other => return Err(format!("no Avro mapping for {other}")),
    })
}

/// Rows of `batch` as registry-framed Avro of `schema`, registered as `id`. Timestamps and
/// dates go as the numbers Avro's logical types hold; the rest through Arrow's JSON rows,
/// resolved against the schema.
pub fn encode_rows(batch: &RecordBatch, schema: &Schema, id: u32) -> Result<Vec<Vec<u8>>> {
    json_rows(&with_avro_numbers(batch)?)?
        .iter()
        .enumerate()
        .map(|(row, line)| {
            let json: Json = serde_json::from_slice(line)
                .map_err(|e| Error::Kafka(format!("row {row} as JSON: {e}")))?;
            let value = decimals_from_text(Avro::from(json), schema)
                .and_then(|v| v.resolve(schema).map_err(|e| e.to_string()))
                .map_err(|e| Error::Kafka(format!("row {row} as Avro: {e}")))?;
            let body = apache_avro::to_avro_datum(schema, value)
                .map_err(|e| Error::Kafka(format!("row {row} as Avro: {e}")))?;
            Ok(enframe(id, &body))
        })
        .collect()
}

/// `value` (a row as JSON made Avro) with the decimal text of DECIMAL columns (see
/// [`with_avro_numbers`]) as Avro decimals of the scale `schema` gives them.
fn decimals_from_text(value: Avro, schema: &Schema) -> std::result::Result<Avro, String> {
    use apache_avro::schema::Schema as S;
    Ok(match (value, schema) {
        (Avro::String(text), S::Decimal(decimal)) => {
            Avro::Decimal(decimal_bytes(&text, decimal.precision, decimal.scale)?.into())
        }
        (Avro::Null, S::Union(_)) => Avro::Null,
        (value, S::Union(union)) => match union.variants().iter().find(|v| **v != S::Null) {
            Some(inner) => decimals_from_text(value, inner)?,
            None => value,
        },
        (Avro::Array(items), S::Array(array)) => Avro::Array(
            items
                .into_iter()
                .map(|v| decimals_from_text(v, &array.items))
                .collect::<std::result::Result<_, _>>()?,
        ),
        (Avro::Map(entries), S::Record(record)) => Avro::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let v = match record.lookup.get(&k).map(|i| &record.fields[*i].schema) {
                        Some(field) => decimals_from_text(v, field)?,
                        None => v,
                    };
                    Ok((k, v))
                })
                .collect::<std::result::Result<_, String>>()?,
        ),
        (other, _) => other,
    })
}

/// Decimal text (`-12.34`) as an Avro decimal's unscaled value: big-endian two's complement,
/// in as many bytes as any value of `precision` digits needs (apache-avro checks that).
fn decimal_bytes(
    text: &str,
    precision: usize,
    scale: usize,
) -> std::result::Result<Vec<u8>, String> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > scale {
        return Err(format!("{text} has more than {scale} decimal places"));
    }
    let digits = format!("{whole}{fraction:0<scale$}");
    let unscaled: i128 = digits
        .parse()
        .map_err(|_| format!("{text} is not a decimal number"))?;
    let bytes = unscaled.to_be_bytes();
    let sign = if unscaled < 0 { 0xff } else { 0 };
    // Drop leading sign bytes while the next byte still carries the sign bit, down to the
    // width the precision needs.
    let width = ((precision as f64 * 10f64.log2() + 1.0) / 8.0).ceil() as usize;
    let start = (0..15)
        .take_while(|&i| bytes[i] == sign && (bytes[i + 1] & 0x80) == (sign & 0x80))
        .count()
        .min(16 - width.clamp(1, 16));
    Ok(bytes[start..].to_vec())
}

/// Timestamps as epoch milliseconds or microseconds (per [`avro_type`]), dates as days.
fn with_avro_numbers(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::datatypes::{DataType as T, TimeUnit};
    super::producer::recast(batch, |t| match t {
        T::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => {
            vec![T::Timestamp(TimeUnit::Millisecond, None), T::Int64]
        }
        T::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _) => {
            vec![T::Timestamp(TimeUnit::Microsecond, None), T::Int64]
        }
        T::Date32 => vec![T::Int32],
        // Exact text, made Avro decimals by `decimals_from_text` (JSON numbers would go
        // through f64).
        T::Decimal128(..) => vec![T::Utf8],
        _ => vec![],
    })
}

/// One Avro value as JSON the decoder reads (see the module notes); `path` names the field
/// in errors.
fn to_json(value: Avro, path: &str) -> std::result::Result<Json, String> {
    let at = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let text = |s: String| Ok(Json::String(s));
    match value {
        Avro::Null => Ok(Json::Null),
        Avro::Boolean(b) => Ok(Json::Bool(b)),
        Avro::Int(n) => Ok(n.into()),
        Avro::Long(n) => Ok(n.into()),
        Avro::Float(f) => Ok(float(f as f64)),
        Avro::Double(f) => Ok(float(f)),
        Avro::String(s) | Avro::Enum(_, s) => text(s),
        Avro::Bytes(b) | Avro::Fixed(_, b) => {
            text(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Avro::Uuid(u) => text(u.to_string()),
        Avro::Union(_, inner) => to_json(*inner, path),
        Avro::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Json::Array),
        Avro::Map(entries) => entries
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), to_json(v, &at(&k))?)))
            .collect::<std::result::Result<Map<_, _>, String>>()
            .map(Json::Object),
        Avro::Record(fields) => fields
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), to_json(v, &at(&k))?)))
            .collect::<std::result::Result<Map<_, _>, String>>()
            .map(Json::Object),
        // Integers are read as milliseconds since the epoch, so milliseconds stay numbers.
        Avro::TimestampMillis(ms) => Ok(ms.into()),
        Avro::TimestampMicros(us) => instant(chrono::DateTime::from_timestamp_micros(us), true),
        Avro::TimestampNanos(ns) => instant(Some(chrono::DateTime::from_timestamp_nanos(ns)), true),
        Avro::LocalTimestampMillis(ms) => {
            instant(chrono::DateTime::from_timestamp_millis(ms), false)
        }
        Avro::LocalTimestampMicros(us) => {
            instant(chrono::DateTime::from_timestamp_micros(us), false)
        }
        Avro::LocalTimestampNanos(ns) => {
            instant(Some(chrono::DateTime::from_timestamp_nanos(ns)), false)
        }
        Avro::Date(days) => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(days as i64)))
            .map(|d| Json::String(d.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| format!("{path}: date {days} days from 1970 is out of range")),
        Avro::TimeMillis(ms) => time_of_day(ms as i64 * 1_000, path),
        Avro::TimeMicros(us) => time_of_day(us, path),
        // Made text by `decimals_as_text` before; reached only without a schema.
        Avro::Decimal(_) | Avro::BigDecimal(_) => Err(format!(
            "{}: an Avro decimal without its schema",
            if path.is_empty() { "value" } else { path }
        )),
        // The interval text INTERVAL columns read (and people can).
        Avro::Duration(d) => text(format!(
            "{} months {} days {} milliseconds",
            u32::from(d.months()),
            u32::from(d.days()),
            u32::from(d.millis())
        )),
    }
}

/// Finite floats as numbers; NaN and infinities as the text float parsing reads back.
fn float(f: f64) -> Json {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or_else(|| Json::String(f.to_string()))
}

fn instant(
    at: Option<chrono::DateTime<chrono::Utc>>,
    utc: bool,
) -> std::result::Result<Json, String> {
    let at = at.ok_or("timestamp out of range")?;
    Ok(Json::String(if utc {
        at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    } else {
        at.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string()
    }))
}

fn time_of_day(micros: i64, path: &str) -> std::result::Result<Json, String> {
    let seconds = micros.div_euclid(1_000_000);
    let nanos = (micros.rem_euclid(1_000_000) * 1_000) as u32;
    chrono::NaiveTime::from_num_seconds_from_midnight_opt(seconds as u32, nanos)
        .filter(|_| (0..86_400).contains(&seconds))
        .map(|t| Json::String(t.format("%H:%M:%S%.f").to_string()))
        .ok_or_else(|| format!("{path}: time of day {micros} µs is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::options::Format;
    use crate::kafka::registry::tests::{framed, read_value, registry_with};
    use crate::kafka::registry::WriterSchema;
    use std::sync::Arc;

    #[test]
    fn values_of_evolving_schemas_become_json_objects() {
        let v1 = Schema::parse_str(
            r#"{"type":"record","name":"Doc","fields":[
                {"name":"id","type":"string"},{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        let v2 = Schema::parse_str(
            r#"{"type":"record","name":"Doc","fields":[
                {"name":"id","type":"string"},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
                {"name":"day","type":{"type":"int","logicalType":"date"}},
                {"name":"note","type":["null","string"],"default":null}]}"#,
        )
        .unwrap();
        let registry = registry_with(
            Format::Avro,
            vec![
                (1, WriterSchema::Avro(v1.clone())),
                (2, WriterSchema::Avro(v2.clone())),
            ],
        );
        let first = framed(
            1,
            &v1,
            Avro::Record(vec![
                ("id".into(), Avro::String("a".into())),
                ("n".into(), Avro::Long(3)),
            ]),
        );
        let second = framed(
            2,
            &v2,
            Avro::Record(vec![
                ("id".into(), Avro::String("b".into())),
                ("tags".into(), Avro::Array(vec![Avro::String("x".into())])),
                ("at".into(), Avro::TimestampMicros(1_700_000_000_123_456)),
                ("day".into(), Avro::Date(19_000)),
                ("note".into(), Avro::Union(0, Box::new(Avro::Null))),
            ]),
        );
        let json = |bytes: &[u8]| read_value(&registry, bytes);
        assert_eq!(json(&first), serde_json::json!({"id": "a", "n": 3}));
        assert_eq!(
            json(&second),
            serde_json::json!({"id": "b", "tags": ["x"],
                "at": "2023-11-14T22:13:20.123456Z", "day": "2022-01-08", "note": null})
        );
    }

    #[test]
    fn writer_schemas_with_defaults_apache_avro_refuses_still_read() {
        let text = r#"{"type": "record", "name": "Doc", "namespace": "t", "fields": [
            {"name": "id", "type": "string", "default": ""},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal",
                "precision": 9, "scale": 2}, "default": "\u0000"}]}"#;
        assert!(
            Schema::parse_str(text).is_err(),
            "apache-avro accepts it now: drop the workaround"
        );
        let schema = parse_writer_schema(text).unwrap();
        let value = Avro::Record(vec![
            ("id".into(), Avro::String("a".into())),
            (
                "price".into(),
                Avro::Decimal(apache_avro::Decimal::from(vec![4u8, 210])),
            ),
        ]);
        let body = apache_avro::to_avro_datum(&schema, value).unwrap();
        assert_eq!(
            decode(&schema, &body).unwrap(),
            serde_json::json!({"id": "a", "price": "12.34"})
        );
    }

    #[test]
    fn durations_read_as_interval_text() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"P","fields":[{"name":"wait","type":
                {"type":"fixed","name":"D","size":12,"logicalType":"duration"}}]}"#,
        )
        .unwrap();
        let duration = apache_avro::Duration::new(
            apache_avro::Months::new(1),
            apache_avro::Days::new(2),
            apache_avro::Millis::new(3_500),
        );
        let value = Avro::Record(vec![("wait".into(), Avro::Duration(duration))]);
        let body = apache_avro::to_avro_datum(&schema, value).unwrap();
        assert_eq!(
            decode(&schema, &body).unwrap(),
            serde_json::json!({"wait": "1 months 2 days 3500 milliseconds"})
        );
    }

    #[test]
    fn decimals_read_as_exact_text_with_their_scale() {
        let decimal = Schema::parse_str(
            r#"{"type":"record","name":"P","fields":[
                {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
                {"name":"maybe","type":["null",{"type":"bytes","logicalType":"decimal","precision":4,"scale":3}]},
                {"name":"many","type":{"type":"array","items":{"type":"bytes","logicalType":"decimal","precision":5,"scale":0}}}]}"#,
        )
        .unwrap();
        let value = Avro::Record(vec![
            // 0x0102 = 258 → 2.58; -5 at scale 3 → -0.005; 7 at scale 0.
            (
                "price".into(),
                Avro::Decimal(apache_avro::Decimal::from(vec![1u8, 2])),
            ),
            (
                "maybe".into(),
                Avro::Union(
                    1,
                    Box::new(Avro::Decimal(apache_avro::Decimal::from(vec![0xfbu8]))),
                ),
            ),
            (
                "many".into(),
                Avro::Array(vec![Avro::Decimal(apache_avro::Decimal::from(vec![7u8]))]),
            ),
        ]);
        let body = apache_avro::to_avro_datum(&decimal, value).unwrap();
        assert_eq!(
            decode(&decimal, &body).unwrap(),
            serde_json::json!({"price": "2.58", "maybe": "-0.005", "many": ["7"]})
        );
    }

    #[test]
    fn rows_written_as_avro_read_back() {
        use arrow::array::{
            ArrayRef, Date32Array, FixedSizeListArray, Float32Array, Int32Array, StringArray,
            TimestampMillisecondArray,
        };
        use arrow::datatypes::{DataType, Field, TimeUnit};
        let vector = Arc::new(Field::new_list_field(DataType::Float32, true));
        let table = arrow::datatypes::Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("body", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("day", DataType::Date32, true),
            Field::new("v", DataType::FixedSizeList(vector.clone(), 2), true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(StringArray::from(vec![Some("hello"), None])),
            Arc::new(Int32Array::from(vec![Some(7), None])),
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_700_000_000_123),
                None,
            ])),
            Arc::new(Date32Array::from(vec![Some(19_000), None])),
            Arc::new(FixedSizeListArray::new(
                vector,
                2,
                Arc::new(Float32Array::from(vec![0.5, -1.0, 0.25, 2.0])),
                None,
            )),
        ];
        let batch = RecordBatch::try_new(Arc::new(table.clone()), columns).unwrap();
        let schema = writer_schema("my-topic.v1", &table).unwrap();
        assert!(schema
            .canonical_form()
            .contains(r#""name":"semflow.my_topic_v1""#));
        let rows = encode_rows(&batch, &schema, 9).unwrap();
        let registry = registry_with(Format::Avro, vec![(9, WriterSchema::Avro(schema))]);
        let read = |bytes: &[u8]| read_value(&registry, bytes);
        assert_eq!(
            read(&rows[0]),
            serde_json::json!({"id": "a", "body": "hello", "n": 7, "at": 1_700_000_000_123i64,
                "day": "2022-01-08", "v": [0.5, -1.0]})
        );
        assert_eq!(
            read(&rows[1]),
            serde_json::json!({"id": "b", "body": null, "n": null, "at": null, "day": null,
                "v": [0.25, 2.0]})
        );
        // DECIMAL columns as Avro decimals of their scale, exactly.
        let prices = arrow::array::Decimal128Array::from(vec![Some(1234), Some(-50), None])
            .with_precision_and_scale(9, 2)
            .unwrap();
        let table = arrow::datatypes::Schema::new(vec![Field::new(
            "price",
            DataType::Decimal128(9, 2),
            true,
        )]);
        let schema = writer_schema("t", &table).unwrap();
        let batch =
            RecordBatch::try_new(Arc::new(table), vec![Arc::new(prices) as ArrayRef]).unwrap();
        let rows = encode_rows(&batch, &schema, 3).unwrap();
        let read: Vec<Json> = rows
            .iter()
            .map(|r| decode(&schema, &r[5..]).unwrap())
            .collect();
        assert_eq!(
            read,
            [
                serde_json::json!({"price": "12.34"}),
                serde_json::json!({"price": "-0.50"}),
                serde_json::json!({"price": null}),
            ]
        );
        assert_eq!(decimal_bytes("-0.50", 2, 2).unwrap(), [0xce]);
        assert_eq!(decimal_bytes("1.28", 2, 2).unwrap(), [0x00, 0x80]);
        assert_eq!(
            decimal_bytes("-0.50", 9, 2).unwrap(),
            [0xff, 0xff, 0xff, 0xce]
        );
        assert!(decimal_bytes("1.234", 9, 2).is_err());
    }
}
