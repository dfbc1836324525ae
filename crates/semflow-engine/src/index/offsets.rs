//! Kafka offsets stored in the index itself: every commit that writes rows from a stream
//! carries, in its Lance transaction properties, the next offset to read for each
//! (topic, partition) the writer knows. Rows and offsets land atomically, so a restarted
//! pipeline resumes exactly after the last committed rows.

use std::collections::BTreeMap;

use lance::Dataset;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The transaction property holding [`SourceOffsets`] as JSON.
pub const OFFSETS_PROPERTY: &str = "semflow.kafka.offsets";

/// Set on commits whose offsets are every partition's (maintenance commits carrying them
/// forward): nothing older needs reading.
pub const COMPLETE_PROPERTY: &str = "semflow.kafka.offsets.complete";

/// Next offset to read, per topic and partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOffsets(BTreeMap<String, BTreeMap<i32, i64>>);

impl SourceOffsets {
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic)?.get(&partition).copied()
    }

    pub fn set(&mut self, topic: &str, partition: i32, next: i64) {
        self.0
            .entry(topic.to_string())
            .or_default()
            .insert(partition, next);
    }

    /// Takes every (topic, partition) from `other` that `self` does not have yet.
    pub fn fill_from(&mut self, other: &SourceOffsets) {
        for (topic, parts) in &other.0 {
            let mine = self.0.entry(topic.clone()).or_default();
            for (p, o) in parts {
                mine.entry(*p).or_insert(*o);
            }
        }
    }

    /// Keeps only the partitions `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, i32) -> bool) {
        for (topic, parts) in self.0.iter_mut() {
            parts.retain(|p, _| keep(topic, *p));
        }
        self.0.retain(|_, parts| !parts.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|p| p.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    pub fn to_property(&self) -> String {
        // A map of plain strings and integers always serialises.
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    pub fn from_property(text: &str) -> Result<Self> {
        serde_json::from_str(text).map(SourceOffsets).map_err(|e| {
            Error::InvalidArgument(format!(
                "index: transaction property {OFFSETS_PROPERTY} is not valid: {e}"
            ))
        })
    }
}

/// The offsets recorded in `dataset`'s history for `wanted` (topic, partition) pairs.
///
/// Commits that did not come from a stream (plain INSERTs; compaction and index builds made
/// outside `semflow`) carry no offsets, so this walks back from the newest version until every
/// wanted partition is found (or, with nothing wanted, until the first version with any
/// offsets), or a complete commit is reached.
pub async fn read_offsets(dataset: &Dataset, wanted: &[(String, i32)]) -> Result<SourceOffsets> {
    walk_back(dataset, |found| {
        if wanted.is_empty() {
            !found.is_empty()
        } else {
            wanted.iter().all(|(t, p)| found.get(t, *p).is_some())
        }
    })
    .await
}

/// Every partition's newest offset in `dataset`'s history: back to the newest complete
/// commit, or the first version.
pub async fn read_all_offsets(dataset: &Dataset) -> Result<SourceOffsets> {
    walk_back(dataset, |_| false).await
}

/// Collects offsets from the newest version back, newer ones winning, until `done` says so
/// or a complete commit has been read.
async fn walk_back(
    dataset: &Dataset,
    mut done: impl FnMut(&SourceOffsets) -> bool,
) -> Result<SourceOffsets> {
    let mut found = SourceOffsets::default();
    let mut version = dataset.version().version;
    while version >= 1 {
        match recorded_at(dataset, version).await? {
            // Removed by cleanup_old_versions: the history before it is gone too.
            Recorded::Gone => break,
            Recorded::Nothing => {}
            Recorded::Offsets { offsets, complete } => {
                found.fill_from(&offsets);
                if done(&found) || complete {
                    break;
                }
            }
        }
        version -= 1;
    }
    Ok(found)
}

/// What one version's commit records of the stream positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The version no longer exists (removed by `cleanup_old_versions`).
    Gone,
    /// A commit without offsets (a plain INSERT, an index build made elsewhere).
    Nothing,
    /// The offsets it stored; `complete` when they are every partition's.
    Offsets {
        offsets: SourceOffsets,
        complete: bool,
    },
}

/// The stream positions the commit of `version` recorded.
pub async fn recorded_at(dataset: &Dataset, version: u64) -> Result<Recorded> {
    let Some(props) = properties_at(dataset, version).await? else {
        return Ok(Recorded::Gone);
    };
    match props.get(OFFSETS_PROPERTY) {
        Some(text) => Ok(Recorded::Offsets {
            offsets: SourceOffsets::from_property(text)?,
            complete: props.contains_key(COMPLETE_PROPERTY),
        }),
        None => Ok(Recorded::Nothing),
    }
}

/// The transaction properties the commit of `version` recorded (empty when it recorded
/// none); `None` when the version was removed by `cleanup_old_versions`.
pub async fn properties_at(
    dataset: &Dataset,
    version: u64,
) -> Result<Option<std::collections::HashMap<String, String>>> {
    let txn = match dataset.read_transaction_by_version(version).await {
        Ok(txn) => txn,
        Err(
            lance::Error::NotFound { .. }
            | lance::Error::VersionNotFound { .. }
            | lance::Error::DatasetNotFound { .. },
        ) => return Ok(None),
        Err(e) => return Err(Error::Index(format!("reading version {version}: {e}"))),
    };
    Ok(Some(
        txn.and_then(|t| t.transaction_properties)
            .map(|p| (*p).clone())
            .unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fills_only_missing() {
        let mut a = SourceOffsets::default();
        a.set("docs", 0, 10);
        let text = a.to_property();
        assert_eq!(SourceOffsets::from_property(&text).unwrap(), a);

        let mut b = SourceOffsets::default();
        b.set("docs", 0, 5);
        b.set("docs", 1, 7);
        a.fill_from(&b);
        assert_eq!(a.get("docs", 0), Some(10));
        assert_eq!(a.get("docs", 1), Some(7));
        assert_eq!(a.get("other", 0), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(SourceOffsets::from_property("not json").is_err());
    }
}
