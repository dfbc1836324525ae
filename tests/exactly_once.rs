//! Exactly-once indexing under crashes, against a real broker:
//! - `semflow run` is SIGKILLed at random points while 20,000 operations (inserts, updates,
//!   deletes) flow through a 3-partition topic, restarted each time;
//! - two workers in one consumer group share a 4-partition topic and one is SIGKILLed midway.
//!
//! Either way the final index must equal the final state of the topic exactly.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use common::kafka::{bootstrap, create_topic, end_offsets, produce, producer, unique};
use rand::{Rng, SeedableRng};
use semflow::index::LanceTable;

const OPERATIONS: usize = 20_000;
const PARTITIONS: i32 = 3;
const KILLS: usize = 10;

/// (key, value) records; a `None` value is a tombstone.
type Records = Vec<(Option<String>, Option<String>)>;

/// The operations and the state they leave: id → body (absent when deleted).
fn workload(seed: u64, operations: usize) -> (Records, BTreeMap<String, String>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ops = Vec::with_capacity(operations);
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut live: Vec<String> = Vec::new();
    let mut next_id = 0;
    for n in 0..operations {
        let roll: f64 = rng.random();
        if live.len() < 50 || roll < 0.6 {
            let id = format!("doc-{next_id}");
            next_id += 1;
            let body = format!(
                "document {id} version {n} about topic {}",
                rng.random_range(0..1000)
            );
            ops.push(upsert(&id, &body));
            state.insert(id.clone(), body);
            live.push(id);
        } else if roll < 0.85 {
            let id = live[rng.random_range(0..live.len())].clone();
            let body = format!("document {id} updated at {n}");
            ops.push(upsert(&id, &body));
            state.insert(id, body);
        } else {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            ops.push((Some(id.clone()), None));
            state.remove(&id);
        }
    }
    (ops, state)
}

fn upsert(id: &str, body: &str) -> (Option<String>, Option<String>) {
    (
        Some(id.to_string()),
        Some(serde_json::json!({"id": id, "body": body}).to_string()),
    )
}

