//! R1: vector search quality and speed while a stream keeps updating the index (issue 17).
//!
//! A table of `rows` unit vectors gets an IVF_PQ index; then `batches` stream commits each
//! upsert `batch_rows` vectors (half replace existing ids, half are new), one every
//! `commit_ms` (the time a pipeline spends embedding a batch; 0: as fast as Lance commits),
//! applied to two copies of the table: one with no maintenance, one with maintenance rounds
//! beside the stream every `maintenance_every` commits, run by the same [`Rounds`] as
//! `semflow run`. Recall@10 against exact search and query latency are measured on the fresh
//! index, on both copies after the stream, on the maintained copy after the round its
//! schedule runs next, and on an index built afresh over the final rows (the baseline
//! maintenance should stay close to; the two are measured side by side, query by query).
//!
//! The vectors are synthetic, not model outputs: points around `CLUSTERS` random centres on
//! the unit sphere (each at cosine ≈ 0.8 from its centre), which gives IVF realistic clusters
//! to partition. Queries are drawn the same way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use lance_linalg::distance::MetricType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::fence::Fence;
use crate::index::maintain::{maintain, Policy, Rounds, Schedule};
use crate::index::{Change, LanceTable, SourceOffsets};
use crate::udf::options::SearchEffort;
use lance::index::{DatasetIndexExt, DatasetIndexInternalExt};
use lance::Dataset;

const CLUSTERS: usize = 1000;
const K: usize = 10;
const DEFAULT: SearchEffort = SearchEffort::DEFAULT;
/// Search settings measured on the maintained index besides the default (the first: the
/// default before R1 measured these).
const SWEEP: [SearchEffort; 4] = [
    SearchEffort {
        effort: 0.5,
        refine: 4,
    },
    SearchEffort {
        effort: 0.8,
        refine: 4,
    },
    SearchEffort {
        effort: 0.8,
        refine: 16,
    },
    SearchEffort {
        effort: 1.0,
        refine: 16,
    },
];
const TOPIC: &str = "r1";
const INDEX: &str = "embedding_idx";

/// R1 settings.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalOptions {
    pub rows: usize,
    pub dims: usize,
    pub batches: usize,
    pub batch_rows: usize,
    pub queries: usize,
    /// Stream commits between maintenance rounds on the maintained copy.
    pub maintenance_every: usize,
    /// Milliseconds from one stream commit's start to the next's (0: back to back).
    pub commit_ms: u64,
    pub seed: u64,
    /// How the maintained copy's rounds (and the rebuilt baseline's compaction) treat deleted
    /// rows and index segments.
    pub policy: Policy,
}

/// Search quality and speed of one state of the index.
#[derive(Debug, Clone, Serialize)]
pub struct SearchPhase {
    pub name: String,
    /// The search settings the queries ran with.
    pub effort: SearchEffort,
    pub rows: usize,
    pub fragments: usize,
    /// Fragments with deleted rows (replaced ids) a search must mask out.
    pub fragments_with_deletions: usize,
    /// Rows the vector index does not cover yet (searched exactly).
    pub unindexed_rows: usize,
    /// Segments of the vector index (the first build and its deltas), each searched.
    pub index_segments: usize,
    /// Mean recall@10 against exact search over the same rows.
    pub recall_at_10: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What R1 measured.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalResult {
    #[serde(flatten)]
    pub options: RetrievalOptions,
    pub index_build_s: f64,
    pub phases: Vec<SearchPhase>,
    pub without_maintenance: StreamRun,
    pub with_maintenance: StreamRun,
}

/// How one copy's stream went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamRun {
    /// From the first commit to the end of the last (the wait for a round still running
    /// then is not counted).
    pub seconds: f64,
    /// Of which inside the commits: what a pipeline's writer waits for (maintenance adds
    /// commit races and, on a round's last attempt, a wait for it).
    pub commit_s: f64,
    /// The slowest commit.
    pub commit_max_ms: f64,
    /// Maintenance rounds completed, and their mean duration.
    pub rounds: usize,
    pub round_mean_s: f64,
}

/// The vectors the table holds, by id, kept in step with every commit (the exact answer).
struct Truth {
    dims: usize,
    ids: Vec<String>,
    slot: HashMap<String, usize>,
    vectors: Vec<f32>,
}

