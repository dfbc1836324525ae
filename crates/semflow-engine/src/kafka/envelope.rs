//! Change-data-capture envelopes: a Debezium change event becomes the plain record semflow
//! already handles — an upsert of the row after the change, or a tombstone deleting its key —
//! so ordering per key, deletes, dead letters and exactly-once work as for any topic.
//!
//! Debezium's JSON events are `{"before", "after", "op", "source", …}`, wrapped as
//! `{"schema", "payload"}` when Kafka Connect's JSON converter embeds schemas; keys are the
//! row's primary key as a JSON object (also possibly wrapped). `op` c (create), r (snapshot
//! read) and u (update) upsert `after`; d (delete) deletes the key. The key's single field,
//! as text, is the document key (what a tombstone's key is for other topics).

use serde_json::{Map, Value};

use super::record::Record;

/// How message values are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// The value is the row.
    None,
    /// The value is a Debezium change event (JSON).
    Debezium,
}

/// Unwraps a Debezium change event into the record it stands for: the same position and
/// headers, the key as the primary key's text, the value `after` (or none for a delete).
/// The error says why the record is not a change event semflow can apply.
pub fn unwrap_debezium(record: &Record) -> Result<Record, String> {
    let key = match &record.key {
        Some(k) => Some(debezium_key(k)?.into_bytes()),
        None => None,
    };
    let value = match &record.value {
        // Debezium follows a delete with a tombstone, for log compaction: a delete again.
        None => None,
        Some(v) => change(v)?,
    };
    Ok(Record {
        key,
        value,
        ..record.clone()
    })
}

/// The value of a change event: `after` as JSON text, or none for a delete.
fn change(value: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let event: Value =
        serde_json::from_slice(value).map_err(|e| format!("Debezium envelope: not JSON ({e})"))?;
    let event = payload(event);
    let Value::Object(mut event) = event else {
        return Err("Debezium envelope: the value is not a JSON object".into());
    };
    let op = match event.get("op") {
        Some(Value::String(op)) => op.clone(),
        _ => return Err("Debezium envelope: no 'op' field".into()),
    };
    match op.as_str() {
        "c" | "r" | "u" => match event.remove("after") {
            Some(Value::Object(after)) => Ok(Some(Value::Object(after).to_string().into_bytes())),
            _ => Err(format!(
                "Debezium envelope: op '{op}' without an 'after' object"
            )),
        },
        "d" => Ok(None),
        "t" => Err("Debezium envelope: truncate events (op 't') are not applied; delete the rows or rebuild the table".into()),
        other => Err(format!(
            "Debezium envelope: unknown op '{other}' (expected c, r, u or d)"
        )),
    }
}

/// The document key from a Debezium key: its one field's value as text.
fn debezium_key(key: &[u8]) -> Result<String, String> {
    let parsed: Value =
        serde_json::from_slice(key).map_err(|e| format!("Debezium key: not JSON ({e})"))?;
    let fields: Map<String, Value> = match payload(parsed) {
        Value::Object(fields) => fields,
        _ => return Err("Debezium key: not a JSON object".into()),
    };
    let mut values = fields.into_iter();
    match (values.next(), values.next()) {
        (Some((_, value)), None) => match value {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!(
                "Debezium key: the key field is {other}, not a string, number or boolean"
            )),
        },
        (None, _) => Err("Debezium key: no field".into()),
        (Some((first, _)), Some((second, _))) => Err(format!(
            "Debezium key: composite keys ({first}, {second}, …) are not supported; key the table by one column"
        )),
    }
}

/// The `payload` of Kafka Connect's `{"schema", "payload"}` wrapping, or the value itself.
fn payload(value: Value) -> Value {
    match value {
        Value::Object(mut o) if o.len() == 2 && o.contains_key("schema") => {
            o.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            topic: "db.public.docs".into(),
            partition: 2,
            offset: 41,
            timestamp: Some(7),
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: vec![("h".into(), None)],
        }
    }

    fn text(b: &Option<Vec<u8>>) -> Option<&str> {
        b.as_deref().map(|b| std::str::from_utf8(b).unwrap())
    }

    #[test]
    fn creates_reads_and_updates_become_their_after_row() {
        for op in ["c", "r", "u"] {
            let value = format!(
                r#"{{"before":{{"id":1,"body":"old"}},"after":{{"id":1,"body":"new"}},"op":"{op}","source":{{"db":"x"}}}}"#
            );
            let got = unwrap_debezium(&record(Some(r#"{"id":1}"#), Some(&value))).unwrap();
            assert_eq!(text(&got.key), Some("1"));
            let after: Value = serde_json::from_slice(got.value.as_deref().unwrap()).unwrap();
            assert_eq!(after, serde_json::json!({"id": 1, "body": "new"}));
            assert_eq!((got.partition, got.offset, got.timestamp), (2, 41, Some(7)));
            assert_eq!(got.headers.len(), 1);
        }
    }

    #[test]
    fn deletes_and_their_tombstones_delete_the_key() {
        let delete = r#"{"before":{"id":"doc-9"},"after":null,"op":"d"}"#;
        let got = unwrap_debezium(&record(Some(r#"{"id":"doc-9"}"#), Some(delete))).unwrap();
        assert_eq!((text(&got.key), got.value), (Some("doc-9"), None));
        let got = unwrap_debezium(&record(Some(r#"{"id":"doc-9"}"#), None)).unwrap();
        assert_eq!((text(&got.key), got.value), (Some("doc-9"), None));
    }

    #[test]
    fn schema_wrapped_events_and_keys_are_unwrapped() {
        let value = r#"{"schema":{"type":"struct"},"payload":{"after":{"id":5},"op":"c"}}"#;
        let key = r#"{"schema":{"type":"struct"},"payload":{"id":5}}"#;
        let got = unwrap_debezium(&record(Some(key), Some(value))).unwrap();
        assert_eq!(text(&got.key), Some("5"));
        assert_eq!(text(&got.value), Some(r#"{"id":5}"#));
    }

    #[test]
    fn what_cannot_be_applied_is_refused_with_the_reason() {
        let cases = [
            (r#"{"id":1}"#, "not json", "not JSON"),
            (r#"{"id":1}"#, r#"{"after":{"id":1}}"#, "no 'op'"),
            (
                r#"{"id":1}"#,
                r#"{"op":"u","after":null}"#,
                "without an 'after'",
            ),
            (r#"{"id":1}"#, r#"{"op":"t"}"#, "truncate"),
            (r#"{"id":1}"#, r#"{"op":"x"}"#, "unknown op 'x'"),
            (r#"{"a":1,"b":2}"#, r#"{"op":"d"}"#, "composite keys (a, b"),
            (
                r#"{"id":[1]}"#,
                r#"{"op":"d"}"#,
                "not a string, number or boolean",
            ),
            ("7", r#"{"op":"d"}"#, "not a JSON object"),
        ];
        for (key, value, want) in cases {
            let err = unwrap_debezium(&record(Some(key), Some(value))).unwrap_err();
            assert!(err.contains(want), "{key} {value}: {err}");
        }
    }
}
