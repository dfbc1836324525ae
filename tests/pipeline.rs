//! Kafka tables, Lance tables and the continuous pipeline against a real broker
//! (SEMFLOW_TEST_KAFKA; `scripts/with-kafka.sh` starts one).

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use common::kafka::{bootstrap, create_topic, produce, produce_each, producer, read_all, unique};

fn doc(id: &str, body: &str) -> (Option<String>, Option<String>) {
    (
        Some(id.to_string()),
        Some(serde_json::json!({"id": id, "title": format!("t-{id}"), "body": body}).to_string()),
    )
}

/// A fresh topic (`partitions`) with its dead-letter topic, a consumer group and a directory
/// for the index: (topic, group, the directory, the index location).
async fn dead_lettering_pipeline(
    name: &str,
    partitions: i32,
) -> (String, String, tempfile::TempDir, String) {
    let topic = unique(name);
    create_topic(&topic, partitions).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    (topic, unique("indexer"), dir, location)
}

/// Runs one of the Python scripts that use Confluent's serializers (tests/clients/); `None`
/// when confluent-kafka[avro,protobuf] is missing, unless SEMFLOW_TEST_AVRO=required.
async fn confluent_client(script: &str, args: Vec<String>) -> Option<serde_json::Value> {
    let install = "pip install 'confluent-kafka[avro,protobuf]' grpcio-tools";
    common::python_client(script, args, "SEMFLOW_TEST_AVRO", install).await
}

/// (id, body) of each row that [`index_rows`] read, by id.
fn id_bodies(rows: &BTreeMap<String, (String, String, usize)>) -> Vec<(&str, &str)> {
    rows.iter()
        .map(|(k, v)| (k.as_str(), v.0.as_str()))
        .collect()
}

/// Every cell of `batches` as text (NULL as `None`), row by row.
fn text_rows(batches: &[arrow::record_batch::RecordBatch]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        c.is_valid(i).then(|| c.value(i).to_string())
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// Rows of text cells, as [`text_rows`] gives them.
fn cells(rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.map(String::from)).collect())
        .collect()
}

/// (id, body, model) rows of a Lance table, plus the embedding length of each.
async fn index_rows(location: &str) -> BTreeMap<String, (String, String, usize)> {
    let engine = common::tiny_engine();
    let sql = format!(
        "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{location}';
         SELECT id, body, model, embedding FROM idx"
    );
    let results = engine.run_sql(&sql).await.unwrap();
    let mut rows = BTreeMap::new();
    for batch in &results.last().unwrap().batches {
        let ids = batch.column(0).as_string::<i32>();
        let bodies = batch.column(1).as_string::<i32>();
        let models = batch.column(2).as_string::<i32>();
        let vectors = batch.column(3).as_fixed_size_list();
        for i in 0..batch.num_rows() {
            let previous = rows.insert(
                ids.value(i).to_string(),
                (
                    bodies.value(i).to_string(),
                    models.value(i).to_string(),
                    vectors.value(i).len(),
                ),
            );
            assert!(previous.is_none(), "duplicate id {}", ids.value(i));
        }
    }
    rows
}

/// The docs → idx pipeline over `topic`; `extra` adds Kafka table options (the format is
/// JSON, the default, unless `extra` names another).
fn pipeline_sql(topic: &str, group: &str, location: &str, extra: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, title TEXT, body TEXT) STORED AS KAFKA LOCATION '{topic}'
           OPTIONS ('bootstrap.servers' '{}', 'group.id' '{group}', 'start' 'earliest',
                    'batch_ms' '50', 'session.timeout.ms' '6000', 'heartbeat.interval.ms' '500' {extra});
         CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, title TEXT, body TEXT, embedding FLOAT[], model TEXT, PRIMARY KEY (id))
           STORED AS LANCE LOCATION '{location}';
         INSERT INTO idx SELECT id, title, body, embed(body) AS embedding, embed_model() AS model FROM docs",
        bootstrap()
    )
}