impl Truth {
    fn upsert(&mut self, id: &str, v: &[f32]) {
        match self.slot.get(id) {
            Some(&s) => self.vectors[s * self.dims..(s + 1) * self.dims].copy_from_slice(v),
            None => {
                self.slot.insert(id.to_string(), self.ids.len());
                self.ids.push(id.to_string());
                self.vectors.extend_from_slice(v);
            }
        }
    }

    /// The ids of the `K` vectors nearest to `q` (all are unit length: cosine = dot).
    fn nearest(&self, q: &[f32]) -> Vec<String> {
        let mut scored: Vec<(f32, usize)> = self
            .vectors
            .chunks_exact(self.dims)
            .enumerate()
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
            .collect();
        let k = K.min(scored.len());
        scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
        scored[..k]
            .iter()
            .map(|(_, i)| self.ids[*i].clone())
            .collect()
    }
}

/// Seeded points around random centres on the unit sphere.
struct Points {
    rng: ChaCha8Rng,
    centres: Vec<Vec<f32>>,
    noise: Normal<f32>,
}

impl Points {
    fn new(seed: u64, dims: usize) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let unit = Normal::new(0.0f32, 1.0).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let centres = (0..CLUSTERS)
            .map(|_| normalized((0..dims).map(|_| unit.sample(&mut rng)).collect()))
            .collect();
        // Noise of norm ≈ 0.75 puts a point at cosine ≈ 0.8 from its centre.
        let sigma = 0.75 / (dims as f32).sqrt();
        let noise =
            Normal::new(0.0f32, sigma).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Self {
            rng,
            centres,
            noise,
        })
    }

    fn next(&mut self) -> Vec<f32> {
        let c = self.rng.random_range(0..self.centres.len());
        let v = self.centres[c]
            .iter()
            .map(|x| x + self.noise.sample(&mut self.rng))
            .collect();
        normalized(v)
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn schema(dims: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dims as i32,
            ),
            true,
        ),
    ]))
}

fn batch(dims: usize, rows: &[(String, Vec<f32>)]) -> Result<RecordBatch> {
    let ids = StringArray::from_iter_values(rows.iter().map(|(id, _)| id.as_str()));
    let values = Float32Array::from_iter_values(rows.iter().flat_map(|(_, v)| v.iter().copied()));
    let vectors = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        dims as i32,
        Arc::new(values),
        None,
    )?;
    let columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(vectors)];
    Ok(RecordBatch::try_new(schema(dims), columns)?)
}

/// One stream commit: its rows, fenced and carrying its position like a pipeline's.
fn stream_change(rows: Vec<RecordBatch>, batch: usize, per_batch: usize) -> Change {
    let position = |b: usize| {
        let mut o = SourceOffsets::default();
        o.set(TOPIC, 0, (b * per_batch) as i64);
        o
    };
    let from = if batch == 0 {
        SourceOffsets::default()
    } else {
        position(batch)
    };
    let to = position(batch + 1);
    Change {
        rows,
        deletes: Vec::new(),
        fence: Some(Fence::between(&from, &to)),
        offsets: Some(to),
        properties: Vec::new(),
    }
}

async fn open(dir: &Path, name: &str, dims: usize) -> Result<LanceTable> {
    let uri = dir.join(name).to_string_lossy().into_owned();
    LanceTable::open(&uri, Some(schema(dims)), Some("id".into())).await
}

/// A directory under the system's temporary directory, removed when dropped.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("semflow-bench-r1-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    Ok(())
}

