//! Index maintenance under a running stream: compacting small fragments and bringing vector
//! and full-text indexes up to date.
//!
//! A round has two parts, so that it can run beside the stream instead of pausing it:
//! - [`rewrite`] compacts and updates the indexes. Its commits carry no stream positions and
//!   change no row's content, so they may land between any two stream commits; Lance rebases
//!   them over concurrent appends, and where one touched the same fragments the loser retries
//!   (a stream commit rebuilds its change, a compaction is planned again).
//! - [`checkpoint`] then commits every partition's position forward, marked complete, so
//!   readers stop there and `cleanup_old_versions` can never remove the last commit that holds
//!   a partition's position, whatever its retention. It is one empty commit, fenced like a
//!   stream commit: if another writer moves a position between the read and the commit it is
//!   refused (and tried again) rather than storing an older position over a newer one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lance::dataset::optimize::{compact_files, CompactionOptions};
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::CommitBuilder;
use lance::index::DatasetIndexExt;
use lance::Dataset;
use lance_index::optimize::OptimizeOptions;

use super::fence::{Fence, FencedCommit};
use super::offsets::{
    read_all_offsets, recorded_at, Recorded, SourceOffsets, COMPLETE_PROPERTY, OFFSETS_PROPERTY,
};
use super::table::LanceTable;
use super::write::is_conflict;
use crate::error::{Error, Result};

/// What one maintenance round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub fragments_removed: usize,
    pub fragments_added: usize,
    /// Indexes brought up to date (their unindexed rows added).
    pub indexes: usize,
    /// The table's version before and after.
    pub versions: (u64, u64),
    /// The positions carried forward.
    pub positions: usize,
}

/// What [`rewrite`] did, and the positions stored when it began (a checkpoint carries them
/// for partitions whose last commit a cleanup may have removed meanwhile).
#[derive(Debug, Clone, Default)]
pub struct Rewritten {
    pub report: MaintenanceReport,
    pub positions: SourceOffsets,
}

/// Rows per fragment compaction aims for. A fragment that reached it is left alone, so each
/// row is rewritten a bounded number of times however large the table grows (Lance's default,
/// 1M, would rewrite the growing fragment in every round of a stream).
const TARGET_ROWS_PER_FRAGMENT: usize = 1 << 16;

/// How often one round plans its compaction or index update again after losing a commit
/// race to a stream commit that touched the same fragments; the last attempt holds this
/// process's stream commits back while it runs (see [`retried`]).
const ATTEMPTS: u32 = 3;

/// Compacts `table`, updates its indexes and checkpoints its stream positions. Nothing to do
/// leaves the table as it is.
pub async fn maintain(table: &LanceTable) -> Result<MaintenanceReport> {
    let rewritten = rewrite(table).await?;
    checkpoint(table, &rewritten).await?;
    let mut report = rewritten.report;
    report.versions.1 = version(table).await?.unwrap_or(report.versions.1);
    Ok(report)
}

/// Compacts small fragments and adds unindexed rows to every index, in commits that carry
/// no stream positions (see the module comment): safe beside a running stream.
pub async fn rewrite(table: &LanceTable) -> Result<Rewritten> {
    let Some(base) = table.latest().await? else {
        return Ok(Rewritten::default());
    };
    let before = base.version().version;
    let positions = read_all_offsets(&base).await?;
    let (fragments_removed, fragments_added) = retried(table, "compaction", |mut ds| async move {
        let options = CompactionOptions {
            target_rows_per_fragment: TARGET_ROWS_PER_FRAGMENT,
            ..Default::default()
        };
        let m = compact_files(&mut ds, options, None).await?;
        Ok((m.fragments_removed, m.fragments_added))
    })
    .await?;
    let indexes = retried(table, "index update", |mut ds| async move {
        update_indexes(&mut ds).await
    })
    .await?;
    let after = version(table).await?.unwrap_or(before);
    Ok(Rewritten {
        report: MaintenanceReport {
            fragments_removed,
            fragments_added,
            indexes,
            versions: (before, after),
            positions: positions.iter().count(),
        },
        positions,
    })
}

