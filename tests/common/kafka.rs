//! A real Kafka-protocol broker for tests: its address comes from SEMFLOW_TEST_KAFKA
//! (`scripts/with-kafka.sh` starts one). Topic and group names get a random suffix so tests
//! run in parallel.
#![allow(dead_code)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

/// The broker address; a clear failure when no broker was started.
pub fn bootstrap() -> String {
    std::env::var("SEMFLOW_TEST_KAFKA").expect(
        "SEMFLOW_TEST_KAFKA is not set: run the tests through scripts/with-kafka.sh (it starts a broker)",
    )
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&bootstrap(), name, partitions).await
}

/// [`create_topic`] on the broker at `bootstrap`.
pub async fn create_topic_on(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

pub fn producer() -> FutureProducer {
    producer_on(&bootstrap())
}

/// A producer for the broker at `bootstrap`.
pub fn producer_on(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces (key, value) pairs in order; `None` values are tombstones. Returns each record's
/// (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Option<String>)],
) -> Vec<(i32, i64)> {
    let sends: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            let mut r: FutureRecord<'_, str, str> =
                FutureRecord::to(topic).headers(OwnedHeaders::new().insert(Header {
                    key: "origin",
                    value: Some("test"),
                }));
            if let Some(k) = k {
                r = r.key(k.as_str());
            }
            if let Some(v) = v {
                r = r.payload(v.as_str());
            }
            producer.send(r, Duration::from_secs(30))
        })
        .collect();
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|s| {
            let d = s.map_err(|(e, _)| e).unwrap();
            (d.partition, d.offset)
        })
        .collect()
}

/// Produces records one request at a time (see scripts/with-kafka.sh on Tansu's watermarks:
/// single-record batches keep them right, for snapshot reads).
pub async fn produce_each(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Option<String>)],
) {
    for r in records {
        produce(producer, topic, std::slice::from_ref(r)).await;
    }
}

/// The next offset per partition after `delivered` records.
pub fn end_offsets(delivered: &[(i32, i64)], partitions: i32) -> Vec<i64> {
    let mut end = vec![0; partitions as usize];
    for (p, o) in delivered {
        end[*p as usize] = end[*p as usize].max(o + 1);
    }
    end
}

/// A consumed record: key, value, headers as (name, text).
pub type Consumed = (Option<String>, Option<String>, Vec<(String, String)>);

/// Every record of `topic` as (key, value, headers as (name, text)).
pub fn read_all(topic: &str, partitions: i32) -> Vec<Consumed> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("read"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(2000)) {
            let m = m.unwrap();
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), text(h.value).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((text(m.key()), text(m.payload()), headers));
        } else if !out.is_empty() {
            // Two seconds without a record after the first: the topic is drained.
            break;
        }
    }
    out
}
