//! Index maintenance under a stream (issue 17, part 4): compaction and index updates whose
//! commits carry the stream positions forward, so `cleanup_old_versions` with any retention
//! keeps every partition's position — also one whose last stream commit is old — and rows not
//! yet indexed are still found by search.

use crate::common;

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Schema};
use semflow::index::fence::Fence;
use semflow::index::maintain::{cleanup, maintain, Policy};
use semflow::index::{Change, LanceTable, SourceOffsets};
use semflow::Engine;

const TOPIC: &str = "docs";

fn positions(entries: &[(i32, i64)]) -> SourceOffsets {
    common::offsets(TOPIC, entries)
}

fn wanted() -> Vec<(String, i32)> {
    (0..3).map(|p| (TOPIC.to_string(), p)).collect()
}

/// Rows `from..to` with their embeddings, computed by the engine.
async fn rows(engine: &Engine, from: i64, to: i64) -> Vec<arrow::record_batch::RecordBatch> {
    let sql = format!(
        "SELECT 'doc ' || v AS id, 'document ' || v || ' word' || v AS body, embed('document ' || v) AS embedding
         FROM generate_series({from}, {}) AS t(v)",
        to - 1
    );
    engine.run_sql(&sql).await.unwrap().remove(0).batches
}

async fn ids(engine: &Engine, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in engine.run_sql(sql).await.unwrap() {
        for b in r.batches {
            let column = b.column(0).as_string::<i32>();
            out.extend((0..b.num_rows()).map(|i| column.value(i).to_string()));
        }
    }
    out
}

/// An engine with table `idx` (id, body, embedding; primary key id) declared in `dir`, and
/// the same table opened for direct stream commits.
/// The columns of `idx` as `setup` declares it.
fn idx_schema() -> std::sync::Arc<Schema> {
    std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("body", DataType::Utf8, true),
        Field::new_list(
            "embedding",
            Field::new_list_field(DataType::Float32, true),
            true,
        ),
    ]))
}

async fn setup(dir: &std::path::Path) -> (Engine, LanceTable) {
    let location = dir.join("idx").to_string_lossy().into_owned();
    let engine = common::tiny_engine();
    engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
               STORED AS LANCE LOCATION '{location}'"
        ))
        .await
        .unwrap();
    let declared = idx_schema();
    let table = LanceTable::open(&location, Some(declared), Some("id".into()))
        .await
        .unwrap();
    (engine, table)
}

/// A vector and a full-text index on `idx`.
async fn create_indexes(engine: &Engine) {
    engine
        .run_sql(
            "CREATE INDEX ON idx USING ivf_flat (embedding) WITH (num_partitions = 2);
             CREATE INDEX ON idx USING inverted (body)",
        )
        .await
        .unwrap();
}

