//! Resumable progress. A run works in chunks of documents; each finished chunk leaves a
//! manifest (`part-NNNNNN.json`: its documents, kept queries and counts) written atomically
//! *after* its rows are durable (a part file for file outputs, a commit for Lance, acknowledged
//! records for Kafka). A restarted run skips every document a manifest lists and every query
//! already kept, so nothing is generated twice and no pair is duplicated; a chunk cut short by
//! a crash has no manifest and is redone.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::output::write_atomic;
use crate::error::{Error, Result};

/// What one finished chunk did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub part: u64,
    pub docs: Vec<String>,
    /// Normalised kept queries, for de-duplication across restarts.
    pub queries: Vec<String>,
    pub rows: u64,
    pub counts: BTreeMap<String, u64>,
}

/// Settings a resumed run must share with the run that started the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub embedder: String,
    pub instruction: String,
    pub threshold: f64,
    pub negatives: usize,
}

#[derive(Debug)]
pub struct State {
    dir: PathBuf,
    next_part: u64,
    pub done: HashSet<String>,
    pub queries: HashSet<String>,
    /// Counts summed over earlier runs' manifests.
    pub previous: BTreeMap<String, u64>,
    pub previous_rows: u64,
}

impl State {
    /// Opens (or starts) the state directory of an output.
    pub fn open(dir: &Path, identity: &RunIdentity) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let id_path = dir.join("run.json");
        match std::fs::read(&id_path) {
            Ok(bytes) => {
                let stored: RunIdentity =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                        path: id_path.clone(),
                        source: e,
                    })?;
                if stored != *identity {
                    return Err(Error::InvalidArgument(format!(
                        "{} belongs to a run with other settings ({stored:?}; now {identity:?}): use the same settings to resume, or delete the directory (and the output) to start over",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&id_path, |f| {
                    serde_json::to_writer_pretty(f, identity).map_err(|e| Error::Json {
                        path: id_path.clone(),
                        source: e,
                    })
                })?;
            }
            Err(e) => return Err(Error::io(&id_path, e)),
        }
        let mut state = State {
            dir: dir.to_path_buf(),
            next_part: 0,
            done: HashSet::new(),
            queries: HashSet::new(),
            previous: BTreeMap::new(),
            previous_rows: 0,
        };
        for (part, path) in state.listed("json")? {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                path: path.clone(),
                source: e,
            })?;
            state.done.extend(m.docs);
            state.queries.extend(m.queries);
            for (k, v) in m.counts {
                *state.previous.entry(k).or_default() += v;
            }
            state.previous_rows += m.rows;
            state.next_part = state.next_part.max(part + 1);
        }
        // Part files whose manifest never landed belong to a chunk that will be redone.
        for (part, path) in state.listed("parquet")? {
            if part >= state.next_part {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(state)
    }

    /// `part-NNNNNN.<ext>` files in part order.
    fn listed(&self, ext: &str) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(num) = name
                .strip_prefix("part-")
                .and_then(|r| r.strip_suffix(&format!(".{ext}")))
            else {
                continue;
            };
            if let Ok(n) = num.parse::<u64>() {
                out.push((n, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The number the next chunk gets.
    pub fn next_part(&self) -> u64 {
        self.next_part
    }

    pub fn part_path(&self, part: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("part-{part:06}.{ext}"))
    }

    /// Parquet part files with a manifest, in order.
    pub fn committed_parts(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .listed("parquet")?
            .into_iter()
            .filter(|(p, _)| *p < self.next_part)
            .map(|(_, path)| path)
            .collect())
    }

    /// Records a finished chunk; its rows must already be durable.
    pub fn commit(&mut self, manifest: Manifest) -> Result<()> {
        let path = self.part_path(manifest.part, "json");
        write_atomic(&path, |f| {
            serde_json::to_writer(f, &manifest).map_err(|e| Error::Json {
                path: path.clone(),
                source: e,
            })
        })?;
        self.done.extend(manifest.docs);
        self.queries.extend(manifest.queries);
        self.next_part = manifest.part + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: usize) -> RunIdentity {
        RunIdentity {
            embedder: "m@x".into(),
            instruction: "i".into(),
            threshold: 0.7,
            negatives: n,
        }
    }

    #[test]
    fn manifests_resume_and_orphans_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(dir.path(), &identity(3)).unwrap();
        assert_eq!(s.next_part(), 0);
        std::fs::write(s.part_path(0, "parquet"), b"rows").unwrap();
        s.commit(Manifest {
            part: 0,
            docs: vec!["a".into(), "b".into()],
            queries: vec!["q".into()],
            rows: 1,
            counts: BTreeMap::from([("kept".into(), 1)]),
        })
        .unwrap();
        // A chunk that crashed after its part file but before its manifest.
        std::fs::write(s.part_path(1, "parquet"), b"half").unwrap();

        let s = State::open(dir.path(), &identity(3)).unwrap();
        assert_eq!(s.next_part(), 1);
        assert!(s.done.contains("a") && s.done.contains("b"));
        assert!(s.queries.contains("q"));
        assert_eq!(s.previous["kept"], 1);
        assert_eq!(s.committed_parts().unwrap().len(), 1);
        assert!(!s.part_path(1, "parquet").exists());

        let err = State::open(dir.path(), &identity(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("other settings"), "{err}");
    }
}
