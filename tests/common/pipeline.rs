//! Helpers for tests that run `semflow run` workers over a real broker: a random workload of
//! upserts and deletes with its final state, pipeline files, worker processes and their logs,
//! and the check that an index equals the topic's final state exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use rand::{Rng, SeedableRng};
use semflow::index::LanceTable;

use super::kafka::{bootstrap, create_topic_on, produce, unique};

/// (key, value) records; a `None` value is a tombstone.
pub type Records = Vec<(Option<String>, Option<String>)>;

/// The operations and the state they leave: id → body (absent when deleted).
pub fn workload(seed: u64, operations: usize) -> (Records, BTreeMap<String, String>) {
    workload_with(seed, operations, |rng, id, n, update| {
        if update {
            format!("document {id} updated at {n}")
        } else {
            format!(
                "document {id} version {n} about topic {}",
                rng.random_range(0..1000)
            )
        }
    })
}

/// A workload whose bodies run from a few words to a few hundred, so each update changes how
/// many chunks a document has.
pub fn chunk_workload(seed: u64, operations: usize) -> (Records, BTreeMap<String, String>) {
    const WORDS: [&str; 8] = [
        "streams",
        "index",
        "chunks",
        "vectors",
        "ranking",
        "offsets",
        "commits",
        "documents",
    ];
    workload_with(seed, operations, |rng, id, n, _| {
        let words = match rng.random_range(0..4) {
            0 => rng.random_range(1..6),
            1 | 2 => rng.random_range(6..60),
            _ => rng.random_range(60..200),
        };
        let mut body = format!("{id} at {n}:");
        for _ in 0..words {
            body.push(' ');
            body.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        body
    })
}

/// `documents` documents, each inserted and then updated one to three times with bodies of
/// one to nine sentences (so updates grow and shrink their chunk counts); one in ten ends
/// deleted. Each document's operations keep their order; documents interleave at random.
pub fn revision_workload(seed: u64, documents: usize) -> (Records, BTreeMap<String, String>) {
    const SENTENCES: [&str; 6] = [
        "Streams carry documents into the index.",
        "Every update replaces all of a document's chunks.",
        "Offsets are committed with the rows they produced.",
        "A worker that crashes resumes where the index stands.",
        "Rebalances move partitions between workers.",
        "Tombstones remove a document and its chunks.",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pending: Vec<std::collections::VecDeque<(Option<String>, Option<String>)>> =
        Vec::with_capacity(documents);
    let mut state = BTreeMap::new();
    for d in 0..documents {
        let id = format!("doc-{d}");
        let mut ops = std::collections::VecDeque::new();
        let mut body = String::new();
        for revision in 0..=rng.random_range(1..=3) {
            body = format!("{id} revision {revision}.");
            for _ in 0..rng.random_range(1..=9) {
                body.push(' ');
                body.push_str(SENTENCES[rng.random_range(0..SENTENCES.len())]);
            }
            ops.push_back(upsert(&id, &body));
        }
        if rng.random_range(0..10) == 0 {
            ops.push_back((Some(id.clone()), None));
        } else {
            state.insert(id, body);
        }
        pending.push(ops);
    }
    let mut out = Vec::new();
    while !pending.is_empty() {
        let i = rng.random_range(0..pending.len());
        match pending[i].pop_front() {
            Some(op) => out.push(op),
            None => {
                pending.swap_remove(i);
            }
        }
    }
    (out, state)
}

/// Inserts (60%), updates (25%) and deletes (15%) of documents; `body(rng, id, n, update)`
/// writes operation `n`'s text.
fn workload_with(
    seed: u64,
    operations: usize,
    mut body: impl FnMut(&mut rand_chacha::ChaCha8Rng, &str, usize, bool) -> String,
) -> (Records, BTreeMap<String, String>) {
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
            let text = body(&mut rng, &id, n, false);
            ops.push(upsert(&id, &text));
            state.insert(id.clone(), text);
            live.push(id);
        } else if roll < 0.85 {
            let id = live[rng.random_range(0..live.len())].clone();
            let text = body(&mut rng, &id, n, true);
            ops.push(upsert(&id, &text));
            state.insert(id, text);
        } else {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            ops.push((Some(id.clone()), None));
            state.remove(&id);
        }
    }
    (ops, state)
}

