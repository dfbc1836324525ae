//! Every documented command is a test: what README.md and the shipped files tell a newcomer
//! to run must run as written. So far: every `examples/*.sql` file, with the random tiny
//! models (`SEMFLOW_EXAMPLE_DIR` points the files that write Lance tables at a scratch
//! directory). tests/pipeline_files.rs runs the shipped pipelines against a broker.

use crate::common;

use std::path::{Path, PathBuf};

/// The files in `dir` whose names end in `.extension`, in name order.
fn files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no .{extension} files in {}", dir.display());
    found
}

#[test]
fn every_example_sql_file_runs() {
    for file in files("examples", "sql") {
        let scratch = tempfile::tempdir().unwrap();
        let out = common::semflow_command()
            .args(["sql", "-f"])
            .arg(&file)
            .env("SEMFLOW_EXAMPLE_DIR", scratch.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
