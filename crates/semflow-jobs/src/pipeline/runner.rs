//! The continuous loop: micro-batch → decode → SQL → one index commit with the batch's
//! offsets → acknowledge. Bad records go to the dead-letter topic (or are skipped, or stop
//! the run, per `on_error`) before the commit that moves past them, so none is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use metrics::{counter, gauge, histogram};

use super::plan::{bind, Continuous, Target};
use crate::error::{Error, Result};
use crate::index::fence::Fence;
use crate::index::maintain::{Policy, Rewritten, Rounds, Schedule};
use crate::index::{Change, LanceTable, SourceOffsets};
use crate::kafka::intake::{intake, Failure, Intake, Reader};
use crate::kafka::options::OnError;
use crate::kafka::producer::{Outgoing, Producer};
use crate::kafka::{Consumer, MicroBatch, Mode, PositionStore, Record};

/// Totals of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunStats {
    pub batches: u64,
    pub records: u64,
    pub rows_written: u64,
    pub deletes: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    /// Batches refused because another worker had taken their partitions over.
    pub fenced: u64,
    /// Maintenance rounds completed (compaction, index updates).
    pub maintenance: u64,
}

/// Index maintenance beside the stream ([`Rounds`]), on the schedule the session's
/// `semflow.maintenance_commits` / `_rows` / `_seconds` set and with the policy of
/// `semflow.maintenance_deleted_fraction` / `_index_segments`; each round is counted and
/// logged. A failure is never fatal: ingestion goes on and the next round tries again.
struct Maintenance(Rounds);

impl Maintenance {
    /// Refuses a bad setting, naming it.
    fn new(ctx: &SessionContext, target: &Target) -> Result<Option<Self>> {
        let Target::Index(table) = target else {
            return Ok(None);
        };
        let state = ctx.state();
        let options = state
            .config_options()
            .extensions
            .get::<crate::udf::options::SemflowOptions>()
            .cloned()
            .unwrap_or_default();
        let seconds = options.maintenance_seconds;
        let every = (seconds > 0).then(|| std::time::Duration::from_secs(seconds));
        let schedule = Schedule::new(options.maintenance_commits, options.maintenance_rows, every);
        let policy = Policy::from_options(&options)?;
        Ok(Some(Self(Rounds::new(table.clone(), schedule, policy))))
    }

    /// Resolves when a running round's rewrite has finished; pending while none runs.
    async fn rewritten(maintenance: &mut Option<Self>) -> Result<Rewritten> {
        match maintenance {
            Some(m) => m.0.rewritten().await,
            None => std::future::pending().await,
        }
    }

    /// Ends a round (its checkpoint), and reports.
    async fn finish(&mut self, rewritten: Result<Rewritten>, stats: &mut RunStats) {
        match self.0.finish(rewritten).await {
            Ok((report, took)) => {
                stats.maintenance += 1;
                counter!("semflow_pipeline_maintenance_total").increment(1);
                histogram!("semflow_pipeline_maintenance_seconds").record(took.as_secs_f64());
                tracing::info!(
                    fragments_removed = report.fragments_removed,
                    fragments_added = report.fragments_added,
                    indexes = report.indexes,
                    positions = report.positions,
                    "index maintenance: version {} -> {} in {:.2} s",
                    report.versions.0,
                    report.versions.1,
                    took.as_secs_f64()
                );
            }
            Err(e) => {
                counter!("semflow_pipeline_maintenance_failures_total").increment(1);
                tracing::warn!("index maintenance skipped, tried again later: {e}");
            }
        }
    }
}

/// The index's stored offsets, read from the consumer thread on each assignment.
struct IndexPositions {
    table: LanceTable,
    runtime: tokio::runtime::Handle,
}

impl PositionStore for IndexPositions {
    fn positions(&self, partitions: &[(String, i32)]) -> Result<SourceOffsets> {
        self.runtime.block_on(self.table.offsets(partitions))
    }
}

