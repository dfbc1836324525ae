//! Index maintenance under a running stream: compacting small fragments and bringing vector
//! and full-text indexes up to date.
//!
//! Each maintenance commit carries every stored Kafka position forward — marked complete, so
//! readers stop there — which keeps `cleanup_old_versions` from ever removing the last commit
//! that holds a partition's position, whatever its retention. The commits are fenced like
//! stream commits: if another writer moves a position between the read and the commit, the
//! maintenance commit is refused (and simply tried again later) rather than storing an older
//! position over a newer one.

use std::collections::HashMap;
use std::sync::Arc;

use lance::dataset::builder::DatasetBuilder;
use lance::dataset::optimize::{compact_files, CompactionOptions};
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::CommitBuilder;
use lance::index::DatasetIndexExt;
use lance::Dataset;

use super::fence::{Fence, FencedCommit};
use super::offsets::{
    read_all_offsets, recorded_at, Recorded, SourceOffsets, COMPLETE_PROPERTY, OFFSETS_PROPERTY,
};
use super::table::LanceTable;
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

/// Rows per fragment compaction aims for (Lance's default is 1M; streams commit small ones).
const TARGET_ROWS_PER_FRAGMENT: usize = 1 << 20;

/// Compacts `table`, updates its indexes and checkpoints its stream positions, each commit
/// carrying the positions forward. Nothing to do leaves the table as it is.
pub async fn maintain(table: &LanceTable) -> Result<MaintenanceReport> {
    let Some(base) = table.latest().await? else {
        return Ok(MaintenanceReport::default());
    };
    let before = base.version().version;
    let positions = read_all_offsets(&base).await?;
    let properties = carried(&positions);
    // The positions must not move while maintenance runs.
    let fence = Fence::between(&positions, &positions);
    let handler = Arc::new(FencedCommit::new(base.clone(), fence).await?);
    let lance_err = |e: lance::Error| match handler.refusal() {
        Some(refused) => refused,
        None => Error::Index(format!("{}: maintenance: {e}", table.uri())),
    };
    let mut ds = DatasetBuilder::from_uri(table.uri())
        .with_session(super::table::session())
        .with_version(before)
        .with_commit_handler(handler.clone())
        .load()
        .await
        .map_err(lance_err)?;

    let options = CompactionOptions {
        target_rows_per_fragment: TARGET_ROWS_PER_FRAGMENT,
        transaction_properties: Some(Arc::new(properties.clone())),
        ..Default::default()
    };
    let compacted = compact_files(&mut ds, options, None)
        .await
        .map_err(lance_err)?;
    let indexes = update_indexes(&mut ds, &properties)
        .await
        .map_err(lance_err)?;
    if ds.version().version == before && !positions.is_empty() && !is_checkpoint(&base).await? {
        checkpoint(&ds, &properties).await.map_err(lance_err)?;
    }
    let after = table
        .latest()
        .await?
        .map_or(before, |d| d.version().version);
    Ok(MaintenanceReport {
        fragments_removed: compacted.fragments_removed,
        fragments_added: compacted.fragments_added,
        indexes,
        versions: (before, after),
        positions: positions.iter().count(),
    })
}

/// The transaction properties of a maintenance commit.
fn carried(positions: &SourceOffsets) -> HashMap<String, String> {
    let mut properties = HashMap::new();
    if !positions.is_empty() {
        properties.insert(OFFSETS_PROPERTY.to_string(), positions.to_property());
        properties.insert(COMPLETE_PROPERTY.to_string(), "true".to_string());
    }
    properties
}

/// Adds the rows each index does not cover yet (a new delta segment, or a merge).
async fn update_indexes(
    ds: &mut Dataset,
    properties: &HashMap<String, String>,
) -> lance::Result<usize> {
    let indexes = ds.load_indices().await?.len();
    if indexes == 0 {
        return Ok(0);
    }
    let options =
        lance_index::optimize::OptimizeOptions::new().transaction_properties(properties.clone());
    ds.optimize_indices(&options).await?;
    Ok(indexes)
}

/// Whether the newest commit already carries every position.
async fn is_checkpoint(ds: &Dataset) -> Result<bool> {
    Ok(matches!(
        recorded_at(ds, ds.version().version).await?,
        Recorded::Offsets { complete: true, .. }
    ))
}

/// An empty commit that only carries the positions forward.
async fn checkpoint(ds: &Dataset, properties: &HashMap<String, String>) -> lance::Result<()> {
    let mut txn = TransactionBuilder::new(
        ds.version().version,
        Operation::Append { fragments: vec![] },
    )
    .build();
    txn.transaction_properties = Some(Arc::new(properties.clone()));
    CommitBuilder::new(Arc::new(ds.clone()))
        .execute(txn)
        .await?;
    Ok(())
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
