//! Zombie-writer fencing: a stream commit lands only if the index still stands where its
//! batch began.
//! - On the index alone: a writer whose partition moved on is refused, both when it builds on
//!   the newest version and when another writer commits between its read and its commit
//!   (where Lance would otherwise rebase the stale append over the newer one).
//! - Against a real broker: two workers in one group; one is SIGSTOPped past its session
//!   timeout, the other takes its partitions over and commits further, the first is resumed.
//!   Its stale batch is refused, it rejoins, the index ends equal to the topic's final state,
//!   and no commit in the version history moves any partition's position backwards.

use crate::common;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::kafka::end_offsets;
use common::pipeline::*;
use semflow::error::Error;
use semflow::index::fence::Fence;
use semflow::index::{Change, LanceTable, SourceOffsets};

fn offsets(entries: &[(i32, i64)]) -> SourceOffsets {
    common::offsets("t", entries)
}

fn rows(ids: &[&str]) -> Vec<RecordBatch> {
    let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
    vec![RecordBatch::try_from_iter(vec![("id", ids.clone()), ("body", ids)]).unwrap()]
}

/// A change moving partition positions from `from` to `to`, fenced at `from`.
fn change(ids: &[&str], from: &[(i32, i64)], to: &[(i32, i64)]) -> Change {
    Change {
        rows: rows(ids),
        deletes: Vec::new(),
        offsets: Some(offsets(to)),
        properties: Vec::new(),
        fence: Some(Fence::between(&offsets(from), &offsets(to))),
    }
}

/// Commits `change` on top of `read`, a version that may no longer be the newest (what a
/// writer racing another sees), without `LanceTable::apply`'s check on the newest version.
async fn commit_on(
    read: &Arc<lance::Dataset>,
    change: Change,
) -> semflow::Result<(lance::Dataset, semflow::index::CommitStats)> {
    semflow::index::write::commit(
        read.clone(),
        Some("id"),
        None,
        change.rows,
        &change.deletes,
        &semflow::index::write::commit_properties(change.offsets.as_ref(), change.properties),
        change.fence.as_ref(),
    )
    .await
}

async fn table(dir: &tempfile::TempDir) -> LanceTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("body", DataType::Utf8, true),
    ]));
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    LanceTable::open(&location, Some(schema), Some("id".into()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_commit_from_a_moved_position_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let idx = table(&dir).await;
    // Worker A commits partition 0 up to 10; then B takes it over and commits up to 20.
    idx.apply(change(&["a1"], &[], &[(0, 10)])).await.unwrap();
    idx.apply(change(&["b1"], &[(0, 10)], &[(0, 20)]))
        .await
        .unwrap();
    let version = idx.latest().await.unwrap().unwrap().version().version;

    // A wakes up with a batch read from 10.
    let refused = idx
        .apply(change(&["a-stale"], &[(0, 10)], &[(0, 15)]))
        .await
        .unwrap_err();
    match refused {
        Error::Fenced {
            partition,
            expected,
            found,
            ..
        } => assert_eq!((partition, expected, found), (0, Some(10), Some(20))),
        other => panic!("expected a fenced commit, got {other}"),
    }
    // A fresh worker without a position for partition 0 is refused as well.
    assert!(matches!(
        idx.apply(change(&["c"], &[], &[(0, 5)])).await,
        Err(Error::Fenced {
            found: Some(20),
            ..
        })
    ));
    let ds = idx.latest().await.unwrap().unwrap();
    assert_eq!(ds.version().version, version, "a refused batch committed");
    assert_eq!(ds.count_rows(None).await.unwrap(), 2);
    // B goes on; a batch over another partition is not held up by partition 0's history.
    idx.apply(change(&["b2"], &[(0, 20)], &[(0, 30)]))
        .await
        .unwrap();
    idx.apply(change(&["d"], &[], &[(1, 3)])).await.unwrap();
    assert_eq!(
        idx.offsets(&[("t".into(), 0), ("t".into(), 1)])
            .await
            .unwrap(),
        offsets(&[(0, 30), (1, 3)])
    );
}

/// The race the check on the newest version alone would miss: B commits after A built its
/// change. Unfenced, Lance rebases A's append over B's and moves partition 0 back; fenced,
/// the commit handler refuses it.
#[tokio::test]
async fn a_commit_racing_a_newer_one_is_refused_inside_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let idx = table(&dir).await;
    idx.apply(change(&["a1"], &[], &[(0, 10)])).await.unwrap();
    let read_by_a = idx.latest().await.unwrap().unwrap();
    idx.apply(change(&["b1"], &[(0, 10)], &[(0, 20)]))
        .await
        .unwrap();
    let b_version = idx.latest().await.unwrap().unwrap().version().version;

    let stale = change(&["a-stale"], &[(0, 10)], &[(0, 15)]);
    match commit_on(&read_by_a, stale).await {
        Err(Error::Fenced { found, version, .. }) => {
            assert_eq!((found, version), (Some(20), b_version))
        }
        Err(other) => panic!("expected a fenced commit, got {other}"),
        Ok(_) => panic!("the stale commit landed"),
    }
    assert_eq!(
        idx.latest().await.unwrap().unwrap().version().version,
        b_version
    );

    // A writer of another partition racing B is rebased and lands.
    let other = change(&["c"], &[], &[(1, 4)]);
    let (landed, _) = commit_on(&read_by_a, other).await.unwrap();
    assert_eq!(landed.version().version, b_version + 1);

    // Without the fence the same stale append is rebased over B's and lands: the check is
    // what stops it.
    let unfenced = Change {
        fence: None,
        ..change(&["a-stale"], &[(0, 10)], &[(0, 15)])
    };
    commit_on(&read_by_a, unfenced).await.unwrap();
    assert_eq!(
        idx.offsets(&[("t".into(), 0)]).await.unwrap().get("t", 0),
        Some(15)
    );
}

