//! Registry-framed values (`'format' 'avro'` and `'format' 'protobuf'`): Confluent's wire
//! format — magic byte 0, the writer schema's registry id (4 bytes, big-endian), then the
//! body ([`super::avro`], [`super::protobuf`]). Each value is read with its own writer schema
//! (fetched once per id from `'schema.registry.url'`, then cached), so a topic whose schema
//! evolves across ids decodes record by record; the values become the JSON objects the one
//! decoding path reads (columns pick fields by name), which also serves Debezium envelopes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use super::options::Format;
use super::record::Record;
use crate::error::{Error, Result};

/// Confluent's magic byte, then a 4-byte schema id.
const MAGIC: u8 = 0;
const HEADER: usize = 5;

/// A writer schema as the registry serves it.
#[derive(Debug)]
pub enum WriterSchema {
    Avro(apache_avro::Schema),
    Protobuf(super::protobuf::ProtoSchema),
}

impl WriterSchema {
    fn kind(&self) -> &'static str {
        match self {
            Self::Avro(_) => "AVRO",
            Self::Protobuf(_) => "PROTOBUF",
        }
    }

    /// The body after the magic byte and id, as JSON.
    fn decode(&self, body: &[u8]) -> std::result::Result<Json, String> {
        match self {
            Self::Avro(schema) => super::avro::decode(schema, body),
            Self::Protobuf(schema) => schema.decode(body),
        }
    }
}

/// The schema registry a table reads writer schemas from, with the schemas seen so far.
pub struct Registry {
    url: String,
    /// The table's format: a schema of another kind is refused for its records.
    format: Format,
    client: reqwest::Client,
    /// HTTP Basic credentials (`schema.registry.basic.auth.user.info`).
    auth: Option<(String, String)>,
    /// Schemas by id; `Err` for one the registry serves but semflow cannot read (why).
    schemas: Mutex<HashMap<u32, std::result::Result<Arc<WriterSchema>, String>>>,
}