/// A stream commit moving one partition.
async fn commit(
    table: &LanceTable,
    engine: &Engine,
    rows_from: i64,
    partition: i32,
    from: Option<i64>,
    to: i64,
) {
    let before = match from {
        Some(f) => positions(&[(partition, f)]),
        None => SourceOffsets::default(),
    };
    let after = positions(&[(partition, to)]);
    table
        .apply(Change {
            rows: rows(engine, rows_from, rows_from + 10).await,
            deletes: Vec::new(),
            fence: Some(Fence::between(&before, &after)),
            offsets: Some(after),
            properties: Vec::new(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_survive_maintenance_and_cleanup_and_fresh_rows_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, table) = setup(dir.path()).await;

    // Partition 2 is committed once, first; partitions 0 and 1 alternate afterwards.
    commit(&table, &engine, 0, 2, None, 7).await;
    let mut next = [0i64, 0];
    for i in 0..30 {
        let p = i % 2;
        let from = (next[p] > 0).then_some(next[p]);
        next[p] += 5;
        commit(&table, &engine, 10 + 10 * i as i64, p as i32, from, next[p]).await;
    }
    create_indexes(&engine).await;
    // Rows the indexes do not cover yet.
    for i in 30..36 {
        let p = i % 2;
        let from = next[p];
        next[p] += 5;
        commit(
            &table,
            &engine,
            10 + 10 * i as i64,
            p as i32,
            Some(from),
            next[p],
        )
        .await;
    }
    let expected = positions(&[(0, next[0]), (1, next[1]), (2, 7)]);
    assert_eq!(table.offsets(&wanted()).await.unwrap(), expected);

    let nearest = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('document 365')) DESC LIMIT 1";
    let keyword = "SELECT id FROM full_text_search('idx', 'body', 'word365')";
    assert_eq!(ids(&engine, nearest).await, ["doc 365"], "an unindexed row");

    // The same history, cleaned up without maintenance, loses partition 2's position.
    let control = dir.path().join("control").to_string_lossy().into_owned();
    let copied = std::process::Command::new("cp")
        .args(["-r", &table.uri(), &control])
        .status()
        .unwrap();
    assert!(copied.success());
    let control = LanceTable::open(&control, None, None).await.unwrap();
    assert!(cleanup(&control, Duration::ZERO).await.unwrap() > 0);
    assert_eq!(
        control.offsets(&wanted()).await.unwrap().get(TOPIC, 2),
        None,
        "without maintenance cleanup removes the only commit with partition 2"
    );

    let report = maintain(&table, Policy::default()).await.unwrap();
    assert!(report.fragments_removed > 30, "{report:?}");
    assert_eq!((report.indexes, report.positions), (2, 3), "{report:?}");
    let removed = cleanup(&table, Duration::ZERO).await.unwrap();
    assert!(removed > 30, "{removed} versions removed");
    assert_eq!(table.offsets(&wanted()).await.unwrap(), expected);
    let ds = table.latest().await.unwrap().unwrap();
    assert_eq!(ds.count_rows(None).await.unwrap(), 370);
    // One fragment per commit before; Lance compacts indexed and unindexed rows apart.
    assert!(ds.get_fragments().len() <= 2, "{report:?}");
    println!("maintenance: {report:?}, then {removed} old versions removed");

    // Indexed now, found by both searches; a row committed after maintenance too.
    assert_eq!(ids(&engine, nearest).await, ["doc 365"]);
    assert_eq!(ids(&engine, keyword).await, ["doc 365"]);
    commit(&table, &engine, 370, 0, Some(next[0]), next[0] + 5).await;
    let fresh = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('document 375')) DESC LIMIT 1";
    assert_eq!(ids(&engine, fresh).await, ["doc 375"]);

    // Again, right away: the positions stay, and stream commits fenced against them go on.
    maintain(&table, Policy::default()).await.unwrap();
    cleanup(&table, Duration::ZERO).await.unwrap();
    let mut after = expected.clone();
    after.set(TOPIC, 0, next[0] + 5);
    assert_eq!(table.offsets(&wanted()).await.unwrap(), after);
    commit(&table, &engine, 380, 2, Some(7), 9).await;
}

/// Rows `from..to` as generation `generation` of their documents (an upsert of the same ids
/// changes every body).
async fn generation(
    engine: &Engine,
    from: i64,
    to: i64,
    generation: usize,
) -> Vec<arrow::record_batch::RecordBatch> {
    let sql = format!(
        "SELECT 'doc ' || v AS id, 'document ' || v || ' generation{generation}' AS body,
                embed('document ' || v) AS embedding
         FROM generate_series({from}, {}) AS t(v)",
        to - 1
    );
    engine.run_sql(&sql).await.unwrap().remove(0).batches
}

