//! Options of a `STORED AS KAFKA` table. semflow's own options have no dot (DataFusion files
//! them as `format.<name>`); every dotted option is a librdkafka property, with or without a
//! `kafka.` prefix, so SASL/SSL and tuning settings pass straight through.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::envelope::Envelope;
use crate::error::{Error, Result};

/// How message values map to columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON object per message; fields fill columns by name.
    Json,
    /// The value (and key) as text or bytes in columns `value` (and `key`).
    Raw,
    /// Registry-framed Avro (Confluent wire format); record fields fill columns by name.
    Avro,
    /// Registry-framed Protobuf (Confluent wire format); message fields fill columns by name.
    Protobuf,
}

/// Where reading starts when no stored position exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The consumer group's committed offsets, else the earliest.
    Committed,
    Earliest,
    Latest,
}

/// Where a read stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Never: an unbounded stream.
    Never,
    /// The high watermarks when the read starts: a snapshot.
    LatestAtStart,
}

/// What happens to a record that cannot be decoded or indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Send it to the dead-letter topic with the reason in its headers.
    Dlq,
    /// Count it, log it, go on.
    Skip,
    /// Stop with an error naming the record.
    Fail,
}

#[derive(Clone)]
pub struct KafkaOptions {
    pub topic: String,
    /// librdkafka properties (`bootstrap.servers`, `group.id`, `security.protocol`, …).
    pub client: BTreeMap<String, String>,
    pub format: Format,
    /// How values are wrapped (`'envelope' 'debezium'`: change events).
    pub envelope: Envelope,
    pub start: Start,
    pub end: End,
    /// A micro-batch closes at this many records…
    pub batch_rows: usize,
    /// …or this long after its first record.
    pub batch_latency: Duration,
    pub on_error: OnError,
    pub dlq_topic: String,
    /// Larger values are rejected (dead-lettered) instead of decoded.
    pub max_value_bytes: usize,
    /// A subscribed topic that does not exist yet is waited for this long (`'topic_wait_s'`;
    /// zero: fail at once).
    pub topic_wait: Duration,
    /// The column whose value keys messages written to a KAFKA sink table.
    pub key_column: Option<String>,
    /// `'schema.registry.url'`: where `'format' 'avro'` finds writer schemas by id.
    pub schema_registry: Option<String>,
    /// `'schema.registry.basic.auth.user.info'` (`KEY:SECRET`, as Confluent's clients take
    /// it): HTTP Basic credentials for the registry.
    pub schema_registry_auth: Option<(String, String)>,
}

impl std::fmt::Debug for KafkaOptions {
    // Secrets (SASL/SSL passwords and keys, registry credentials) are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client: BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "<redacted>" } else { v }))
            .collect();
        f.debug_struct("KafkaOptions")
            .field("topic", &self.topic)
            .field("client", &client)
            .field("format", &self.format)
            .field("envelope", &self.envelope)
            .field("start", &self.start)
            .field("end", &self.end)
            .field("batch_rows", &self.batch_rows)
            .field("batch_latency", &self.batch_latency)
            .field("on_error", &self.on_error)
            .field("dlq_topic", &self.dlq_topic)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("key_column", &self.key_column)
            .field("schema_registry", &self.schema_registry)
            .field(
                "schema_registry_auth",
                &self.schema_registry_auth.as_ref().map(|(user, _)| user),
            )
            .finish()
    }
}

/// librdkafka properties whose values are credentials.
fn is_secret(property: &str) -> bool {
    [
        "password",
        "secret",
        "sasl.jaas",
        "ssl.key.pem",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| property.contains(s))
}

const KNOWN: &str =
    "format, envelope, start, end, batch_rows, batch_ms, on_error, dlq_topic, max_value_bytes, topic_wait_s, key";

impl KafkaOptions {
    /// Parses table options; `topic` is the table's LOCATION.
    pub fn parse(topic: &str, options: &HashMap<String, String>) -> Result<Self> {
        if topic.is_empty() {
            return Err(invalid("LOCATION must name the topic"));
        }
        let mut o = KafkaOptions {
            topic: topic.to_string(),
            client: BTreeMap::new(),
            format: Format::Json,
            envelope: Envelope::None,
            start: Start::Committed,
            end: End::Never,
            batch_rows: 1000,
            batch_latency: Duration::from_millis(200),
            on_error: OnError::Dlq,
            dlq_topic: format!("{topic}.dlq"),
            max_value_bytes: 1 << 20,
            topic_wait: Duration::from_secs(300),
            key_column: None,
            schema_registry: None,
            schema_registry_auth: None,
        };
        for (key, value) in options {
            match key.strip_prefix("format.") {
                Some(name) => o.set_own(name, value)?,
                None if key == "schema.registry.url" => o.schema_registry = Some(value.clone()),
                None if key == "schema.registry.basic.auth.user.info" => {
                    let Some((user, secret)) = value.split_once(':') else {
                        return Err(invalid(
                            "option 'schema.registry.basic.auth.user.info' must be KEY:SECRET",
                        ));
                    };
                    o.schema_registry_auth = Some((user.to_string(), secret.to_string()));
                }
                None => {
                    let property = key.strip_prefix("kafka.").unwrap_or(key);
                    o.client.insert(property.to_string(), value.clone());
                }
            }
        }
        o.check()?;
        Ok(o)
    }

