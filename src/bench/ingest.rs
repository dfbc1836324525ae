//! K1: Kafka → `embed()` → Lance ingest, measured inside `semflow bench`.
//!
//! Documents (random English words, log-normal lengths: median 150 words, p90 450, cap 768)
//! are produced to a fresh topic in chunks — as fast as possible (a backlog: the pipeline's
//! peak rate) or paced at `rate` documents/s (a live stream: its freshness) — while the real
//! pipeline (`INSERT INTO idx SELECT id, body, embed(body) … FROM topic`, one commit with
//! offsets per micro-batch) runs in-process. Reported: documents/s and tokens/s from the
//! first produced document to the last commit, and lag — for each commit, how long ago the
//! newest committed document was produced.
//!
//! With `maintenance_commits` set, K1 runs twice on identical starting indexes (`index_rows`
//! short documents already embedded, with an IVF_PQ index on the vectors and a full-text
//! index on the bodies): maintenance off, then a round every `maintenance_commits` commits
//! beside the stream — the ingest cost of keeping the indexes fresh.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::text::sql_string as quote;

/// Documents per produce statement for a backlog; a paced stream sends a tenth of a
/// second's worth at a time.
const CHUNK: usize = 500;

const WORDS: &[&str] = &[
    "stream",
    "index",
    "vector",
    "search",
    "query",
    "document",
    "model",
    "embedding",
    "kafka",
    "partition",
    "offset",
    "commit",
    "lance",
    "table",
    "column",
    "batch",
    "token",
    "latency",
    "throughput",
    "retrieval",
    "ranking",
    "passage",
    "answer",
    "question",
    "graphene",
    "carbon",
    "river",
    "mountain",
    "history",
    "science",
    "market",
    "price",
    "energy",
    "network",
    "signal",
    "protein",
    "language",
    "music",
    "city",
    "weather",
    "travel",
    "recipe",
    "pasta",
    "garden",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "with",
    "as",
    "on",
    "by",
    "from",
    "which",
    "its",
    "are",
    "was",
    "can",
    "each",
    "more",
    "than",
    "when",
    "where",
    "how",
    "why",
];

/// K1 settings.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Kafka bootstrap servers.
    pub kafka: String,
    pub docs: usize,
    /// Documents produced per second; 0 produces everything at once (a backlog).
    pub rate: f64,
    pub seed: u64,
    /// Rows in the index, with vector and full-text indexes, before the stream (0: an empty
    /// table without indexes).
    pub index_rows: usize,
    /// When set, K1 runs without maintenance and then with a round every this many commits.
    pub maintenance_commits: Option<u64>,
}

/// What K1 measured.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub docs: usize,
    /// Tokens of the documents as the embedding model counts them (`<|endoftext|>` included).
    pub tokens: usize,
    pub rate_asked: f64,
    /// Rows (and indexes) in the table before the stream.
    pub index_rows: usize,
    /// `semflow.maintenance_commits` of the run (None: the session's default).
    pub maintenance_commits: Option<u64>,
    /// Maintenance rounds completed during the run.
    pub maintenance_rounds: u64,
    /// From the first document produced to the last commit.
    pub seconds: f64,
    pub docs_per_s: f64,
    pub tokens_per_s: f64,
    /// Time until the first commit (consumer-group join and first batch).
    pub first_commit_s: f64,
    /// Documents/s between the first and the last commit (without the group join).
    pub steady_docs_per_s: f64,
    pub batches: u64,
    /// Per commit: now minus the time the newest committed document was produced.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
}

/// A document body of `words` random words.
fn body(rng: &mut ChaCha8Rng, words: usize) -> String {
    let mut s = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// The K1 documents (id, body), from the seed.
pub fn documents(seed: u64, n: usize) -> Vec<(String, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4b31);
    let sigma = 3f64.ln() / 1.2816; // p90 / median = 3
    let dist =
        LogNormal::new(150f64.ln(), sigma).expect("constant log-normal parameters are valid");
    (0..n)
        .map(|i| {
            let words = (dist.sample(&mut rng).round() as usize).clamp(4, 768);
            (format!("k1-{i}"), body(&mut rng, words))
        })
        .collect()
}

/// Registers `docs` as table `name (seq, id, body)`.
pub(super) fn register_source(
    engine: &Engine,
    name: &str,
    docs: &[(String, String)],
) -> Result<()> {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("body", DataType::Utf8, false),
    ]));
    let batch = arrow::record_batch::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..docs.len() as i64)),
            Arc::new(StringArray::from_iter_values(docs.iter().map(|(i, _)| i))),
            Arc::new(StringArray::from_iter_values(docs.iter().map(|(_, b)| b))),
        ],
    )?;
    let table = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]])?;
    engine.context().register_table(name, Arc::new(table))?;
    Ok(())
}