/// A round of maintenance runs beside the stream (issue 17, part 4): stream commits that
/// upsert rows in the very fragments being compacted go on landing while it runs — the loser
/// of each race retries — and afterwards every row holds its newest generation, the
/// checkpoint carries the newest positions, and search finds every document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_runs_beside_stream_commits_without_losing_any() {
    use semflow::index::maintain::{checkpoint, rewrite};

    let dir = tempfile::tempdir().unwrap();
    let (engine, table) = setup(dir.path()).await;
    // 40 small fragments of 10 documents each, indexed by vector and by text.
    let mut next = 0i64;
    let mut latest = std::collections::BTreeMap::new();
    let stream = |rows, next: &mut i64| {
        let before = if *next > 0 {
            positions(&[(0, *next)])
        } else {
            SourceOffsets::default()
        };
        *next += 10;
        let after = positions(&[(0, *next)]);
        Change {
            rows,
            deletes: Vec::new(),
            fence: Some(Fence::between(&before, &after)),
            offsets: Some(after),
            properties: Vec::new(),
        }
    };
    for f in 0..40 {
        let change = stream(generation(&engine, f * 10, f * 10 + 10, 0).await, &mut next);
        table.apply(change).await.unwrap();
        latest.extend((f * 10..f * 10 + 10).map(|v| (v, 0)));
    }
    create_indexes(&engine).await;

    // The rewrite in a task of its own; meanwhile each stream commit upserts ten documents
    // spread over the old fragments (ids 3, 43, 83, …: one per fragment it touches), their
    // rows embedded beforehand so that commits follow each other quickly.
    let mut upserts = Vec::new();
    for g in 1..=60usize {
        let ids: Vec<i64> = (0..10).map(|i| (g as i64 * 3 + i * 40) % 400).collect();
        let mut rows = Vec::new();
        for id in &ids {
            rows.extend(generation(&engine, *id, id + 1, g).await);
        }
        upserts.push((g, ids, rows));
    }
    let rewriting = {
        let table = table.clone();
        tokio::spawn(async move { rewrite(&table, Policy::default()).await })
    };
    let mut during = Vec::new();
    let mut g = 0;
    for (generation, ids, rows) in upserts {
        if rewriting.is_finished() {
            break;
        }
        g = generation;
        latest.extend(ids.iter().map(|id| (*id, g)));
        during.push(table.apply(stream(rows, &mut next)).await.unwrap().version);
    }
    let rewritten = rewriting.await.unwrap().unwrap();
    // The rewrite's own commits are the versions in its range the stream did not make.
    let (first, last) = rewritten.report.versions;
    let own: Vec<u64> = (first + 1..=last).filter(|v| !during.contains(v)).collect();
    assert!(
        during
            .iter()
            .any(|v| own.first().is_some_and(|o| o < v) && own.last().is_some_and(|o| o > v)),
        "no stream commit landed between the rewrite's commits {own:?}: {during:?}"
    );
    assert!(
        rewritten.report.fragments_removed >= 40,
        "{:?}",
        rewritten.report
    );
    checkpoint(&table, &rewritten).await.unwrap();
    println!(
        "maintenance beside the stream: {:?}; stream commits meanwhile at versions {during:?}",
        rewritten.report
    );

    // Every document at its newest generation, the positions where the stream left them.
    let mut found = std::collections::BTreeMap::new();
    for r in engine.run_sql("SELECT id, body FROM idx").await.unwrap() {
        for b in r.batches {
            let (id, body) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                found.insert(id.value(i).to_string(), body.value(i).to_string());
            }
        }
    }
    let expected: std::collections::BTreeMap<String, String> = latest
        .iter()
        .map(|(v, g)| (format!("doc {v}"), format!("document {v} generation{g}")))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(
        table.offsets(&[(TOPIC.to_string(), 0)]).await.unwrap(),
        positions(&[(0, next)])
    );
    let ds = table.latest().await.unwrap().unwrap();
    assert_eq!(ds.count_rows(None).await.unwrap(), 400);
    // The last generation's documents, written after the rewrite's index update began.
    let mut hits = ids(
        &engine,
        &format!("SELECT id FROM full_text_search('idx', 'body', 'generation{g}')"),
    )
    .await;
    hits.sort();
    let mut newest: Vec<String> = latest
        .iter()
        .filter(|(_, gen)| **gen == g)
        .map(|(v, _)| format!("doc {v}"))
        .collect();
    newest.sort();
    assert_eq!(hits, newest);
}

/// Segments of each of `table`'s indexes (the first build and the deltas added since).
async fn index_segments(table: &LanceTable) -> std::collections::BTreeMap<String, usize> {
    use lance::index::DatasetIndexExt;
    let ds = table.latest().await.unwrap().unwrap();
    let mut segments = std::collections::BTreeMap::new();
    for index in ds.load_indices().await.unwrap().iter() {
        *segments.entry(index.name.clone()).or_insert(0) += 1;
    }
    segments
}

/// Round after round under a stream, no index grows past the policy's 2 segments (a search
/// visits each; Lance's default appends a vector delta every round), and every round's fresh
/// rows are found by vector and by keyword search once indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_keep_each_index_to_a_few_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, table) = setup(dir.path()).await;
    commit(&table, &engine, 0, 0, None, 5).await;
    for i in 1..20i64 {
        commit(&table, &engine, 10 * i, 0, Some(5 * i), 5 * (i + 1)).await;
    }
    create_indexes(&engine).await;
    let mut most = 0;
    for round in 0..8i64 {
        let first = 200 + 10 * round;
        let at = 100 + 5 * round;
        commit(&table, &engine, first, 0, Some(at), at + 5).await;
        maintain(&table, Policy::default()).await.unwrap();
        let segments = index_segments(&table).await;
        assert_eq!(segments.len(), 2, "{segments:?}");
        most = most.max(*segments.values().max().unwrap());
        assert!(
            segments
                .values()
                .all(|s| *s <= Policy::default().index_segments),
            "round {round}: {segments:?}"
        );
        let doc = first + 7;
        let nearest = format!(
            "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('document {doc}')) DESC LIMIT 1"
        );
        let keyword = format!("SELECT id FROM full_text_search('idx', 'body', 'word{doc}')");
        assert_eq!(ids(&engine, &nearest).await, [format!("doc {doc}")]);
        assert_eq!(ids(&engine, &keyword).await, [format!("doc {doc}")]);
    }
    // A delta was appended (not every round merged into the first build), then merged into.
    assert_eq!(most, 2, "at most {most} segments");
    let ds = table.latest().await.unwrap().unwrap();
    assert_eq!(ds.count_rows(None).await.unwrap(), 280);
}

/// Fragments of `table` with deleted rows (which every indexed search masks).
async fn fragments_with_deletions(table: &LanceTable) -> usize {
    let ds = table.latest().await.unwrap().unwrap();
    let fragments = ds.get_fragments();
    fragments
        .iter()
        .filter(|f| f.metadata().deletion_file.is_some())
        .count()
}