impl std::fmt::Debug for Registry {
    // Never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("auth", &self.auth.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl Registry {
    pub fn new(url: &str, format: Format) -> Result<Self> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "STORED AS KAFKA: option 'schema.registry.url' = '{url}' must be an http:// or https:// URL"
            )));
        }
        let client = crate::inference::outbound::http_client()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("schema registry client: {e}")))?;
        Ok(Self {
            url,
            format,
            client,
            auth: None,
            schemas: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `auth` (user, secret) as HTTP Basic credentials with every request.
    pub fn with_basic_auth(self, auth: Option<(String, String)>) -> Self {
        Self { auth, ..self }
    }

    /// A request to the registry, with its credentials.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.auth {
            Some((user, secret)) => request.basic_auth(user, Some(secret)),
            None => request,
        }
    }

    /// Registers the Avro `schema` under `subject` (`POST /subjects/{subject}/versions`, as
    /// Confluent's serializers do) and returns its id; the registry answers the same id for
    /// the same schema, and refuses one incompatible with the subject's (the error says why).
    pub async fn register(&self, subject: &str, schema: &apache_avro::Schema) -> Result<u32> {
        // The full schema: Avro's canonical form drops logical types.
        let text = serde_json::to_string(schema)
            .map_err(|e| Error::Kafka(format!("schema for {subject}: {e}")))?;
        let id = self
            .register_text(subject, serde_json::json!({ "schema": text }))
            .await?;
        self.insert(id, WriterSchema::Avro(schema.clone()));
        Ok(id)
    }

    /// Registers the `.proto` text `proto` under `subject` as a PROTOBUF schema (as Confluent's
    /// serializer does), after compiling it here.
    pub async fn register_protobuf(&self, subject: &str, proto: &str) -> Result<u32> {
        let compiled = super::protobuf::ProtoSchema::parse(proto)
            .map_err(|e| Error::Kafka(format!("schema for {subject}: {e}")))?;
        let body = serde_json::json!({ "schema": proto, "schemaType": "PROTOBUF" });
        let id = self.register_text(subject, body).await?;
        self.insert(id, WriterSchema::Protobuf(compiled));
        Ok(id)
    }

    /// POSTs a schema registration `body`; the id the registry answers.
    async fn register_text(&self, subject: &str, body: Json) -> Result<u32> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let response = self
            .request(reqwest::Method::POST, &url)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::Kafka(format!("schema registry {url}: {e}")))?;
        let status = response.status();
        let answer: Json = response
            .json()
            .await
            .map_err(|e| Error::Kafka(format!("schema registry {url}: HTTP {status}: {e}")))?;
        let id = answer
            .get("id")
            .and_then(Json::as_u64)
            .filter(|_| status.is_success());
        id.and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
            Error::Kafka(format!(
                "schema registry {url} refused the schema: HTTP {status}: {answer}"
            ))
        })
    }

    /// Knows `schema` as `id` without asking the registry (benchmarks and tests).
    pub fn insert(&self, id: u32, schema: WriterSchema) {
        self.remember(id, Ok(Arc::new(schema)));
    }

    fn remember(&self, id: u32, schema: std::result::Result<Arc<WriterSchema>, String>) {
        if let Ok(mut schemas) = self.schemas.lock() {
            schemas.insert(id, schema);
        }
    }

    /// What is known of `id`: its schema, why it cannot be read, or nothing yet.
    fn cached(&self, id: u32) -> Option<std::result::Result<Arc<WriterSchema>, String>> {
        self.schemas.lock().ok()?.get(&id).cloned()
    }

    /// Fetches the schemas of `ids` not seen yet. An id the registry does not know is left
    /// out (its records fail one by one); an unreachable registry fails the whole batch, so
    /// nothing is dead-lettered for an outage.
    async fn fetch_missing(&self, ids: impl IntoIterator<Item = u32>) -> Result<()> {
        for id in ids {
            if self.cached(id).is_some() {
                continue;
            }
            let url = format!("{}/schemas/ids/{id}", self.url);
            let response = self
                .request(reqwest::Method::GET, &url)
                .send()
                .await
                .map_err(|e| Error::Kafka(format!("schema registry {url}: {e}")))?;
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                continue;
            }
            if !status.is_success() {
                return Err(Error::Kafka(format!(
                    "schema registry {url}: HTTP {status}"
                )));
            }
            let body: Json = response
                .json()
                .await
                .map_err(|e| Error::Kafka(format!("schema registry {url}: {e}")))?;
            // A schema the registry serves but semflow cannot read fails each of its records
            // with the reason, instead of stopping the stream.
            let schema = parse_registry_schema(id, &body).map(Arc::new);
            if let Err(reason) = &schema {
                tracing::warn!("{reason}");
            }
            self.remember(id, schema);
        }
        Ok(())
    }

    /// Fetches the writer schemas `records` name (values and framed keys) that are not
    /// known yet, so [`Registry::record_to_json`] can read them.
    pub async fn fetch_schemas<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<()> {
        let ids = records
            .into_iter()
            .flat_map(|r| [r.value.as_deref(), r.key.as_deref()])
            .flatten()
            .filter_map(|bytes| frame(bytes).ok().map(|(id, _)| id));
        let mut unique: Vec<u32> = ids.collect();
        unique.sort_unstable();
        unique.dedup();
        self.fetch_missing(unique).await
    }

    /// `record` with its framed value (and key, when framed) as JSON, or why it cannot be
    /// read; schemas come from [`Registry::fetch_schemas`]. Keys become document-key text, or
    /// stay JSON objects for an envelope that reads them itself (`keys_as_json`).
    pub fn record_to_json(
        &self,
        record: &Record,
        keys_as_json: bool,
    ) -> std::result::Result<Record, String> {
        let value = match &record.value {
            Some(value) => {
                let json = self.decode(value).map_err(|e| format!("value: {e}"))?;
                Some(json.to_string().into_bytes())
            }
            None => None,
        };
        let key = match &record.key {
            // Keys are often plain strings; only framed keys whose schema is known are read.
            Some(key) if self.knows_framing_of(key) => {
                let json = self.decode(key).map_err(|e| format!("key: {e}"))?;
                let text = match keys_as_json {
                    true => json.to_string(),
                    false => key_text(json),
                };
                Some(text.into_bytes())
            }
            other => other.clone(),
        };
        Ok(Record {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key,
            value,
            headers: record.headers.clone(),
        })
    }

    /// Whether `bytes` are framed with a schema id this client can read.
    fn knows_framing_of(&self, bytes: &[u8]) -> bool {
        frame(bytes).is_ok_and(|(id, _)| matches!(self.cached(id), Some(Ok(_))))
    }

    fn decode(&self, bytes: &[u8]) -> std::result::Result<Json, String> {
        let (id, body) = frame(bytes)?;
        let schema = self
            .cached(id)
            .ok_or_else(|| format!("schema id {id} is not in the registry at {}", self.url))??;
        let expected = match self.format {
            Format::Protobuf => "PROTOBUF",
            _ => "AVRO",
        };
        if schema.kind() != expected {
            return Err(format!(
                "schema id {id} is {}, but the table reads {expected}",
                schema.kind()
            ));
        }
        schema
            .decode(body)
            .map_err(|e| format!("schema id {id}: {e}"))
    }
}

