//! `semflow synth` against a scripted OpenAI-compatible server (tests/common/fake_llm.rs):
//! injected faults and their retries, malformed replies by kind, the filter's arithmetic at
//! the threshold, resume after SIGKILL without duplicates, the plain-text fallback, the
//! `generate_query` SQL function, and `semflow merge`.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use common::fake_llm::{FakeLlm, Mode};
use semflow::model::random::ModelKind;
use serde_json::Value;

const KEY: &str = "sk-test-secret-4242";

fn command(config: &Path, docs: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = common::semflow_command();
    c.args(["synth", "--docs"])
        .arg(docs)
        .arg("--out")
        .arg(out)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("SEMFLOW_GENERATOR_API_KEY", KEY)
        .env_remove("SEMFLOW_GENERATOR_URL")
        .env("RUST_LOG", "info");
    c
}

async fn run(c: Command) -> Output {
    let mut c = c;
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "semflow synth failed:\n{err}");
    err
}

fn write_config(dir: &Path, url: &str, body: &str) -> PathBuf {
    let path = dir.join("synth.toml");
    let text = format!(
        "[generator]\nbase_url = \"{url}\"\nmodel = \"fake-llm\"\ntimeout_s = 1.0\nmax_attempts = 3\nbackoff_initial_ms = 10\nbackoff_max_ms = 50\nmax_concurrency = 4\n{body}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn write_docs(dir: &Path, docs: &[(String, String)]) -> PathBuf {
    let path = dir.join("docs.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Twelve clean documents with distinct first words (the fake's queries repeat them).
fn clean_docs() -> Vec<(String, String)> {
    let topics = [
        "Rust", "Kafka", "Lance", "Qwen", "Pasta", "Bread", "Tides", "Plants", "TCP", "Vaccines",
        "BM25", "Slerp",
    ];
    topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                format!("doc{i}"),
                format!(
                    "{t} topic number {i}: a document about {t} with a few more words to embed."
                ),
            )
        })
        .collect()
}