/// Kills a worker (resuming it first if stopped) when a test fails midway.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            common::signal(&self.0, "CONT");
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

async fn stored(s: &Setup, partitions: i32) -> SourceOffsets {
    let wanted: Vec<(String, i32)> = (0..partitions).map(|p| (s.topic.clone(), p)).collect();
    match LanceTable::open(&s.location, None, None).await {
        Ok(t) => t.offsets(&wanted).await.unwrap(),
        Err(_) => SourceOffsets::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_cannot_commit_over_its_successor() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 12_000;
    const PARTITIONS: i32 = 2;
    let s = setup("fence", PARTITIONS).await;
    let (log_a, log_b) = (s.dir.path().join("a.log"), s.dir.path().join("b.log"));
    let (ops, expected) = workload(17, OPS);
    // A backlog first, so both workers always hold a batch in flight.
    let backlog = common::kafka::produce(&common::kafka::producer(), &s.topic, &ops[..4000]).await;
    let producing = produce_in_background(&s.topic, ops[4000..].to_vec());

    // A runs its model one sequence at a time: its batches take long enough that a pause
    // lands inside one.
    let slow = [("SEMFLOW_MAX_BATCH", "1"), ("RAYON_NUM_THREADS", "1")];
    let mut a = Worker(start_with(&s.pipeline, &log_a, &slow));
    let mut b = Worker(start(&s.pipeline, &log_b));
    let deadline = Instant::now() + Duration::from_secs(90);
    while read_by_run(&log_a, 0) == 0 || read_by_run(&log_b, 0) == 0 {
        assert!(
            Instant::now() < deadline,
            "both workers must index a share:\nA: {}\nB: {}",
            log_text(&log_a),
            log_text(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A stops mid-batch (just after committing one, with a backlog waiting), past its 6 s
    // session: B gets every partition and commits further on each of A's. (B's own may have
    // run dry by then: B keeps up with the producer when its model is fast.)
    let committed = read_by_run(&log_a, 0);
    while read_by_run(&log_a, 0) == committed {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    common::signal(&a.0, "STOP");
    let at_stop = stored(&s, PARTITIONS).await;
    let held_by_a = assigned_partitions(&log_a, &s.topic);
    assert!(
        !held_by_a.is_empty(),
        "A held no partition:\n{}",
        log_text(&log_a)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = stored(&s, PARTITIONS).await;
        let moved = held_by_a.iter().all(|&p| {
            now.get(&s.topic, p).unwrap_or(0) > at_stop.get(&s.topic, p).unwrap_or(0) + 500
        });
        if moved && log_text(&log_b).matches("partitions assigned").count() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not take over A's partitions:\n{}",
            log_text(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A wakes up holding a batch read from where it stood: that commit must be refused.
    common::signal(&a.0, "CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_text(&log_a).contains("rejoining the group") {
        assert!(
            Instant::now() < deadline,
            "A's stale batch was not refused:\nA: {}\nB: {}",
            log_text(&log_a),
            log_text(&log_b)
        );
        assert!(
            a.0.try_wait().unwrap().is_none(),
            "A exited:\n{}",
            log_text(&log_a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut delivered = backlog;
    delivered.extend(producing.await.unwrap());
    wait_caught_up(
        &s,
        &end_offsets(&delivered, PARTITIONS),
        &mut [(&mut a.0, &log_a), (&mut b.0, &log_b)],
    )
    .await;
    terminate(&mut a.0, &log_a);
    terminate(&mut b.0, &log_b);
    assert_index_equals(&s.location, &expected).await;

    let commits = assert_positions_never_move_back(&s.location).await;
    let fenced = log_text(&log_a).matches("rejoining the group").count();
    println!(
        "fencing: {OPS} operations over {PARTITIONS} partitions; A paused past its session, {fenced} stale batch(es) of A refused, {commits} partition positions in the history, none moved back"
    );
}