/// The registry's answer to `GET /schemas/ids/{id}`: the schema text and its type.
fn parse_registry_schema(id: u32, body: &Json) -> std::result::Result<WriterSchema, String> {
    let kind = body
        .get("schemaType")
        .and_then(Json::as_str)
        .unwrap_or("AVRO");
    let text = body
        .get("schema")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("schema id {id}: the registry's answer has no 'schema'"))?;
    let references: Vec<&str> = body
        .get("references")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("name").and_then(Json::as_str))
        .collect();
    // Protobuf's well-known types (google/protobuf/*.proto) are built in; other references
    // would need their subjects fetched.
    if let Some(other) = references
        .iter()
        .find(|r| kind != "PROTOBUF" || !r.starts_with("google/protobuf/"))
    {
        return Err(format!(
            "schema id {id} references {other}, which semflow does not resolve yet"
        ));
    }
    match kind {
        "AVRO" => super::avro::parse_writer_schema(text)
            .map(WriterSchema::Avro)
            .map_err(|e| format!("schema id {id}: {e}")),
        "PROTOBUF" => super::protobuf::ProtoSchema::parse(text)
            .map(WriterSchema::Protobuf)
            .map_err(|e| format!("schema id {id}: {e}")),
        other => Err(format!(
            "schema id {id} is {other}; semflow reads AVRO and PROTOBUF"
        )),
    }
}

/// `body` in Confluent's framing for schema `id` (what [`frame`] splits).
pub fn enframe(id: u32, body: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(HEADER + body.len());
    framed.push(MAGIC);
    framed.extend(id.to_be_bytes());
    framed.extend(body);
    framed
}

/// A schema's record or message name for `topic`: letters, digits and `_`, starting with a
/// letter.
pub fn schema_name(topic: &str) -> String {
    let name: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => name,
        _ => format!("t_{name}"),
    }
}

/// Splits Confluent's framing: the schema id and the body.
fn frame(bytes: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    match bytes {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [] => Err("empty, not registry-framed".into()),
        [first, ..] if bytes.len() < HEADER || *first != MAGIC => Err(format!(
            "not registry-framed (starts with byte {first:#04x}, expected magic byte 0 and a 4-byte schema id)"
        )),
        _ => Err("not registry-framed".into()),
    }
}