fn start(pipeline: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_semflow"))
        .arg("run")
        .arg(pipeline)
        .args(["--metrics-addr", "off"])
        .env(
            "SEMFLOW_EMBED_MODEL",
            common::tiny_model(
                semflow::model::random::ModelKind::Embedding,
                common::EMBED_SEED,
            ),
        )
        .env("SEMFLOW_LOG", "semflow=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A topic (plus its dead-letter topic), an index location and a pipeline file over them.
struct Setup {
    dir: tempfile::TempDir,
    topic: String,
    location: String,
    pipeline: PathBuf,
}

async fn setup(prefix: &str, partitions: i32) -> Setup {
    let topic = unique(prefix);
    create_topic(&topic, partitions).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    let pipeline = dir.path().join("index.sql");
    std::fs::write(
        &pipeline,
        format!(
            "CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, body TEXT) STORED AS KAFKA LOCATION '{topic}'
               OPTIONS ('bootstrap.servers' '{}', 'group.id' '{}', 'start' 'earliest', 'batch_rows' '500',
                        'batch_ms' '100', 'session.timeout.ms' '6000', 'heartbeat.interval.ms' '500');
             CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, body TEXT, embedding FLOAT[], model TEXT, PRIMARY KEY (id))
               STORED AS LANCE LOCATION '{location}';
             INSERT INTO idx SELECT id, body, embed(body) AS embedding, embed_model() AS model FROM docs;",
            bootstrap(),
            unique(&format!("{prefix}-group"))
        ),
    )
    .unwrap();
    Setup {
        dir,
        topic,
        location,
        pipeline,
    }
}

/// Produces `ops` in chunks with pauses, so failures land while data is still arriving.
fn produce_in_background(topic: &str, ops: Records) -> tokio::task::JoinHandle<Vec<(i32, i64)>> {
    let topic = topic.to_string();
    tokio::spawn(async move {
        let p = producer();
        let mut delivered = Vec::new();
        for chunk in ops.chunks(1000) {
            delivered.extend(produce(&p, &topic, chunk).await);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        delivered
    })
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

fn assignments(log: &Path) -> usize {
    log_text(log).matches("partitions assigned").count()
}

/// Records in the batches a run committed (its last status line), from the run's first
/// byte in `log`.
fn read_by_run(log: &Path, from: usize) -> u64 {
    log_text(log)
        .get(from..)
        .unwrap_or_default()
        .lines()
        .rev()
        .filter_map(|l| {
            l.split(" records (")
                .next()?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .next()
        .unwrap_or(0)
}

/// Waits until the index stores `ends` as the next offsets of every partition, while the
/// `running` processes stay alive.
async fn wait_caught_up(setup: &Setup, ends: &[i64], running: &mut [(&mut Child, &Path)]) {
    let wanted: Vec<(String, i32)> = (0..ends.len() as i32)
        .map(|p| (setup.topic.clone(), p))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(table) = LanceTable::open(&setup.location, None, None).await {
            let offsets = table.offsets(&wanted).await.unwrap();
            if (0..ends.len()).all(|p| offsets.get(&setup.topic, p as i32) == Some(ends[p])) {
                return;
            }
        }
        for (child, log) in running.iter_mut() {
            assert!(
                Instant::now() < deadline,
                "the pipeline did not catch up; log:\n{}",
                log_text(log)
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the pipeline exited; log:\n{}",
                log_text(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn terminate(child: &mut Child, log: &Path) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must finish cleanly, got {status}; log:\n{}",
        log_text(log)
    );
}

/// The index equals `expected`: every key present once, at its latest version, every
/// deleted key gone, every row with its vector and model fingerprint.
async fn assert_index_equals(location: &str, expected: &BTreeMap<String, String>) {
    let engine = common::tiny_engine();
    let results = engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{location}';
             SELECT id, body, model, embedding FROM idx"
        ))
        .await
        .unwrap();
    let mut actual: BTreeMap<String, String> = BTreeMap::new();
    let mut rows = 0;
    for batch in &results[1].batches {
        let ids = batch.column(0).as_string::<i32>();
        let bodies = batch.column(1).as_string::<i32>();
        let models = batch.column(2).as_string::<i32>();
        let vectors = batch.column(3).as_fixed_size_list();
        for i in 0..batch.num_rows() {
            rows += 1;
            assert!(models.value(i).contains('@'));
            assert_eq!(vectors.value(i).len(), 64);
            actual.insert(ids.value(i).to_string(), bodies.value(i).to_string());
        }
    }
    assert_eq!(rows, actual.len(), "duplicate ids in the index");
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let stale: Vec<_> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && stale.is_empty(),
        "missing {missing:?}, not deleted {extra:?}, stale {stale:?}"
    );
    assert_eq!(&actual, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_neither_loses_nor_duplicates() {
    let s = setup("eo", PARTITIONS).await;
    let log = s.dir.path().join("pipeline.log");
    let (ops, expected) = workload(7, OPERATIONS);
    let producing = produce_in_background(&s.topic, ops);

    let began = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut reread = 0u64;
    for kill in 0..KILLS {
        let before = assignments(&log);
        let log_start = log_len(&log);
        let mut child = start(&s.pipeline, &log);
        // Kill at a random point after the run got its partitions (until then it only waits
        // for the group to expire the previous, killed member).
        let joined = Instant::now();
        while assignments(&log) == before && joined.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..3000))).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "run {kill} exited early with {status}; log:\n{}",
                log_text(&log)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reread += read_by_run(&log, log_start);
    }
    let delivered = producing.await.unwrap();

    // A last run catches up; then SIGTERM must finish cleanly.
    let log_start = log_len(&log);
    let mut child = start(&s.pipeline, &log);
    wait_caught_up(
        &s,
        &end_offsets(&delivered, PARTITIONS),
        &mut [(&mut child, &log)],
    )
    .await;
    let elapsed = began.elapsed();
    terminate(&mut child, &log);
    let read_total = reread + read_by_run(&log, log_start);
    // A run's status line counts the records of the batches it committed. Every restart
    // resumes exactly at the offsets stored with the last commit, so no record is committed
    // twice: the runs' counts add up to at most the operations (less when a kill fell between
    // a commit and its status line). Resuming anywhere earlier would exceed it.
    assert!(
        read_total <= OPERATIONS as u64,
        "{read_total} records committed in total for {OPERATIONS}"
    );
    assert_index_equals(&s.location, &expected).await;
    println!(
        "exactly-once: {OPERATIONS} operations ({} final documents) over {PARTITIONS} partitions, {KILLS} SIGKILLs, {} assignments, {read_total} records committed over all runs, caught up in {:.1} s",
        expected.len(),
        assignments(&log),
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_partitions_and_survive_losing_one() {
    const OPS: usize = 8_000;
    let s = setup("pair", 4).await;
    let (log_a, log_b) = (s.dir.path().join("a.log"), s.dir.path().join("b.log"));
    let (ops, expected) = workload(13, OPS);
    let producing = produce_in_background(&s.topic, ops);

    let mut a = start(&s.pipeline, &log_a);
    let mut b = start(&s.pipeline, &log_b);
    // Both members get a share of the four partitions …
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(log_text(&log_a).contains("partitions assigned")
        && log_text(&log_b).contains("partitions assigned"))
    {
        assert!(
            Instant::now() < deadline,
            "no shared assignment:\nA: {}\nB: {}",
            log_text(&log_a),
            log_text(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // … and index their share for a while; then B dies without a goodbye.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_by_run(&log_b, 0) == 0 {
        assert!(
            Instant::now() < deadline,
            "worker B indexed nothing:\n{}",
            log_text(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.kill().unwrap();
    b.wait().unwrap();
    let read_b = read_by_run(&log_b, 0);
    let shared = log_text(&log_b)
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .map(|l| l.matches(s.topic.as_str()).count())
        .collect::<Vec<_>>();
    assert!(
        shared.iter().any(|n| (1..4).contains(n)),
        "B never held a share of the partitions: {shared:?}"
    );

    // A takes over B's partitions from the positions B committed, and finishes the topic.
    let delivered = producing.await.unwrap();
    wait_caught_up(&s, &end_offsets(&delivered, 4), &mut [(&mut a, &log_a)]).await;
    terminate(&mut a, &log_a);
    let read_a = read_by_run(&log_a, 0);
    assert!(
        read_a + read_b <= OPS as u64,
        "A committed {read_a} and B {read_b} records: some were committed twice"
    );
    assert_index_equals(&s.location, &expected).await;
    println!(
        "two workers: {OPS} operations over 4 partitions; B committed {read_b} records before SIGKILL, A {read_a}"
    );
}