    /// Sets one of semflow's own options (`format.NAME` in the table's OPTIONS).
    fn set_own(&mut self, name: &str, value: &str) -> Result<()> {
        match name {
            "format" => {
                self.format = match value {
                    "json" => Format::Json,
                    "raw" => Format::Raw,
                    "avro" => Format::Avro,
                    "protobuf" => Format::Protobuf,
                    v => return Err(bad_value("format", v, "json, raw, avro, protobuf")),
                }
            }
            "envelope" => {
                self.envelope = match value {
                    "none" => Envelope::None,
                    "debezium" => Envelope::Debezium,
                    v => return Err(bad_value("envelope", v, "none, debezium")),
                }
            }
            "start" => {
                self.start = match value {
                    "committed" => Start::Committed,
                    "earliest" => Start::Earliest,
                    "latest" => Start::Latest,
                    v => return Err(bad_value("start", v, "committed, earliest, latest")),
                }
            }
            "end" => {
                self.end = match value {
                    "never" => End::Never,
                    "latest-at-start" => End::LatestAtStart,
                    v => return Err(bad_value("end", v, "never, latest-at-start")),
                }
            }
            "batch_rows" => self.batch_rows = positive("batch_rows", value)?,
            "batch_ms" => {
                self.batch_latency = Duration::from_millis(positive("batch_ms", value)? as u64)
            }
            "on_error" => {
                self.on_error = match value {
                    "dlq" => OnError::Dlq,
                    "skip" => OnError::Skip,
                    "fail" => OnError::Fail,
                    v => return Err(bad_value("on_error", v, "dlq, skip, fail")),
                }
            }
            "dlq_topic" => self.dlq_topic = value.to_string(),
            "max_value_bytes" => self.max_value_bytes = positive("max_value_bytes", value)?,
            "topic_wait_s" => {
                let secs = value.parse::<u64>().map_err(|_| {
                    invalid(&format!(
                        "option 'topic_wait_s' must be a number of seconds (0 or more), not '{value}'"
                    ))
                })?;
                self.topic_wait = Duration::from_secs(secs)
            }
            "key" => self.key_column = Some(value.to_string()),
            other => {
                return Err(invalid(&format!(
                    "unknown option '{other}' (semflow options: {KNOWN}; librdkafka properties have dots, e.g. 'bootstrap.servers' or 'kafka.security.protocol')"
                )))
            }
        }
        Ok(())
    }

    /// Options that only make sense together.
    fn check(&self) -> Result<()> {
        if self.envelope == Envelope::Debezium && self.format == Format::Raw {
            return Err(invalid(
                "option 'envelope' = 'debezium' reads change events: use 'format' 'json', 'avro' or 'protobuf'",
            ));
        }
        match (self.format, &self.schema_registry) {
            (Format::Avro | Format::Protobuf, None) => {
                return Err(invalid(
                    "'format' 'avro' and 'protobuf' read registry-framed values: set 'schema.registry.url' (e.g. 'http://registry:8081')",
                ))
            }
            (Format::Json | Format::Raw, Some(_)) => {
                return Err(invalid(
                    "option 'schema.registry.url' is only read with 'format' 'avro' or 'protobuf'",
                ))
            }
            _ => {}
        }
        if !self.client.contains_key("bootstrap.servers") {
            return Err(invalid("option 'bootstrap.servers' is required"));
        }
        if let Some(strategy) = self.client.get("partition.assignment.strategy") {
            if strategy.contains("cooperative") {
                return Err(invalid(
                    "'partition.assignment.strategy' cooperative-sticky is not supported: exactly-once hand-over relies on eager rebalancing (range, roundrobin)",
                ));
            }
        }
        Ok(())
    }

    pub fn group_id(&self) -> Option<&str> {
        self.client.get("group.id").map(String::as_str)
    }
}

fn invalid(message: &str) -> Error {
    Error::InvalidArgument(format!("STORED AS KAFKA: {message}"))
}

fn bad_value(option: &str, value: &str, allowed: &str) -> Error {
    invalid(&format!(
        "option '{option}' = '{value}' is not one of: {allowed}"
    ))
}