/// Runs `job` until `shutdown` resolves; the batch in flight at that moment is finished and
/// committed first.
pub async fn run_continuous(
    ctx: &SessionContext,
    job: Continuous,
    shutdown: impl Future<Output = ()>,
    mut on_batch: impl FnMut(&RunStats),
) -> Result<RunStats> {
    let mut maintenance = Maintenance::new(ctx, &job.target)?;
    let options = job.source.options().clone();
    let store: Option<Arc<dyn PositionStore>> = match &job.target {
        Target::Index(table) => Some(Arc::new(IndexPositions {
            table: table.clone(),
            runtime: tokio::runtime::Handle::current(),
        })),
        Target::Other => None,
    };
    let mut consumer = join_group(&options, store.clone()).await?;
    let producer = match options.on_error {
        OnError::Dlq => Some(Producer::new(&options)?),
        _ => None,
    };
    let mut stats = RunStats::default();
    tokio::pin!(shutdown);
    let result = loop {
        let batch = tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            rewritten = Maintenance::rewritten(&mut maintenance) => {
                if let Some(m) = maintenance.as_mut() {
                    m.finish(rewritten, &mut stats).await;
                }
                continue;
            }
            b = consumer.next() => b,
        };
        let batch = match batch {
            Some(Ok(b)) => b,
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        };
        let seq = batch.seq;
        let positions = batch.positions.clone();
        let written = stats.rows_written;
        match process(ctx, &job, &options, producer.as_ref(), batch, &mut stats).await {
            Ok(()) => {
                consumer.ack(seq, Some(positions));
                on_batch(&stats);
                if let Some(m) = maintenance.as_mut() {
                    m.0.committed(stats.rows_written - written);
                }
            }
            Err(e @ Error::Fenced { .. }) => {
                // This worker was paused past its session and its partitions moved on: drop
                // the batch and everything read after it, and rejoin from the stored positions.
                stats.fenced += 1;
                counter!("semflow_pipeline_fenced_batches_total").increment(1);
                tracing::warn!("batch {seq} dropped, rejoining the group: {e}");
                consumer.ack(seq, None);
                consumer.stop();
                consumer = match join_group(&options, store.clone()).await {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                };
                on_batch(&stats);
            }
            Err(e) => break Err(e),
        }
    };
    consumer.stop();
    result.map(|()| stats)
}

/// Starts a consumer that joins the group and resumes from `store`'s positions.
async fn join_group(
    options: &crate::kafka::KafkaOptions,
    store: Option<Arc<dyn PositionStore>>,
) -> Result<Consumer> {
    let options = options.clone();
    tokio::task::spawn_blocking(move || Consumer::start(&options, Mode::Pipeline(store)))
        .await
        .map_err(|e| Error::Pipeline(e.to_string()))?
}

