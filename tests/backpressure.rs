//! Backpressure: when the pipeline stops taking batches, the consumer pauses its partitions
//! and holds a bounded number of records (memory stays flat while a 60 MB backlog waits in
//! Kafka); when the pipeline resumes, every record arrives once, in order.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka::{bootstrap, create_topic, produce, producer, unique};
use semflow::kafka::{Consumer, KafkaOptions, Mode};

const RECORDS: usize = 60_000;
const BATCH_ROWS: usize = 500;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pipeline_pauses_the_consumer_and_loses_nothing() {
    // Judges this process's memory: alone, so no other test's allocations count.
    if common::run_alone("backpressure::a_slow_pipeline_pauses_the_consumer_and_loses_nothing") {
        return;
    }
    let topic = unique("bp");
    create_topic(&topic, 2).await;
    let p = producer();
    let body = "x".repeat(1000);
    let records: Vec<_> = (0..RECORDS)
        .map(|i| {
            (
                Some(format!("k{i}")),
                Some(format!("{{\"id\":\"k{i}\",\"body\":\"{body}\"}}")),
            )
        })
        .collect();
    for chunk in records.chunks(5000) {
        produce(&p, &topic, chunk).await;
    }

    let options: HashMap<String, String> = [
        ("bootstrap.servers", bootstrap()),
        ("group.id", unique("bp-group")),
        ("format.start", "earliest".into()),
        ("format.batch_rows", BATCH_ROWS.to_string()),
        ("session.timeout.ms", "6000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let options = KafkaOptions::parse(&topic, &options).unwrap();
    let before = rss_bytes();
    let mut consumer = Consumer::start(&options, Mode::Pipeline(None)).unwrap();

    // The pipeline is stuck (no batch taken) for a while: the consumer must pause and hold
    // at most the batch it is cutting plus the one waiting, however large the backlog.
    let stalled = Instant::now();
    let mut peak_held = 0;
    let mut peak_rss = before;
    while stalled.elapsed() < Duration::from_secs(5) {
        peak_held = peak_held.max(consumer.held_records());
        peak_rss = peak_rss.max(rss_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(consumer.is_paused(), "the consumer did not pause");
    assert!(
        peak_held <= 3 * BATCH_ROWS,
        "the consumer held {peak_held} records while paused"
    );
    let growth = peak_rss.saturating_sub(before);
    assert!(
        growth < 48 << 20,
        "memory grew by {} MB while a {} MB backlog waited",
        growth >> 20,
        RECORDS >> 10
    );

    // The pipeline catches up slowly: every record arrives exactly once, offsets contiguous.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < RECORDS {
        assert!(Instant::now() < deadline, "only {seen} records arrived");
        let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
        else {
            panic!("no batch after {seen} records");
        };
        let batch = batch.unwrap();
        assert!(batch.records.len() <= BATCH_ROWS + 1);
        for r in &batch.records {
            let expected = next.entry(r.partition).or_insert(0);
            assert_eq!(
                r.offset, *expected,
                "partition {} skipped or repeated",
                r.partition
            );
            *expected += 1;
        }
        seen += batch.records.len();
        consumer.ack(batch.seq, Some(batch.positions));
        if seen < 5 * BATCH_ROWS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(seen, RECORDS);
    println!(
        "backpressure: peak {peak_held} records held, RSS +{} MB while {} MB waited",
        growth >> 20,
        RECORDS >> 10
    );
    consumer.stop();
}

/// Takes `consumer`'s batches as a pipeline would, acknowledging each and then, while `slow`
/// is set, holding `pause` before the next (noting in `paused` whether the consumer has paused
/// its partitions meanwhile); notes the highest offset seen per partition in `seen`.
fn read_slowly(
    mut consumer: Consumer,
    pause: Duration,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<HashMap<i32, i64>>>,
) -> tokio::task::JoinHandle<Consumer> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        while let Some(Ok(batch)) = consumer.next().await {
            {
                let mut seen = seen.lock().unwrap();
                for r in &batch.records {
                    let top = seen.entry(r.partition).or_insert(-1);
                    *top = (*top).max(r.offset);
                }
            }
            consumer.ack(batch.seq, Some(batch.positions));
            let held = Instant::now();
            while slow.load(Ordering::SeqCst) && held.elapsed() < pause {
                paused.store(consumer.is_paused(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        consumer
    })
}

/// A consumer whose partitions are paused for backpressure when a rebalance revokes them and
/// gives them back must fetch them again: librdkafka keeps an application's pause through
/// unassign and assign, and without a resume the worker would sit idle on them for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_across_a_rebalance_are_fetched_again() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const PARTITIONS: i32 = 2;
    let topic = unique("bp-rebalance");
    create_topic(&topic, PARTITIONS).await;
    let records: Vec<_> = (0..10_000)
        .map(|i| (Some(format!("k{i}")), Some(format!("{{\"id\":\"k{i}\"}}"))))
        .collect();
    let delivered = produce(&producer(), &topic, &records).await;
    let ends = common::kafka::end_offsets(&delivered, PARTITIONS);

    let options: HashMap<String, String> = [
        ("bootstrap.servers", bootstrap()),
        ("group.id", unique("bp-rebalance-group")),
        ("format.start", "earliest".into()),
        ("format.batch_rows", "100".into()),
        ("session.timeout.ms", "6000".into()),
        ("heartbeat.interval.ms", "500".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let options = KafkaOptions::parse(&topic, &options).unwrap();

    // A's pipeline holds each batch for seconds: its consumer pauses its partitions.
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let slow = Arc::new(AtomicBool::new(true));
    let a_paused = Arc::new(AtomicBool::new(false));
    let a = Consumer::start(&options, Mode::Pipeline(None)).unwrap();
    let hold = Duration::from_secs(5);
    let a = read_slowly(a, hold, slow.clone(), a_paused.clone(), seen.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a_paused.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "A never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // B joins while A is paused (A's partitions are revoked, some given back to it), takes a
    // batch, then leaves: A is given every partition.
    let b_seen = Arc::new(Mutex::new(HashMap::new()));
    let b = Consumer::start(&options, Mode::Pipeline(None)).unwrap();
    let fast = Arc::new(AtomicBool::new(false));
    let b = read_slowly(b, Duration::ZERO, fast.clone(), fast, b_seen.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while b_seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "B never got a batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.abort();
    drop(b.await);
    slow.store(false, Ordering::SeqCst);

    // A reads every partition to its end.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let at: Vec<i64> = {
            let seen = seen.lock().unwrap();
            (0..PARTITIONS)
                .map(|p| seen.get(&p).copied().unwrap_or(-1) + 1)
                .collect()
        };
        if at == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A stopped short: read to {at:?} of {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.abort();
    drop(a.await);
}