fn positive(option: &str, value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(&format!(
            "option '{option}' must be a positive integer, not '{value}'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_own_and_client_options() {
        let o = KafkaOptions::parse(
            "docs",
            &opts(&[
                ("bootstrap.servers", "b:9092"),
                ("group.id", "g"),
                ("kafka.security.protocol", "SASL_SSL"),
                ("format.format", "raw"),
                ("format.end", "latest-at-start"),
                ("format.batch_ms", "50"),
            ]),
        )
        .unwrap();
        assert_eq!(o.format, Format::Raw);
        assert_eq!(o.end, End::LatestAtStart);
        assert_eq!(o.batch_latency, Duration::from_millis(50));
        assert_eq!(o.client["security.protocol"], "SASL_SSL");
        assert_eq!(o.group_id(), Some("g"));
        assert_eq!(o.dlq_topic, "docs.dlq");
    }

    #[test]
    fn names_the_bad_option() {
        let base = [("bootstrap.servers", "b:9092")];
        let err = |extra: (&str, &str)| {
            let mut p = base.to_vec();
            p.push(extra);
            KafkaOptions::parse("t", &opts(&p)).unwrap_err().to_string()
        };
        assert!(err(("format.format", "xml")).contains("'format' = 'xml'"));
        assert!(err(("format.batch_rows", "0")).contains("batch_rows"));
        assert!(err(("format.colour", "red")).contains("unknown option 'colour'"));
        assert!(err(("format.envelope", "maxwell")).contains("'envelope' = 'maxwell'"));
        assert!(KafkaOptions::parse("t", &HashMap::new())
            .unwrap_err()
            .to_string()
            .contains("bootstrap.servers"));
    }

    #[test]
    fn debezium_envelope_reads_json_or_avro() {
        let parse = |format: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("bootstrap.servers", "b:9092"),
                ("format.envelope", "debezium"),
                ("format.format", format),
            ];
            pairs.extend(extra);
            KafkaOptions::parse("t", &opts(&pairs))
        };
        assert_eq!(parse("json", &[]).unwrap().envelope, Envelope::Debezium);
        let registry = [("schema.registry.url", "http://r:8081")];
        assert_eq!(
            parse("avro", &registry).unwrap().envelope,
            Envelope::Debezium
        );
        let err = parse("raw", &[]).unwrap_err().to_string();
        assert!(
            err.contains("use 'format' 'json', 'avro' or 'protobuf'"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let o = KafkaOptions::parse(
            "t",
            &opts(&[
                ("bootstrap.servers", "b:9092"),
                ("sasl.password", "hunter2"),
                ("kafka.ssl.key.password", "hunter3"),
                ("format.format", "avro"),
                ("schema.registry.url", "http://r:8081"),
                ("schema.registry.basic.auth.user.info", "key:hunter4"),
            ]),
        )
        .unwrap();
        let text = format!("{o:?}");
        assert!(!text.contains("hunter"), "{text}");
        assert!(
            text.contains("b:9092") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn avro_needs_a_registry_and_the_registry_needs_avro() {
        let parse = |pairs: &[(&str, &str)]| {
            let mut all = vec![("bootstrap.servers", "b:9092")];
            all.extend(pairs);
            KafkaOptions::parse("t", &opts(&all))
        };
        let o = parse(&[
            ("format.format", "avro"),
            ("schema.registry.url", "http://r:8081"),
        ])
        .unwrap();
        assert_eq!(o.format, Format::Avro);
        assert_eq!(o.schema_registry.as_deref(), Some("http://r:8081"));
        // Not a librdkafka property.
        assert!(!o.client.contains_key("schema.registry.url"));
        let err = parse(&[("format.format", "avro")]).unwrap_err().to_string();
        assert!(err.contains("'schema.registry.url'"), "{err}");
        let err = parse(&[("schema.registry.url", "http://r:8081")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("only read with 'format' 'avro'"), "{err}");
        let o = parse(&[
            ("format.format", "protobuf"),
            ("schema.registry.url", "http://r:8081"),
            ("schema.registry.basic.auth.user.info", "key:se:cret"),
        ])
        .unwrap();
        assert_eq!(o.format, Format::Protobuf);
        assert_eq!(
            o.schema_registry_auth,
            Some(("key".to_string(), "se:cret".to_string()))
        );
        assert!(!o
            .client
            .contains_key("schema.registry.basic.auth.user.info"));
        let err = parse(&[
            ("format.format", "avro"),
            ("schema.registry.url", "http://r:8081"),
            ("schema.registry.basic.auth.user.info", "no-colon"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("KEY:SECRET"), "{err}");
    }
}
