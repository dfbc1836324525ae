//! Every documented command is a test: what README.md and the shipped files tell a newcomer
//! to run must run as written. So far: every `examples/*.sql` file, without a warning, with
//! the random tiny models (`SEMFLOW_EXAMPLE_DIR` points the files that write Lance tables at a scratch
//! directory). tests/pipeline_files.rs runs the shipped pipelines against a broker, and
//! every file under pipelines/ must be run by some test.

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
    assert!(
        !found.is_empty(),
        "no .{extension} files in {}",
        dir.display()
    );
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{} failed:\n{stderr}", file.display());
        // At the default log level a newcomer sees every warning: an example shows none.
        assert!(
            !stderr.contains("WARN"),
            "{} warns:\n{stderr}",
            file.display()
        );
    }
}

/// Every file under pipelines/ is run by a test: its path appears in a test file (the
/// walkthrough, synth and pipeline tests run them as shipped), or it is a template of
/// pipelines/synth.toml (`templates = "synth"`), which the synth test loads. A file added
/// there without a test fails here.
#[test]
fn every_shipped_pipeline_file_is_run_by_a_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests: String = files("tests", "rs")
        .iter()
        .filter(|p| !p.ends_with("documents.rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let mut shipped = Vec::new();
    let mut dirs = vec![root.join("pipelines")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                shipped.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let synth_templates = ["pipelines/synth/configure.txt", "pipelines/synth/query.txt"];
    let untested: Vec<&String> = shipped
        .iter()
        .filter(|f| f.as_str() != "pipelines/README.md")
        .filter(|f| !synth_templates.contains(&f.as_str()) && !tests.contains(f.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "pipelines/ files no test runs: {untested:?}"
    );
    assert!(shipped.len() >= 10, "{shipped:?}");
}

/// The fenced `sql` blocks of README.md, in order.
fn readme_sql_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// What the README test does with a block.
enum Block {
    /// Runs it after `prelude` (statements that make the tables it reads), in a scratch
    /// directory holding `docs.csv`; `after_previous` keeps the previous block's session (its
    /// tables) by running both in one file.
    Run {
        prelude: &'static str,
        after_previous: bool,
    },
    /// Not run here, for the reason given (where it is tested instead).
    Skip(&'static str),
}

/// Every README sql block, by how it starts, and what the test does with it. A block added to
/// README without an entry here fails the test.
const README_BLOCKS: &[(&str, Block)] = &[
    (
        "-- documents straight from files",
        Block::Run {
            prelude: "",
            after_previous: false,
        },
    ),
    (
        "CREATE TABLE chunks AS",
        Block::Run {
            prelude: "",
            after_previous: true,
        },
    ),
    (
        "WITH kw AS",
        Block::Run {
            prelude: "CREATE EXTERNAL TABLE kb (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
                      STORED AS LANCE LOCATION 'kb.lance';
                      INSERT INTO kb SELECT id, body, embed(body) FROM docs;
                      CREATE INDEX kb_body ON kb USING inverted (body);",
            after_previous: false,
        },
    ),
    (
        "SELECT measure, avg(value) FROM ir_measures(",
        Block::Run {
            prelude: "CREATE TABLE run (query_id TEXT, doc_id TEXT, score DOUBLE) AS
                        VALUES ('q1', 'a', 0.9), ('q1', 'b', 0.5), ('q2', 'c', 0.7);
                      CREATE TABLE qrels (query_id TEXT, doc_id TEXT, relevance INT) AS
                        VALUES ('q1', 'b', 1), ('q2', 'c', 2);",
            after_previous: false,
        },
    ),
    (
        "CREATE EXTERNAL TABLE pairs STORED AS PARQUET LOCATION 'pairs.parquet';",
        Block::Run {
            // Rows in synth's output columns (those the block reads).
            prelude: "COPY (SELECT 'p' || CAST(v AS TEXT) AS pair_id, 'd' || CAST(v AS TEXT) AS doc_id,
                              'query ' || CAST(v AS TEXT) AS anchor
                       FROM (SELECT unnest(range(50)) AS v)) TO 'pairs.parquet';",
            after_previous: false,
        },
    ),
    (
        "WITH candidates AS (",
        Block::Run {
            // A Lance table, as README says: the Hamming stage is Lance's search.
            prelude: "CREATE EXTERNAL TABLE idx (doc_id TEXT NOT NULL, embedding FLOAT[],
                        embedding_binary TINYINT UNSIGNED[], PRIMARY KEY (doc_id))
                      STORED AS LANCE LOCATION 'idx.lance';
                      INSERT INTO idx SELECT id, e, binary_quantize(e)
                      FROM (SELECT id, embed(body) AS e FROM docs);",
            after_previous: false,
        },
    ),
    (
        "CREATE TABLE calibration AS SELECT int8_calibration(embedding)",
        Block::Run {
            prelude: "",
            after_previous: true,
        },
    ),
    (
        "CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, title TEXT, body TEXT) STORED AS KAFKA",
        Block::Skip(
            "a Kafka pipeline: tests/pipeline_files.rs runs pipelines/index.sql, which it abridges",
        ),
    ),
    (
        "CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, title TEXT, body TEXT, at TIMESTAMP) STORED AS KAFKA",
        Block::Skip(
            "an Avro topic behind a schema registry: tests/pipeline.rs reads one with a registry",
        ),
    ),
    (
        "CREATE EXTERNAL TABLE chunks",
        Block::Run {
            prelude: "",
            after_previous: false,
        },
    ),
    (
        "CREATE INDEX idx_embedding ON idx USING ivf_pq",
        Block::Run {
            prelude: "CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
                      STORED AS LANCE LOCATION 'idx.lance';
                      INSERT INTO idx SELECT 'doc ' || CAST(v AS TEXT), 'text ' || CAST(v AS TEXT),
                                             embed('text ' || CAST(v AS TEXT))
                      FROM (SELECT unnest(range(300)) AS v);",
            after_previous: false,
        },
    ),
    (
        "SELECT id, g['query'] AS anchor",
        Block::Skip(
            "needs an OpenAI-compatible generator: tests/synth.rs runs generate_query against a scripted one",
        ),
    ),
];

/// README's sql blocks run as written (with the random tiny models, in a scratch directory
/// holding tests/fixtures/docs.csv as `docs.csv`), the ones that need a broker, a registry or
/// an LLM listed with the test that covers them instead.
#[test]
fn readme_sql_blocks_run() {
    let blocks = readme_sql_blocks();
    let starts: Vec<&str> = blocks
        .iter()
        .map(|b| b.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        blocks.len(),
        README_BLOCKS.len(),
        "README has {} sql blocks, the test knows {}: add the new one to README_BLOCKS (first lines: {starts:#?})",
        blocks.len(),
        README_BLOCKS.len()
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docs.csv");
    let docs = "CREATE EXTERNAL TABLE docs STORED AS CSV LOCATION 'docs.csv' OPTIONS ('format.has_header' 'true');\n";
    let mut previous = String::new();
    let mut skipped = Vec::new();
    for (block, (start, how)) in blocks.iter().zip(README_BLOCKS) {
        assert!(
            block.starts_with(start),
            "README's sql blocks changed: expected one starting {start:?}, found:\n{block}"
        );
        let (prelude, after_previous) = match how {
            Block::Skip(reason) => {
                skipped.push(format!("{start}: {reason}"));
                previous.clear();
                continue;
            }
            Block::Run {
                prelude,
                after_previous,
            } => (prelude, after_previous),
        };
        let mut script = if *after_previous {
            previous.clone()
        } else if block.contains("STORED AS CSV") {
            String::new()
        } else {
            docs.to_string()
        };
        script.push_str(prelude);
        script.push('\n');
        script.push_str(block);
        let scratch = tempfile::tempdir().unwrap();
        std::fs::copy(&fixture, scratch.path().join("docs.csv")).unwrap();
        let file = scratch.path().join("block.sql");
        std::fs::write(&file, &script).unwrap();
        let out = common::semflow_command()
            .current_dir(scratch.path())
            .args(["sql", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README block starting {start:?} failed:\n{}\n(script:\n{script})",
            String::from_utf8_lossy(&out.stderr)
        );
        previous = script;
    }
    println!(
        "README sql blocks not run here:\n  {}",
        skipped.join("\n  ")
    );
}

/// The command lines of `markdown`'s shell blocks (```sh, ```bash, ```shell), with `\`
/// continuations joined.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(fence) = trimmed.strip_prefix("```") {
            in_shell = !in_shell && matches!(fence, "sh" | "bash" | "shell");
            continue;
        }
        if !in_shell {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

/// The `semflow` arguments of a shell line that runs semflow (`semflow …`, `cargo run [--release]
/// -- …`, after any `VAR=value` assignments), split as the shell splits them.
fn semflow_args(line: &str) -> Option<Vec<String>> {
    let words = shlex::split(line)?;
    let mut words = words.into_iter().skip_while(|w| w.contains('=')).peekable();
    match words.peek().map(String::as_str) {
        Some("semflow") => Some(words.collect()),
        Some("cargo") => {
            let mut rest = words.skip_while(|w| w != "--");
            rest.next()?;
            Some(std::iter::once("semflow".to_string()).chain(rest).collect())
        }
        _ => None,
    }
}

/// Every `semflow` command line in README.md's and docker/README.md's shell blocks parses with
/// semflow's own command line: the subcommand and each flag exist, values are well-formed.
#[test]
fn readme_command_lines_parse() {
    use clap::Parser;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for doc in [
        "README.md",
        "docker/README.md",
        "pipelines/README.md",
        "docs/scaling.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for line in shell_lines(&text) {
            let Some(args) = semflow_args(&line) else {
                continue;
            };
            if let Err(e) = semflow::cli::Cli::try_parse_from(&args) {
                panic!("{doc}: `{}` does not parse:\n{e}", line.trim());
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} semflow command lines found");
    println!("{checked} documented semflow command lines parse");
}