fn read_rows(path: &Path) -> Vec<RecordBatch> {
    semflow::synth::output::read_parquet(path).unwrap()
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(col).unwrap().as_string::<i32>().clone();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn scores(batches: &[RecordBatch]) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("score")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// pyarrow reads the file as a training set would; required where CI installed it.
fn check_with_pyarrow(path: &Path, negatives: usize) {
    let script = format!(
        "import pyarrow.parquet as pq\nt = pq.read_table({:?})\ncols = t.column_names\nassert cols[:2] == ['anchor', 'positive'], cols\nassert all(f'negative_{{i}}' in cols for i in range(1, {negatives} + 1)), cols\nd = t.to_pylist()\nassert all(r['anchor'] and r['positive'] for r in d)\nprint(t.num_rows)",
        path.to_str().unwrap()
    );
    let out = Command::new("python3").args(["-c", &script]).output();
    let required = std::env::var("SEMFLOW_TEST_PYARROW").as_deref() == Ok("required");
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) if !required && String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            eprintln!("pyarrow not installed: skipped the Python reader check");
        }
        Ok(o) => panic!(
            "pyarrow check failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if !required => eprintln!("python3 not found ({e}): skipped the pyarrow check"),
        Err(e) => panic!("python3: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_are_retried_malformed_replies_counted_and_resume_is_a_no_op() {
    let llm = FakeLlm::start(Mode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &llm.base_url(),
        "[recipe]\nchoose = \"sample\"\n[filter]\nthreshold = -1.0\n[negatives]\ncount = 2\n[run]\nchunk_docs = 5\n",
    );
    let mut docs: Vec<(String, String)> = clean_docs().into_iter().take(8).collect();
    for (id, fault) in [
        ("r429", "429 x2"),
        ("r500", "500 x1"),
        ("slow", "slow x1"),
        ("drop", "drop x1"),
        ("trunc", "truncated x1"),
        ("bad1", "badjson x1"),
        ("bad", "badjson x99"),
        ("cut", "cutjson x99"),
        ("missing", "missing x99"),
        ("empty", "empty x99"),
        ("copy", "copy x99"),
        ("long", "long x99"),
        ("dead", "500 x99"),
    ] {
        docs.push((
            id.to_string(),
            format!("[fault:{fault}] {id} document text with several words here."),
        ));
    }
    let docs_path = write_docs(dir.path(), &docs);
    let out = dir.path().join("pairs.parquet");
    let report_path = dir.path().join("report.json");
    let cmd = command(
        &config,
        &docs_path,
        &out,
        &["--report", report_path.to_str().unwrap()],
    );
    let stderr = ok(&run(cmd).await);
    assert!(!stderr.contains(KEY), "the API key leaked into the log");
    let seen = llm.seen();
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {KEY}"))));

    let r = report(&report_path);
    assert_eq!(r["documents"], 21);
    let failures: BTreeMap<String, u64> = serde_json::from_value(r["failures"].clone()).unwrap();
    let expected: BTreeMap<String, u64> = [
        ("copies_document", 1),
        ("empty_query", 1),
        ("http_500", 1),
        ("invalid_json", 2),
        ("missing_field", 1),
        ("too_long", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(failures, expected, "{r:#}");
    let malformed: BTreeMap<String, u64> =
        serde_json::from_value(r["malformed_replies"].clone()).unwrap();
    // Each always-malformed document is asked twice; bad1 once (its second reply is fine).
    assert_eq!(malformed["invalid_json"], 5, "{r:#}");
    assert_eq!(malformed["missing_field"], 2);
    assert_eq!(malformed["empty_query"], 2);
    assert_eq!(malformed["copies_document"], 2);
    assert_eq!(malformed["too_long"], 2);
    // 429 x2, 500, slow, drop, truncated: one retry each (two for 429); dead: 3 attempts.
    assert_eq!(r["retries"], 2 + 1 + 1 + 1 + 1 + 2, "{r:#}");
    assert_eq!(r["generated"], 14);
    assert_eq!(r["kept"], 14, "threshold -1 keeps every pair");
    assert_eq!(r["negatives"], 28);
    assert_eq!(r["kept_fraction"], 1.0);
    assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(r["completion_tokens"].as_u64().unwrap() > 0);

    // Retry-After: 1 was honoured between the 429s.
    let times: Vec<Instant> = seen
        .iter()
        .filter(|s| s.document.contains("r429 document"))
        .map(|s| s.at)
        .collect();
    assert_eq!(times.len(), 3);
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(950),
            "{:?}",
            w[1] - w[0]
        );
    }

    let rows = read_rows(&out);
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 14);
    let text_of: HashMap<String, String> = docs.iter().cloned().collect();
    let (doc_ids, positives) = (strings(&rows, "doc_id"), strings(&rows, "positive"));
    let (anchors, n1, n2) = (
        strings(&rows, "anchor"),
        strings(&rows, "negative_1"),
        strings(&rows, "negative_2"),
    );
    for i in 0..n {
        let id = doc_ids[i].clone().unwrap();
        assert_eq!(positives[i].as_deref(), Some(text_of[&id].as_str()));
        assert!(anchors[i].as_deref().unwrap().starts_with("about "));
        let (a, b) = (n1[i].clone().unwrap(), n2[i].clone().unwrap());
        assert!(a != text_of[&id] && b != text_of[&id] && a != b);
    }
    check_with_pyarrow(&out, 2);

    // The same command again: everything is done, nothing is asked, nothing duplicated.
    let before = llm.seen().len();
    let report2 = dir.path().join("report2.json");
    let cmd = command(
        &config,
        &docs_path,
        &out,
        &["--report", report2.to_str().unwrap()],
    );
    ok(&run(cmd).await);
    let r2 = report(&report2);
    // The failed documents are tried again (all still fail); finished ones are skipped.
    assert_eq!(r2["resumed"], 14, "{r2:#}");
    assert_eq!(r2["generated"], 0);
    assert_eq!(r2["output_rows"], 14);
    assert!(llm.seen()[before..]
        .iter()
        .all(|s| s.document.starts_with("[fault:")));
    let again: usize = read_rows(&out).iter().map(|b| b.num_rows()).sum();
    assert_eq!(again, 14);
}