/// `n` rows `first..first + n` with 4-dimensional stand-in vectors (no model): cheap enough
/// for one full-sized fragment.
fn plain_rows(first: usize, n: usize, body: &str) -> arrow::record_batch::RecordBatch {
    use arrow::array::{ListArray, StringArray};
    use arrow::datatypes::Float32Type;
    let schema = idx_schema();
    let ids = StringArray::from_iter_values((first..first + n).map(|v| format!("doc {v}")));
    let bodies = StringArray::from_iter_values((0..n).map(|_| body));
    let embedding = ListArray::from_iter_primitive::<Float32Type, _, _>(
        (first..first + n).map(|v| Some([Some(v as f32), Some(1.0), Some(0.0), Some(0.0)])),
    );
    arrow::record_batch::RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(ids),
            std::sync::Arc::new(bodies),
            std::sync::Arc::new(embedding),
        ],
    )
    .unwrap()
}

/// A full-sized fragment with 1% of its rows replaced keeps its deletions under the default
/// policy (it is not rewritten until 10% are deleted) and loses them at
/// `semflow.maintenance_deleted_fraction` 0 — with every row still there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_rewrite_deleted_rows_at_the_policys_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, table) = setup(dir.path()).await;
    let change = |rows| Change {
        rows: vec![rows],
        deletes: Vec::new(),
        fence: None,
        offsets: None,
        properties: Vec::new(),
    };
    table
        .apply(change(plain_rows(0, 70_000, "first")))
        .await
        .unwrap();
    table
        .apply(change(plain_rows(0, 700, "second")))
        .await
        .unwrap();
    assert_eq!(fragments_with_deletions(&table).await, 1);

    maintain(&table, Policy::default()).await.unwrap();
    assert_eq!(fragments_with_deletions(&table).await, 1, "below 10%: kept");
    let policy = Policy {
        deleted_fraction: 0.0,
        ..Policy::default()
    };
    let report = maintain(&table, policy).await.unwrap();
    assert_eq!(fragments_with_deletions(&table).await, 0, "{report:?}");
    let ds = table.latest().await.unwrap().unwrap();
    assert_eq!(ds.count_rows(None).await.unwrap(), 70_000);
    let second = ds.count_rows(Some("body = 'second'".into())).await.unwrap();
    assert_eq!(second, 700);
}

/// Manifests in a Lance dataset's `_versions` directory (one per committed version).
fn manifests(table: &LanceTable) -> usize {
    std::fs::read_dir(std::path::Path::new(&table.uri()).join("_versions"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A SIGKILL in the middle of a round — `semflow optimize` killed as soon as its first commit
/// (the compaction) lands, before its index update and checkpoint — loses nothing: the
/// positions are still those of the last stream commit, every row is there and found, and the
/// next round completes and carries the positions through a cleanup of every old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_killed_midway_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, table) = setup(dir.path()).await;
    commit(&table, &engine, 0, 0, None, 5).await;
    for i in 1..90i64 {
        if i == 30 {
            create_indexes(&engine).await;
        }
        commit(&table, &engine, 10 * i, 0, Some(5 * i), 5 * (i + 1)).await;
    }
    let expected = table.offsets(&wanted()).await.unwrap();
    assert_eq!(expected, positions(&[(0, 450)]));
    let before = manifests(&table);

    let mut round = common::semflow_command()
        .args(["optimize", &table.uri()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while manifests(&table) == before {
        let exited = round.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "optimize ended ({exited:?}) before any commit"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    round.kill().unwrap(); // SIGKILL
    let status = round.wait().unwrap();
    assert!(
        !status.success(),
        "the round finished before the kill: {status}"
    );

    assert_eq!(table.offsets(&wanted()).await.unwrap(), expected);
    let ds = table.latest().await.unwrap().unwrap();
    assert_eq!(ds.count_rows(None).await.unwrap(), 900);
    let nearest = "SELECT id FROM idx ORDER BY cosine_similarity(embedding, embed('document 895')) DESC LIMIT 1";
    assert_eq!(ids(&engine, nearest).await, ["doc 895"]);

    common::stdout_of(common::semflow_command().args([
        "optimize",
        &table.uri(),
        "--cleanup-older-than",
        "0",
    ]));
    assert_eq!(table.offsets(&wanted()).await.unwrap(), expected);
    assert!(
        manifests(&table) < before,
        "the cleanup removed old versions"
    );
    let keyword = "SELECT id FROM full_text_search('idx', 'body', 'word895')";
    assert_eq!(ids(&engine, keyword).await, ["doc 895"]);
    assert_eq!(ids(&engine, nearest).await, ["doc 895"]);
    // The stream goes on from the carried position.
    commit(&table, &engine, 900, 0, Some(450), 455).await;
}
