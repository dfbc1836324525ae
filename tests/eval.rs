//! `semflow eval` end to end (issue 36, item 3), as a user runs it: two models (the default
//! and a `--model`), two Matryoshka dimensions, exact search, reranked search and search
//! through an IVF_PQ index, on a generated BEIR directory, report as a table and JSON.
//!
//! Random models retrieve noise, so the set makes the right answer certain instead: each
//! query's text is its relevant document's text and the queries are embedded without an
//! instruction (`--instruction ''`, the document form), so the relevant document has cosine
//! 1 and exact search must put it first — every measure is 1. A run assembled wrongly (ids
//! mixed up, queries paired with other queries' results, dims not applied to both sides)
//! scores near 0.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::common;
use common::{random_model, semflow_command, stdout_of};
use semflow::model::config::Preset;
use semflow::model::random::ModelKind;

const DOCS: usize = 300;
const QUERIES: usize = 20;

/// A BEIR directory: DOCS distinct documents (some with titles), QUERIES queries each equal to
/// one document's text, judged relevant (grade 2) to it and not relevant (0) to another.
fn write_set(dir: &Path) {
    let text = |i: usize| {
        format!(
            "document {i} is about subject {} and detail {}",
            i % 17,
            i * 7919 % 1000
        )
    };
    let mut corpus = String::new();
    for i in 0..DOCS {
        // Titles are joined to the text with a space; the query below repeats that form.
        let title = if i % 3 == 0 {
            format!(", \"title\": \"title {i}\"")
        } else {
            String::new()
        };
        writeln!(
            corpus,
            "{{\"_id\": \"doc{i}\"{title}, \"text\": \"{}\", \"metadata\": {{}}}}",
            text(i)
        )
        .unwrap();
    }
    let mut queries = String::new();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for q in 0..QUERIES {
        let d = q * 15;
        let body = if d % 3 == 0 {
            format!("title {d} {}", text(d))
        } else {
            text(d)
        };
        writeln!(queries, "{{\"_id\": \"q{q}\", \"text\": \"{body}\"}}").unwrap();
        writeln!(qrels, "q{q}\tdoc{d}\t2\nq{q}\tdoc{}\t0", d + 1).unwrap();
    }
    // An unjudged query: not evaluated.
    writeln!(queries, "{{\"_id\": \"unjudged\", \"text\": \"nothing\"}}").unwrap();
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(dir.join("qrels/test.tsv"), qrels).unwrap();
}

#[test]
fn eval_compares_models_dims_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set);
    let json = dir.path().join("report.json");
    let other = random_model(ModelKind::Embedding, Preset::Tiny, 8);
    let stdout = stdout_of(
        semflow_command()
            .args(["eval", "--set"])
            .arg(&set)
            .args(["--dims", "64,32", "--k", "10", "--instruction", ""])
            .args([
                "--measures",
                "ndcg@10,recall@10,mrr@10",
                "--rerank-top",
                "5",
                "--ann",
            ])
            .arg("--model")
            .arg(format!("other={}", other.display()))
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .arg("--json")
            .arg(&json),
    );
    let table = String::from_utf8_lossy(&stdout);
    println!("{table}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["documents"], DOCS);
    assert_eq!(
        report["queries"], QUERIES,
        "the unjudged query is not evaluated"
    );
    assert_eq!(
        report["measures"],
        serde_json::json!(["ndcg@10", "recall@10", "mrr@10"])
    );
    let configs = report["configurations"].as_array().unwrap();
    // 2 models × 2 dims × (exact, exact + rerank, ivf_pq).
    assert_eq!(configs.len(), 12, "{configs:#?}");
    let mut seen = Vec::new();
    for c in configs {
        let (model, dims, search) = (
            c["model"].as_str().unwrap(),
            c["dims"].as_u64().unwrap(),
            c["search"].as_str().unwrap(),
        );
        let rerank = c["rerank_top"].as_u64();
        seen.push(format!("{model}/{dims}/{search}/{rerank:?}"));
        assert_eq!(c["bytes_per_vector"].as_u64(), Some(dims * 4));
        assert!(c["embed_docs_per_s"].as_f64().unwrap() > 0.0);
        let (p50, p99) = (
            c["latency_ms_p50"].as_f64().unwrap(),
            c["latency_ms_p99"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{c}");
        assert!(c["fingerprint"].as_str().unwrap().contains('@'));
        let measure = |m: &str| c["measures"][m].as_f64().unwrap();
        match (search, rerank) {
            ("exact", None) => {
                for m in ["ndcg@10", "recall@10", "mrr@10"] {
                    assert!(
                        (measure(m) - 1.0).abs() < 1e-9,
                        "{model}/{dims} exact {m}: {}",
                        measure(m)
                    );
                }
                assert!(c["index_bytes"].is_null());
            }
            // The reranker is random: its order is noise, but it reorders only the top 5,
            // which hold the relevant document.
            ("exact", Some(5)) => assert!((measure("recall@10") - 1.0).abs() < 1e-9, "{c}"),
            ("ivf_pq", None) => {
                assert!(c["index_bytes"].as_u64().unwrap() > 0);
                // Approximate: nearly every exact duplicate is still found.
                assert!(measure("recall@10") >= 0.9, "{c}");
            }
            other => panic!("unexpected configuration {other:?}"),
        }
    }
    let expected: Vec<String> = ["default", "other"]
        .iter()
        .flat_map(|m| {
            [64, 32].into_iter().flat_map(move |d| {
                [("exact", None), ("exact", Some(5u64)), ("ivf_pq", None)]
                    .into_iter()
                    .map(move |(s, r)| format!("{m}/{d}/{s}/{r:?}"))
            })
        })
        .collect();
    assert_eq!(seen, expected);
    // The table has a row per configuration, under a header naming the measures.
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .contains("ndcg@10  recall@10  mrr@10"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2 + 12, "{table}");
    assert!(
        !dir.path().join("work").exists(),
        "the work directory is removed"
    );
}

#[test]
fn eval_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/beir-mini");
    let work_dir = dir.path().display().to_string();
    for (args, message) in [
        (
            vec!["--ann"],
            "needs at least 256 documents; the corpus has 4",
        ),
        (vec!["--split", "train"], "qrels/train.tsv not found"),
        (
            vec!["--measures", "ndcg@10,bleu"],
            "--measures: unknown measure \"bleu\"",
        ),
        (vec!["--k", "0"], "--k must be at least 1"),
        (
            vec!["--forms", "int8,int4"],
            "--forms: unknown form \"int4\" (float32, int8, int8-calibrated, binary)",
        ),
    ] {
        let mut args = args;
        args.extend(["--work-dir", &work_dir]);
        assert_eval_refuses(&fixture, &args, message);
    }
}

/// `semflow eval --set SET ARGS` fails, saying `message`.
fn assert_eval_refuses(set: &Path, args: &[&str], message: &str) {
    let out = semflow_command()
        .args(["eval", "--set"])
        .arg(set)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(message),
        "{args:?}: {stderr}"
    );
}

