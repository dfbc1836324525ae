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
use lance::index::{DatasetIndexExt, DatasetIndexInternalExt};
use lance::Dataset;
use lance_index::optimize::OptimizeOptions;

use super::fence::{Fence, FencedCommit};
use super::offsets::{
    read_all_offsets, recorded_at, Recorded, SourceOffsets, COMPLETE_PROPERTY, OFFSETS_PROPERTY,
};
use super::table::LanceTable;
use super::write::is_conflict;
use crate::error::{Error, Result};
use crate::udf::options::SemflowOptions;

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

/// How a round treats deleted rows and index segments: the session's
/// `semflow.maintenance_deleted_fraction` and `semflow.maintenance_index_segments`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Policy {
    /// A fragment is rewritten without its deleted rows once this fraction of its rows is
    /// deleted (0: any). Until then every search through an index builds a mask of them;
    /// lower values trade rewriting for search latency under updates.
    pub deleted_fraction: f32,
    /// Segments an index keeps after a round (at least 1): a search visits each one.
    pub index_segments: usize,
}

impl Policy {
    /// The settings in `options`, checked (naming the setting at fault).
    pub fn from_options(options: &SemflowOptions) -> Result<Self> {
        Self::new(
            options.maintenance_deleted_fraction,
            options.maintenance_index_segments,
        )
    }

    /// `semflow.maintenance_deleted_fraction` and `semflow.maintenance_index_segments`,
    /// checked (naming the setting at fault).
    pub fn new(fraction: f64, index_segments: u64) -> Result<Self> {
        if !(fraction.is_finite() && fraction >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "semflow.maintenance_deleted_fraction must be 0 or more, not {fraction}"
            )));
        }
        if index_segments == 0 {
            return Err(Error::InvalidArgument(
                "semflow.maintenance_index_segments must be at least 1".into(),
            ));
        }
        Ok(Self {
            deleted_fraction: fraction as f32,
            index_segments: usize::try_from(index_segments).unwrap_or(usize::MAX),
        })
    }
}

