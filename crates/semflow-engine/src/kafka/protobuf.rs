//! Protobuf records for Kafka tables (`'format' 'protobuf'`): Confluent's framing adds, after
//! the schema id, the path of the message type in the schema's file (zig-zag varints: a count,
//! then indexes; a lone 0 means the first message). The registry serves the schema as
//! `.proto` text or, as Confluent's Python serializer registers it, a base64
//! `FileDescriptorProto`; protox compiles either (with the well-known `google/protobuf/*`
//! types built in) and prost-reflect decodes the message, which becomes JSON with the
//! `.proto` field names and every field present (proto3 leaves defaults out of the wire).
//!
//! Writing (`INSERT INTO` a `'protobuf'` table): [`writer_schema`] derives a proto3 message
//! from the table's columns (nullable scalars `optional`, lists `repeated`), registered like
//! Confluent's serializer registers one, and [`ProtoSchema::encode_rows`] frames each row as
//! that message.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DynamicMessage, FileDescriptor, MessageDescriptor, SerializeOptions};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::Value as Json;

/// The name the registry's schema is compiled under.
const FILE: &str = "semflow_registry.proto";

/// A compiled writer schema.
#[derive(Debug)]
pub struct ProtoSchema {
    file: FileDescriptor,
}

/// Serves the registry's one file to the compiler.
struct OneFile(File);

impl FileResolver for OneFile {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match name == FILE {
            true => Ok(self.0.clone()),
            false => Err(protox::Error::file_not_found(name)),
        }
    }
}

impl ProtoSchema {
    /// Compiles the registry's schema text: `.proto` source or a base64 `FileDescriptorProto`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file = match descriptor_proto(text) {
            Some(mut proto) => {
                proto.name = Some(FILE.into());
                File::from_file_descriptor_proto(proto)
            }
            None => File::from_source(FILE, text).map_err(|e| format!("not a .proto: {e}"))?,
        };
        let mut resolver = ChainFileResolver::new();
        resolver.add(OneFile(file));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler
            .open_file(FILE)
            .map_err(|e| format!("protobuf schema: {e}"))?;
        let file = compiler
            .descriptor_pool()
            .get_file_by_name(FILE)
            .ok_or("protobuf schema: the compiled file is missing")?;
        if file.messages().len() == 0 {
            return Err("protobuf schema declares no message".into());
        }
        Ok(Self { file })
    }

    /// The body after the magic byte and id: message indexes, then the message, as JSON.
    pub fn decode(&self, body: &[u8]) -> Result<Json, String> {
        let (path, payload) = message_indexes(body)?;
        let descriptor = self.message_at(&path)?;
        let message = DynamicMessage::decode(descriptor.clone(), payload)
            .map_err(|e| format!("not a protobuf {}: {e}", descriptor.full_name()))?;
        let options = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true)
            .skip_default_fields(false);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| format!("{}: {e}", descriptor.full_name()))
    }

    /// Rows of `batch` as registry-framed messages of this schema's first message, registered
    /// as `id`: magic byte, id, message index path `[0]` (one zero byte), the message.
    pub fn encode_rows(
        &self,
        batch: &arrow::record_batch::RecordBatch,
        id: u32,
    ) -> crate::error::Result<Vec<Vec<u8>>> {
        use crate::error::Error;
        let descriptor = self.message_at(&[0]).map_err(Error::Kafka)?;
        super::producer::json_rows(&with_utc_offsets(batch)?)?
            .iter()
            .enumerate()
            .map(|(row, line)| {
                let mut json = serde_json::Deserializer::from_slice(line);
                let message =
                    DynamicMessage::deserialize(descriptor.clone(), &mut json).map_err(|e| {
                        Error::Kafka(format!("row {row} as {}: {e}", descriptor.full_name()))
                    })?;
                let mut body = vec![0u8];
                message
                    .encode(&mut body)
                    .map_err(|e| Error::Kafka(format!("row {row}: {e}")))?;
                Ok(super::registry::enframe(id, &body))
            })
            .collect()
    }

    /// The message type at `path` (top-level index, then nested indexes).
    fn message_at(&self, path: &[usize]) -> Result<MessageDescriptor, String> {
        let missing = || format!("no message at index path {path:?} in the schema");
        let (first, rest) = path.split_first().ok_or_else(missing)?;
        let mut message = self.file.messages().nth(*first).ok_or_else(missing)?;
        for i in rest {
            let child = message.child_messages().nth(*i).ok_or_else(missing)?;
            message = child;
        }
        Ok(message)
    }
}

/// `batch` with zone-less timestamps marked UTC, so their JSON text carries the offset that
/// Protobuf's JSON form of `Timestamp` requires.
fn with_utc_offsets(
    batch: &arrow::record_batch::RecordBatch,
) -> crate::error::Result<arrow::record_batch::RecordBatch> {
    use arrow::datatypes::DataType;
    super::producer::recast(batch, |t| match t {
        DataType::Timestamp(unit, None) => {
            vec![DataType::Timestamp(*unit, Some("+00:00".into()))]
        }
        _ => vec![],
    })
}

