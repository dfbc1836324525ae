//! The Kafka JSON decoder against generated records (issue 18, part 3): seeded random JSON —
//! every JSON kind, edge numbers, long and odd strings, nested arrays and objects — plus
//! truncated JSON, invalid UTF-8 and non-object values, decoded into a table with a column of
//! every type the JSON format supports and every metadata column. Each record must become a
//! row or a rejection whose reason names a column or the value; never a panic, never a failed
//! batch.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semflow::kafka::decode::Decoder;
use semflow::kafka::options::Format;
use semflow::kafka::Record;
use serde_json::{json, Value};

fn schema() -> Arc<Schema> {
    let item = |t: DataType| Arc::new(Field::new("item", t, true));
    let mut fields: Vec<Field> = vec![
        Field::new("_key", DataType::Utf8, true),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("_headers", DataType::Utf8, true),
    ];
    let columns: Vec<(&str, DataType)> = vec![
        ("s", DataType::Utf8),
        ("ls", DataType::LargeUtf8),
        ("vs", DataType::Utf8View),
        ("b", DataType::Boolean),
        ("i8", DataType::Int8),
        ("i16", DataType::Int16),
        ("i32", DataType::Int32),
        ("i64", DataType::Int64),
        ("u8", DataType::UInt8),
        ("u64", DataType::UInt64),
        ("f32", DataType::Float32),
        ("f64", DataType::Float64),
        ("ts", DataType::Timestamp(TimeUnit::Millisecond, None)),
        (
            "tsu",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        ("vec", DataType::List(item(DataType::Float32))),
        ("fixed", DataType::FixedSizeList(item(DataType::Float32), 3)),
        ("ints", DataType::LargeList(item(DataType::Int64))),
        ("names", DataType::List(item(DataType::Utf8))),
    ];
    fields.extend(columns.into_iter().map(|(n, t)| Field::new(n, t, true)));
    Arc::new(Schema::new(fields))
}

fn random_string(rng: &mut ChaCha8Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "graphene",
        "石墨烯",
        "🦀",
        "👩\u{200d}👩\u{200d}👧",
        "e\u{301}",
        "\"",
        "\\",
        "\n",
        "\u{0}",
        "\u{ffff}",
        "2024-01-02T03:04:05Z",
        "1e400",
        "-0",
        "true",
        "null",
        " ",
    ];
    let n = if rng.random_bool(0.01) {
        2_000
    } else {
        rng.random_range(0..8)
    };
    (0..n)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn random_number(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..9) {
        0 => json!(i64::MIN),
        1 => json!(i64::MAX),
        2 => json!(u64::MAX),
        3 => json!(f64::MAX),
        4 => json!(-0.0),
        5 => json!(1.5e-300),
        6 => json!(rng.random_range(-300i64..300)),
        7 => json!(rng.random::<f64>() * 1e6 - 5e5),
        _ => json!(128),
    }
}

fn random_value(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    let kinds = if depth >= 3 { 4 } else { 6 };
    match rng.random_range(0..kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => {
            let n = if rng.random_bool(0.02) {
                200
            } else {
                rng.random_range(0..5)
            };
            Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
        }
        _ => {
            let n = rng.random_range(0..4);
            Value::Object(
                (0..n)
                    .map(|i| (format!("k{i}"), random_value(rng, depth + 1)))
                    .collect(),
            )
        }
    }
}

/// A record value: usually an object over the table's columns (random subset, random values),
/// sometimes something that is not a JSON object at all.
fn random_payload(rng: &mut ChaCha8Rng, columns: &[String]) -> Vec<u8> {
    match rng.random_range(0..20) {
        0 => b"{\"s\": \"cut".to_vec(),
        1 => vec![0xff, 0xfe, b'{', 0x80],
        2 => serde_json::to_vec(&random_value(rng, 2)).unwrap(),
        3 => b"".to_vec(),
        _ => {
            let mut object = serde_json::Map::new();
            for c in columns {
                if rng.random_bool(0.15) {
                    object.insert(c.clone(), random_value(rng, 1));
                }
            }
            if rng.random_bool(0.2) {
                object.insert("unknown".into(), random_value(rng, 1));
            }
            serde_json::to_vec(&Value::Object(object)).unwrap()
        }
    }
}

#[test]
fn json_decoder_takes_any_input_without_panicking() {
    let schema = schema();
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !n.starts_with('_'))
        .collect();
    let decoder = Decoder::new(schema.clone(), Format::Json).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let (mut tried, mut rows, mut rejected) = (0usize, 0usize, 0usize);
    for batch in 0..100 {
        let records: Vec<Record> = (0..200)
            .map(|i| Record {
                topic: "fuzz".into(),
                partition: rng.random_range(0..4),
                offset: batch * 1000 + i,
                timestamp: rng
                    .random_bool(0.9)
                    .then(|| rng.random_range(-1i64 << 40..1 << 42)),
                key: rng
                    .random_bool(0.8)
                    .then(|| random_string(&mut rng).into_bytes()),
                value: Some(random_payload(&mut rng, &columns)),
                headers: vec![("h".into(), Some(vec![0xc3, 0x28])), ("n".into(), None)],
            })
            .collect();
        tried += records.len();
        let decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode(&records)))
                .unwrap_or_else(|_| panic!("the decoder panicked in batch {batch}"))
                .unwrap_or_else(|e| panic!("batch {batch} failed as a whole: {e}"));
        assert_eq!(decoded.batch.num_rows(), decoded.rows_from.len());
        assert_eq!(
            decoded.rows_from.len() + decoded.rejected.len(),
            records.len()
        );
        for r in &decoded.rejected {
            assert!(
                !r.reason.trim().is_empty(),
                "record {} rejected without a reason",
                r.index
            );
            assert!(r.index < records.len());
        }
        if batch == 0 {
            for r in decoded.rejected.iter().take(4) {
                println!(
                    "e.g. offset {}: {}",
                    records[r.index].offset,
                    r.reason.chars().take(100).collect::<String>()
                );
            }
        }
        rows += decoded.rows_from.len();
        rejected += decoded.rejected.len();
    }
    println!("{tried} generated records: {rows} rows, {rejected} rejected with a reason");
    assert!(
        rows > 0 && rejected > 0,
        "the generator must produce both outcomes"
    );
}
