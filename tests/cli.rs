//! The `semflow` binary as users run it: the README's demo, output formats, model generation,
//! lazy loading and the errors users see.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use semflow::model::random::ModelKind;

fn semflow(args: &[&str]) -> Output {
    common::semflow_command().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "semflow failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn readme_demo_searches_and_reranks() {
    let out = stdout(&semflow(&["sql", "-f", "examples/search.sql"]));
    assert!(out.contains("relevance"), "{out}");
    // Header, separator lines and exactly three hits.
    let rows = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("relevance"))
        .count();
    assert_eq!(rows, 3, "{out}");
}

#[test]
fn readme_demo_with_random_model_spec() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(common::semflow_bin())
        .args([
            "sql",
            "-f",
            "examples/search.sql",
            "--embed-model",
            "random:tiny",
            "--rerank-model",
            "random:tiny",
        ])
        .env("SEMFLOW_CACHE_DIR", cache.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(stdout(&out).contains("relevance"));
    assert!(cache
        .path()
        .join("random/embedding-tiny-0/model.safetensors")
        .is_file());
    assert!(cache
        .path()
        .join("random/reranker-tiny-0/model.safetensors")
        .is_file());
}

#[test]
fn output_formats() {
    let sql = "SELECT 1 AS id, embed('hello', 'q', 4) AS v, rerank('a', 'b') > 0 AS ok";
    let csv = stdout(&semflow(&["sql", sql, "--format", "csv"]));
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,v,ok"));
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("1,\"[") && row.ends_with("]\",true"),
        "{row}"
    );

    let ndjson = stdout(&semflow(&["sql", sql, "--format", "ndjson"]));
    let value: serde_json::Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    let v = value["v"].as_array().unwrap();
    assert_eq!(v.len(), 4);
    let norm: f64 = v.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-5);

    let json = stdout(&semflow(&["sql", sql, "--format", "json"]));
    assert!(json.ends_with("]\n"), "{json:?}");
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["id"], 1);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.parquet");
    stdout(&semflow(&[
        "sql",
        sql,
        "--format",
        "parquet",
        "--output",
        file.to_str().unwrap(),
    ]));
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap();
    let schema = reader.schema().clone();
    // The model fingerprint travels with the column into the file.
    let meta = schema.field_with_name("v").unwrap().metadata();
    assert_eq!(meta.get("semflow.dims").map(String::as_str), Some("4"));
    assert_eq!(
        meta.get("semflow.instruction").map(String::as_str),
        Some("q")
    );
    assert!(meta.contains_key("semflow.weights") && meta.contains_key("semflow.fingerprint"));
    let batches: Vec<_> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(batches[0].num_rows(), 1);
}

#[test]
fn model_random_writes_a_loadable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let o = Command::new(common::semflow_bin())
        .args([
            "model",
            "random",
            "--kind",
            "embedding",
            "--preset",
            "tiny",
            "--seed",
            "5",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("2 layers, hidden 64"));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(Path::new(&out).join(f).exists(), "{f}");
    }
    let o = Command::new(common::semflow_bin())
        .args([
            "sql",
            "SELECT arrow_typeof(embed('x')) AS t",
            "--format",
            "csv",
            "--embed-model",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("FixedSizeList(64 x Float32)"));
}

#[test]
fn models_load_lazily() {
    // No model is needed (or even present) for SQL that uses neither function.
    let o = Command::new(common::semflow_bin())
        .args(["sql", "SELECT 1 + 1 AS two", "--format", "csv"])
        .args([
            "--embed-model",
            "/nonexistent/model",
            "--rerank-model",
            "/nonexistent/model",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "two\n2\n");
}

#[test]
fn errors_name_what_to_fix() {
    let e = stderr(&semflow(&["sql", "SELECT embed('x', 'q', 0)"]));
    assert!(
        e.contains("embed(): argument 3 (dims) must be between 1 and 64"),
        "{e}"
    );

    // bf16 on the CPU is the packed backend's (bf16 weights); mistral.rs refuses it there.
    let o = semflow(&["sql", "SELECT 1 AS one", "--dtype", "bf16"]);
    assert!(stdout(&o).contains('1'));
    if cfg!(feature = "mistralrs") {
        let e = stderr(&semflow(&[
            "sql",
            "SELECT 1",
            "--dtype",
            "bf16",
            "--backend",
            "mistralrs",
        ]));
        assert!(
            e.contains("--dtype bf16 on CPU runs on the packed backend only"),
            "{e}"
        );
    }

    let e = stderr(&semflow(&["sql", "SELECT 1", "--device", "tpu"]));
    assert!(e.contains("--device must be cpu, cuda or cuda:N"), "{e}");

    let e = stderr(&semflow(&[
        "sql",
        "SELECT embed('x')",
        "--embed-model",
        "./no/such/dir",
    ]));
    assert!(
        e.contains("no such directory") && e.contains("--embed-model"),
        "{e}"
    );

    let e = stderr(&semflow(&["sql", "SELECT * FROM missing_table"]));
    assert!(e.contains("missing_table"), "{e}");
}

#[test]
fn unreachable_hub_names_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(common::semflow_bin())
        .args([
            "sql",
            "SELECT rerank('q', 'd')",
            "--rerank-model",
            "Qwen/Qwen3-Reranker-0.6B",
        ])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        e.contains("could not download Qwen/Qwen3-Reranker-0.6B"),
        "{e}"
    );
    assert!(e.contains("--rerank-model"), "{e}");
}