impl Default for Policy {
    /// The settings' defaults.
    fn default() -> Self {
        let defaults = SemflowOptions::default();
        Self {
            deleted_fraction: defaults.maintenance_deleted_fraction as f32,
            index_segments: defaults.maintenance_index_segments as usize,
        }
    }
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
pub async fn maintain(table: &LanceTable, policy: Policy) -> Result<MaintenanceReport> {
    let rewritten = rewrite(table, policy).await?;
    checkpoint(table, &rewritten).await?;
    let mut report = rewritten.report;
    report.versions.1 = version(table).await?.unwrap_or(report.versions.1);
    Ok(report)
}

/// Compacts small fragments and adds unindexed rows to every index, in commits that carry
/// no stream positions (see the module comment): safe beside a running stream.
pub async fn rewrite(table: &LanceTable, policy: Policy) -> Result<Rewritten> {
    let Some(base) = table.latest().await? else {
        return Ok(Rewritten::default());
    };
    let before = base.version().version;
    let positions = read_all_offsets(&base).await?;
    let (fragments_removed, fragments_added) = retried(table, "compaction", |mut ds| async move {
        let options = CompactionOptions {
            target_rows_per_fragment: TARGET_ROWS_PER_FRAGMENT,
            materialize_deletions: true,
            materialize_deletions_threshold: policy.deleted_fraction,
            ..Default::default()
        };
        let m = compact_files(&mut ds, options, None).await?;
        Ok((m.fragments_removed, m.fragments_added))
    })
    .await?;
    let indexes = retried(table, "index update", |mut ds| async move {
        update_indexes(&mut ds, policy.index_segments).await
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

/// Adds the rows each index does not cover yet, keeping it to `cap` segments (the first
/// build and the deltas rounds add): see [`segment_policy`]. Returns the number of indexes.
async fn update_indexes(ds: &mut Dataset, cap: usize) -> lance::Result<usize> {
    let mut segments: std::collections::BTreeMap<String, usize> = Default::default();
    for index in ds.load_indices().await?.iter() {
        if !lance_index::is_system_index(index) {
            *segments.entry(index.name.clone()).or_default() += 1;
        }
    }
    for (name, count) in &segments {
        let unindexed = !ds.unindexed_fragments(name).await?.is_empty();
        let Some(mut options) = segment_policy(*count, unindexed, cap) else {
            continue;
        };
        options.index_names = Some(vec![name.clone()]);
        ds.optimize_indices(&options).await?;
    }
    Ok(segments.len())
}

/// How a round updates an index that has `segments` segments now and rows it does not cover
/// (`unindexed`), to end with at most `cap` segments; `None`: as it is. Below the cap the new
/// rows become a segment of their own; at it they merge with the newest segments, as few as
/// keep the cap (so the first build is rewritten only with a cap of 1). Lance's default
/// would append a vector segment every round (a search visits every one) and merge a
/// full-text index's new rows into its newest segment (the whole index, every round).
fn segment_policy(segments: usize, unindexed: bool, cap: usize) -> Option<OptimizeOptions> {
    let cap = cap.max(1);
    if !unindexed && segments <= cap {
        None
    } else if unindexed && segments < cap {
        Some(OptimizeOptions::append())
    } else {
        Some(OptimizeOptions::merge(segments + 1 - cap))
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
    policy: Policy,
    running: Option<(Instant, tokio::task::JoinHandle<Result<Rewritten>>)>,
}

impl Rounds {
    pub fn new(table: LanceTable, schedule: Schedule, policy: Policy) -> Self {
        Self {
            table,
            schedule,
            policy,
            running: None,
        }
    }

    /// Counts a stream commit of `rows` rows; starts a round when one is due and none is
    /// running.
    pub fn committed(&mut self, rows: u64) {
        if self.schedule.committed(rows) && self.running.is_none() {
            let (table, policy) = (self.table.clone(), self.policy);
            let task = tokio::spawn(async move { rewrite(&table, policy).await });
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

    /// Segments after a round that found `segments`, with new rows or without.
    fn after(segments: usize, unindexed: bool, cap: usize) -> usize {
        match segment_policy(segments, unindexed, cap).map(|o| o.num_indices_to_merge) {
            None => segments,
            Some(Some(0)) => segments + 1,
            Some(Some(merged)) => {
                assert!(merged <= segments, "{merged} of {segments} merged");
                segments - merged + 1
            }
            Some(None) => panic!("Lance's own merge choice"),
        }
    }

    #[test]
    fn rounds_append_segments_up_to_the_cap_then_merge_the_newest() {
        for cap in 1..6 {
            for segments in 1..10 {
                let with_rows = after(segments, true, cap);
                assert!((1..=cap).contains(&with_rows), "{segments} at cap {cap}");
                // A round with nothing new changes no index that is within the cap.
                let quiet = after(segments, false, cap);
                assert_eq!(quiet, segments.min(cap), "{segments} at cap {cap}");
            }
        }
        // New rows below the cap: a segment of their own; at the cap: merged into the
        // newest; with a cap of 1 the first build takes them.
        for (segments, cap, merged) in [(1, 2, 0), (2, 2, 1), (4, 2, 3), (1, 1, 1)] {
            assert_eq!(
                segment_policy(segments, true, cap).map(|o| o.num_indices_to_merge),
                Some(Some(merged)),
                "{segments} segments at cap {cap}"
            );
        }
        assert!(segment_policy(2, false, 2).is_none());
    }

    #[test]
    fn the_policy_settings_are_checked_and_default_to_the_session_defaults() {
        assert_eq!(
            Policy::from_options(&SemflowOptions::default()).unwrap(),
            Policy::default()
        );
        let mut options = SemflowOptions {
            maintenance_deleted_fraction: -0.5,
            ..Default::default()
        };
        let e = Policy::from_options(&options).unwrap_err().to_string();
        assert!(e.contains("semflow.maintenance_deleted_fraction"), "{e}");
        options.maintenance_deleted_fraction = f64::NAN;
        assert!(Policy::from_options(&options).is_err());
        options.maintenance_deleted_fraction = 0.0;
        options.maintenance_index_segments = 0;
        let e = Policy::from_options(&options).unwrap_err().to_string();
        assert!(e.contains("semflow.maintenance_index_segments"), "{e}");
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