async fn build_index(table: &LanceTable, rows: usize, dims: usize) -> Result<f64> {
    let started = Instant::now();
    let partitions = ((rows as f64).sqrt() as usize).clamp(1, 256);
    let params = lance::index::vector::VectorIndexParams::ivf_pq(
        partitions,
        8,
        (dims / 16).max(1),
        MetricType::Cosine,
        50,
    );
    table
        .create_vector_index("embedding", Some(INDEX.into()), &params)
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Recall@10 and latency of `queries` on `table` as it stands.
async fn measure(
    name: &str,
    table: &LanceTable,
    truth: &Truth,
    queries: &[Vec<f32>],
    effort: SearchEffort,
) -> Result<SearchPhase> {
    let mut phases = side_by_side(&[(name, table, effort)], truth, queries).await?;
    phases
        .pop()
        .ok_or_else(|| Error::Index("R1: no phase measured".into()))
}

/// [`measure`] of several tables at once, query by query in turn (each query on every
/// table before the next, starting with a different table each time): states compared with
/// each other see the same machine. Measured one after the other, the later of two
/// identical tables was up to 2x slower on a shared 2-core VM.
async fn side_by_side(
    states: &[(&str, &LanceTable, SearchEffort)],
    truth: &Truth,
    queries: &[Vec<f32>],
) -> Result<Vec<SearchPhase>> {
    let mut datasets = Vec::with_capacity(states.len());
    for (_, table, _) in states {
        let Some(ds) = table.latest().await? else {
            return Err(Error::Index(format!("{}: no dataset", table.uri())));
        };
        datasets.push(ds);
    }
    let exact: Vec<Vec<String>> = queries.par_iter().map(|q| truth.nearest(q)).collect();
    let mut latencies = vec![Vec::with_capacity(queries.len()); states.len()];
    let mut recall = vec![0.0; states.len()];
    for (n, (q, exact)) in queries.iter().zip(&exact).enumerate() {
        for turn in 0..states.len() {
            let i = (n + turn) % states.len();
            let (ms, ids) = search(&datasets[i], q, states[i].2).await?;
            latencies[i].push(ms);
            let hits = ids.iter().filter(|id| exact.contains(id)).count();
            recall[i] += hits as f64 / K.min(exact.len()).max(1) as f64;
        }
    }
    let mut phases = Vec::with_capacity(states.len());
    for (i, (name, _, effort)) in states.iter().enumerate() {
        let ms = &mut latencies[i];
        ms.sort_by(|a, b| a.total_cmp(b));
        let recall_at_10 = recall[i] / queries.len().max(1) as f64;
        phases.push(phase(name, &datasets[i], truth, *effort, recall_at_10, ms).await?);
    }
    Ok(phases)
}

/// One top-K search: its latency in milliseconds and the ids found.
async fn search(ds: &Dataset, q: &[f32], effort: SearchEffort) -> Result<(f64, Vec<String>)> {
    let failed = |e: lance::Error| Error::Index(format!("R1 search: {e}"));
    let query = Float32Array::from(q.to_vec());
    let started = Instant::now();
    let mut scanner =
        crate::index::knn::nearest(ds, "embedding", &query, K, MetricType::Cosine, effort)?;
    scanner.project(&["id"]).map_err(failed)?;
    let found = scanner.try_into_batch().await.map_err(failed)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let ids = found
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Index("search returned no id column".into()))?;
    Ok((
        ms,
        (0..ids.len()).map(|i| ids.value(i).to_string()).collect(),
    ))
}

/// The measured state of `ds`, with its sorted `latencies`.
async fn phase(
    name: &str,
    ds: &Dataset,
    truth: &Truth,
    effort: SearchEffort,
    recall_at_10: f64,
    latencies: &[f64],
) -> Result<SearchPhase> {
    let lance = |e: lance::Error| Error::Index(format!("R1: {e}"));
    let unindexed_rows = ds
        .unindexed_fragments(INDEX)
        .await
        .map_err(lance)?
        .iter()
        .map(|f| f.num_rows().unwrap_or(0))
        .sum();
    let index_segments = ds.load_indices_by_name(INDEX).await.map_err(lance)?.len();
    let fragments = ds.get_fragments();
    Ok(SearchPhase {
        name: name.to_string(),
        effort,
        rows: truth.ids.len(),
        fragments: fragments.len(),
        fragments_with_deletions: fragments
            .iter()
            .filter(|f| f.metadata().deletion_file.is_some())
            .count(),
        unindexed_rows,
        index_segments,
        recall_at_10,
        p50_ms: super::percentile(latencies, 0.5),
        p99_ms: super::percentile(latencies, 0.99),
    })
}

