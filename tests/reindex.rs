//! Re-embedding an index on a model change (`semflow reindex`): the new dataset gets the new
//! model's vectors and the old one's stream positions, an alias switches readers over at
//! once, vectors of different models are never compared or mixed, and an interrupted run
//! resumes where its last commit ended.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use common::{random_model, tiny_config};
use semflow::index::{alias, Change, LanceTable};
use semflow::model::config::Preset;
use semflow::model::random::ModelKind;
use semflow::reindex::{reindex, ReindexOptions};
use semflow::{Engine, InferenceConfig, NamedModel};

/// The second embedding model: another shape (256 dimensions), so a mix-up cannot pass.
fn new_model() -> String {
    random_model(ModelKind::Embedding, Preset::Small, 7)
        .to_string_lossy()
        .into_owned()
}

/// `rows` documents with the default (tiny) model's vectors, as the rows of one SQL result.
async fn documents(engine: &Engine, rows: usize) -> Vec<arrow::record_batch::RecordBatch> {
    let sql = format!(
        "SELECT 'd' || CAST(value AS TEXT) AS id,
                'document ' || CAST(value AS TEXT) || ' on ' || CASE value % 3 WHEN 0 THEN 'pasta' WHEN 1 THEN 'kafka' ELSE 'rust' END AS body,
                embed('document ' || CAST(value AS TEXT) || ' on ' || CASE value % 3 WHEN 0 THEN 'pasta' WHEN 1 THEN 'kafka' ELSE 'rust' END) AS embedding
         FROM generate_series(1, {rows})"
    );
    engine.run_sql(&sql).await.unwrap().pop().unwrap().batches
}

