//! Zombie-writer fencing for stream commits.
//!
//! A worker that is paused (GC, SIGSTOP, a slow disk) past its group session loses its
//! partitions to another worker, and may wake up holding a batch read from the old position.
//! Committing it would move the stored positions backwards and bring back stale rows. So a
//! stream commit says where each of its partitions stood when its batch began (the *fence*),
//! and lands only if the index still stands there: checked once on the version the change is
//! built on, and again inside the commit for every version another writer added since —
//! by wrapping Lance's commit handler, whose conditional put of the next manifest is the
//! point of no return. Lance rebases compatible concurrent commits (two appends) on its own;
//! the check in the handler is what keeps a rebase from slipping a stale batch in.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lance::Dataset;
use lance_table::format::{IndexMetadata, Manifest, Transaction};
use lance_table::io::commit::{
    CommitError, CommitHandler, ManifestLocation, ManifestNamingScheme, ManifestWriter,
};
use object_store::path::Path;

use super::offsets::{read_offsets, recorded_at, Recorded, SourceOffsets};
use crate::error::{Error, Result};

/// Where a batch's partitions stood when it began: `expected` holds a position for each
/// partition that had one; a partition of the commit absent from it must have none yet.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The (topic, partition) pairs the commit moves.
    pub partitions: Vec<(String, i32)>,
    pub expected: SourceOffsets,
}

impl Fence {
    /// The fence for a commit moving to `to` from `from`.
    pub fn between(from: &SourceOffsets, to: &SourceOffsets) -> Self {
        Self {
            partitions: to.iter().map(|(t, p, _)| (t.to_string(), p)).collect(),
            expected: from.clone(),
        }
    }

    /// The first partition `stored` disagrees on, as the error to report.
    fn refuse(&self, stored: &SourceOffsets, all: bool, version: u64) -> Option<Error> {
        self.partitions.iter().find_map(|(topic, partition)| {
            let expected = self.expected.get(topic, *partition);
            let found = stored.get(topic, *partition);
            // A later commit that does not mention the partition leaves it where it was.
            let moved = if all {
                found != expected
            } else {
                found.is_some() && found != expected
            };
            moved.then(|| Error::Fenced {
                topic: topic.clone(),
                partition: *partition,
                expected,
                found,
                version,
            })
        })
    }

    /// Refuses unless the positions stored in `dataset` are the fence's.
    pub async fn check(&self, dataset: &Dataset) -> Result<()> {
        let stored = read_offsets(dataset, &self.partitions).await?;
        match self.refuse(&stored, true, dataset.version().version) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Refuses if any version after `dataset`'s and before `before` moved a partition.
    async fn check_since(&self, dataset: &Dataset, before: u64) -> Result<()> {
        for version in dataset.version().version + 1..before {
            match recorded_at(dataset, version).await? {
                Recorded::Offsets { offsets, .. } => {
                    if let Some(e) = self.refuse(&offsets, false, version) {
                        return Err(e);
                    }
                }
                Recorded::Nothing => {}
                // A version committed during this commit cannot have been cleaned up yet.
                Recorded::Gone => {
                    return Err(Error::Index(format!(
                        "version {version} vanished while committing over it"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Lance's own commit handler for the dataset, preceded by the fence check for the versions
/// committed since the change was built. A refusal is kept for [`FencedCommit::refusal`],
/// since Lance hands back its own error type.
#[derive(Debug)]
pub struct FencedCommit {
    inner: Arc<dyn CommitHandler>,
    /// The version the change was built on (and the fence checked at).
    dataset: Arc<Dataset>,
    fence: Fence,
    refused: Mutex<Option<Error>>,
}

impl FencedCommit {
    pub async fn new(dataset: Arc<Dataset>, fence: Fence) -> Result<Self> {
        let inner = lance_table::io::commit::commit_handler_from_url(dataset.uri(), &None)
            .await
            .map_err(|e| Error::Index(format!("{}: {e}", dataset.uri())))?;
        Ok(Self {
            inner,
            dataset,
            fence,
            refused: Mutex::new(None),
        })
    }

    /// Why the handler refused the commit, if it did.
    pub fn refusal(&self) -> Option<Error> {
        match self.refused.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

#[async_trait]
impl CommitHandler for FencedCommit {
    fn is_version_not_found_definitive(&self) -> bool {
        self.inner.is_version_not_found_definitive()
    }

    fn propagate_commit_error_after_success(&self) -> bool {
        self.inner.propagate_commit_error_after_success()
    }

    async fn commit(
        &self,
        manifest: &mut Manifest,
        indices: Option<Vec<IndexMetadata>>,
        base_path: &Path,
        object_store: &lance::io::ObjectStore,
        manifest_writer: ManifestWriter,
        naming_scheme: ManifestNamingScheme,
        transaction: Option<Transaction>,
    ) -> std::result::Result<ManifestLocation, CommitError> {
        if let Err(e) = self
            .fence
            .check_since(&self.dataset, manifest.version)
            .await
        {
            let message = e.to_string();
            if let Ok(mut r) = self.refused.lock() {
                *r = Some(e);
            }
            return Err(CommitError::OtherError(lance::Error::invalid_input(
                message,
            )));
        }
        self.inner
            .commit(
                manifest,
                indices,
                base_path,
                object_store,
                manifest_writer,
                naming_scheme,
                transaction,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(entries: &[(i32, i64)]) -> SourceOffsets {
        let mut o = SourceOffsets::default();
        for (p, next) in entries {
            o.set("t", *p, *next);
        }
        o
    }

    #[test]
    fn a_moved_or_unexpected_position_is_refused() {
        let fence = Fence::between(&offsets(&[(0, 10)]), &offsets(&[(0, 20), (1, 5)]));
        // Where the batch began: partition 0 at 10, partition 1 without a position.
        assert!(fence.refuse(&offsets(&[(0, 10)]), true, 3).is_none());
        let Some(Error::Fenced {
            partition, found, ..
        }) = fence.refuse(&offsets(&[(0, 30)]), true, 3)
        else {
            panic!("a moved partition must be refused");
        };
        assert_eq!((partition, found), (0, Some(30)));
        assert!(fence
            .refuse(&offsets(&[(0, 10), (1, 2)]), true, 3)
            .is_some());
        // The newest position must match; a later commit must only not move it.
        assert!(fence.refuse(&offsets(&[]), true, 3).is_some());
        assert!(fence.refuse(&offsets(&[]), false, 3).is_none());
        assert!(fence.refuse(&offsets(&[(0, 10)]), false, 3).is_none());
        assert!(fence.refuse(&offsets(&[(1, 9)]), false, 3).is_some());
    }
}