/// A key as the document key text: a string or number as it is, a record of one field as
/// that field (Debezium and Connect key records), anything else as its JSON text.
fn key_text(json: Json) -> String {
    match json {
        Json::String(s) => s,
        Json::Object(map) if map.len() == 1 => match map.into_iter().next() {
            Some((_, Json::String(s))) => s,
            Some((_, other)) => other.to_string(),
            None => String::new(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;
    use apache_avro::Schema;

    /// `value` as registry-framed Avro of `schema` registered as `id`.
    pub fn framed(id: u32, schema: &Schema, value: Avro) -> Vec<u8> {
        enframe(id, &apache_avro::to_avro_datum(schema, value).unwrap())
    }

    /// A registry client that already knows `schemas` (nothing is fetched).
    pub fn registry_with(format: Format, schemas: Vec<(u32, WriterSchema)>) -> Registry {
        let registry = Registry::new("http://127.0.0.1:1", format).unwrap();
        for (id, schema) in schemas {
            registry.insert(id, schema);
        }
        registry
    }

    pub fn record(key: Option<Vec<u8>>, value: Vec<u8>) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            timestamp: None,
            key,
            value: Some(value),
            headers: vec![],
        }
    }

    /// The JSON a framed value becomes.
    pub fn read_value(registry: &Registry, bytes: &[u8]) -> Json {
        let r = registry
            .record_to_json(&record(None, bytes.to_vec()), false)
            .unwrap();
        serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()
    }

    fn avro(text: &str) -> WriterSchema {
        WriterSchema::Avro(Schema::parse_str(text).unwrap())
    }

    #[test]
    fn bad_values_name_the_problem() {
        let s = Schema::parse_str(r#""string""#).unwrap();
        let registry = registry_with(Format::Avro, vec![(1, avro(r#""string""#))]);
        let fail = |bytes: Vec<u8>| {
            registry
                .record_to_json(&record(None, bytes), false)
                .unwrap_err()
        };
        assert!(fail(b"{\"id\":1}".to_vec()).contains("magic byte 0"));
        assert!(fail(vec![0, 0, 0, 0, 9, 2, b'x']).contains("schema id 9 is not in the registry"));
        let mut trailing = framed(1, &s, Avro::String("x".into()));
        trailing.push(1);
        assert!(fail(trailing).contains("left over"));
        // A table reading Protobuf refuses an Avro schema id.
        let registry = registry_with(Format::Protobuf, vec![(1, avro(r#""string""#))]);
        let err = registry
            .record_to_json(
                &record(None, framed(1, &s, Avro::String("x".into()))),
                false,
            )
            .unwrap_err();
        assert!(
            err.contains("is AVRO, but the table reads PROTOBUF"),
            "{err}"
        );
    }

    #[test]
    fn framed_keys_become_document_keys() {
        let key = Schema::parse_str(
            r#"{"type":"record","name":"Key","fields":[{"name":"id","type":"long"}]}"#,
        )
        .unwrap();
        let value = Schema::parse_str(r#""string""#).unwrap();
        let registry = registry_with(
            Format::Avro,
            vec![
                (4, WriterSchema::Avro(key.clone())),
                (5, WriterSchema::Avro(value.clone())),
            ],
        );
        let framed_key = framed(4, &key, Avro::Record(vec![("id".into(), Avro::Long(42))]));
        let body = framed(5, &value, Avro::String("hi".into()));
        let out = registry
            .record_to_json(&record(Some(framed_key.clone()), body.clone()), false)
            .unwrap();
        assert_eq!(out.key.as_deref(), Some(&b"42"[..]));
        // Debezium reads its key record itself.
        let out = registry
            .record_to_json(&record(Some(framed_key), body.clone()), true)
            .unwrap();
        assert_eq!(out.key.as_deref(), Some(&br#"{"id":42}"#[..]));
        assert_eq!(out.value.as_deref(), Some(&b"\"hi\""[..]));
        // Plain string keys pass through.
        let out = registry
            .record_to_json(&record(Some(b"doc-1".to_vec()), body), false)
            .unwrap();
        assert_eq!(out.key.as_deref(), Some(&b"doc-1"[..]));
    }

    #[test]
    fn registry_answers() {
        let ok = serde_json::json!({"schema": "\"long\""});
        assert!(parse_registry_schema(1, &ok).is_ok());
        let proto = serde_json::json!({
            "schema": "syntax = \"proto3\"; message M { string id = 1; }",
            "schemaType": "PROTOBUF"
        });
        assert!(matches!(
            parse_registry_schema(1, &proto),
            Ok(WriterSchema::Protobuf(_))
        ));
        let json = serde_json::json!({"schema": "{}", "schemaType": "JSON"});
        let err = parse_registry_schema(1, &json).unwrap_err();
        assert!(err.contains("is JSON"), "{err}");
        let refs = serde_json::json!({"schema": "\"long\"", "references": [{"name": "x"}]});
        assert!(parse_registry_schema(1, &refs)
            .unwrap_err()
            .contains("references x"));
        assert!(Registry::new("registry:8081", Format::Avro).is_err());
    }
}
