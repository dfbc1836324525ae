//! The Hugging Face download path as users hit it: the `semflow` binary against a hub on
//! 127.0.0.1 (`HF_ENDPOINT`, tests/common/hub.rs) serving fixture repositories. Single-file and
//! sharded checkpoints, the hub cache's shape, revision pins, a branch that moves between two
//! loads, a download cut midway and resumed, a gated repository, offline use, an unreachable
//! hub, and remote inference that fetches no weights.

use crate::common;

use common::floats;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::hub::{files_of, FakeHub};
use semflow::model::random::ModelKind;
use serde_json::Value;

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";
const TEXT: &str = "graphene conducts heat";

/// Runs `semflow sql` with `model` as the embedding model and the hub at `endpoint`.
async fn semflow(
    endpoint: &str,
    home: &Path,
    model: &str,
    sql: &str,
    extra: &[(&str, &str)],
) -> Output {
    let mut cmd = common::semflow_command();
    cmd.args(["sql", sql, "--format", "ndjson"])
        .env("SEMFLOW_EMBED_MODEL", model)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .envs(extra.iter().copied());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "semflow failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(line.lines().next().unwrap()).unwrap()
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure, got {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The vector `embed(TEXT)` gives with a local model directory.
async fn local_vector(dir: &Path) -> Vec<f64> {
    let home = tempfile::tempdir().unwrap();
    let sql = format!("SELECT embed('{TEXT}') AS v");
    floats(
        &ok(&semflow(
            "http://127.0.0.1:1",
            home.path(),
            &dir.to_string_lossy(),
            &sql,
            &[],
        )
        .await)["v"],
    )
}

fn model(seed: u64) -> PathBuf {
    common::tiny_model(ModelKind::Embedding, seed)
}

const SQL: &str = "SELECT embed_model() AS m, embed('graphene conducts heat') AS v";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_into_the_hub_cache_then_runs_offline() {
    let hub = FakeHub::start().await;
    hub.commit(
        "acme/embed",
        "main",
        C1,
        files_of(&model(common::EMBED_SEED)),
    );
    let home = tempfile::tempdir().unwrap();
    let out = ok(&semflow(&hub.url, home.path(), "acme/embed", SQL, &[]).await);
    assert_eq!(
        floats(&out["v"]),
        local_vector(&model(common::EMBED_SEED)).await
    );
    assert!(
        out["m"].as_str().unwrap().starts_with("acme/embed@"),
        "{out}"
    );

    // The standard cache shape: refs/main names the commit, snapshots/<commit>/ holds links
    // into blobs/.
    let repo = home.path().join("hub/models--acme--embed");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), C1);
    let weights = repo.join("snapshots").join(C1).join("model.safetensors");
    let link = std::fs::read_link(&weights).unwrap();
    assert!(link.to_string_lossy().contains("blobs"), "{link:?}");
    assert!(repo
        .join("snapshots")
        .join(C1)
        .join("1_Pooling/config.json")
        .exists());

    // Offline: the cache alone, with nothing listening at the endpoint.
    let requests = hub.log().len();
    let offline = [("HF_HUB_OFFLINE", "1")];
    let again = ok(&semflow(
        "http://127.0.0.1:1",
        home.path(),
        "acme/embed",
        SQL,
        &offline,
    )
    .await);
    assert_eq!(again, out);
    assert_eq!(hub.log().len(), requests);
    let err = failed(
        &semflow(
            "http://127.0.0.1:1",
            home.path(),
            "acme/other",
            SQL,
            &offline,
        )
        .await,
    );
    assert!(
        err.contains("acme/other") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_fine_tune_downloads_every_shard_and_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "embedding-st-sharded-bf16";
    let dir = common::layouts::build(name, tmp.path());
    let hub = FakeHub::start().await;
    hub.commit("acme/st", "main", C1, files_of(&dir));
    let home = tempfile::tempdir().unwrap();
    let sql = "SELECT embed('what is graphene', 'query') AS v";
    let out = ok(&semflow(&hub.url, home.path(), "acme/st", sql, &[]).await);
    let layout = &common::layouts::fixture()["layouts"][name];
    let want = floats(&layout["embeddings"][1]["vector"]);
    let err = max_abs(&floats(&out["v"]), &want);
    assert!(err <= 1e-4, "max abs {err:e}");
    let shards: Vec<String> = layout["safetensors_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shards.len(), 2);
    let log = hub.log();
    for shard in &shards {
        assert!(
            log.iter().any(|r| &r.file == shard),
            "{shard} never fetched"
        );
    }
    assert!(log.iter().all(|r| r.file != "model.safetensors"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_pins_and_a_branch_that_moves_between_loads() {
    let hub = FakeHub::start().await;
    hub.commit("acme/embed", "v1", C1, files_of(&model(common::EMBED_SEED)));
    hub.commit(
        "acme/embed",
        "main",
        C1,
        files_of(&model(common::EMBED_SEED)),
    );
    let home = tempfile::tempdir().unwrap();
    let first = local_vector(&model(common::EMBED_SEED)).await;
    let second = local_vector(&model(7)).await;
    let run = |spec: &'static str| {
        let url = hub.url.clone();
        let home = home.path().to_path_buf();
        async move { floats(&ok(&semflow(&url, &home, spec, SQL, &[]).await)["v"]) }
    };
    assert_eq!(run("acme/embed").await, first);
    // main moves to a new commit: the next load fetches it.
    hub.commit("acme/embed", "main", C2, files_of(&model(7)));
    assert_eq!(run("acme/embed").await, second);
    // Pins by tag and by commit keep the old model.
    assert_eq!(run("acme/embed@v1").await, first);
    let by_commit = format!("acme/embed@{C1}");
    let url = hub.url.clone();
    let out = ok(&semflow(&url, home.path(), &by_commit, SQL, &[]).await);
    assert_eq!(floats(&out["v"]), first);
    // The revision a request asked for is the commit the API resolved, never a moving name.
    assert!(hub
        .log()
        .iter()
        .filter(|r| r.file.ends_with(".safetensors"))
        .all(|r| r.revision == C1 || r.revision == C2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_where_it_stopped() {
    let hub = FakeHub::start().await;
    let files = files_of(&model(common::EMBED_SEED));
    let size = files["model.safetensors"].len();
    assert!(
        size > 25_000_000,
        "the fixture must span several 10 MB chunks ({size})"
    );
    hub.commit("acme/embed", "main", C1, files);
    let home = tempfile::tempdir().unwrap();
    // hf-hub fetches 10 MB chunks in parallel and records how far the file is contiguous; the
    // cut waits until the first chunk is recorded, so what resumes does not hang on which
    // chunk the client happened to finish first.
    let cache = home.path().to_path_buf();
    hub.cut_once(
        "model.safetensors",
        25_000_000,
        Arc::new(move || committed_part(&cache, size) >= 10_000_000),
    );
    let err = failed(&semflow(&hub.url, home.path(), "acme/embed", SQL, &[]).await);
    assert!(
        err.contains("acme/embed") && err.contains("model.safetensors"),
        "{err}"
    );
    let committed = committed_part(home.path(), size);
    assert!(
        committed >= 10_000_000,
        "committed before the cut: {committed}"
    );
    let before = hub.log().len();
    let out = ok(&semflow(&hub.url, home.path(), "acme/embed", SQL, &[]).await);
    assert_eq!(
        floats(&out["v"]),
        local_vector(&model(common::EMBED_SEED)).await
    );
    // The second run asked only for what the first had not committed.
    let starts: Vec<usize> = hub.log()[before..]
        .iter()
        .filter(|r| r.file == "model.safetensors")
        .filter_map(|r| r.range.as_deref())
        .filter(|r| *r != "bytes=0-0")
        .map(|r| {
            r["bytes=".len()..]
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!starts.is_empty());
    assert!(
        starts.iter().all(|&s| s >= committed as usize),
        "the resumed download asked again for committed bytes (< {committed}): {starts:?}"
    );
}

/// How many leading bytes of a `size`-byte download hf-hub has recorded as written: the
/// little-endian u64 it keeps after the data in its `.sync.part` file (0 while there is none).
fn committed_part(cache: &Path, size: usize) -> u64 {
    let mut stack = vec![cache.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".sync.part") {
                let mut tail = [0u8; 8];
                let read = std::fs::File::open(&path).and_then(|mut f| {
                    f.seek(SeekFrom::Start(size as u64))?;
                    f.read_exact(&mut tail)
                });
                if read.is_ok() {
                    return u64::from_le_bytes(tail);
                }
            }
        }
    }
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_repository_needs_hf_token() {
    let hub = FakeHub::start().await;
    hub.commit(
        "acme/gated",
        "main",
        C1,
        files_of(&model(common::EMBED_SEED)),
    );
    hub.gate("acme/gated", "hf_secret");
    let home = tempfile::tempdir().unwrap();
    let err = failed(&semflow(&hub.url, home.path(), "acme/gated", SQL, &[]).await);
    assert!(
        err.contains("HF_TOKEN") && err.contains("gated") && err.contains("acme/gated"),
        "{err}"
    );
    let token = [("HF_TOKEN", "hf_secret")];
    ok(&semflow(&hub.url, home.path(), "acme/gated", SQL, &token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_hub_names_the_model_the_endpoint_and_the_way_out() {
    let home = tempfile::tempdir().unwrap();
    let err = failed(&semflow("http://127.0.0.1:1", home.path(), "acme/embed", SQL, &[]).await);
    for part in [
        "acme/embed",
        "http://127.0.0.1:1",
        "--embed-model",
        "HF_HUB_OFFLINE",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_inference_fetches_config_and_tokenizer_only() {
    // The fleet: an in-process semflow serve over the local model.
    let addr = common::serve_http(common::tiny_engine()).await;
    let endpoint = format!("http://{addr}/v1");
    let hub = FakeHub::start().await;
    hub.commit(
        "acme/embed",
        "main",
        C1,
        files_of(&model(common::EMBED_SEED)),
    );
    let want = local_vector(&model(common::EMBED_SEED)).await;
    // Token mode: config and tokenizer from the hub, never weights.
    let home = tempfile::tempdir().unwrap();
    let extra = [("SEMFLOW_EMBED_ENDPOINTS", endpoint.as_str())];
    let out = ok(&semflow(&hub.url, home.path(), "acme/embed", SQL, &extra).await);
    let err = max_abs(&floats(&out["v"]), &want);
    assert!(err <= 1e-5, "tokens: max abs {err:e}");
    assert!(
        out["m"].as_str().unwrap().starts_with("acme/embed@cfg-"),
        "{out}"
    );
    let requests = hub.log().len();
    // Text mode: the servers tokenize, so nothing is fetched at all, even with no hub
    // reachable; the dimension comes from the endpoint's answer or the flag.
    let query_sql = "SELECT embed('what is graphene', 'query') AS q";
    let local_query = ok(&semflow(
        "http://127.0.0.1:1",
        home.path(),
        &model(common::EMBED_SEED).to_string_lossy(),
        query_sql,
        &[],
    )
    .await);
    for dims in [None, Some("64")] {
        let home = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut extra = vec![
            ("SEMFLOW_EMBED_ENDPOINTS", endpoint.as_str()),
            ("SEMFLOW_EMBED_ENDPOINT_INPUT", "text"),
            ("SEMFLOW_CACHE_DIR", cache.path().to_str().unwrap()),
        ];
        if let Some(d) = dims {
            extra.push(("SEMFLOW_EMBED_ENDPOINT_DIMS", d));
        }
        let sql = "SELECT embed_model() AS m, embed('graphene conducts heat') AS v, \
                   embed('what is graphene', 'query') AS q";
        let out = ok(&semflow("http://127.0.0.1:1", home.path(), "acme/embed", sql, &extra).await);
        let err = max_abs(&floats(&out["v"]), &want);
        assert!(err <= 1e-5, "text ({dims:?}): max abs {err:e}");
        assert!(
            out["m"].as_str().unwrap().starts_with("acme/embed@cfg-"),
            "{out}"
        );
        // The published 'query' prompt applies in text mode too.
        let err = max_abs(&floats(&out["q"]), &floats(&local_query["q"]));
        assert!(err <= 1e-5, "text query prompt: max abs {err:e}");
    }
    assert_eq!(hub.log().len(), requests, "text mode asked the hub");
    let fetched: Vec<String> = hub.log().into_iter().map(|r| r.file).collect();
    assert!(fetched.iter().any(|f| f == "tokenizer.json"), "{fetched:?}");
    assert!(
        fetched.iter().all(|f| !f.ends_with(".safetensors")),
        "weights were fetched: {fetched:?}"
    );
}