fn next_down(x: f64) -> f64 {
    if x > 0.0 {
        f64::from_bits(x.to_bits() - 1)
    } else if x < 0.0 {
        f64::from_bits(x.to_bits() + 1)
    } else {
        -f64::from_bits(1)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pair_exactly_at_the_threshold_is_dropped_and_just_above_kept() {
    let llm = FakeLlm::start(Mode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = clean_docs();
    let docs_path = write_docs(dir.path(), &docs);
    let run_with = |threshold: f64, name: &str| {
        let config = write_config(
            dir.path(),
            &llm.base_url(),
            &format!("[recipe]\nchoose = \"sample\"\n[filter]\nthreshold = {threshold:?}\n[negatives]\ncount = 0\n"),
        );
        command(&config, &docs_path, &dir.path().join(name), &[])
    };
    ok(&run(run_with(-1.0, "all.parquet")).await);
    let all = read_rows(&dir.path().join("all.parquet"));
    let (ids, s) = (strings(&all, "doc_id"), scores(&all));
    assert_eq!(ids.len(), 12);
    // The score is what SQL's cosine_similarity(embed(query, instruction), embed(doc)) gives.
    let engine = common::tiny_engine();
    let instr = semflow::synth::config::RecipeConfig::default().instruction;
    let anchors = strings(&all, "anchor");
    let sql = format!(
        "SELECT cosine_similarity(embed('{}', '{instr}'), embed('{}'))",
        anchors[0].as_deref().unwrap().replace('\'', "''"),
        docs.iter()
            .find(|d| Some(&d.0) == ids[0].as_ref())
            .unwrap()
            .1
            .replace('\'', "''")
    );
    let res = engine.run_sql(&sql).await.unwrap();
    let sql_score = res[0].batches[0]
        .column(0)
        .as_primitive::<Float64Type>()
        .value(0);
    // Equal up to batching noise (the run embeds queries in batches, SQL one at a time).
    assert!((sql_score - s[0]).abs() < 1e-6, "{sql_score} vs {}", s[0]);

    // Pick a middle score as the threshold.
    let mut sorted = s.clone();
    sorted.sort_by(f64::total_cmp);
    let t = sorted[sorted.len() / 2];
    let at = ids[s.iter().position(|x| *x == t).unwrap()].clone();
    ok(&run(run_with(t, "at.parquet")).await);
    let kept_at = strings(&read_rows(&dir.path().join("at.parquet")), "doc_id");
    assert!(
        !kept_at.contains(&at),
        "a pair exactly at the threshold is dropped"
    );
    assert_eq!(kept_at.len(), s.iter().filter(|x| **x > t).count());
    ok(&run(run_with(next_down(t), "below.parquet")).await);
    let kept_below = strings(&read_rows(&dir.path().join("below.parquet")), "doc_id");
    assert!(kept_below.contains(&at), "just above the threshold is kept");
    assert_eq!(kept_below.len(), kept_at.len() + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_midway_then_resume_generates_nothing_twice() {
    let llm = FakeLlm::start(Mode {
        delay: Duration::from_millis(120),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &llm.base_url(),
        "[recipe]\nchoose = \"sample\"\n[filter]\nthreshold = -1.0\n[negatives]\ncount = 1\n[run]\nchunk_docs = 4\n",
    );
    let docs: Vec<(String, String)> = (0..48)
        .map(|i| {
            (
                format!("d{i}"),
                format!(
                    "Document {i} speaks of item {i} and topic {} in plain words.",
                    i * 7
                ),
            )
        })
        .collect();
    let docs_path = write_docs(dir.path(), &docs);
    let out = dir.path().join("pairs.jsonl");
    let state = dir.path().join("pairs.jsonl.parts");
    let mut c = command(&config, &docs_path, &out, &[]);
    c.stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let manifests = |state: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(state)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_str().unwrap();
                        n.starts_with("part-") && n.ends_with(".json")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while manifests(&state).len() < 3 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut done_before = HashSet::new();
    for m in manifests(&state) {
        let v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        for d in v["docs"].as_array().unwrap() {
            done_before.insert(d.as_str().unwrap().to_string());
        }
    }
    assert!(
        done_before.len() >= 12 && done_before.len() < 48,
        "{}",
        done_before.len()
    );
    assert!(
        !out.exists(),
        "the output appears only when the run completes"
    );
    let before = llm.seen().len();

    ok(&run(command(&config, &docs_path, &out, &[])).await);
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 48);
    let ids: HashSet<&str> = rows.iter().map(|r| r["doc_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 48, "every document once");
    let pairs: HashSet<&str> = rows
        .iter()
        .map(|r| r["pair_id"].as_str().unwrap())
        .collect();
    assert_eq!(pairs.len(), 48, "no duplicated pair");
    let text_of: HashMap<&str, &str> = docs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    for s in &llm.seen()[before..] {
        let id = text_of
            .iter()
            .find(|(_, t)| **t == s.document)
            .map(|(i, _)| *i)
            .unwrap();
        assert!(
            !done_before.contains(id),
            "{id} was generated again after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_without_structured_output_falls_back_to_text_and_llm_chooses() {
    let llm = FakeLlm::start(Mode {
        plain_text: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // The recipe's defaults (choose = "llm"); keep every pair for the check.
    let config = write_config(
        dir.path(),
        &llm.base_url(),
        "[filter]\nthreshold = -1.0\n[negatives]\ncount = 1\n",
    );
    let docs: Vec<(String, String)> = clean_docs().into_iter().take(4).collect();
    let docs_path = write_docs(dir.path(), &docs);
    let out = dir.path().join("pairs.parquet");
    let report_path = dir.path().join("r.json");
    ok(&run(command(
        &config,
        &docs_path,
        &out,
        &["--report", report_path.to_str().unwrap()],
    ))
    .await);
    let r = report(&report_path);
    assert_eq!(r["structured_output"], false);
    assert_eq!(r["kept"], 4, "{r:#}");
    let seen = llm.seen();
    // Requests already in flight when the first 400 came back ask for a schema too (at most
    // max_concurrency = 4); every later one is plain text.
    let structured = seen.iter().filter(|s| s.structured).count();
    assert!(
        seen[0].structured && (1..=4).contains(&structured),
        "{structured}"
    );
    let plain = |stage| {
        seen.iter()
            .filter(|s| !s.structured && s.stage == stage)
            .count()
    };
    assert_eq!(
        (plain("configure"), plain("query")),
        (4, 4),
        "both stages per document"
    );
    let rows = read_rows(&out);
    let personas = strings(&rows, "persona");
    let defaults = semflow::synth::config::RecipeConfig::default().personas;
    assert!(personas
        .iter()
        .all(|p| defaults.contains(p.as_ref().unwrap())));
    assert!(strings(&rows, "query_type")
        .iter()
        .all(|q| q.as_deref() == Some("factual")));
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_query_in_sql() {
    let llm = FakeLlm::start(Mode::default()).await;
    let engine = common::tiny_engine();
    let sql = format!(
        "SET semflow.generator_url = '{}';
         CREATE TABLE docs AS SELECT 'a' AS id, 'Rust is a language for systems work.' AS text
           UNION ALL SELECT 'b', '[fault:badjson x99] Bread needs flour and water.';
         SELECT id, g['query'] AS query, g['language'] AS language, g['error'] AS error
         FROM (SELECT id, text, generate_query(text, '{{\"language\": \"German\"}}') AS g FROM docs)
         ORDER BY id;",
        llm.base_url()
    );
    let res = engine.run_sql(&sql).await.unwrap();
    let b = &res.last().unwrap().batches;
    let col = |name: &str| strings(b, name);
    assert_eq!(
        col("query"),
        vec![Some("about Rust is a language for".to_string()), None]
    );
    assert_eq!(col("language")[0].as_deref(), Some("German"));
    assert_eq!(col("error"), vec![None, Some("invalid_json".to_string())]);

    // The synthesis filter written in SQL, generating once per document.
    let before = llm.seen().len();
    let res = engine
        .run_sql(
            "SELECT count(*) FROM (SELECT text, generate_query(text) AS g FROM docs)
             WHERE g['query'] IS NOT NULL
               AND cosine_similarity(embed(g['query'], 'Given a web search query, retrieve relevant passages that answer the query'), embed(text)) > -1",
        )
        .await
        .unwrap();
    let n = res[0].batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(n, 1);
    // a: configure + query; b: configure asked twice (malformed) and given up.
    assert_eq!(llm.seen().len() - before, 4);

    let err = engine
        .run_sql("SELECT generate_query('x', '{\"langauge\": \"de\"}')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("langauge"), "{err}");
}

#[test]
fn merge_slerps_checkpoints_that_still_load() {
    use safetensors::SafeTensors;
    use semflow::model::config::Preset;
    use semflow::model::random::{write_random_model, RandomModelSpec, WeightDtype};
    let dir = tempfile::tempdir().unwrap();
    let model = |seed| {
        let p = dir.path().join(format!("m{seed}"));
        write_random_model(
            &RandomModelSpec {
                kind: ModelKind::Embedding,
                preset: Preset::Tiny,
                seed,
                dtype: WeightDtype::F32,
            },
            &p,
        )
        .unwrap();
        p
    };
    let (a, b) = (model(1), model(2));
    let merge = |t: &str, out: &str| {
        let o = Command::new(common::semflow_bin())
            .args(["merge", "--t", t])
            .arg(&a)
            .arg(&b)
            .arg("-o")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dir.path().join(out)
    };
    let tensors = |p: &Path| -> BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(n, v)| {
                let f: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (n, f)
            })
            .collect()
    };
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(tensors(&merge("0", "t0")), ta, "t=0 gives A");
    assert_eq!(tensors(&merge("1", "t1")), tb, "t=1 gives B");
    let half = merge("0.5", "half");
    let tm = tensors(&half);
    let angle = |x: &[f32], y: &[f32]| {
        let (mut d, mut nx, mut ny) = (0.0f64, 0.0f64, 0.0f64);
        for (p, q) in x.iter().zip(y) {
            d += *p as f64 * *q as f64;
            nx += (*p as f64).powi(2);
            ny += (*q as f64).powi(2);
        }
        (d / (nx.sqrt() * ny.sqrt())).clamp(-1.0, 1.0).acos()
    };
    let norm = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let mut checked = 0;
    for (name, m) in &tm {
        let (x, y) = (&ta[name], &tb[name]);
        let theta = angle(x, y);
        if theta < 0.05 {
            // Nearly parallel (e.g. norm weights, all ones): linear by design.
            for i in 0..m.len() {
                assert!((m[i] - (x[i] + y[i]) / 2.0).abs() < 1e-6, "{name}");
            }
            continue;
        }
        // slerp(a, b, 1/2) = (a + b) sin(θ/2) / sin θ = (a + b) / (2 cos(θ/2)).
        let k = 1.0 / (2.0 * (theta / 2.0).cos());
        for i in 0..m.len() {
            let want = k * (x[i] as f64 + y[i] as f64);
            assert!((m[i] as f64 - want).abs() < 1e-6, "{name}[{i}]");
        }
        // Random weights are nearly orthogonal with nearly equal norms, so the result keeps
        // their norm (a linear average would shrink it by ~1/sqrt 2).
        let (na, nb, nm) = (norm(x), norm(y), norm(m));
        assert!(
            (nm - (na + nb) / 2.0).abs() / nm < 0.05,
            "{name}: {nm} vs {na}, {nb}"
        );
        checked += 1;
    }
    assert!(checked > 5, "{checked}");
    assert!(half.join("tokenizer.json").exists() && half.join("config.json").exists());

    // The merged model loads and embeds.
    let engine = semflow::Engine::new(semflow::InferenceConfig {
        embed_model: half.to_string_lossy().into_owned(),
        ..common::tiny_config()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt
        .block_on(engine.run_sql("SELECT embed('merged models still embed') AS v"))
        .unwrap();
    let list = res[0].batches[0].column(0).as_fixed_size_list().clone();
    let v = list.value(0);
    let v = v.as_primitive::<arrow::datatypes::Float32Type>().values();
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-5 && v.iter().all(|x| x.is_finite()));
}

/// README's synth command (the repo's sample documents and settings file) writing into
/// `dir`: the command, its output file and its report.
fn readme_job(dir: &Path) -> (Command, PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("pairs.parquet");
    let report_path = dir.join("report.json");
    let c = command(
        &root.join("pipelines/synth.toml"),
        &root.join("pipelines/synth/sample-docs.jsonl"),
        &out,
        &["--report", report_path.to_str().unwrap()],
    );
    (c, out, report_path)
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_job_over_the_sample_documents() {
    // The README's command: the repo's sample documents and settings file.
    let llm = FakeLlm::start(Mode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut c, out, report_path) = readme_job(dir.path());
    c.env("SEMFLOW_GENERATOR_URL", llm.base_url());
    let stderr = ok(&run(c).await);
    assert!(stderr.contains("kept"), "{stderr}");
    let r = report(&report_path);
    assert_eq!(r["documents"], 12);
    let n = |k: &str| r[k].as_u64().unwrap();
    assert_eq!(n("generated"), 12, "{r:#}");
    assert_eq!(
        n("kept") + n("below_threshold") + n("duplicate_queries") + n("dropped_incomplete"),
        n("generated")
    );
    assert!(n("kept") > 0, "{r:#}");
    let rows = read_rows(&out);
    assert_eq!(
        rows.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        n("kept")
    );
    assert!(scores(&rows).iter().all(|s| *s > 0.7));
    check_with_pyarrow(&out, 3);
}

/// README's synth job against README's self-hosted generator (`semflow serve --chat-model
/// random:tiny`), as a newcomer runs the two: every request answered the first time. Before
/// mistral.rs's prefix cache was turned off for the chat model, prompts sharing the recipe's
/// template made it overflow the 512-token KV cache of the tiny model (11 of 35 requests
/// failed and were retried, each failure logged with a backtrace).
#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_job_against_the_self_hosted_generator() {
    let mut server = common::spawn_serve(&["--chat-model", "random:tiny"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _, report_path) = readme_job(dir.path());
    c.env(
        "SEMFLOW_GENERATOR_URL",
        format!("http://{}/v1", server.http),
    )
    .env("SEMFLOW_GENERATOR_MODEL", "random:tiny");
    ok(&run(c).await);
    common::terminate_child(&mut server.child);
    let r = report(&report_path);
    assert_eq!(r["generated"], 12, "{r:#}");
    assert_eq!(r["retries"], 0, "{r:#}");
    assert_eq!(r["failures"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["malformed_replies"], serde_json::json!({}), "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_pipeline_turns_new_documents_into_pairs() {
    use common::kafka::{bootstrap, create_topic, produce, producer, unique};
    let llm = FakeLlm::start(Mode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("synth-docs");
    create_topic(&topic, 1).await;
    let pairs = dir.path().join("pairs.lance");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sql = std::fs::read_to_string(root.join("pipelines/synth-stream.sql"))
        .unwrap()
        .replace(
            "${SEMFLOW_GENERATOR_URL:-http://127.0.0.1:8000/v1}",
            &llm.base_url(),
        )
        .replace("${SEMFLOW_TOPIC:-docs}", &topic)
        .replace("${SEMFLOW_KAFKA:-127.0.0.1:9092}", &bootstrap())
        .replace("${SEMFLOW_GROUP:-semflow-synth}", &unique("g"))
        .replace(
            "${SEMFLOW_PAIRS:-data/pairs.lance}",
            pairs.to_str().unwrap(),
        )
        .replace("${SEMFLOW_SYNTH_THRESHOLD:-0.7}", "-1.0");
    let sql = semflow::text::substitute_env(&sql).unwrap();
    let docs = clean_docs();
    let mut records: Vec<(Option<String>, Option<String>)> = docs
        .iter()
        .take(5)
        .map(|(id, text)| {
            (
                Some(id.clone()),
                Some(serde_json::json!({"id": id, "text": text}).to_string()),
            )
        })
        .collect();
    records.push((
        Some("bad".into()),
        Some(
            serde_json::json!({"id": "bad", "text": "[fault:badjson x99] never parses"})
                .to_string(),
        ),
    ));
    produce(&producer(), &topic, &records).await;

    let engine = common::tiny_engine();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = seen.clone();
    let shutdown = async move {
        while s2.load(std::sync::atomic::Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let stats = tokio::time::timeout(
        Duration::from_secs(120),
        semflow::pipeline::run(&engine, &sql, shutdown, |s| {
            seen.store(s.records, std::sync::atomic::Ordering::SeqCst)
        }),
    )
    .await
    .expect("pipeline stalled")
    .unwrap();
    assert_eq!(stats.records, 6);
    assert_eq!(stats.rows_written, 5, "{stats:?}");

    let check = common::tiny_engine();
    let res = check
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE p STORED AS LANCE LOCATION '{}';
             SELECT id, anchor, positive, score FROM p ORDER BY id",
            pairs.display()
        ))
        .await
        .unwrap();
    let b = &res.last().unwrap().batches;
    let ids: Vec<_> = strings(b, "id").into_iter().flatten().collect();
    assert_eq!(ids, vec!["doc0", "doc1", "doc2", "doc3", "doc4"]);
    let text_of: HashMap<String, String> = docs.into_iter().collect();
    for (id, (a, p)) in ids
        .iter()
        .zip(strings(b, "anchor").into_iter().zip(strings(b, "positive")))
    {
        assert_eq!(p.as_deref(), Some(text_of[id].as_str()));
        assert!(a.unwrap().starts_with("about "));
    }
    // One generation per document: configure + query for the five, two asks for "bad".
    assert_eq!(llm.seen().len(), 5 * 2 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn lance_and_kafka_outputs() {
    use common::kafka::{bootstrap, create_topic, read_all, unique};
    let llm = FakeLlm::start(Mode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &llm.base_url(),
        "[recipe]\nchoose = \"sample\"\n[filter]\nthreshold = 0.99\n[negatives]\ncount = 1\n",
    );
    let docs: Vec<(String, String)> = clean_docs().into_iter().take(4).collect();
    let docs_path = write_docs(dir.path(), &docs);
    // The flag overrides the file's 0.99 (and takes a negative number).
    let keep_all = ["--threshold", "-1"];

    // Lance: upserts by pair_id, so even a run that lost its state writes no duplicate.
    let lance = dir.path().join("pairs.lance");
    ok(&run(command(&config, &docs_path, &lance, &keep_all)).await);
    std::fs::remove_dir_all(dir.path().join("pairs.lance.synth-state")).unwrap();
    ok(&run(command(&config, &docs_path, &lance, &keep_all)).await);
    let engine = common::tiny_engine();
    let res = engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE p STORED AS LANCE LOCATION '{}';
             SELECT doc_id, negative_1 FROM p ORDER BY doc_id",
            lance.display()
        ))
        .await
        .unwrap();
    let b = &res.last().unwrap().batches;
    let ids: Vec<_> = strings(b, "doc_id").into_iter().flatten().collect();
    assert_eq!(ids, vec!["doc0", "doc1", "doc2", "doc3"]);
    assert!(strings(b, "negative_1").iter().all(Option::is_some));

    // Kafka: JSON rows keyed by pair_id.
    let topic = unique("pairs");
    create_topic(&topic, 1).await;
    let out = format!("kafka://{}/{topic}", bootstrap());
    // A topic has no file beside it: keep the run's state in the temp dir, not the cwd.
    let state = dir.path().join("kafka-state");
    let mut kafka_args = keep_all.to_vec();
    kafka_args.extend(["--state-dir", state.to_str().unwrap()]);
    ok(&run(command(&config, &docs_path, Path::new(&out), &kafka_args)).await);
    assert!(state.is_dir(), "the state dir was not used");
    let got = read_all(&topic, 1);
    assert_eq!(got.len(), 4);
    for r in &got {
        let v: Value = serde_json::from_str(r.1.as_deref().unwrap()).unwrap();
        assert_eq!(r.0.as_deref(), v["pair_id"].as_str());
        assert!(v["anchor"].as_str().unwrap().starts_with("about "));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_queries_and_reranker_false_negatives() {
    let llm = FakeLlm::start(Mode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // The fake writes "about <first five words>": d0 and d1 get the same query.
    let mut docs = clean_docs().into_iter().take(6).collect::<Vec<_>>();
    docs.push((
        "twin".into(),
        format!(
            "{} but a different ending.",
            docs[0]
                .1
                .split_whitespace()
                .take(5)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ));
    let docs_path = write_docs(dir.path(), &docs);
    let run_with = |rerank: f64, name: &str| {
        let config = write_config(
            dir.path(),
            &llm.base_url(),
            &format!("[recipe]\nchoose = \"sample\"\n[filter]\nthreshold = -1.0\n[negatives]\ncount = 2\nrerank_threshold = {rerank:?}\n"),
        );
        let report = dir.path().join(format!("{name}.json"));
        let cmd = command(
            &config,
            &docs_path,
            &dir.path().join(format!("{name}.parquet")),
            &["--report", report.to_str().unwrap()],
        );
        (cmd, report)
    };
    // P(yes) is in [0, 1]: a limit of 1.0 drops nothing …
    let (cmd, r) = run_with(1.0, "keep");
    ok(&run(cmd).await);
    let r = report(&r);
    assert_eq!(r["generated"], 7);
    assert_eq!(r["duplicate_queries"], 1, "{r:#}");
    assert_eq!(r["kept"], 6);
    assert_eq!(r["false_negatives_dropped"], 0);
    // … and a limit of -1 drops every candidate as a likely false negative.
    let (cmd, r) = run_with(-1.0, "drop");
    ok(&run(cmd).await);
    let r = report(&r);
    assert_eq!(r["kept"], 0, "{r:#}");
    assert_eq!(r["dropped_incomplete"], 6);
    assert!(r["false_negatives_dropped"].as_u64().unwrap() >= 12);
}