/// Runs `step` on the newest version, again when its commit lost a race to a concurrent one
/// — a stream commit that updated or deleted rows in the fragments it rewrites. Beside a
/// stream with dense updates that can happen every time, so the last attempt runs with this
/// process's stream commits held back: a pause as long as one compaction of the small
/// fragments, or one index update of the rows added since the last round.
async fn retried<T, F, Fut>(table: &LanceTable, what: &str, step: F) -> Result<T>
where
    F: Fn(Dataset) -> Fut,
    Fut: std::future::Future<Output = lance::Result<T>>,
{
    let failed = |e: lance::Error| Error::Index(format!("{}: {what}: {e}", table.uri()));
    for attempt in 1..ATTEMPTS {
        let Some(ds) = table.latest().await? else {
            return Err(Error::Index(format!("{}: dataset vanished", table.uri())));
        };
        match step((*ds).clone()).await {
            Ok(done) => return Ok(done),
            Err(e) if is_conflict(&e) => {
                tracing::debug!(attempt, "maintenance {what} lost a commit race: {e}");
            }
            Err(e) => return Err(failed(e)),
        }
    }
    let last = table
        .exclusively(|ds| async move { step((*ds).clone()).await.map_err(failed) })
        .await?;
    last.ok_or_else(|| Error::Index(format!("{}: dataset vanished", table.uri())))
}

async fn version(table: &LanceTable) -> Result<Option<u64>> {
    Ok(table.latest().await?.map(|d| d.version().version))
}

/// Index segments (the first build and the deltas rounds append) a search visits at most: a
/// round that finds this many merges the deltas and its new rows into one delta and leaves
/// the first build alone. Lance's default would append a vector delta every round (a search
/// then visits every one of them) and merge a full-text index's new rows into its newest
/// segment (the whole index, every round, until a delta exists).
const MAX_INDEX_SEGMENTS: usize = 4;

/// Adds the rows each index does not cover yet: a new delta segment, or a merge of the deltas
/// (see [`MAX_INDEX_SEGMENTS`]). Returns the number of indexes.
async fn update_indexes(ds: &mut Dataset) -> lance::Result<usize> {
    let mut segments: std::collections::BTreeMap<String, usize> = Default::default();
    for index in ds.load_indices().await?.iter() {
        if !lance_index::is_system_index(index) {
            *segments.entry(index.name.clone()).or_default() += 1;
        }
    }
    for (name, count) in &segments {
        let mut options = segment_policy(*count);
        options.index_names = Some(vec![name.clone()]);
        ds.optimize_indices(&options).await?;
    }
    Ok(segments.len())
}

/// How a round updates an index that has `segments` segments now.
fn segment_policy(segments: usize) -> OptimizeOptions {
    if segments >= MAX_INDEX_SEGMENTS {
        OptimizeOptions::merge(segments - 1)
    } else {
        OptimizeOptions::append()
    }
}

/// Commits every partition's position forward after `rewritten` (see the module comment):
/// the newest stored positions, plus those stored when the rewrite began for partitions no
/// longer found. Skipped when nothing changed since a checkpoint. Refused with
/// [`Error::Fenced`] if another writer moved a position meanwhile.
pub async fn checkpoint(table: &LanceTable, rewritten: &Rewritten) -> Result<()> {
    let Some(ds) = table.latest().await? else {
        return Ok(());
    };
    let mut positions = read_all_offsets(&ds).await?;
    positions.fill_from(&rewritten.positions);
    if positions.is_empty() || is_checkpoint(&ds).await? {
        return Ok(());
    }
    // The positions must not move between this read and the commit.
    let fence = Fence::between(&positions, &positions);
    let handler = Arc::new(FencedCommit::new(ds.clone(), fence).await?);
    let mut txn = TransactionBuilder::new(
        ds.version().version,
        Operation::Append { fragments: vec![] },
    )
    .build();
    txn.transaction_properties = Some(Arc::new(carried(&positions)));
    match CommitBuilder::new(ds.clone())
        .with_commit_handler(handler.clone())
        .execute(txn)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(handler
            .refusal()
            .unwrap_or_else(|| Error::Index(format!("{}: checkpoint: {e}", table.uri())))),
    }
}

/// The transaction properties of a checkpoint.
fn carried(positions: &SourceOffsets) -> HashMap<String, String> {
    HashMap::from([
        (OFFSETS_PROPERTY.to_string(), positions.to_property()),
        (COMPLETE_PROPERTY.to_string(), "true".to_string()),
    ])
}

/// Whether the newest commit already carries every position.
async fn is_checkpoint(ds: &Dataset) -> Result<bool> {
    Ok(matches!(
        recorded_at(ds, ds.version().version).await?,
        Recorded::Offsets { complete: true, .. }
    ))
}

/// When a round is due: after `every_commits` commits, after `every_rows` rows written, or
/// `every` after the last round once something was committed — whichever comes first
/// (0 / `None` turn each off).
#[derive(Debug, Clone)]
pub struct Schedule {
    every_commits: u64,
    every_rows: u64,
    every: Option<Duration>,
    commits: u64,
    rows: u64,
    last: Instant,
}

impl Schedule {
    pub fn new(every_commits: u64, every_rows: u64, every: Option<Duration>) -> Self {
        Self {
            every_commits,
            every_rows,
            every,
            commits: 0,
            rows: 0,
            last: Instant::now(),
        }
    }