pub fn upsert(id: &str, body: &str) -> (Option<String>, Option<String>) {
    (
        Some(id.to_string()),
        Some(serde_json::json!({"id": id, "body": body}).to_string()),
    )
}

/// The same operations as Debezium change events: key `{"id": …}`; an insert is op `c`, an
/// update `u` (with `before`), a delete `d` followed by Debezium's tombstone.
pub fn as_debezium(ops: &Records) -> Records {
    let mut bodies: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut events = Vec::with_capacity(ops.len() * 2);
    for (key, value) in ops {
        let Some(id) = key else { continue };
        let event_key = Some(serde_json::json!({ "id": id }).to_string());
        let before = bodies.get(id).cloned();
        match value {
            Some(v) => {
                let after: serde_json::Value = serde_json::from_str(v).unwrap();
                let op = if before.is_some() { "u" } else { "c" };
                let event = serde_json::json!({"before": before, "after": after, "op": op});
                events.push((event_key, Some(event.to_string())));
                bodies.insert(id.clone(), after);
            }
            None => {
                let event = serde_json::json!({"before": before, "after": null, "op": "d"});
                events.push((event_key.clone(), Some(event.to_string())));
                events.push((event_key, None));
                bodies.remove(id);
            }
        }
    }
    events
}

pub fn start(pipeline: &Path, log: &Path) -> Child {
    start_with(pipeline, log, &[])
}

/// `semflow run PIPELINE` with extra environment variables, logging to `log`.
pub fn start_with(pipeline: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    run_command(super::semflow_command(), pipeline, log, envs)
}

/// [`start_with`] inside the network namespace `ns`.
pub fn start_in(
    ns: &super::netns::Namespace,
    pipeline: &Path,
    log: &Path,
    envs: &[(&str, &str)],
) -> Child {
    run_command(super::semflow_command_in(ns), pipeline, log, envs)
}

fn run_command(
    mut command: std::process::Command,
    pipeline: &Path,
    log: &Path,
    envs: &[(&str, &str)],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command
        .arg("run")
        .arg(pipeline)
        .args(["--metrics-addr", "off"])
        .env("SEMFLOW_LOG", "semflow=info")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A topic (plus its dead-letter topic), an index location and a pipeline file over them. The
/// pipeline maintains its index every 10 commits, so crash and fencing tests cover
/// maintenance rounds too.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub topic: String,
    pub location: String,
    pub pipeline: PathBuf,
}

/// What the pipeline writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One row per document, upserted by id.
    Documents,
    /// Chunks of at most [`CHUNK_TOKENS`] tokens, one row each, replaced per document
    /// (`document_key`), like pipelines/index-chunks.sql.
    Chunks,
}

/// The chunk size of [`Target::Chunks`] pipelines.
pub const CHUNK_TOKENS: usize = 16;

pub async fn setup(prefix: &str, partitions: i32) -> Setup {
    setup_on(&bootstrap(), prefix, partitions).await
}

/// [`setup`] on the broker at `bootstrap`.
pub async fn setup_on(bootstrap: &str, prefix: &str, partitions: i32) -> Setup {
    setup_target(bootstrap, prefix, partitions, Target::Documents).await
}

/// [`setup`] with a choice of what the pipeline writes.
pub async fn setup_target(bootstrap: &str, prefix: &str, partitions: i32, target: Target) -> Setup {
    setup_source(bootstrap, prefix, partitions, target, "").await
}

