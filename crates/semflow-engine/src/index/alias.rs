//! Index aliases: a small JSON file standing where a Lance dataset's location would,
//! `{"target": "idx-v2.lance"}`, so readers and writers can be switched to another dataset
//! at once (after `semflow reindex` rebuilt it with a new model). A table whose LOCATION is an
//! alias reads the file before each scan and commit and follows it when it changed.
//!
//! Local files only: the swap is one `rename`, atomic on POSIX filesystems. A relative target
//! is relative to the alias file's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name ending that marks a LOCATION as an alias.
pub const EXTENSION: &str = "alias";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasFile {
    target: String,
}

/// Whether `location` names an alias: a path ending in `.alias`.
pub fn is_alias(location: &str) -> bool {
    Path::new(location)
        .extension()
        .is_some_and(|e| e == EXTENSION)
        && !location.contains("://")
}

/// The dataset location the alias at `path` points to (resolved against its directory).
pub fn resolve(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: AliasFile = serde_json::from_str(&text).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: not an index alias ({{\"target\": \"LOCATION\"}}): {e}",
            path.display()
        ))
    })?;
    if file.target.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: the alias has an empty target",
            path.display()
        )));
    }
    if file.target.contains("://") || Path::new(&file.target).is_absolute() {
        return Ok(file.target);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok(dir.join(&file.target).to_string_lossy().into_owned())
}

/// Points the alias at `path` to `target`, atomically: readers see the old target or the new
/// one, never a half-written file. Creates the alias when there is none.
pub fn point(path: &Path, target: &str) -> Result<()> {
    let text = serde_json::to_string(&AliasFile {
        target: target.to_string(),
    })
    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    let tmp = temporary_beside(path);
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_resolves_relative_to_the_alias() {
        let dir = tempfile::tempdir().unwrap();
        let alias = dir.path().join("idx.alias");
        assert!(is_alias(alias.to_str().unwrap()));
        assert!(!is_alias("s3://bucket/idx.alias"));
        assert!(!is_alias("/data/idx.lance"));
        point(&alias, "idx-v1.lance").unwrap();
        assert_eq!(
            resolve(&alias).unwrap(),
            dir.path().join("idx-v1.lance").to_string_lossy()
        );
        point(&alias, "/elsewhere/idx-v2.lance").unwrap();
        assert_eq!(resolve(&alias).unwrap(), "/elsewhere/idx-v2.lance");
    }

    #[test]
    fn a_broken_alias_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let alias = dir.path().join("idx.alias");
        std::fs::write(&alias, "idx-v1.lance").unwrap();
        let e = resolve(&alias).unwrap_err().to_string();
        assert!(
            e.contains("idx.alias") && e.contains("not an index alias"),
            "{e}"
        );
        assert!(resolve(&dir.path().join("missing.alias")).is_err());
    }
}