async fn process(
    ctx: &SessionContext,
    job: &Continuous,
    options: &crate::kafka::KafkaOptions,
    producer: Option<&Producer>,
    batch: MicroBatch,
    stats: &mut RunStats,
) -> Result<()> {
    let started = Instant::now();
    let MicroBatch {
        records,
        positions,
        starts,
        ..
    } = batch;

    let Intake {
        batch: decoded,
        values,
        rows_from,
        mut deletes,
        mut failures,
    } = intake(&records, options, job.source.decoder(), Reader::Pipeline).await?;
    let rows_from: Vec<&Record> = rows_from.iter().map(|i| &values[*i]).collect();

    let inference_started = Instant::now();
    let output = match &job.target {
        Target::Index(_) => {
            run_rows(ctx, &job.input, decoded, &rows_from, options, &mut failures).await?
        }
        Target::Other => {
            run_rows(ctx, &job.dml, decoded, &rows_from, options, &mut failures).await?;
            Vec::new()
        }
    };
    histogram!("semflow_pipeline_query_seconds").record(inference_started.elapsed().as_secs_f64());

    if let Target::Index(table) = &job.target {
        if let Some(column) = table.document_key() {
            deletes = replaced_documents(column, &deletes, &values, &failures, &output)?;
        }
    }
    dispose(options, producer, failures, stats).await?;

    if let Target::Index(table) = &job.target {
        let commit_started = Instant::now();
        let change = Change {
            rows: output,
            deletes,
            fence: Some(Fence::between(&starts, &positions)),
            offsets: Some(positions.clone()),
            properties: Vec::new(),
        };
        // Boxed: the commit's future nested in the wait's would deepen the pipeline's future
        // type past the compiler's layout depth limit.
        let commit = Box::pin(table.apply(change));
        let committed = while_waiting(commit, SLOW_COMMIT, |waited| {
            tracing::warn!(
                "the commit to {} has waited {:.0} s (is the store answering? its client retries)",
                table.uri(),
                waited.as_secs_f64()
            )
        })
        .await?;
        histogram!("semflow_pipeline_commit_seconds")
            .record(commit_started.elapsed().as_secs_f64());
        stats.rows_written += committed.rows;
        stats.deletes += committed.deleted;
        counter!("semflow_pipeline_rows_written_total").increment(committed.rows);
        counter!("semflow_pipeline_deletes_total").increment(committed.deleted);
        record_cache_sizes().await;
    }
    for (topic, partition, next) in positions.iter() {
        gauge!("semflow_pipeline_position", "topic" => topic.to_string(), "partition" => partition.to_string())
            .set(next as f64);
    }
    histogram!("semflow_pipeline_batch_seconds").record(started.elapsed().as_secs_f64());
    counter!("semflow_pipeline_batches_total").increment(1);
    // Counted once committed: a fenced batch's records are read again by their new owner.
    stats.batches += 1;
    stats.records += records.len() as u64;
    counter!("semflow_pipeline_records_total").increment(records.len() as u64);
    Ok(())
}

/// Lance's cache sizes as gauges: a worker's memory grows with them until their caps.
async fn record_cache_sizes() {
    let (metadata, index) = crate::index::table::cache_sizes().await;
    gauge!("semflow_lance_cache_bytes", "cache" => "metadata").set(metadata as f64);
    gauge!("semflow_lance_cache_bytes", "cache" => "index").set(index as f64);
}

/// In a table of chunks, the documents a batch replaces: its tombstones, the keys of the
/// records it indexed (a document that now has no chunks loses its old ones too) and the
/// documents its rows name (records without a key). Failed records keep their old rows.
fn replaced_documents(
    column: &str,
    tombstones: &[String],
    values: &[Record],
    failures: &[Failure],
    output: &[RecordBatch],
) -> Result<Vec<String>> {
    let failed: std::collections::HashSet<(i32, i64)> = failures
        .iter()
        .map(|f| (f.record.partition, f.record.offset))
        .collect();
    let mut documents: Vec<String> = tombstones.to_vec();
    documents.extend(
        values
            .iter()
            .filter(|r| !failed.contains(&(r.partition, r.offset)))
            .filter_map(|r| std::str::from_utf8(r.key.as_deref()?).ok())
            .map(str::to_string),
    );
    for batch in output {
        documents.extend(crate::index::write::document_keys(batch, column)?);
    }
    documents.sort_unstable();
    documents.dedup();
    Ok(documents)
}

/// Runs `plan` over `batch`. When the whole batch fails (say, one row's inference), each row
/// runs alone so only the failing rows are set aside.
async fn run_rows(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    batch: RecordBatch,
    rows_from: &[&Record],
    options: &crate::kafka::KafkaOptions,
    failures: &mut Vec<Failure>,
) -> Result<Vec<RecordBatch>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    match execute(ctx, plan, batch.clone()).await {
        Ok(out) => Ok(out),
        Err(e) if options.on_error == OnError::Fail || batch.num_rows() == 1 => {
            if options.on_error == OnError::Fail {
                return Err(e);
            }
            failures.push(Failure {
                record: rows_from[0].clone(),
                reason: e.user_message(),
            });
            Ok(Vec::new())
        }
        Err(_) => {
            let mut out = Vec::new();
            for (i, record) in rows_from.iter().enumerate() {
                match execute(ctx, plan, batch.slice(i, 1)).await {
                    Ok(rows) => out.extend(rows),
                    Err(e) => failures.push(Failure {
                        record: (*record).clone(),
                        reason: e.user_message(),
                    }),
                }
            }
            Ok(out)
        }
    }
}