/// `semflow merge A B --sweep …` (issue 36, item 4): every point is merged and evaluated
/// beside A and B themselves; t=0 is A's weights and t=1 B's, so their measures must equal
/// A's and B's exactly, and the best point named is the one with the highest first measure.
#[test]
fn merge_sweep_evaluates_every_point_and_names_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set);
    let (a, b) = (
        random_model(ModelKind::Embedding, Preset::Tiny, 3),
        random_model(ModelKind::Embedding, Preset::Tiny, 4),
    );
    let json = dir.path().join("sweep.json");
    let out = dir.path().join("merged");
    let stdout = stdout_of(
        semflow_command()
            .arg("merge")
            .args([&a, &b])
            .args(["--sweep", "0,0.5,1", "--eval-set"])
            .arg(&set)
            // The model's query prompt: random models rank noise, different per model.
            .args(["--measures", "ndcg@10,mrr@10", "--k", "10"])
            .arg("--model")
            .arg(format!("a={}", a.display()))
            .arg("--model")
            .arg(format!("b={}", b.display()))
            .arg("-o")
            .arg(&out)
            .arg("--json")
            .arg(&json),
    );
    let stdout = String::from_utf8_lossy(&stdout);
    println!("{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let configs = report["eval"]["configurations"].as_array().unwrap();
    let measures = |model: &str| -> Vec<f64> {
        let c = configs.iter().find(|c| c["model"] == model).unwrap();
        ["ndcg@10", "mrr@10"]
            .iter()
            .map(|m| c["measures"][m].as_f64().unwrap())
            .collect()
    };
    let names: Vec<&str> = configs
        .iter()
        .map(|c| c["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "t=0", "t=0.5", "t=1"],
        "the default model is not evaluated"
    );
    assert_eq!(measures("t=0"), measures("a"));
    assert_eq!(measures("t=1"), measures("b"));
    assert_ne!(
        measures("a"),
        measures("b"),
        "the two models must rank differently"
    );
    let best = ["t=0", "t=0.5", "t=1"]
        .into_iter()
        .fold(None, |best: Option<&str>, m| match best {
            Some(b) if measures(b)[0] >= measures(m)[0] => Some(b),
            _ => Some(m),
        })
        .unwrap();
    assert_eq!(report["best"], best);
    assert!(
        stdout.contains(&format!("best: {best} (ndcg@10 ")),
        "{stdout}"
    );
    for t in ["0", "0.5", "1"] {
        assert!(out.join(format!("t-{t}/config.json")).is_file());
    }
}

/// `--forms int8,int8-calibrated,binary` (issue 36, item 5): each quantized form searched on
/// its own and rescored by the float vectors, with its bytes per vector. The set's answer is
/// certain (as above): the relevant document's quantized vector equals the query's (the
/// calibrated one too: one calibration quantizes both sides), so int8 and every rescored search
/// find it first; plain Hamming search ties it with near-duplicates.
#[test]
fn eval_measures_quantized_forms() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set);
    let json = dir.path().join("report.json");
    stdout_of(
        semflow_command()
            .args(["eval", "--set"])
            .arg(&set)
            .args([
                "--k",
                "10",
                "--instruction",
                "",
                "--forms",
                "float32,int8,int8-calibrated,binary",
            ])
            .args(["--rescore", "4", "--measures", "recall@10,mrr@10"])
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .arg("--json")
            .arg(&json),
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows: Vec<(String, String, Option<u64>, u64, f64, f64)> = report["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["form"].as_str().unwrap().to_string(),
                c["search"].as_str().unwrap().to_string(),
                c["rescore"].as_u64(),
                c["bytes_per_vector"].as_u64().unwrap(),
                c["measures"]["recall@10"].as_f64().unwrap(),
                c["measures"]["mrr@10"].as_f64().unwrap(),
            )
        })
        .collect();
    let shape: Vec<(&str, &str, Option<u64>, u64)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2, r.3))
        .collect();
    assert_eq!(
        shape,
        [
            ("float32", "exact", None, 256),
            ("int8", "exact", None, 64),
            ("int8", "exact", Some(4), 64),
            ("int8-calibrated", "exact", None, 64),
            ("int8-calibrated", "exact", Some(4), 64),
            ("binary", "hamming", None, 8),
            ("binary", "hamming", Some(4), 8),
        ]
    );
    for r in &rows {
        let certain = !(r.1 == "hamming" && r.2.is_none());
        if certain {
            assert_eq!((r.4, r.5), (1.0, 1.0), "{r:?}");
        } else {
            assert!(r.4 >= 0.8, "{r:?}");
        }
    }
}