/// A proto3 schema with one message, named after `topic`, holding `table`'s columns in order:
/// what `INSERT INTO` a `'protobuf'` Kafka table registers: TIMESTAMP columns as
/// `google.protobuf.Timestamp`, DATE as ISO text. Columns whose type has no Protobuf
/// counterpart (decimals, nested structs) are refused by name.
pub fn writer_schema(
    topic: &str,
    table: &arrow::datatypes::Schema,
) -> crate::error::Result<String> {
    use crate::error::Error;
    let refuse = |column: &str, why: String| {
        Error::InvalidArgument(format!(
            "KAFKA sink {topic}: column {column} cannot be written as Protobuf: {why}"
        ))
    };
    let mut fields = String::new();
    for (number, field) in table.fields().iter().enumerate() {
        let name = field.name();
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(refuse(name, "the name is not a Protobuf identifier".into()));
        }
        let (label, kind) = match proto_type(field.data_type()) {
            // Messages have presence already.
            Ok(ProtoField::Scalar(kind)) if kind == TIMESTAMP => ("", kind),
            Ok(ProtoField::Scalar(kind)) if field.is_nullable() => ("optional ", kind),
            Ok(ProtoField::Scalar(kind)) => ("", kind),
            Ok(ProtoField::Repeated(kind)) => ("repeated ", kind),
            Err(why) => return Err(refuse(name, why)),
        };
        fields.push_str(&format!("  {label}{kind} {name} = {};\n", number + 1));
    }
    let import = match fields.contains(TIMESTAMP) {
        true => "import \"google/protobuf/timestamp.proto\";\n",
        false => "",
    };
    Ok(format!(
        "syntax = \"proto3\";\npackage semflow;\n{import}\nmessage {} {{\n{fields}}}\n",
        super::registry::schema_name(topic)
    ))
}

/// TIMESTAMP columns' Protobuf type.
const TIMESTAMP: &str = "google.protobuf.Timestamp";