async fn execute(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    batch: RecordBatch,
) -> Result<Vec<RecordBatch>> {
    let bound = bind(plan, batch)?;
    let df = ctx.execute_logical_plan(bound).await?;
    Ok(df.collect().await?)
}

/// Dead-letters, skips or fails on `failures`, per `on_error`.
async fn dispose(
    options: &crate::kafka::KafkaOptions,
    producer: Option<&Producer>,
    failures: Vec<Failure>,
    stats: &mut RunStats,
) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    match (options.on_error, producer) {
        (OnError::Fail, _) | (OnError::Dlq, None) => Err(failures[0].error()),
        (OnError::Skip, _) => {
            for f in &failures {
                tracing::warn!("skipping record {}: {}", f.record.position(), f.reason);
            }
            stats.skipped += failures.len() as u64;
            counter!("semflow_pipeline_skipped_total").increment(failures.len() as u64);
            Ok(())
        }
        (OnError::Dlq, Some(producer)) => {
            let n = failures.len() as u64;
            let outgoing = failures
                .into_iter()
                .map(|f| {
                    let mut headers: Vec<(String, Vec<u8>)> = f
                        .record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                        .collect();
                    headers.push(("semflow.error".into(), f.reason.into_bytes()));
                    headers.push(("semflow.topic".into(), f.record.topic.clone().into_bytes()));
                    headers.push((
                        "semflow.partition".into(),
                        f.record.partition.to_string().into_bytes(),
                    ));
                    headers.push((
                        "semflow.offset".into(),
                        f.record.offset.to_string().into_bytes(),
                    ));
                    Outgoing {
                        key: f.record.key,
                        value: f.record.value,
                        headers,
                    }
                })
                .collect();
            producer.send_all(&options.dlq_topic, outgoing).await?;
            stats.dead_lettered += n;
            counter!("semflow_pipeline_dead_letters_total").increment(n);
            Ok(())
        }
    }
}

/// How long a commit may wait before the worker says so (and again each time as long): a
/// store that stops answering is otherwise waited on silently through its client's retries.
const SLOW_COMMIT: Duration = Duration::from_secs(30);

/// Awaits `work`, calling `still_waiting` with the time waited each `every` it is pending.
async fn while_waiting<F: Future>(
    work: F,
    every: Duration,
    mut still_waiting: impl FnMut(Duration),
) -> F::Output {
    let started = tokio::time::Instant::now();
    tokio::pin!(work);
    loop {
        match tokio::time::timeout(every, &mut work).await {
            Ok(out) => return out,
            Err(_) => still_waiting(started.elapsed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reported each interval while pending (the work here ends once reported twice), and
    /// not at all when it finishes at once.
    #[tokio::test]
    async fn a_long_wait_is_reported_each_interval() {
        let every = Duration::from_millis(10);
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut done = Some(done);
        let mut reports = Vec::new();
        let work = async {
            finished.await.unwrap();
            7
        };
        let out = while_waiting(work, every, |waited| {
            reports.push(waited);
            if reports.len() == 2 {
                done.take().unwrap().send(()).unwrap();
            }
        })
        .await;
        assert_eq!(out, 7);
        assert_eq!(reports.len(), 2);
        assert!(
            reports[0] >= every && reports[1] >= 2 * every,
            "{reports:?}"
        );
        let quick = while_waiting(async { 1 }, every, |_| panic!("reported")).await;
        assert_eq!(quick, 1);
    }
}