/// Applies the stream's commits to `table`, one every `pace` (back to back when zero); with
/// `maintenance_every > 0`, rounds of maintenance run beside them as in `semflow run`: a
/// rewrite in a task, its checkpoint committed by this loop when the rewrite ends (while it
/// waits for the next batch). A round still running when the stream ends is awaited after
/// the clock stops.
async fn stream(
    table: &LanceTable,
    commits: &[Vec<RecordBatch>],
    per_batch: usize,
    maintenance_every: usize,
    policy: Policy,
    pace: Duration,
) -> Result<StreamRun> {
    let schedule = Schedule::new(maintenance_every as u64, 0, None);
    let mut rounds = (maintenance_every > 0).then(|| Rounds::new(table.clone(), schedule, policy));
    let mut run = StreamRun::default();
    let mut round_s = 0.0;
    let started = Instant::now();
    for (b, rows) in commits.iter().enumerate() {
        let due = tokio::time::Instant::from_std(started + pace * b as u32);
        loop {
            let Some(r) = rounds.as_mut() else {
                tokio::time::sleep_until(due).await;
                break;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                rewritten = r.rewritten() => {
                    round_s += r.finish(rewritten).await?.1.as_secs_f64();
                    run.rounds += 1;
                }
            }
        }
        let commit = Instant::now();
        table
            .apply(stream_change(rows.clone(), b, per_batch))
            .await?;
        let took = commit.elapsed().as_secs_f64();
        run.commit_s += took;
        run.commit_max_ms = run.commit_max_ms.max(took * 1000.0);
        if let Some(r) = rounds.as_mut() {
            r.committed(rows.iter().map(|batch| batch.num_rows() as u64).sum());
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    if let Some(r) = rounds.as_mut().filter(|r| r.is_running()) {
        let rewritten = r.rewritten().await;
        round_s += r.finish(rewritten).await?.1.as_secs_f64();
        run.rounds += 1;
    }
    run.round_mean_s = round_s / run.rounds.max(1) as f64;
    Ok(run)
}

/// Writes `rows` as the table's first rows, in commits of 8192.
async fn load(table: &LanceTable, rows: &[(String, Vec<f32>)], dims: usize) -> Result<()> {
    for chunk in rows.chunks(8192) {
        table
            .apply(Change {
                rows: vec![batch(dims, chunk)?],
                deletes: Vec::new(),
                fence: None,
                offsets: None,
                properties: Vec::new(),
            })
            .await?;
    }
    Ok(())
}

/// The stream's commits: half of each replaces existing ids, half adds new ones; `truth`
/// follows along.
fn stream_commits(
    opts: &RetrievalOptions,
    points: &mut Points,
    truth: &mut Truth,
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut next_id = truth.ids.len();
    let mut commits = Vec::with_capacity(opts.batches);
    for _ in 0..opts.batches {
        let mut rows = Vec::with_capacity(opts.batch_rows);
        for i in 0..opts.batch_rows {
            let id = if i % 2 == 0 {
                truth.ids[points.rng.random_range(0..truth.ids.len())].clone()
            } else {
                next_id += 1;
                format!("v{next_id}")
            };
            let v = points.next();
            truth.upsert(&id, &v);
            rows.push((id, v));
        }
        // Within one commit the newest vector per id wins, as in a pipeline's batch.
        let mut last = HashMap::new();
        for (i, (id, _)) in rows.iter().enumerate() {
            last.insert(id.clone(), i);
        }
        let rows: Vec<_> = rows
            .into_iter()
            .enumerate()
            .filter(|(i, (id, _))| last.get(id) == Some(i))
            .map(|(_, r)| r)
            .collect();
        commits.push(vec![batch(truth.dims, &rows)?]);
    }
    Ok(commits)
}

pub async fn run(opts: &RetrievalOptions) -> Result<RetrievalResult> {
    if opts.rows == 0 || opts.dims == 0 || opts.queries == 0 {
        return Err(Error::InvalidArgument(
            "R1: --r1-rows, --r1-dims and --r1-queries must be at least 1".into(),
        ));
    }
    let dir = ScratchDir::new()?;
    let dims = opts.dims;
    let mut points = Points::new(opts.seed, dims)?;
    let mut truth = Truth {
        dims,
        ids: Vec::new(),
        slot: HashMap::new(),
        vectors: Vec::with_capacity(opts.rows * dims),
    };
    let (plain, index_build_s) = fresh_index(dir.path(), opts, &mut points, &mut truth).await?;
    let queries: Vec<Vec<f32>> = (0..opts.queries).map(|_| points.next()).collect();
    let mut phases = vec![measure("fresh index", &plain, &truth, &queries, DEFAULT).await?];
    copy_dir(&dir.path().join("plain"), &dir.path().join("maintained"))?;
    let maintained = open(dir.path(), "maintained", dims).await?;

    let commits = stream_commits(opts, &mut points, &mut truth)?;
    let pace = Duration::from_millis(opts.commit_ms);
    let policy = opts.policy;
    let without = stream(&plain, &commits, opts.batch_rows, 0, policy, pace).await?;
    let phase = "after stream, no maintenance";
    phases.push(measure(phase, &plain, &truth, &queries, DEFAULT).await?);
    let every = opts.maintenance_every;
    let with = stream(&maintained, &commits, opts.batch_rows, every, policy, pace).await?;
    let phase = "after stream, maintenance beside it";
    phases.push(measure(phase, &maintained, &truth, &queries, DEFAULT).await?);
    // The round the schedule runs next (on `semflow.maintenance_seconds`, or the next
    // commits): what searches see once maintenance has caught up with the stream.
    maintain(&maintained, policy).await?;
    // What more probing and re-ranking buy on the maintained index (the settings users can
    // raise with SET semflow.search_effort / semflow.search_refine).
    for effort in SWEEP {
        let name = format!(
            "maintained, effort {} refine {}",
            effort.effort, effort.refine
        );
        phases.push(measure(&name, &maintained, &truth, &queries, effort).await?);
    }
    // The baseline: the same final rows compacted and indexed from scratch, measured side
    // by side with the maintained copy.
    maintain(&plain, policy).await?;
    build_index(&plain, truth.ids.len(), truth.dims).await?;
    let compared = [
        ("maintained, after its next round", &maintained, DEFAULT),
        ("index rebuilt over the final rows", &plain, DEFAULT),
        ("index rebuilt, refine 4", &plain, SWEEP[0]),
    ];
    phases.extend(side_by_side(&compared, &truth, &queries).await?);
    Ok(RetrievalResult {
        options: opts.clone(),
        index_build_s,
        phases,
        without_maintenance: without,
        with_maintenance: with,
    })
}

/// The `plain` table: `opts.rows` initial points (recorded in `truth`), compacted and
/// indexed; returns it with the index build time.
async fn fresh_index(
    dir: &Path,
    opts: &RetrievalOptions,
    points: &mut Points,
    truth: &mut Truth,
) -> Result<(LanceTable, f64)> {
    let initial: Vec<(String, Vec<f32>)> = (0..opts.rows)
        .map(|i| (format!("v{i}"), points.next()))
        .collect();
    for (id, v) in &initial {
        truth.upsert(id, v);
    }
    let plain = open(dir, "plain", opts.dims).await?;
    load(&plain, &initial, opts.dims).await?;
    drop(initial);
    maintain(&plain, opts.policy).await?;
    let index_build_s = build_index(&plain, opts.rows, opts.dims).await?;
    Ok((plain, index_build_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unit_vectors_near_their_centres() {
        let mut p = Points::new(7, 256).unwrap();
        for _ in 0..20 {
            let v = p.next();
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
            let best = p
                .centres
                .iter()
                .map(|c| c.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::MIN, f32::max);
            assert!(
                (0.7..0.9).contains(&best),
                "cosine to the nearest centre {best}"
            );
        }
    }

    #[test]
    fn truth_replaces_and_ranks_exactly() {
        let mut t = Truth {
            dims: 2,
            ids: Vec::new(),
            slot: HashMap::new(),
            vectors: Vec::new(),
        };
        for i in 0..12 {
            let a = i as f32 * 0.1;
            t.upsert(&format!("v{i}"), &[a.cos(), a.sin()]);
        }
        // v0 moves next to the query; the other nine nearest are v1..v9 by angle.
        t.upsert("v0", &[0.0, 1.0]);
        let mut found = t.nearest(&[0.0, 1.0]);
        found.sort();
        let mut expected: Vec<String> = std::iter::once("v0".to_string())
            .chain((3..12).map(|i| format!("v{i}")))
            .collect();
        expected.sort();
        assert_eq!(found, expected);
        assert_eq!(t.ids.len(), 12);
    }
}