    /// Counts one commit of `rows` rows; whether a round is due.
    fn committed(&mut self, rows: u64) -> bool {
        self.commits += 1;
        self.rows += rows;
        (self.every_commits > 0 && self.commits >= self.every_commits)
            || (self.every_rows > 0 && self.rows >= self.every_rows)
            || self.every.is_some_and(|every| self.last.elapsed() >= every)
    }

    fn done(&mut self) {
        self.commits = 0;
        self.rows = 0;
        self.last = Instant::now();
    }
}

/// Rounds of maintenance beside a stream, as `semflow run` (and R1 of `semflow bench`) run
/// them: a round's [`rewrite`] is a task of its own while the stream goes on committing; its
/// [`checkpoint`] is committed by the stream's own loop between two of its commits
/// ([`Rounds::finish`]), so it never races that writer. At most one round runs at a time.
pub struct Rounds {
    table: LanceTable,
    schedule: Schedule,
    running: Option<(Instant, tokio::task::JoinHandle<Result<Rewritten>>)>,
}

impl Rounds {
    pub fn new(table: LanceTable, schedule: Schedule) -> Self {
        Self {
            table,
            schedule,
            running: None,
        }
    }

    /// Counts a stream commit of `rows` rows; starts a round when one is due and none is
    /// running.
    pub fn committed(&mut self, rows: u64) {
        if self.schedule.committed(rows) && self.running.is_none() {
            let table = self.table.clone();
            let task = tokio::spawn(async move { rewrite(&table).await });
            self.running = Some((Instant::now(), task));
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Resolves when the running round's rewrite has finished; pending while none runs (so it
    /// can sit in a `select!` beside the stream's next batch).
    pub async fn rewritten(&mut self) -> Result<Rewritten> {
        let Some((_, task)) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        task.await
            .unwrap_or_else(|e| Err(Error::Index(format!("maintenance task: {e}"))))
    }

    /// Ends the round [`Rounds::rewritten`] resolved: commits its checkpoint after a
    /// successful rewrite. Returns what it did and how long the whole round took.
    pub async fn finish(
        &mut self,
        rewritten: Result<Rewritten>,
    ) -> Result<(MaintenanceReport, Duration)> {
        let started = self.running.take().map_or_else(Instant::now, |(t, _)| t);
        self.schedule.done();
        let rewritten = rewritten?;
        checkpoint(&self.table, &rewritten).await?;
        Ok((rewritten.report, started.elapsed()))
    }
}

impl Drop for Rounds {
    /// A round still running at shutdown is abandoned: each of its commits is atomic, and
    /// files it wrote without committing are removed by a later cleanup.
    fn drop(&mut self) {
        if let Some((_, task)) = &self.running {
            task.abort();
        }
    }
}

/// Removes the versions of `table` older than `older_than` (and the files only they use); the
/// newest version always stays. Returns how many versions were removed.
pub async fn cleanup(table: &LanceTable, older_than: std::time::Duration) -> Result<u64> {
    let Some(ds) = table.latest().await? else {
        return Ok(0);
    };
    let older_than = chrono::Duration::from_std(older_than)
        .map_err(|e| Error::InvalidArgument(format!("cleanup retention: {e}")))?;
    let removed = ds
        .cleanup_old_versions(older_than, None, None)
        .await
        .map_err(|e| Error::Index(format!("{}: cleanup: {e}", table.uri())))?;
    Ok(removed.old_versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_append_deltas_until_the_cap_then_merge_all_but_the_first_build() {
        for segments in 1..MAX_INDEX_SEGMENTS {
            assert_eq!(segment_policy(segments).num_indices_to_merge, Some(0));
        }
        assert_eq!(segment_policy(4).num_indices_to_merge, Some(3));
        assert_eq!(segment_policy(9).num_indices_to_merge, Some(8));
    }

    #[test]
    fn a_schedule_is_due_by_commits_rows_or_time() {
        let mut by_commits = Schedule::new(3, 0, None);
        assert!(!by_commits.committed(1000));
        assert!(!by_commits.committed(1000));
        assert!(by_commits.committed(1000));
        by_commits.done();
        assert!(!by_commits.committed(1000));
        let mut by_rows = Schedule::new(0, 500, None);
        assert!(!by_rows.committed(200));
        assert!(!by_rows.committed(299));
        assert!(by_rows.committed(1));
        by_rows.done();
        assert!(!by_rows.committed(499));
        assert!(by_rows.committed(600));
        let mut by_time = Schedule::new(0, 0, Some(Duration::ZERO));
        assert!(by_time.committed(1));
        let mut never = Schedule::new(0, 0, None);
        assert!((0..100).all(|_| !never.committed(1_000_000)));
    }
}