enum ProtoField {
    Scalar(&'static str),
    Repeated(&'static str),
}

fn proto_type(t: &arrow::datatypes::DataType) -> Result<ProtoField, String> {
    use arrow::datatypes::DataType as T;
    let scalar = |t: &T| -> Option<&'static str> {
        Some(match t {
            T::Utf8 | T::LargeUtf8 | T::Utf8View => "string",
            T::Boolean => "bool",
            T::Int8 | T::Int16 | T::Int32 => "int32",
            T::Int64 => "int64",
            T::UInt8 | T::UInt16 | T::UInt32 => "uint32",
            T::UInt64 => "uint64",
            T::Float32 => "float",
            T::Float64 => "double",
            T::Binary | T::LargeBinary => "bytes",
            T::Timestamp(..) => TIMESTAMP,
            // ISO dates, as Arrow writes them.
            T::Date32 | T::Date64 => "string",
            _ => return None,
        })
    };
    match t {
        T::List(item) | T::LargeList(item) | T::FixedSizeList(item, _) => scalar(item.data_type())
            .map(ProtoField::Repeated)
            .ok_or_else(|| format!("no Protobuf mapping for lists of {}", item.data_type())),
        other => scalar(other).map(ProtoField::Scalar).ok_or_else(|| {
            format!("no Protobuf mapping for {other} (cast it to text or a number)")
        }),
    }
}

/// A base64 `FileDescriptorProto`, when `text` is one (`.proto` source never decodes as one:
/// its spaces and quotes are not base64).
fn descriptor_proto(text: &str) -> Option<prost_types::FileDescriptorProto> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

/// Confluent's message-index path (zig-zag varints: count, then indexes; a lone 0 is `[0]`)
/// and the protobuf payload after it.
fn message_indexes(body: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let mut rest = body;
    let mut next = || -> Result<usize, String> {
        let raw =
            prost::encoding::decode_varint(&mut rest).map_err(|e| format!("message index: {e}"))?;
        let n = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        usize::try_from(n).map_err(|_| format!("message index {n} is negative"))
    };
    let count = next()?;
    let path = match count {
        0 => vec![0],
        n if n > 64 => return Err(format!("{n} message indexes: not protobuf framing")),
        n => (0..n).map(|_| next()).collect::<Result<Vec<_>, _>>()?,
    };
    Ok((path, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const PROTO: &str = r#"
        syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        message Doc {
            string id = 1;
            string body = 2;
            int64 n = 3;
            repeated string tags = 4;
            google.protobuf.Timestamp at = 5;
            message Note { string text = 1; }
        }
    "#;

    fn zigzag(values: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            prost::encoding::encode_varint(((v << 1) ^ (v >> 63)) as u64, &mut out);
        }
        out
    }

    fn encode(schema: &ProtoSchema, path: &[usize], json: Json) -> Vec<u8> {
        let descriptor = schema.message_at(path).unwrap();
        let message = DynamicMessage::deserialize(descriptor, json).unwrap();
        message.encode_to_vec()
    }

    #[test]
    fn messages_decode_with_proto_names_and_defaults() {
        let schema = ProtoSchema::parse(PROTO).unwrap();
        let payload = encode(
            &schema,
            &[0],
            serde_json::json!({"id": "d1", "tags": ["a"], "at": "2023-11-14T22:13:20.123Z"}),
        );
        // The common case: a lone 0 for the first message.
        let mut body = vec![0];
        body.extend(&payload);
        assert_eq!(
            schema.decode(&body).unwrap(),
            serde_json::json!({"id": "d1", "body": "", "n": 0, "tags": ["a"],
                "at": "2023-11-14T22:13:20.123Z"})
        );
        // A nested message by its path [0, 0].
        let note = encode(&schema, &[0, 0], serde_json::json!({"text": "hi"}));
        let mut body = zigzag(&[2, 0, 0]);
        body.extend(&note);
        assert_eq!(
            schema.decode(&body).unwrap(),
            serde_json::json!({"text": "hi"})
        );
        let mut body = zigzag(&[1, 5]);
        body.extend(&note);
        assert!(schema.decode(&body).unwrap_err().contains("index path [5]"));
    }

    #[test]
    fn descriptors_in_base64_compile_like_source() {
        let source = ProtoSchema::parse(PROTO).unwrap();
        let proto = source.file.file_descriptor_proto().clone();
        let text = base64::engine::general_purpose::STANDARD.encode(proto.encode_to_vec());
        let schema = ProtoSchema::parse(&text).unwrap();
        let payload = encode(&schema, &[0], serde_json::json!({"id": "x", "n": 5}));
        let mut body = vec![0];
        body.extend(&payload);
        assert_eq!(schema.decode(&body).unwrap()["n"], 5);
        assert!(ProtoSchema::parse("message {")
            .unwrap_err()
            .contains(".proto"));
    }

    #[test]
    fn table_columns_become_a_message_that_round_trips() {
        use arrow::array::{Int32Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("body", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
            Field::new_list("v", Field::new_list_field(DataType::Float32, true), true),
        ]);
        let proto = writer_schema("docs-out", &schema).unwrap();
        assert_eq!(
            proto,
            "syntax = \"proto3\";\npackage semflow;\n\nmessage docs_out {\n  string id = 1;\n  optional string body = 2;\n  optional int32 n = 3;\n  repeated float v = 4;\n}\n"
        );
        let compiled = ProtoSchema::parse(&proto).unwrap();
        let batch = arrow::record_batch::RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(schema.fields()[..3].to_vec())),
            vec![
                std::sync::Arc::new(StringArray::from(vec!["a", "b"])),
                std::sync::Arc::new(StringArray::from(vec![Some("hi"), None])),
                std::sync::Arc::new(Int32Array::from(vec![Some(7), None])),
            ],
        )
        .unwrap();
        let rows = compiled.encode_rows(&batch, 9).unwrap();
        assert_eq!(
            &rows[0][..6],
            &[0, 0, 0, 0, 9, 0],
            "magic, id 9, message [0]"
        );
        let decoded: Vec<Json> = rows
            .iter()
            .map(|r| compiled.decode(&r[5..]).unwrap())
            .collect();
        assert_eq!(
            decoded[0],
            serde_json::json!({"id": "a", "body": "hi", "n": 7, "v": []})
        );
        assert_eq!(decoded[1]["body"], Json::Null, "NULL stays absent");
    }

    #[test]
    fn timestamps_are_written_as_well_known_timestamps() {
        use arrow::array::TimestampMillisecondArray;
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let t = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![Field::new("at", t, true)]));
        let proto = writer_schema("t", &schema).unwrap();
        assert!(
            proto.contains("import \"google/protobuf/timestamp.proto\";")
                && proto.contains("  google.protobuf.Timestamp at = 1;"),
            "{proto}"
        );
        let compiled = ProtoSchema::parse(&proto).unwrap();
        let at = TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None]);
        let batch = arrow::record_batch::RecordBatch::try_new(schema, vec![Arc::new(at)]).unwrap();
        let rows = compiled.encode_rows(&batch, 1).unwrap();
        assert_eq!(
            compiled.decode(&rows[0][5..]).unwrap(),
            serde_json::json!({"at": "2023-11-14T22:13:20.123Z"})
        );
        // NULL: the message field is left unset (and reads back absent, so NULL).
        assert_eq!(
            compiled.decode(&rows[1][5..]).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn columns_without_a_protobuf_type_are_named() {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Schema::new(vec![Field::new("price", DataType::Decimal128(9, 2), true)]);
        let e = writer_schema("t", &schema).unwrap_err().to_string();
        assert!(
            e.contains("column price cannot be written as Protobuf"),
            "{e}"
        );
        let schema = Schema::new(vec![Field::new("bad-name", DataType::Utf8, true)]);
        let e = writer_schema("t", &schema).unwrap_err().to_string();
        assert!(e.contains("not a Protobuf identifier"), "{e}");
    }
}