#[test]
fn config_file_sets_models() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("semflow.toml");
    let embed = common::tiny_model(ModelKind::Embedding, common::EMBED_SEED);
    std::fs::write(
        &cfg,
        format!(
            "embed_model = {:?}\ncache_size = 0\n",
            embed.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = Command::new(common::semflow_bin())
        .args([
            "sql",
            "SELECT arrow_typeof(embed('x', '', 16)) AS t",
            "--format",
            "csv",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("FixedSizeList(16 x Float32)"));
    std::fs::write(&cfg, "embed_modle = 'typo'\n").unwrap();
    let o = Command::new(common::semflow_bin())
        .args(["sql", "SELECT 1", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(stderr(&o).contains("embed_modle"));
}

/// mistral.rs in builds with the `mistralrs` feature; without it, a clear refusal.
#[test]
fn backends_are_selectable() {
    let o = semflow(&["sql", "-f", "examples/search.sql", "--backend", "mistralrs"]);
    if cfg!(feature = "mistralrs") {
        let out = stdout(&o);
        assert!(out.contains("relevance"), "{out}");
    } else {
        let e = stderr(&o);
        assert!(
            e.contains("build semflow with `--features mistralrs`"),
            "{e}"
        );
    }
    let e = stderr(&semflow(&["sql", "SELECT 1", "--backend", "onnx"]));
    assert!(e.contains("--backend must be packed or mistralrs"), "{e}");
}

#[test]
fn shell_reads_statements_from_stdin() {
    use std::io::Write;
    let embed = common::tiny_model(ModelKind::Embedding, common::EMBED_SEED);
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::semflow_bin())
        .args(["shell", "--embed-model"])
        .arg(&embed)
        .env("HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT arrow_typeof(embed('x'))\n  AS t;\nSELECT nope;\n\
              CREATE TABLE notes (id INT, body TEXT);\n\\dt\n\\d notes\n\\?\n\\x\n\\q\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(text.contains("FixedSizeList(64 x Float32)"), "{text}");
    assert!(text.contains("1 row(s)"), "{text}");
    // A failing statement reports and the shell goes on.
    assert!(errors.contains("nope"), "{errors}");
    // Backslash commands: \\dt lists the table (not the catalog's own), \\d NAME its columns.
    let row = |cells: &[&str]| text.lines().any(|l| cells.iter().all(|c| l.contains(c)));
    assert!(row(&["| public ", "| notes ", "| BASE TABLE "]), "{text}");
    assert!(!text.contains("information_schema"), "{text}");
    assert!(
        row(&["| id ", "| Int32 "]) && row(&["| body ", "| Utf8"]),
        "{text}"
    );
    assert!(text.contains("describe a table's columns"), "{text}");
    assert!(errors.contains("unknown command \\x"), "{errors}");
}

#[test]
fn bench_measures_search_under_a_stream_and_chunking() {
    // R1 and C1 at a small scale: the report's shape and figures that must hold at any scale.
    let out = stdout(&semflow(&[
        "bench",
        "--workloads",
        "r1,c1",
        "--rounds",
        "1",
        "--r1-rows",
        "3000",
        "--r1-dims",
        "32",
        "--r1-batches",
        "6",
        "--r1-batch-rows",
        "100",
        "--r1-queries",
        "20",
        "--r1-maintenance-every",
        "2",
        "--r1-commit-ms",
        "50",
        "--c1-docs",
        "40",
        "--c1-tokens",
        "32",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r1 = &report["retrieval"];
    let phases = r1["phases"].as_array().unwrap();
    // fresh, no maintenance, maintained, 4 settings on the maintained index after its next
    // round, then side by side: that index and the rebuilt one (default and refine 4).
    assert_eq!(phases.len(), 10, "{r1}");
    // 3000 rows, then 6 commits each adding 50 new ids (the other 50 replace old ones).
    assert_eq!(phases[0]["rows"], 3000);
    assert_eq!(phases[8]["rows"], 3300);
    assert_eq!(phases[9]["effort"]["refine"], 4);
    assert_eq!(phases[6]["effort"]["effort"], 1.0);
    assert_eq!(phases[6]["effort"]["refine"], 16);
    assert_eq!(phases[7]["name"], "maintained, after its next round");
    // Probing every partition and re-ranking 16k candidates finds at least what re-ranking
    // 4k does on the same index.
    assert!(
        phases[6]["recall_at_10"].as_f64().unwrap() >= phases[3]["recall_at_10"].as_f64().unwrap(),
        "{r1}"
    );
    for p in phases {
        let recall = p["recall_at_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall), "{p}");
        assert!(p["p50_ms"].as_f64().unwrap() <= p["p99_ms"].as_f64().unwrap());
        assert!(
            p["fragments_with_deletions"].as_u64().unwrap() <= p["fragments"].as_u64().unwrap()
        );
    }
    // A rebuilt index over clustered vectors finds most true neighbours even at this size.
    assert!(phases[8]["recall_at_10"].as_f64().unwrap() > 0.5, "{r1}");
    assert!(
        r1["with_maintenance"]["rounds"].as_u64().unwrap() >= 1,
        "{r1}"
    );
    assert_eq!(r1["without_maintenance"]["rounds"], 0, "{r1}");
    // Paced: 6 commits 50 ms apart take at least 5 intervals.
    assert!(
        r1["without_maintenance"]["seconds"].as_f64().unwrap() >= 0.25,
        "{r1}"
    );
    // Maintenance compacted the maintained copy's one-fragment-per-commit tail, and its next
    // round leaves no row outside the index (the unmaintained copy has the stream's ≤ 600 live
    // rows outside it).
    assert!(
        phases[2]["fragments"].as_u64().unwrap() < phases[1]["fragments"].as_u64().unwrap(),
        "{r1}"
    );
    let outside = phases[1]["unindexed_rows"].as_u64().unwrap();
    assert!((500..=600).contains(&outside), "{r1}");
    assert_eq!(phases[7]["unindexed_rows"], 0, "{r1}");
    assert_eq!(phases[0]["index_segments"], 1, "{r1}");
    let c1 = &report["chunking"];
    assert_eq!(c1["docs"], 40);
    assert!(c1["chunks"].as_u64().unwrap() > 40, "{c1}");
    // Two runs timed apart: with the tiny model embedding costs next to nothing, so the
    // share sits near 1 and noise can put it a little above (it did, at 1.05, on a busy run).
    let share = c1["chunk_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.5, "{c1}");
}

#[test]
fn bench_reports_json_and_alternates_with_a_peer() {
    // A stand-in peer speaking the protocol (the real ones, scripts/peer_onnx.py and
    // scripts/peer_bench.py, need onnxruntime and torch): its name, then one JSON measurement
    // per workload line. Given twice: two columns, the second name made unique.
    let peer = r#"sh -c 'echo "{\"peer\":\"stand-in\",\"about\":\"a shell loop\"}"; while read -r line; do echo "{\"seconds\":0.5,\"tokens\":1000,\"padded_tokens\":1250,\"sequences\":10,\"latencies_ms\":[500.0]}"; done' --"#;
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("report.json");
    let out = stdout(&semflow(&[
        "bench",
        "--workloads",
        "w1,w2,w3,w5",
        "--rounds",
        "2",
        "--docs",
        "6",
        "--queries",
        "2",
        "--json",
        "--json-out",
        saved.to_str().unwrap(),
        "--peer",
        peer,
        "--peer",
        peer,
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(file, report, "--json-out writes the report printed");
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3 + 4 + 1 + 1, "{names:?}");
    assert!(names.contains(&"W3 realistic docs=6") && names.contains(&"W5 rerank 1x100"));
    for r in results {
        assert_eq!(r["semflow_rounds"].as_array().unwrap().len(), 2);
        assert!(r["semflow"]["value"].as_f64().unwrap() > 0.0);
        assert_eq!(r["semflow"]["padding_fraction"].as_f64().unwrap(), 0.0);
        let peers = r["peers"].as_array().unwrap();
        let names: Vec<&str> = peers.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["stand-in", "stand-in#2"], "{r}");
        for p in peers {
            assert_eq!(p["rounds"].as_array().unwrap().len(), 2);
            assert!((p["padding_fraction"].as_f64().unwrap() - 0.2).abs() < 1e-9);
            assert!(p["speedup"].as_f64().unwrap() > 0.0);
            // The stand-in reports no faults; semflow's rounds always carry a count.
            assert_eq!(p["minor_faults"].as_f64(), Some(0.0));
        }
        assert!(r["semflow_rounds"][0]["minor_faults"].is_u64(), "{r}");
    }
    assert_eq!(report["peers"][0]["about"], "a shell loop", "{report}");
    assert!(
        report["peak_rss_bytes"].as_u64().unwrap() > 1 << 20,
        "{report}"
    );
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(report["dtype"], "f32");

    let e = stderr(&semflow(&["bench", "--workloads", "w9"]));
    assert!(e.contains("unknown workload 'w9'"), "{e}");
    // K1 names the flag it needs (tests/pipeline.rs runs it against a broker).
    let e = stderr(&semflow(&["bench", "--workloads", "k1"]));
    assert!(e.contains("--kafka"), "{e}");
}