/// Produced so far: (instant, documents), in order.
type Produced = Arc<Mutex<Vec<(Instant, usize)>>>;

/// Produces the `total` documents of `k1_source` into `k1_topic` in chunks, paced at `rate`
/// documents/s when positive (else as a backlog). The first chunk is produced before this
/// returns, so the topic exists when the pipeline's consumer subscribes.
async fn start_producing(
    producer: Engine,
    total: usize,
    rate: f64,
    began: Instant,
) -> Result<(tokio::task::JoinHandle<Result<()>>, Produced)> {
    let produce = |from: usize, to: usize| {
        format!("INSERT INTO k1_topic SELECT id, body FROM k1_source WHERE seq >= {from} AND seq < {to}")
    };
    let produced: Produced = Arc::default();
    let chunk = if rate > 0.0 {
        ((rate / 10.0).ceil() as usize).clamp(1, CHUNK)
    } else {
        CHUNK
    };
    let first = chunk.min(total);
    producer.run_sql(&produce(0, first)).await?;
    if let Ok(mut p) = produced.lock() {
        p.push((Instant::now(), first));
    }
    let sqls: Vec<(usize, String)> = (first..total)
        .step_by(chunk)
        .map(|from| {
            let to = (from + chunk).min(total);
            (to - from, produce(from, to))
        })
        .collect();
    let marks = produced.clone();
    let task = tokio::spawn(async move {
        let mut sent = first;
        for (n, sql) in sqls {
            if rate > 0.0 {
                let due = began + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            producer.run_sql(&sql).await?;
            sent += n;
            if let Ok(mut p) = marks.lock() {
                p.push((Instant::now(), sent));
            }
        }
        Ok::<_, Error>(())
    });
    Ok((task, produced))
}

/// K1's SQL: the topic `k1_topic` the documents are produced into, and the pipeline that
/// reads the same topic (as `k1_docs`) into the Lance table at `location`.
fn statements(
    name: &str,
    kafka: &str,
    location: &str,
    maintenance_commits: Option<u64>,
) -> (String, String) {
    let topic_ddl = |table: &str| {
        format!(
        "CREATE EXTERNAL TABLE {table} (id TEXT NOT NULL, body TEXT) STORED AS KAFKA LOCATION {topic}
           OPTIONS ('bootstrap.servers' {kafka}, 'group.id' {group}, 'start' 'earliest', 'key' 'id',
                    'batch_rows' '1000', 'batch_ms' '200',
                    'session.timeout.ms' '6000', 'heartbeat.interval.ms' '1000')",
            topic = quote(name),
            group = quote(name),
            kafka = quote(kafka),
        )
    };
    let setting = maintenance_commits
        .map(|n| format!("SET semflow.maintenance_commits = {n};"))
        .unwrap_or_default();
    // Every document is embedded: a second run of the same documents (maintenance off, then
    // on) must not be served from the first one's cache.
    let pipeline = format!(
        "SET semflow.cache = false;
         {setting}
         {};
         {};
         INSERT INTO k1_idx SELECT id, body, embed(body) AS embedding FROM k1_docs",
        topic_ddl("k1_docs"),
        index_ddl("k1_idx", location),
    );
    (topic_ddl("k1_topic"), pipeline)
}

/// The Lance table K1 writes, declared as `table`.
fn index_ddl(table: &str, location: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE {table} (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
           STORED AS LANCE LOCATION {}",
        quote(location)
    )
}

/// Fills the table at `location` with `rows` short documents embedded by the engine's model
/// and builds an IVF_PQ index on the vectors and a full-text index on the bodies.
async fn seed_index(engine: &Engine, location: &str, rows: usize, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let docs: Vec<(String, String)> = (0..rows)
        .map(|i| (format!("seed-{i}"), body(&mut rng, 6)))
        .collect();
    register_source(engine, "k1_seed_source", &docs)?;
    let sql = format!(
        "{};
         INSERT INTO k1_seed SELECT id, body, embed(body) FROM k1_seed_source;
         CREATE INDEX k1_vectors ON k1_seed USING ivf_pq (embedding);
         CREATE INDEX k1_bodies ON k1_seed USING inverted (body);
         DROP TABLE k1_seed;
         DROP TABLE k1_seed_source",
        index_ddl("k1_seed", location)
    );
    engine.run_sql(&sql).await?;
    Ok(())
}

/// Runs K1 on `engine` (a fresh topic, consumer group and index each time, removed
/// afterwards): once, or without and then with maintenance when `maintenance_commits` is set.
pub async fn run(engine: &Engine, opts: &IngestOptions) -> Result<Vec<IngestResult>> {
    if opts.docs == 0 {
        return Err(Error::InvalidArgument(
            "--k1-docs must be at least 1".into(),
        ));
    }
    if opts.maintenance_commits == Some(0) {
        return Err(Error::InvalidArgument(
            "--k1-maintenance-commits must be at least 1 (it compares 0 with it)".into(),
        ));
    }
    let docs = documents(opts.seed, opts.docs);
    let mut tokens = 0;
    for (_, b) in &docs {
        tokens += engine.inference().embed_tokenize(b).await?.len() + 1;
    }
    // Load the model before the clock starts: K1 measures ingest, not start-up.
    engine.run_sql("SELECT embed('warm-up')").await?;
    // The documents as an in-memory table: each produce statement selects a range of it
    // (cheap to plan, unlike literal VALUES lists).
    register_source(engine, "k1_source", &docs)?;
    let variants = match opts.maintenance_commits {
        Some(n) => vec![Some(0), Some(n)],
        None => vec![None],
    };
    let mut results = Vec::with_capacity(variants.len());
    for maintenance in variants {
        results.push(run_once(engine, opts, docs.len(), tokens, maintenance).await?);
    }
    engine.context().deregister_table("k1_source")?;
    Ok(results)
}

/// One K1 run with `maintenance_commits` set in the pipeline (None: the default).
async fn run_once(
    engine: &Engine,
    opts: &IngestOptions,
    docs: usize,
    tokens: usize,
    maintenance_commits: Option<u64>,
) -> Result<IngestResult> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("semflow-bench-k1-{}-{stamp}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    let location = dir.join("idx.lance").to_string_lossy().into_owned();
    if opts.index_rows > 0 {
        seed_index(engine, &location, opts.index_rows, opts.seed).await?;
    }
    let (topic, pipeline) = statements(&name, &opts.kafka, &location, maintenance_commits);
    // The producer and the pipeline share the engine (and so the loaded model).
    let producer = engine.clone();
    producer.run_sql(&topic).await?;
    let began = Instant::now();
    let (producing, produced) = start_producing(producer, docs, opts.rate, began).await?;

    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let total = docs as u64;
    let mut lags: Vec<f64> = Vec::new();
    let mut first_commit: Option<(f64, u64)> = None;
    let mut last_commit = began;
    let stats = crate::pipeline::run(
        engine,
        &pipeline,
        async move {
            let _ = done_rx.wait_for(|d| *d).await;
        },
        |s| {
            let now = Instant::now();
            last_commit = now;
            first_commit.get_or_insert_with(|| ((now - began).as_secs_f64(), s.records));
            // The newest committed document was produced by the first chunk that reached it.
            let committed = s.records as usize;
            if let Ok(p) = produced.lock() {
                if let Some((at, _)) = p.iter().find(|(_, n)| *n >= committed) {
                    lags.push((now - *at).as_secs_f64() * 1000.0);
                }
            }
            if s.records >= total {
                let _ = done_tx.send(true);
            }
        },
    )
    .await;
    let produced_ok = producing
        .await
        .map_err(|e| Error::Pipeline(format!("K1 producer failed: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    // The pipeline declared its tables in the shared catalog: the next run declares them anew.
    for table in ["k1_topic", "k1_docs", "k1_idx"] {
        engine.context().deregister_table(table)?;
    }
    let stats = stats?;
    produced_ok?;
    if stats.records < total {
        return Err(Error::Pipeline(format!(
            "K1 stopped after {} of {total} documents",
            stats.records
        )));
    }
    let seconds = (last_commit - began).as_secs_f64();
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| super::percentile(&lags, q);
    Ok(IngestResult {
        docs,
        tokens,
        rate_asked: opts.rate,
        index_rows: opts.index_rows,
        maintenance_commits,
        maintenance_rounds: stats.maintenance,
        seconds,
        docs_per_s: docs as f64 / seconds.max(1e-9),
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        first_commit_s: first_commit.map_or(f64::NAN, |(t, _)| t),
        steady_docs_per_s: match first_commit {
            Some((t, n)) if seconds > t => (total - n) as f64 / (seconds - t),
            _ => f64::NAN,
        },
        batches: stats.batches,
        lag_p50_ms: pct(0.5),
        lag_p99_ms: pct(0.99),
        lag_max_ms: lags.last().copied().unwrap_or(f64::NAN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_seeded_and_log_normal() {
        let a = documents(1, 2000);
        assert_eq!(a, documents(1, 2000));
        assert_ne!(a, documents(2, 2000));
        let mut words: Vec<usize> = a.iter().map(|(_, b)| b.split(' ').count()).collect();
        words.sort();
        let median = words[words.len() / 2];
        assert!((120..=180).contains(&median), "median {median}");
        assert!(*words.last().unwrap() <= 768);
        assert_eq!(a[7].0, "k1-7");
    }

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(quote("it's"), "'it''s'");
    }
}