/// `semflow eval --index` (issue 36, item 3: "or use an existing index"): indexes built
/// elsewhere are searched as they are — not re-embedded — with the engine's model that made
/// their vectors, at their dimension, through their own vector index when they have one.
#[test]
fn eval_searches_existing_indexes_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set);
    let other = random_model(ModelKind::Embedding, Preset::Tiny, 8);
    let other_model = format!("other={}", other.display());
    let (a, b) = (dir.path().join("a.lance"), dir.path().join("b.lance"));
    // a: the default model at 32 dims, flat; b: the other model, with an IVF_PQ index.
    let build = |location: &Path, dims: &str, model: &str, index: &str| {
        format!(
            "CREATE EXTERNAL TABLE t (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
               STORED AS LANCE LOCATION '{}';
             INSERT INTO t SELECT doc_id, b, embed(b, NULL, {dims}, {model})
               FROM (SELECT doc_id, trim(concat_ws(' ', title, text)) AS b FROM beir('{}', 'corpus'));
             {index}",
            location.display(),
            set.display()
        )
    };
    for sql in [
        build(&a, "32", "NULL", ""),
        build(
            &b,
            "NULL",
            "'other'",
            "CREATE INDEX t_embedding ON t USING ivf_pq (embedding);",
        ),
    ] {
        stdout_of(
            semflow_command()
                .args(["sql", "--model", &other_model])
                .arg(sql),
        );
    }
    let json = dir.path().join("report.json");
    let stdout = stdout_of(
        semflow_command()
            .args(["eval", "--set"])
            .arg(&set)
            .arg("--index")
            .arg(format!("{},{}", a.display(), b.display()))
            .args(["--model", &other_model])
            .args(["--k", "10", "--instruction", "", "--rerank-top", "5"])
            .args(["--measures", "recall@10,mrr@10", "--json"])
            .arg(&json),
    );
    println!("{}", String::from_utf8_lossy(&stdout));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["documents"], DOCS);
    let rows: Vec<String> = report["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["embed_docs_per_s"].is_null(), "nothing is embedded: {c}");
            assert_eq!(c["documents"], DOCS);
            let recall = c["measures"]["recall@10"].as_f64().unwrap();
            match (c["search"].as_str().unwrap(), c["rerank_top"].as_u64()) {
                ("exact", _) => assert_eq!(recall, 1.0, "{c}"),
                ("index", _) => {
                    assert!(c["index_bytes"].as_u64().unwrap() > 0, "{c}");
                    assert!(recall >= 0.9, "{c}");
                }
                other => panic!("unexpected search {other:?}"),
            }
            format!(
                "{}/{}/{}/{}/{:?}",
                Path::new(c["index"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy(),
                c["model"].as_str().unwrap(),
                c["dims"],
                c["search"].as_str().unwrap(),
                c["rerank_top"].as_u64()
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "a.lance/default/32/exact/None",
            "a.lance/default/32/exact/Some(5)",
            "b.lance/other/64/index/None",
            "b.lance/other/64/index/Some(5)",
        ]
    );

    // b's model is not in an engine without --model other; options that need the corpus
    // embedded are refused.
    let b = b.display().to_string();
    for (args, message) in [
        (
            vec!["--index", b.as_str()],
            "which is not a model of this engine",
        ),
        (
            vec!["--index", b.as_str(), "--dims", "32"],
            "--dims does not apply to --index",
        ),
        (
            vec!["--index", b.as_str(), "--forms", "binary"],
            "--forms needs the corpus embedded by eval",
        ),
        (
            vec!["--index", b.as_str(), "--id-column", "doc"],
            "no column doc (it has id, body, embedding)",
        ),
    ] {
        assert_eval_refuses(&set, &args, message);
    }
}
