//! Exactly-once indexing under crashes: `semflow run` is SIGKILLed at random points while
//! 20,000 operations (inserts, updates, deletes) flow through a 3-partition topic, restarted
//! each time, and the final index must equal the final state of the topic exactly.

mod common;

use std::collections::BTreeMap;
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
fn workload(seed: u64) -> (Records, BTreeMap<String, String>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ops = Vec::with_capacity(OPERATIONS);
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut live: Vec<String> = Vec::new();
    let mut next_id = 0;
    for n in 0..OPERATIONS {
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

fn start(pipeline: &std::path::Path, log: &std::path::Path) -> Child {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_neither_loses_nor_duplicates() {
    let topic = unique("eo");
    create_topic(&topic, PARTITIONS).await;
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
            unique("eo-group")
        ),
    )
    .unwrap();
    let log = dir.path().join("pipeline.log");
    let (ops, expected) = workload(7);

    // Produce in the background, in chunks, so kills land while data is still arriving.
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let p = producer();
            let mut delivered = Vec::new();
            for chunk in ops.chunks(1000) {
                delivered.extend(produce(&p, &topic, chunk).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            delivered
        })
    };

    let began = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let assignments = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("partitions assigned")
            .count()
    };
    // Records each run read before it was killed (its last status line).
    let read_by_run = |from: usize| -> u64 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.get(from..)
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
    };
    let mut reread = 0u64;
    for kill in 0..KILLS {
        let before = assignments();
        let log_start = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let mut child = start(&pipeline, &log);
        // Kill at a random point after the run got its partitions (until then it only waits
        // for the group to expire the previous, killed member).
        let joined = Instant::now();
        while assignments() == before && joined.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wait = Duration::from_millis(rng.random_range(100..3000));
        tokio::time::sleep(wait).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "run {kill} exited early with {status}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reread += read_by_run(log_start);
    }
    let delivered = producing.await.unwrap();

    // A last run catches up; then SIGTERM must finish cleanly.
    let log_start = std::fs::metadata(&log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let mut child = start(&pipeline, &log);
    let highs = end_offsets(&delivered, PARTITIONS);
    let wanted: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (topic.clone(), p)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table = LanceTable::open(&location, None, None).await;
        if let Ok(table) = table {
            let offsets = table.offsets(&wanted).await.unwrap();
            if (0..PARTITIONS).all(|p| offsets.get(&topic, p) == Some(highs[p as usize])) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline did not catch up; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline exited; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = began.elapsed();
    let pid = child.id() as i32;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must finish cleanly, got {status}"
    );
    let read_total = reread + read_by_run(log_start);
    // Each restart resumes at the offsets stored with the last commit: besides every record
    // once, at most the batches in flight at each kill (consumer-side: one being cut, one
    // queued, one in the pipeline) are read again. A restart from the beginning would read
    // far more.
    assert!(
        read_total <= (OPERATIONS + KILLS * 3 * 500) as u64,
        "{read_total} records read in total for {OPERATIONS}"
    );

    // The index equals the topic's final state: every key present once, at its latest
    // version, and every deleted key gone.
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
    assert_eq!(actual, expected);
    let restarts = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("partitions assigned")
        .count();
    println!(
        "exactly-once: {OPERATIONS} operations ({} final documents) over {PARTITIONS} partitions, {KILLS} SIGKILLs, {restarts} assignments, {read_total} records read in all runs, caught up in {:.1} s",
        expected.len(),
        elapsed.as_secs_f64()
    );
}