/// [`setup_target`] with more options for the Kafka table (e.g. `, 'envelope' 'debezium'`).
pub async fn setup_source(
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
    target: Target,
    source_options: &str,
) -> Setup {
    let topic = unique(prefix);
    create_topic_on(bootstrap, &topic, partitions).await;
    create_topic_on(bootstrap, &format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    let pipeline = dir.path().join("index.sql");
    let sink = match target {
        Target::Documents => format!(
            "CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, body TEXT, embedding FLOAT[], model TEXT, PRIMARY KEY (id))
               STORED AS LANCE LOCATION '{location}';
             INSERT INTO idx SELECT id, body, embed(body) AS embedding, embed_model() AS model FROM docs;"
        ),
        Target::Chunks => format!(
            "CREATE EXTERNAL TABLE idx (chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL, seq INT NOT NULL,
                                        text TEXT, embedding FLOAT[], PRIMARY KEY (chunk_id))
               STORED AS LANCE LOCATION '{location}' OPTIONS ('document_key' 'doc_id');
             INSERT INTO idx
             SELECT id || '#' || CAST(c['seq'] AS TEXT) AS chunk_id, id AS doc_id, c['seq'] AS seq,
                    c['text'] AS text, embed(c['text']) AS embedding
             FROM (SELECT id, unnest(chunk(body, {CHUNK_TOKENS})) AS c FROM docs);"
        ),
    };
    std::fs::write(
        &pipeline,
        format!(
            "SET semflow.maintenance_commits = ${{SEMFLOW_TEST_MAINTENANCE:-10}};
             CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, body TEXT) STORED AS KAFKA LOCATION '{topic}'
               OPTIONS ('bootstrap.servers' '{}', 'group.id' '{}', 'start' 'earliest', 'batch_rows' '500',
                        'batch_ms' '100', 'session.timeout.ms' '6000', 'heartbeat.interval.ms' '500'
                        {source_options});
             {sink}",
            bootstrap,
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

/// Sets the micro-batch size of `setup`'s pipeline (500 records unless changed).
pub fn set_batch_rows(setup: &Setup, rows: usize) {
    let text = std::fs::read_to_string(&setup.pipeline).unwrap();
    let changed = text.replace("'batch_rows' '500'", &format!("'batch_rows' '{rows}'"));
    assert_ne!(text, changed, "the pipeline sets no batch size");
    std::fs::write(&setup.pipeline, changed).unwrap();
}

/// Produces `ops` in chunks with pauses, so failures land while data is still arriving.
pub fn produce_in_background(
    topic: &str,
    ops: Records,
) -> tokio::task::JoinHandle<Vec<(i32, i64)>> {
    produce_paced(&bootstrap(), topic, ops, 1000, Duration::from_millis(300))
}

/// Produces `ops` to the broker at `bootstrap`, `chunk` records at a time with `pause`
/// after each; returns each record's (partition, offset).
pub fn produce_paced(
    bootstrap: &str,
    topic: &str,
    ops: Records,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<(i32, i64)>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::spawn(async move {
        let p = super::kafka::producer_on(&bootstrap);
        let mut delivered = Vec::new();
        for chunk in ops.chunks(chunk) {
            delivered.extend(produce(&p, &topic, chunk).await);
            tokio::time::sleep(pause).await;
        }
        delivered
    })
}

pub fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

pub fn log_len(log: &Path) -> usize {
    std::fs::metadata(log)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

pub fn assignments(log: &Path) -> usize {
    log_text(log).matches("partitions assigned").count()
}

/// The partitions of `topic` in the worker's latest assignment (its last "partitions
/// assigned" line: `parts=[("topic", 0), ("topic", 1)]`).
pub fn assigned_partitions(log: &Path, topic: &str) -> Vec<i32> {
    let text = log_text(log);
    let Some(line) = text
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
    else {
        return Vec::new();
    };
    let quoted = format!("\"{topic}\", ");
    line.split(quoted.as_str())
        .skip(1)
        .filter_map(|rest| rest.split(')').next()?.trim().parse().ok())
        .collect()
}

/// Records in the batches a run committed (its last status line), from the run's first
/// byte in `log`.
pub fn read_by_run(log: &Path, from: usize) -> u64 {
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
pub async fn wait_caught_up(setup: &Setup, ends: &[i64], running: &mut [(&mut Child, &Path)]) {
    let wanted: Vec<(String, i32)> = (0..ends.len() as i32)
        .map(|p| (setup.topic.clone(), p))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored = None;
    loop {
        if let Ok(table) = LanceTable::open(&setup.location, None, None).await {
            let offsets = table.offsets(&wanted).await.unwrap();
            if (0..ends.len()).all(|p| offsets.get(&setup.topic, p as i32) == Some(ends[p])) {
                return;
            }
            stored = Some(offsets);
        }
        let logs = || {
            running
                .iter()
                .map(|(_, log)| format!("{}:\n{}", log.display(), log_text(log)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            Instant::now() < deadline,
            "the pipeline did not catch up to {ends:?} (stored: {stored:?}); logs:\n{}",
            logs()
        );
        for (child, log) in running.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the pipeline exited; log:\n{}",
                log_text(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn terminate(child: &mut Child, log: &Path) {
    let status = super::sigterm(child);
    assert!(
        status.success(),
        "SIGTERM must finish cleanly, got {status}; log:\n{}",
        log_text(log)
    );
}

/// The index equals `expected`: every key present once, at its latest version, every
/// deleted key gone, every row with its vector and model fingerprint.
pub async fn assert_index_equals(location: &str, expected: &BTreeMap<String, String>) {
    assert_index_equals_dims(location, expected, 64).await
}

/// [`assert_index_equals`] for a model with `dims`-component vectors.
pub async fn assert_index_equals_dims(
    location: &str,
    expected: &BTreeMap<String, String>,
    dims: usize,
) {
    let engine = super::tiny_engine();
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
            assert_eq!(vectors.value(i).len(), dims);
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

/// A table of chunks equals `expected` split as the pipeline splits it: for every live
/// document exactly its chunks (seq 0..n, each text as `chunk()` gives it), nothing for a
/// deleted one, no leftover chunk of a longer earlier version.
pub async fn assert_chunks_equal(location: &str, expected: &BTreeMap<String, String>) {
    let tokenizer = semflow::inference::tokenize::QwenTokenizer::from_file(
        &super::tiny_model(
            semflow::model::random::ModelKind::Embedding,
            super::EMBED_SEED,
        )
        .join("tokenizer.json"),
    )
    .unwrap();
    let mut wanted: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
    let mut chunks = 0;
    for (id, body) in expected {
        let pieces =
            semflow::udf::chunk::split(tokenizer.inner(), body, CHUNK_TOKENS, 0, false).unwrap();
        chunks += pieces.len();
        wanted.insert(
            id.clone(),
            pieces
                .into_iter()
                .enumerate()
                .map(|(seq, c)| (seq as i32, c.text))
                .collect(),
        );
    }
    let results = super::tiny_engine()
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{location}';
             SELECT doc_id, seq, text, chunk_id FROM idx ORDER BY doc_id, seq"
        ))
        .await
        .unwrap();
    let mut actual: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
    for batch in &results[1].batches {
        let docs = batch.column(0).as_string::<i32>();
        let seqs = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let texts = batch.column(2).as_string::<i32>();
        let ids = batch.column(3).as_string::<i32>();
        for i in 0..batch.num_rows() {
            assert_eq!(ids.value(i), format!("{}#{}", docs.value(i), seqs.value(i)));
            actual
                .entry(docs.value(i).to_string())
                .or_default()
                .push((seqs.value(i), texts.value(i).to_string()));
        }
    }
    let wrong: Vec<_> = wanted
        .iter()
        .filter(|(id, c)| actual.get(*id) != Some(*c))
        .map(|(id, c)| (id, c.len(), actual.get(id).map(Vec::len)))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty() && extra.is_empty(),
        "documents whose chunks differ (id, chunks expected, chunks indexed): {wrong:?}; deleted documents with chunks left: {extra:?}"
    );
    assert!(
        chunks > expected.len(),
        "the workload has no multi-chunk documents"
    );
}

/// Checks that no commit in the index's version history moves any partition's stored
/// position backwards; returns how many partition positions the history holds.
pub async fn assert_positions_never_move_back(location: &str) -> usize {
    use semflow::index::offsets::{recorded_at, Recorded};
    let table = LanceTable::open(location, None, None).await.unwrap();
    let ds = table.latest().await.unwrap().unwrap();
    let mut history: BTreeMap<(String, i32), Vec<(u64, i64)>> = BTreeMap::new();
    for version in 1..=ds.version().version {
        let Recorded::Offsets { offsets, .. } = recorded_at(&ds, version).await.unwrap() else {
            continue;
        };
        for (topic, partition, next) in offsets.iter() {
            history
                .entry((topic.to_string(), partition))
                .or_default()
                .push((version, next));
        }
    }
    let mut commits = 0;
    for ((topic, partition), positions) in &history {
        commits += positions.len();
        for pair in positions.windows(2) {
            assert!(
                pair[1].1 >= pair[0].1,
                "{topic}/{partition} moved back from {} (version {}) to {} (version {})",
                pair[0].1,
                pair[0].0,
                pair[1].1,
                pair[1].0
            );
        }
    }
    commits
}