/// A Lance index at `path` holding `rows` documents of the default model, written in one
/// commit at stream position `offsets`.
async fn old_index(
    engine: &Engine,
    path: &Path,
    rows: usize,
    primary_key: Option<&str>,
    offsets: Option<semflow::index::SourceOffsets>,
) {
    let table = LanceTable::open(
        path.to_str().unwrap(),
        Some(documents(engine, 1).await[0].schema()),
        primary_key.map(String::from),
    )
    .await
    .unwrap();
    table
        .apply(Change {
            rows: documents(engine, rows).await,
            offsets,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn ids(engine: &Engine, sql: &str) -> Vec<String> {
    let result = engine.run_sql(sql).await.unwrap().pop().unwrap();
    let mut out = Vec::new();
    for batch in &result.batches {
        let column =
            arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        out.extend(
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string()),
        );
    }
    out
}

async fn error(engine: &Engine, sql: &str) -> String {
    engine.run_sql(sql).await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_model_rebuilds_the_index_and_readers_switch_through_the_alias() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("idx-v1.lance");
    let new = dir.path().join("idx-v2.lance");
    let alias_path = dir.path().join("idx.alias");

    // The old index, written by a stream at positions t/0 = 120.
    let writer = Engine::new(tiny_config());
    let positions = common::offsets("t", &[(0, 120)]);
    old_index(&writer, &old, 300, Some("id"), Some(positions)).await;
    alias::point(&alias_path, "idx-v1.lance").unwrap();

    // A server holding both models reads through the alias.
    let server = Engine::new(InferenceConfig {
        models: vec![
            NamedModel {
                name: "v2".into(),
                spec: new_model(),
            },
            // The new model's shape with other weights.
            NamedModel {
                name: "twin".into(),
                spec: random_model(ModelKind::Embedding, Preset::Small, 8)
                    .to_string_lossy()
                    .into_owned(),
            },
        ],
        ..tiny_config()
    });
    server
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{}'",
            alias_path.display()
        ))
        .await
        .unwrap();
    let old_search = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('pasta', 'q')) DESC LIMIT 3";
    let new_search = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('pasta', 'q', NULL, 'v2')) DESC LIMIT 3";
    assert_eq!(ids(&server, old_search).await.len(), 3);
    let e = error(&server, new_search).await;
    assert!(e.contains("different models"), "{e}");

    // The rebuild, with the new model as the engine's embedding model.
    let rebuilder = Engine::new(InferenceConfig {
        embed_model: new_model(),
        ..tiny_config()
    });
    let options = ReindexOptions {
        from: alias_path.to_string_lossy().into_owned(),
        to: new.to_string_lossy().into_owned(),
        text_column: "body".into(),
        vector_column: "embedding".into(),
        model_column: None,
        instruction: None,
        dims: None,
        batch_rows: 64,
        swap: true,
    };
    let report = reindex(rebuilder.inference(), &options).await.unwrap();
    assert_eq!((report.rows, report.resumed_at), (300, 0));
    assert!(report.swapped);

    // The same session now searches the new index: with the new model only.
    assert_eq!(ids(&server, new_search).await.len(), 3);
    let e = error(&server, old_search).await;
    assert!(e.contains("different models"), "{e}");
    // Writers embedding with another model are refused, naming both models: of another shape
    // while planning, of the same shape at the commit.
    let e = error(
        &server,
        "INSERT INTO idx SELECT 'x' AS id, 'late' AS body, embed('late') AS embedding",
    )
    .await;
    assert!(
        e.contains("column embedding: the index holds vectors of") && e.contains("tiny-f32-42"),
        "{e}"
    );
    let e = error(
        &server,
        "INSERT INTO idx SELECT 'x' AS id, 'late' AS body, embed('late', NULL, NULL, 'twin') AS embedding",
    )
    .await;
    assert!(
        e.contains("column embedding: the index holds vectors of") && e.contains("Small-f32-8"),
        "{e}"
    );
    assert_eq!(
        ids(&server, "SELECT count(*) FROM idx").await,
        ["300"],
        "the refused INSERT wrote nothing"
    );

    // Every row's vector is the new model's embedding of its text; the ids are the old ones.
    let same = ids(
        &server,
        "SELECT count(*) FROM idx WHERE cosine_similarity(embedding, embed(body, NULL, NULL, 'v2')) > 0.9999",
    )
    .await;
    assert_eq!(same, ["300"]);
    let mut all = ids(&server, "SELECT id FROM idx").await;
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 300);

    // A pipeline pointed at the new index resumes from the old one's stream positions.
    let rebuilt = LanceTable::open(new.to_str().unwrap(), None, None)
        .await
        .unwrap();
    let positions = rebuilt.offsets(&[("t".into(), 0)]).await.unwrap();
    assert_eq!(positions.get("t", 0), Some(120));
    assert_eq!(rebuilt.primary_key(), Some("id"));

    // Running it again finds the work done and changes nothing.
    let again = reindex(rebuilder.inference(), &options).await.unwrap();
    assert_eq!((again.rows, again.resumed_at), (300, 300));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_options_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(tiny_config());
    let old = dir.path().join("idx-v1.lance");
    old_index(&engine, &old, 3, None, None).await;
    let options = |to: &str, text: &str, swap: bool| ReindexOptions {
        from: old.to_string_lossy().into_owned(),
        to: dir.path().join(to).to_string_lossy().into_owned(),
        text_column: text.into(),
        vector_column: "embedding".into(),
        model_column: None,
        instruction: None,
        dims: None,
        batch_rows: 10,
        swap,
    };
    let failing = |o: ReindexOptions| {
        let engine = engine.clone();
        async move {
            reindex(engine.inference(), &o)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let e = failing(options("new.lance", "title", false)).await;
    assert!(
        e.contains("--text-column title") && e.contains("id, body, embedding"),
        "{e}"
    );
    let e = failing(options("new.lance", "body", true)).await;
    assert!(e.contains("--swap") && e.contains("not an alias"), "{e}");
    let e = failing(options("idx-v1.lance", "body", false)).await;
    assert!(e.contains("no reindex wrote it"), "{e}");
}

/// Rows of the dataset at `path` per id, and its version.
async fn contents(path: &Path) -> (std::collections::BTreeMap<String, usize>, u64) {
    let table = LanceTable::open(path.to_str().unwrap(), None, None)
        .await
        .unwrap();
    let engine = Engine::new(tiny_config());
    engine
        .context()
        .register_table("t", std::sync::Arc::new(table.clone()))
        .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for id in ids(&engine, "SELECT id FROM t").await {
        *counts.entry(id).or_default() += 1;
    }
    let version = table
        .latest()
        .await
        .unwrap()
        .map_or(0, |d| d.version().version);
    (counts, version)
}

/// A reindex SIGKILLed midway resumes at the row after its last commit: the table has no
/// primary key, so a row written twice would show.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_reindex_resumes_where_its_last_commit_ended() {
    const ROWS: usize = 4000;
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("idx-v1.lance");
    let new = dir.path().join("idx-v2.lance");
    old_index(&Engine::new(tiny_config()), &old, ROWS, None, None).await;
    let run = || {
        common::semflow_command()
            .args(["reindex", "--from", old.to_str().unwrap(), "--to"])
            .arg(&new)
            .args(["--batch-rows", "50", "--embed-model", &new_model()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let written = semflow::index::LanceTable::open(new.to_str().unwrap(), None, None)
            .await
            .ok()
            .map(|t| t.uri());
        if written.is_some() && contents(&new).await.1 >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no commit from the first run");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (partial, _) = contents(&new).await;
    let written: usize = partial.values().sum();
    assert!(
        written > 0 && written < ROWS,
        "{written} rows before the kill"
    );

    let out = run().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("reindexed {ROWS} rows")),
        "{stdout}"
    );
    assert!(stdout.contains("(resumed at row "), "{stdout}");
    let (counts, _) = contents(&new).await;
    assert_eq!(counts.len(), ROWS, "every row once");
    assert!(counts.values().all(|n| *n == 1), "a row written twice");
}

/// A pipeline writing through the alias: after the rebuild and the switch, a worker still
/// embedding with the old model stops with an error naming both models, and one started with
/// the new model resumes from the positions the rebuild recorded and catches up: the new
/// index equals the topic's final state, every vector and fingerprint the new model's.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_follows_the_alias_and_catches_up_with_the_new_model() {
    use common::kafka::{produce, producer};
    use common::pipeline::*;
    let _heavy = common::one_heavy_test_at_a_time().await;
    let mut s = setup("reindex", 1).await;
    let alias_path = s.dir.path().join("idx.alias");
    alias::point(&alias_path, "idx").unwrap();
    let text = std::fs::read_to_string(&s.pipeline).unwrap();
    std::fs::write(
        &s.pipeline,
        text.replace(
            &format!("'{}'", s.location),
            &format!("'{}'", alias_path.display()),
        ),
    )
    .unwrap();
    let log = s.dir.path().join("run.log");
    let p = producer();
    let first: Records = (0..40)
        .map(|i| upsert(&format!("d{i}"), &format!("first body {i}")))
        .collect();
    let ends = produce(&p, &s.topic, &first).await;
    let mut worker = start(&s.pipeline, &log);
    wait_caught_up(
        &s,
        &[ends.last().unwrap().1 + 1],
        &mut [(&mut worker, &log)],
    )
    .await;
    terminate(&mut worker, &log);

    let rebuilder = Engine::new(InferenceConfig {
        embed_model: new_model(),
        ..tiny_config()
    });
    let new = s.dir.path().join("idx-v2.lance");
    let report = reindex(
        rebuilder.inference(),
        &ReindexOptions {
            from: alias_path.to_string_lossy().into_owned(),
            to: new.to_string_lossy().into_owned(),
            text_column: "body".into(),
            vector_column: "embedding".into(),
            model_column: Some("model".into()),
            instruction: None,
            dims: None,
            batch_rows: 16,
            swap: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 40);

    // More changes arrive after the rebuild pinned its version.
    let later: Records = (30..50)
        .map(|i| upsert(&format!("d{i}"), &format!("second body {i}")))
        .collect();
    let ends = produce(&p, &s.topic, &later).await;
    let expected: std::collections::BTreeMap<String, String> = (0..50)
        .map(|i| {
            let round = if i < 30 { "first" } else { "second" };
            (format!("d{i}"), format!("{round} body {i}"))
        })
        .collect();

    let stale_log = s.dir.path().join("stale.log");
    let mut stale = start(&s.pipeline, &stale_log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = stale.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{}", log_text(&stale_log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stale_text = log_text(&stale_log);
    assert!(!status.success(), "{stale_text}");
    assert!(
        stale_text.contains("the index holds vectors of") && stale_text.contains("Small-f32-7"),
        "{stale_text}"
    );

    s.location = new.to_string_lossy().into_owned();
    let mut worker = start_with(
        &s.pipeline,
        &log,
        &[("SEMFLOW_EMBED_MODEL", new_model().as_str())],
    );
    wait_caught_up(
        &s,
        &[ends.last().unwrap().1 + 1],
        &mut [(&mut worker, &log)],
    )
    .await;
    terminate(&mut worker, &log);
    assert_index_equals_dims(&s.location, &expected, 256).await;
    let checker = Engine::new(InferenceConfig {
        models: vec![NamedModel {
            name: "v2".into(),
            spec: new_model(),
        }],
        ..tiny_config()
    });
    let fingerprints = ids(
        &checker,
        &format!(
            "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{}';
             SELECT count(*) FROM idx WHERE model = embed_model('v2')
               AND cosine_similarity(embedding, embed(body, NULL, NULL, 'v2')) > 0.9999",
            alias_path.display()
        ),
    )
    .await;
    assert_eq!(fingerprints, ["50"]);
}

/// `POST /v1/sql` on a running server: (status, body).
async fn http_sql(base: &str, sql: &str) -> (u16, serde_json::Value) {
    let url = format!("{base}/v1/sql");
    let body = serde_json::json!({ "sql": sql });
    tokio::task::spawn_blocking(move || match ureq::post(&url).send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    })
    .await
    .unwrap()
}

/// A running `semflow serve` process follows the alias: after `semflow alias` points it at
/// the rebuilt index, the same process answers searches with the new model and refuses the
/// old model's.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_server_switches_with_the_alias() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("idx-v1.lance");
    let alias_path = dir.path().join("idx.alias");
    old_index(&Engine::new(tiny_config()), &old, 50, Some("id"), None).await;
    alias::point(&alias_path, "idx-v1.lance").unwrap();
    let rebuilder = Engine::new(InferenceConfig {
        embed_model: new_model(),
        ..tiny_config()
    });
    let options = ReindexOptions {
        from: alias_path.to_string_lossy().into_owned(),
        to: dir
            .path()
            .join("idx-v2.lance")
            .to_string_lossy()
            .into_owned(),
        text_column: "body".into(),
        vector_column: "embedding".into(),
        model_column: None,
        instruction: None,
        dims: None,
        batch_rows: 16,
        swap: false,
    };
    reindex(rebuilder.inference(), &options).await.unwrap();

    let init = dir.path().join("init.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '{}';",
            alias_path.display()
        ),
    )
    .unwrap();
    let v2 = format!("v2={}", new_model());
    let mut server = common::spawn_serve(&["--init", init.to_str().unwrap(), "--model", &v2]).await;
    let base = format!("http://{}", server.http);
    let old_search = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('pasta', 'q')) DESC LIMIT 3";
    let new_search = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('pasta', 'q', NULL, 'v2')) DESC LIMIT 3";
    let (status, body) = http_sql(&base, old_search).await;
    assert_eq!(
        (status, body["row_count"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    let (status, body) = http_sql(&base, new_search).await;
    assert!(
        status == 400 && body.to_string().contains("different models"),
        "{body}"
    );

    let out = common::semflow_command()
        .args(["alias", alias_path.to_str().unwrap(), "idx-v2.lance"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = http_sql(&base, new_search).await;
    assert_eq!(
        (status, body["row_count"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    let (status, body) = http_sql(&base, old_search).await;
    assert!(
        status == 400 && body.to_string().contains("different models"),
        "{body}"
    );
    common::terminate_child(&mut server.child);
}