/// Runs the pipeline in-process until it has consumed `records` records.
async fn run_until(sql: &str, records: u64) -> semflow::pipeline::RunStats {
    let engine = common::tiny_engine();
    let seen = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let seen = seen.clone();
        let notify = notify.clone();
        async move {
            while seen.load(Ordering::SeqCst) < records {
                notify.notified().await;
            }
        }
    };
    let run = semflow::pipeline::run(&engine, sql, shutdown, |s| {
        seen.store(s.records, Ordering::SeqCst);
        notify.notify_one();
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the pipeline did not consume every record within 120 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_query_metadata_columns_and_json_sink() {
    let topic = unique("snap");
    let out = unique("out");
    create_topic(&topic, 2).await;
    create_topic(&out, 1).await;
    let p = producer();
    produce_each(
        &p,
        &topic,
        &[
            doc("a", "alpha"),
            doc("b", "beta"),
            (Some("bad".into()), Some("{oops".into())),
            (Some("a".into()), None),
            doc("c", "gamma"),
            doc("big", &"x".repeat(300)),
        ],
    )
    .await;
    let engine = common::tiny_engine();
    let sql = format!(
        "CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, body TEXT, _key TEXT, _partition INT, _offset BIGINT, _timestamp TIMESTAMP, _headers TEXT)
           STORED AS KAFKA LOCATION '{topic}'
           OPTIONS ('bootstrap.servers' '{b}', 'end' 'latest-at-start', 'start' 'earliest', 'on_error' 'skip',
                    'max_value_bytes' '200');
         CREATE EXTERNAL TABLE out (id TEXT, embedding FLOAT[]) STORED AS KAFKA LOCATION '{out}'
           OPTIONS ('bootstrap.servers' '{b}', 'key' 'id');
         INSERT INTO out SELECT id, embed(body) FROM docs;
         SELECT id, _key, _partition >= 0, _offset >= 0, _timestamp IS NOT NULL, _headers FROM docs ORDER BY id",
        b = bootstrap()
    );
    let results = engine.run_sql(&sql).await.unwrap();
    let inserted = results[2].batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0);
    assert_eq!(
        inserted, 3,
        "the undecodable and the oversized record are skipped, the tombstone is not a row"
    );
    // With on_error 'fail' the scan stops at the undecodable record, naming it.
    let strict = format!(
        "CREATE EXTERNAL TABLE strict (id TEXT NOT NULL, body TEXT) STORED AS KAFKA LOCATION '{topic}'
           OPTIONS ('bootstrap.servers' '{b}', 'end' 'latest-at-start', 'start' 'earliest', 'on_error' 'fail');
         SELECT count(*) FROM strict",
        b = bootstrap()
    );
    let e = engine.run_sql(&strict).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("{topic}/")) && e.contains(r#"(key Some("bad"))"#),
        "{e}"
    );
    let batch = arrow::compute::concat_batches(&results[3].schema, &results[3].batches).unwrap();
    let text = |c: usize| -> Vec<String> {
        let col = arrow::compute::cast(batch.column(c), &arrow::datatypes::DataType::Utf8).unwrap();
        col.as_string::<i32>()
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(text(0), ["a", "b", "c"]);
    assert_eq!(text(1), ["a", "b", "c"]);
    for c in 2..5 {
        assert!(batch.column(c).as_boolean().iter().all(|v| v == Some(true)));
    }
    assert_eq!(text(5)[0], r#"{"origin":"test"}"#);

    let written = read_all(&out, 1);
    assert_eq!(written.len(), 3);
    for (key, value, _) in written {
        let v: serde_json::Value = serde_json::from_str(&value.unwrap()).unwrap();
        assert_eq!(v["id"].as_str(), key.as_deref());
        assert_eq!(v["embedding"].as_array().unwrap().len(), 64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lance_table_upserts_by_primary_key() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    let engine = common::tiny_engine();
    let sql = format!(
        "CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, body TEXT, embedding FLOAT[], model TEXT, PRIMARY KEY (id)) STORED AS LANCE LOCATION '{location}';
         SELECT count(*) FROM idx;
         INSERT INTO idx SELECT id, body, embed(body), embed_model() FROM (SELECT 'a' AS id, 'one' AS body UNION ALL SELECT 'b', 'two');
         INSERT INTO idx SELECT id, body, embed(body), embed_model() FROM (SELECT 'b' AS id, 'two v2' AS body UNION ALL SELECT 'c', 'three');"
    );
    let results = engine.run_sql(&sql).await.unwrap();
    assert_eq!(
        results[1].batches[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0),
        0
    );
    let rows = index_rows(&location).await;
    let bodies = id_bodies(&rows);
    assert_eq!(bodies, [("a", "one"), ("b", "two v2"), ("c", "three")]);
    for (_, model, dims) in rows.values() {
        assert!(model.contains('@'), "model fingerprint recorded: {model}");
        assert_eq!(*dims, 64);
    }
    // Vector search over the index ranks the exact document first.
    let search = format!(
        "CREATE EXTERNAL TABLE idx2 STORED AS LANCE LOCATION '{location}';
         SELECT id FROM idx2 ORDER BY cosine_similarity(embedding, embed('two v2')) DESC LIMIT 1"
    );
    let results = engine.run_sql(&search).await.unwrap();
    assert_eq!(
        results[1].batches[0].column(0).as_string::<i32>().value(0),
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_applies_updates_deletes_and_dead_letters_bad_records() {
    let (topic, group, _dir, location) = dead_lettering_pipeline("docs", 2).await;
    let p = producer();
    let mut records = vec![
        doc("d1", "first"),
        doc("d2", "second"),
        doc("d3", "third"),
        doc("d4", "fourth"),
        (Some("b1".into()), Some("{not json".into())),
        (Some("b2".into()), Some(r#"{"title": "no id"}"#.into())),
        (
            Some("b3".into()),
            Some(r#"{"id": "b3", "body": {"nested": true}, "title": [1]}"#.into()),
        ),
        (
            Some("b4".into()),
            Some(format!(r#"{{"id": "b4", "body": "{}"}}"#, "x".repeat(2000))),
        ),
        doc("d2", "second, updated"),
        (Some("d3".into()), None),
    ];
    produce(&p, &topic, &records).await;
    let sql = pipeline_sql(&topic, &group, &location, ", 'max_value_bytes' '1024'");
    let stats = run_until(&sql, records.len() as u64).await;
    assert_eq!(stats.records, records.len() as u64);

    let rows = index_rows(&location).await;
    let bodies = id_bodies(&rows);
    // b3's nested body is kept as JSON text (TEXT columns take any JSON value)…
    assert_eq!(
        bodies,
        [
            ("b3", r#"{"nested":true}"#),
            ("d1", "first"),
            ("d2", "second, updated"),
            ("d4", "fourth")
        ]
    );
    // …while the others are dead-lettered with the reason and where they came from.
    let dlq = read_all(&format!("{topic}.dlq"), 1);
    let mut reasons: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (key, value, headers) in dlq {
        assert!(value.is_some());
        reasons.insert(key.unwrap(), headers.into_iter().collect());
    }
    assert_eq!(reasons.keys().collect::<Vec<_>>(), ["b1", "b2", "b4"]);
    assert!(reasons["b1"]["semflow.error"].contains("not valid JSON"));
    assert!(reasons["b2"]["semflow.error"].contains("field id is missing"));
    assert!(reasons["b4"]["semflow.error"].contains("exceeds max_value_bytes"));
    for h in reasons.values() {
        assert_eq!(h["semflow.topic"], topic);
        assert!(h["semflow.offset"].parse::<i64>().is_ok());
        assert!(h["semflow.partition"].parse::<i32>().is_ok());
        assert_eq!(h["origin"], "test", "original headers are kept");
    }
    assert_eq!(stats.dead_lettered, 3);

    // A restart resumes from the offsets stored in the index: only the new record is read.
    records = vec![doc("d5", "fifth")];
    produce(&p, &topic, &records).await;
    let stats = run_until(&sql, 1).await;
    assert_eq!(stats.records, 1);
    let rows = index_rows(&location).await;
    assert_eq!(rows.len(), 5);
    assert_eq!(rows["d5"].0, "fifth");
}

/// A Debezium change event (JSON) for row `id` of a `docs` table.
fn change(id: &str, op: &str, body: Option<&str>) -> (Option<String>, Option<String>) {
    let after = body.map(|b| serde_json::json!({"id": id, "title": format!("t-{id}"), "body": b}));
    let event = serde_json::json!({
        "before": null, "after": after, "op": op,
        "source": {"connector": "postgresql", "table": "docs"}, "ts_ms": 0
    });
    (
        Some(serde_json::json!({"id": id}).to_string()),
        Some(event.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_change_events_upsert_and_delete() {
    let (topic, group, _dir, location) = dead_lettering_pipeline("cdc", 1).await;
    let wrapped = serde_json::json!({
        "schema": {"type": "struct", "name": "cdc.Envelope"},
        "payload": {"before": null, "after": {"id": "e4", "title": "t", "body": "wrapped"}, "op": "c"}
    });
    let records = vec![
        change("e1", "r", Some("snapshot")),
        change("e2", "c", Some("second")),
        change("e3", "c", Some("third")),
        change("e1", "u", Some("first, updated")),
        change("e3", "d", None),
        // Debezium's tombstone after a delete, for log compaction.
        (Some(r#"{"id":"e3"}"#.into()), None),
        (
            Some(r#"{"schema":{"type":"struct"},"payload":{"id":"e4"}}"#.into()),
            Some(wrapped.to_string()),
        ),
        change("e5", "t", None),
        (
            Some(r#"{"id":"e6","tenant":1}"#.into()),
            change("e6", "c", Some("six")).1,
        ),
    ];
    produce(&producer(), &topic, &records).await;
    let sql = pipeline_sql(&topic, &group, &location, ", 'envelope' 'debezium'");
    let stats = run_until(&sql, records.len() as u64).await;
    assert_eq!(stats.records, records.len() as u64);
    let rows = index_rows(&location).await;
    let bodies = id_bodies(&rows);
    assert_eq!(
        bodies,
        [
            ("e1", "first, updated"),
            ("e2", "second"),
            ("e4", "wrapped")
        ]
    );
    let dlq = read_all(&format!("{topic}.dlq"), 1);
    let reasons: Vec<String> = dlq
        .into_iter()
        .map(|(_, _, headers)| {
            headers.into_iter().collect::<BTreeMap<_, _>>()["semflow.error"].clone()
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("truncate")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("composite keys")),
        "{reasons:?}"
    );
    assert_eq!(stats.dead_lettered, 2);

    // The envelope needs JSON values.
    let err = common::tiny_engine()
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE raw_cdc STORED AS KAFKA LOCATION '{topic}' OPTIONS ('bootstrap.servers' '{}', 'format' 'raw', 'envelope' 'debezium')",
            bootstrap()
        ))
        .await
        .unwrap_err()
        .user_message();
    assert!(err.contains("'envelope' = 'debezium'"), "{err}");
}

/// Registry-framed Avro produced by Confluent's own serializers (tests/clients/
/// avro_produce.py) into a pipeline, a scan and a Debezium pipeline. Skipped with a message
/// when confluent-kafka[avro] is missing, unless SEMFLOW_TEST_AVRO=required (CI installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_from_the_schema_registry_upserts_evolves_and_unwraps_debezium() {
    let registry = common::registry::FakeRegistry::start().await;
    let (topic, group, _dir, location) = dead_lettering_pipeline("avro", 1).await;
    let (cdc, cdc_group, _cdc_dir, cdc_location) = dead_lettering_pipeline("avro-cdc", 1).await;
    let args = vec![bootstrap(), registry.url(), topic.clone(), cdc.clone()];
    let Some(produced) = confluent_client("avro_produce.py", args).await else {
        return;
    };
    let avro = format!(
        ", 'format' 'avro', 'schema.registry.url' '{}'",
        registry.url()
    );

    let records = produced["docs"].as_u64().unwrap();
    let stats = run_until(&pipeline_sql(&topic, &group, &location, &avro), records).await;
    assert_eq!(stats.records, records);
    let rows = index_rows(&location).await;
    assert_eq!(
        id_bodies(&rows),
        [
            ("d1", "Graphene, updated."),
            ("d3", "Copper conducts heat."),
            ("d4", "Kafka topics carry Avro.")
        ]
    );
    // The one value that is not Avro is dead-lettered as it was sent, with the reason.
    let dlq = read_all(&format!("{topic}.dlq"), 1);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let (_, value, headers) = &dlq[0];
    assert_eq!(
        value.as_deref(),
        Some(r#"{"id": "bad", "body": "JSON, not Avro"}"#)
    );
    let reason = &headers.iter().cloned().collect::<BTreeMap<_, _>>()["semflow.error"];
    assert!(reason.contains("not registry-framed"), "{reason}");
    // Two value schemas (v1, v2), each fetched once.
    let fetches = registry.fetches();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert!(fetches.values().all(|n| *n == 1), "{fetches:?}");

    // A scan reads both schema versions: fields v1 lacks are NULL, logical types convert
    // (decimals exactly, with their scale).
    let scan = common::tiny_engine()
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, tags TEXT[], at TIMESTAMP, price DECIMAL(9, 2))
               STORED AS KAFKA LOCATION '{topic}' OPTIONS ('bootstrap.servers' '{}', 'format' 'avro',
               'schema.registry.url' '{}', 'end' 'latest-at-start', 'on_error' 'skip');
             SELECT id, array_to_string(tags, ',') AS tags, CAST(at AS TEXT) AS at_text,
                    CAST(price AS TEXT) AS price
               FROM docs ORDER BY id, at_text NULLS FIRST",
            bootstrap(),
            registry.url()
        ))
        .await
        .unwrap();
    assert_eq!(
        text_rows(&scan.last().unwrap().batches),
        cells(&[
            &[Some("d1"), None, None, None],
            &[
                Some("d1"),
                Some(""),
                Some("2023-11-14T22:13:20"),
                Some("-0.50")
            ],
            &[Some("d2"), None, None, None],
            &[Some("d3"), None, None, None],
            &[
                Some("d4"),
                Some("a,b"),
                Some("2023-11-14T22:13:20.123"),
                Some("12.34")
            ],
        ])
    );

    // Debezium envelopes in Avro, with Avro keys.
    let records = produced["cdc"].as_u64().unwrap();
    let sql = pipeline_sql(
        &cdc,
        &cdc_group,
        &cdc_location,
        &format!("{avro}, 'envelope' 'debezium'"),
    );
    let stats = run_until(&sql, records).await;
    assert_eq!(stats.records, records);
    let rows = index_rows(&cdc_location).await;
    assert_eq!(id_bodies(&rows), [("e1", "first, updated")]);
    assert_eq!(stats.dead_lettered, 0);
}

/// Registry-framed Protobuf produced by Confluent's ProtobufSerializer (tests/clients/
/// protobuf_produce.py): upserts, a tombstone, a nested message type; defaults (proto3 leaves
/// them off the wire) arrive as values, not NULLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_from_the_schema_registry_upserts_and_deletes() {
    let registry = common::registry::FakeRegistry::start().await;
    let (topic, group, _dir, location) = dead_lettering_pipeline("protobuf", 1).await;
    let args = vec![bootstrap(), registry.url(), topic.clone()];
    let Some(produced) = confluent_client("protobuf_produce.py", args).await else {
        return;
    };
    let records = produced["records"].as_u64().unwrap();
    let options = format!(
        ", 'format' 'protobuf', 'schema.registry.url' '{}'",
        registry.url()
    );
    let sql = pipeline_sql(&topic, &group, &location, &options);
    let stats = run_until(&sql, records).await;
    assert_eq!(stats.records, records);
    let dlq = read_all(&format!("{topic}.dlq"), 1);
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(stats.dead_lettered, 0);
    let rows = index_rows(&location).await;
    assert_eq!(
        id_bodies(&rows),
        [
            ("p1", "Graphene, updated."),
            ("p3", "A nested message type.")
        ]
    );
    // p1's first version had no title: proto3's default, the empty string.
    let titles = common::tiny_engine()
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{location}';
             SELECT id, title FROM idx ORDER BY id"
        ))
        .await
        .unwrap();
    assert_eq!(
        text_rows(&titles.last().unwrap().batches),
        cells(&[&[Some("p1"), Some("updated")], &[Some("p3"), None]])
    );
}

/// A fresh topic and registry, and `CREATE EXTERNAL TABLE out (COLUMNS)` writing registry-framed
/// `format` into the topic (read back as a snapshot).
async fn registry_sink(
    format: &str,
    columns: &str,
) -> (common::registry::FakeRegistry, String, String) {
    let registry = common::registry::FakeRegistry::start().await;
    let topic = unique(&format!("{format}-sink"));
    create_topic(&topic, 1).await;
    let table = format!(
        "CREATE EXTERNAL TABLE out ({columns})
           STORED AS KAFKA LOCATION '{topic}' OPTIONS ('bootstrap.servers' '{}', 'format' '{format}',
           'schema.registry.url' '{}', 'key' 'id', 'end' 'latest-at-start')",
        bootstrap(),
        registry.url()
    );
    (registry, topic, table)
}

/// The first `count` messages of `topic` as Confluent's deserializer for `format` reads them
/// (tests/clients/registry_consume.py); `None` when the client is not installed.
async fn read_with_confluent(
    format: &str,
    registry: &common::registry::FakeRegistry,
    topic: &str,
    count: usize,
) -> Option<serde_json::Value> {
    let args = vec![
        format.to_string(),
        bootstrap(),
        registry.url(),
        topic.to_string(),
        count.to_string(),
    ];
    confluent_client("registry_consume.py", args).await
}

/// INSERT INTO a Kafka table with `'format' 'avro'`: the table's schema is registered under
/// `<topic>-value` and Confluent's AvroDeserializer reads the rows (tests/clients/
/// registry_consume.py); semflow's own Avro scan reads them back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_sink_rows_read_by_confluents_deserializer() {
    let (registry, topic, table) = registry_sink(
        "avro",
        "id TEXT NOT NULL, body TEXT, at TIMESTAMP, v FLOAT[], price DECIMAL(9, 2)",
    )
    .await;
    common::tiny_engine()
        .run_sql(&format!(
            // One row per INSERT: the test broker (Tansu) reports the high watermark short
            // after a multi-record batch until the next one arrives, which would end the
            // snapshot scan below early.
            "{table};
             INSERT INTO out VALUES ('a', 'hello', TIMESTAMP '2023-11-14 22:13:20.123', [0.5, -1.0], 12.34);
             INSERT INTO out VALUES ('b', NULL, NULL, [0.25], NULL)"
        ))
        .await
        .unwrap();
    let Some(read) = read_with_confluent("avro", &registry, &topic, 2).await else {
        return;
    };
    assert_eq!(
        read,
        serde_json::json!([
            {"key": "a", "value": {"id": "a", "body": "hello",
                "at": "2023-11-14T22:13:20.123000+00:00", "v": [0.5, -1.0], "price": "12.34"}},
            {"key": "b", "value": {"id": "b", "body": null, "at": null, "v": [0.25], "price": null}}
        ])
    );
    let read_back = scan_sink(
        &table,
        "id, body, CAST(at AS TEXT) AS at, array_to_string(v, ',') AS v, CAST(price AS TEXT) AS price",
    )
    .await;
    assert_eq!(
        read_back,
        cells(&[
            &[
                Some("a"),
                Some("hello"),
                Some("2023-11-14T22:13:20.123"),
                Some("0.5,-1"),
                Some("12.34")
            ],
            &[Some("b"), None, None, Some("0.25"), None],
        ])
    );
}

/// The sink topic's rows read back by semflow's own scan of `out` (declared by `table`),
/// ordered by id, as text cells.
async fn scan_sink(table: &str, columns: &str) -> Vec<Vec<Option<String>>> {
    let scan = common::tiny_engine()
        .run_sql(&format!("{table}; SELECT {columns} FROM out ORDER BY id"))
        .await
        .unwrap();
    text_rows(&scan.last().unwrap().batches)
}

/// INSERT INTO a Kafka table with `'format' 'protobuf'`: a proto3 message of the table's
/// columns is registered under `<topic>-value`; protoc compiles the registered text and
/// Confluent's ProtobufDeserializer reads the rows (tests/clients/registry_consume.py), NULLs
/// as absent `optional` fields; semflow's own Protobuf scan reads them back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_sink_rows_read_by_confluents_deserializer() {
    let (registry, topic, table) = registry_sink(
        "protobuf",
        "id TEXT NOT NULL, body TEXT, n INT, v FLOAT[], at TIMESTAMP",
    )
    .await;
    common::tiny_engine()
        .run_sql(&format!(
            // One row per INSERT (see avro_sink_rows_read_by_confluents_deserializer).
            "{table};
             INSERT INTO out VALUES ('a', 'hello', 7, [0.5, -1.0], TIMESTAMP '2023-11-14 22:13:20.123');
             INSERT INTO out VALUES ('b', NULL, NULL, [0.25], NULL)"
        ))
        .await
        .unwrap();
    let Some(read) = read_with_confluent("protobuf", &registry, &topic, 2).await else {
        return;
    };
    assert_eq!(
        read,
        serde_json::json!([
            {"key": "a", "value": {"id": "a", "body": "hello", "n": 7, "v": [0.5, -1.0],
                "at": "2023-11-14T22:13:20.123Z"},
             "present": ["at", "body", "id", "n", "v"]},
            {"key": "b", "value": {"id": "b", "v": [0.25]}, "present": ["id", "v"]}
        ])
    );
    let read_back = scan_sink(
        &table,
        "id, body, CAST(n AS TEXT) AS n, array_to_string(v, ',') AS v, CAST(at AS TEXT) AS at",
    )
    .await;
    assert_eq!(
        read_back,
        cells(&[
            &[
                Some("a"),
                Some("hello"),
                Some("7"),
                Some("0.5,-1"),
                Some("2023-11-14T22:13:20.123"),
            ],
            // Absent `optional` fields read back as NULL.
            &[Some("b"), None, None, Some("0.25"), None],
        ])
    );

    // Columns without a Protobuf type are refused by name before anything is sent.
    let err = common::tiny_engine()
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE bad (id TEXT NOT NULL, price DECIMAL(9, 2)) STORED AS KAFKA LOCATION '{topic}'
               OPTIONS ('bootstrap.servers' '{}', 'format' 'protobuf', 'schema.registry.url' '{}');
             INSERT INTO bad VALUES ('c', 1.5)",
            bootstrap(),
            registry.url()
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("column price cannot be written as Protobuf"),
        "{err}"
    );
}

/// A registry that wants credentials: `'schema.registry.basic.auth.user.info'` sends them;
/// without them (or wrong) the statement fails naming the registry's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_registry_credentials_are_sent() {
    let registry = common::registry::FakeRegistry::start_with_auth(Some(("key", "s3:cret"))).await;
    let topic = unique("avro-auth");
    create_topic(&topic, 1).await;
    let sql = |credentials: &str| {
        format!(
            "CREATE EXTERNAL TABLE out (id TEXT NOT NULL) STORED AS KAFKA LOCATION '{topic}'
               OPTIONS ('bootstrap.servers' '{}', 'format' 'avro', 'schema.registry.url' '{}'{credentials});
             INSERT INTO out VALUES ('a')",
            bootstrap(),
            registry.url()
        )
    };
    for credentials in ["", ", 'schema.registry.basic.auth.user.info' 'key:wrong'"] {
        let err = common::tiny_engine()
            .run_sql(&sql(credentials))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP 401"), "{err}");
    }
    common::tiny_engine()
        .run_sql(&sql(
            ", 'schema.registry.basic.auth.user.info' 'key:s3:cret'",
        ))
        .await
        .unwrap();
}

#[test]
fn bench_k1_ingests_every_document_and_reports_rate_and_lag() {
    let out = common::stdout_of(
        common::semflow_command()
            .args(["bench", "--workloads", "k1", "--json", "--k1-docs", "1200"])
            .args(["--kafka", &bootstrap(), "--k1-rate", "1000"]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["ingest"].as_array().unwrap().len(), 1, "{report}");
    let k1 = &report["ingest"][0];
    assert_eq!(k1["docs"], 1200, "{k1}");
    assert!(k1["tokens"].as_u64().unwrap() > 1200 * 50, "{k1}");
    // Paced at 1000 docs/s, 1200 documents take at least the 0.7 s after the first chunk.
    assert!(k1["seconds"].as_f64().unwrap() >= 0.7, "{k1}");
    assert!(k1["docs_per_s"].as_f64().unwrap() > 0.0, "{k1}");
    assert!(k1["batches"].as_u64().unwrap() >= 2, "{k1}");
    let (p50, max) = (
        k1["lag_p50_ms"].as_f64().unwrap(),
        k1["lag_max_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= max, "{k1}");
    assert!(report["results"].as_array().unwrap().is_empty());
}

#[test]
fn bench_k1_compares_ingest_with_and_without_maintenance_on_indexed_tables() {
    let out = common::stdout_of(
        common::semflow_command()
            .args(["bench", "--workloads", "k1", "--json", "--k1-docs", "800"])
            .args(["--kafka", &bootstrap(), "--k1-rate", "50"])
            .args(["--k1-index-rows", "1000", "--k1-maintenance-commits", "2"]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let runs = report["ingest"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report}");
    for (run, every) in runs.iter().zip([0, 2]) {
        assert_eq!(run["docs"], 800, "{run}");
        assert_eq!(run["index_rows"], 1000, "{run}");
        assert_eq!(run["maintenance_commits"], every, "{run}");
    }
    // Off means no round; on, a round every 2 commits. Paced slower than even a debug build
    // embeds, each run commits many small micro-batches over 16 s, so rounds have time to end
    // (a round still running when the run stops is abandoned, not counted).
    assert_eq!(runs[0]["maintenance_rounds"], 0, "{report}");
    assert!(runs[1]["batches"].as_u64().unwrap() >= 4, "{report}");
    assert!(
        runs[1]["maintenance_rounds"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

/// `semflow.maintenance_rows` schedules rounds by rows written (commits and time off): with a
/// round due every 20 rows the stream's rounds happen; nothing else could start one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_is_scheduled_by_rows_written() {
    let topic = unique("by-rows");
    create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    let sql = format!(
        "SET semflow.maintenance_commits = 0;
         SET semflow.maintenance_rows = 20;
         {}",
        pipeline_sql(&topic, &unique("by-rows"), &location, "")
    );
    let p = producer();
    let first: Vec<_> = (0..30).map(|i| doc(&format!("d{i}"), "body")).collect();
    produce_each(&p, &topic, &first).await;
    // More records keep batches coming after a round ends: a batch reports the count.
    let feeding = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 30..1230 {
                produce_each(&p, &topic, &[doc(&format!("d{i}"), "more")]).await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let engine = common::tiny_engine();
    let rounds = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let (rounds, notify) = (rounds.clone(), notify.clone());
        async move {
            while rounds.load(Ordering::SeqCst) == 0 {
                notify.notified().await;
            }
        }
    };
    let run = semflow::pipeline::run(&engine, &sql, shutdown, |s| {
        rounds.store(s.maintenance, Ordering::SeqCst);
        notify.notify_one();
    });
    let stats = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("no maintenance round within 120 s")
        .unwrap();
    feeding.abort();
    assert!(stats.maintenance >= 1, "{stats:?}");
    assert!(stats.rows_written >= 20, "{stats:?}");
}

/// `semflow run` on a topic that does not exist yet waits for it (saying so) and indexes it
/// once it is created; with `'topic_wait_s' '0'` it fails at once, naming the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_its_topic_to_be_created() {
    use common::pipeline::{
        assert_index_equals, log_text, setup, start, terminate, wait_caught_up, workload,
    };
    let mut s = setup("late-topic", 2).await;
    let late = unique("late-topic-created");
    let text = std::fs::read_to_string(&s.pipeline).unwrap();
    std::fs::write(&s.pipeline, text.replace(&s.topic, &late)).unwrap();
    s.topic = late.clone();
    let log = s.dir.path().join("worker.log");
    let mut worker = start(&s.pipeline, &log);
    let limit = std::time::Duration::from_secs(60);
    common::wait_until("the worker to wait for its topic", limit, || {
        log_text(&log).contains(&format!("topic {late} does not exist (yet); waiting"))
    })
    .await;
    assert!(worker.try_wait().unwrap().is_none(), "{}", log_text(&log));

    create_topic(&late, 2).await;
    let (ops, expected) = workload(5, 200);
    let delivered = produce(&producer(), &late, &ops).await;
    let ends = common::kafka::end_offsets(&delivered, 2);
    wait_caught_up(&s, &ends, &mut [(&mut worker, &log)]).await;
    terminate(&mut worker, &log);
    assert_index_equals(&s.location, &expected).await;

    // Not waiting: one line naming the topic and the option.
    let never = unique("never-created");
    let text = std::fs::read_to_string(&s.pipeline).unwrap();
    let impatient = text
        .replace(&late, &never)
        .replace("'batch_ms' '100'", "'batch_ms' '100', 'topic_wait_s' '0'");
    std::fs::write(&s.pipeline, impatient).unwrap();
    let out = common::semflow_command()
        .arg("run")
        .arg(&s.pipeline)
        .args(["--metrics-addr", "off"])
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{errors}");
    assert!(
        errors.contains(&format!(
            "topic {never} does not exist (waited 0 s, option 'topic_wait_s')"
        )),
        "{errors}"
    );
}
