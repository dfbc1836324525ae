//! Exactly-once indexing under crashes, against a real broker:
//! - `semflow run` is SIGKILLed at random points while 20,000 operations (inserts, updates,
//!   deletes) flow through a 3-partition topic, restarted each time (also over chunk tables
//!   and as Debezium change events);
//! - two workers in one consumer group share a 4-partition topic and one is SIGKILLed midway
//!   (tests/fleet.rs does the same with an inference fleet).
//!
//! Either way the final index must equal the final state of the topic exactly.

use crate::common;

use std::time::{Duration, Instant};

use common::kafka::end_offsets;
use common::pipeline::*;
use rand::{Rng, SeedableRng};

const OPERATIONS: usize = 20_000;
const PARTITIONS: i32 = 3;
const KILLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_neither_loses_nor_duplicates() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    let s = setup("eo", PARTITIONS).await;
    let (ops, expected) = workload(7, OPERATIONS);
    let run = kill_and_restart(&s, ops, KILLS, 11).await;
    assert_index_equals(&s.location, &expected).await;
    println!(
        "exactly-once: {OPERATIONS} operations ({} final documents) over {PARTITIONS} partitions, {KILLS} SIGKILLs, {} assignments, {} records committed over all runs, caught up in {:.1} s",
        expected.len(),
        run.assignments,
        run.committed,
        run.elapsed.as_secs_f64()
    );
}

/// The same over a table of chunks (pipelines/index-chunks.sql): updates that grow or shrink a
/// document's chunk count and tombstones, SIGKILLs landing anywhere, maintenance rounds
/// included (every 10 commits); every document ends with exactly its current chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_documents_survive_sigkills_exactly() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 6_000;
    let s = setup_target(
        &common::kafka::bootstrap(),
        "eo-chunks",
        PARTITIONS,
        Target::Chunks,
    )
    .await;
    let (ops, expected) = chunk_workload(17, OPS);
    let run = kill_and_restart(&s, ops, 6, 23).await;
    assert_chunks_equal(&s.location, &expected).await;
    println!(
        "exactly-once, chunks: {OPS} operations ({} final documents) over {PARTITIONS} partitions, 6 SIGKILLs, {} records committed over all runs, caught up in {:.1} s",
        expected.len(),
        run.committed,
        run.elapsed.as_secs_f64()
    );
}

/// The same with Debezium change events (`'envelope' 'debezium'`): creates, updates,
/// deletes and their tombstones, SIGKILLs anywhere; the index equals the source table's
/// final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_change_events_survive_sigkills_exactly() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 6_000;
    let s = setup_source(
        &common::kafka::bootstrap(),
        "eo-cdc",
        PARTITIONS,
        Target::Documents,
        ", 'envelope' 'debezium'",
    )
    .await;
    let (ops, expected) = workload(29, OPS);
    let events = as_debezium(&ops);
    let run = kill_and_restart(&s, events, 6, 31).await;
    assert_index_equals(&s.location, &expected).await;
    println!(
        "exactly-once, Debezium: {OPS} operations ({} final rows) over {PARTITIONS} partitions, 6 SIGKILLs, {} records committed over all runs, caught up in {:.1} s",
        expected.len(),
        run.committed,
        run.elapsed.as_secs_f64()
    );
}

/// What [`kill_and_restart`] saw.
struct Crashes {
    assignments: usize,
    committed: u64,
    elapsed: Duration,
}

/// Produces `ops` while `semflow run` is SIGKILLed `kills` times at random points and
/// restarted; then a last run catches up and stops on SIGTERM. Checks that no record was
/// committed twice.
async fn kill_and_restart(
    s: &Setup,
    ops: common::pipeline::Records,
    kills: usize,
    seed: u64,
) -> Crashes {
    let operations = ops.len() as u64;
    let log = s.dir.path().join("pipeline.log");
    let producing = produce_in_background(&s.topic, ops);

    let began = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut reread = 0u64;
    for kill in 0..kills {
        let before = assignments(&log);
        let log_start = log_len(&log);
        let mut child = start(&s.pipeline, &log);
        // Kill at a random point after the run got its partitions (until then it only waits
        // for the group to expire the previous, killed member).
        wait_joined(&log, before).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..3000))).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "run {kill} exited early with {status}; log:\n{}",
                log_text(&log)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reread += read_by_run(&log, log_start);
    }
    let delivered = producing.await.unwrap();

    // A last run catches up; then SIGTERM must finish cleanly. It must have started first:
    // when the killed runs already committed everything, "caught up" holds at once, and a
    // SIGTERM during the process's start-up (before any handler exists) would kill it.
    let log_start = log_len(&log);
    let before = assignments(&log);
    let mut child = start(&s.pipeline, &log);
    wait_joined(&log, before).await;
    wait_caught_up(
        s,
        &end_offsets(&delivered, PARTITIONS),
        &mut [(&mut child, &log)],
    )
    .await;
    let elapsed = began.elapsed();
    terminate(&mut child, &log);
    let committed = reread + read_by_run(&log, log_start);
    // A run's status line counts the records of the batches it committed. Every restart
    // resumes exactly at the offsets stored with the last commit, so no record is committed
    // twice: the runs' counts add up to at most the operations (less when a kill fell between
    // a commit and its status line). Resuming anywhere earlier would exceed it.
    assert!(
        committed <= operations,
        "{committed} records committed in total for {operations}"
    );
    Crashes {
        assignments: assignments(&log),
        committed,
        elapsed,
    }
}

/// Waits (up to 60 s) until the log shows more partition assignments than `before`.
async fn wait_joined(log: &std::path::Path, before: usize) {
    let started = Instant::now();
    while assignments(log) == before && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_partitions_and_survive_losing_one() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 8_000;
    let s = setup("pair", 4).await;
    let (log_a, log_b) = (s.dir.path().join("a.log"), s.dir.path().join("b.log"));
    let (ops, expected) = workload(13, OPS);
    let producing = produce_in_background(&s.topic, ops);

    let mut a = start(&s.pipeline, &log_a);
    let mut b = start(&s.pipeline, &log_b);
    // Both members get a share of the four partitions …
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(log_text(&log_a).contains("partitions assigned")
        && log_text(&log_b).contains("partitions assigned"))
    {
        assert!(
            Instant::now() < deadline,
            "no shared assignment:\nA: {}\nB: {}",
            log_text(&log_a),
            log_text(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // … and index their share for a while; then B dies without a goodbye.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_by_run(&log_b, 0) == 0 {
        assert!(
            Instant::now() < deadline,
            "worker B indexed nothing:\n{}",
            log_text(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.kill().unwrap();
    b.wait().unwrap();
    let read_b = read_by_run(&log_b, 0);
    let shared = log_text(&log_b)
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .map(|l| l.matches(s.topic.as_str()).count())
        .collect::<Vec<_>>();
    assert!(
        shared.iter().any(|n| (1..4).contains(n)),
        "B never held a share of the partitions: {shared:?}"
    );

    // A takes over B's partitions from the positions B committed, and finishes the topic.
    let delivered = producing.await.unwrap();
    wait_caught_up(&s, &end_offsets(&delivered, 4), &mut [(&mut a, &log_a)]).await;
    terminate(&mut a, &log_a);
    let read_a = read_by_run(&log_a, 0);
    assert!(
        read_a + read_b <= OPS as u64,
        "A committed {read_a} and B {read_b} records: some were committed twice"
    );
    assert_index_equals(&s.location, &expected).await;
    println!(
        "two workers: {OPS} operations over 4 partitions; B committed {read_b} records before SIGKILL, A {read_a}"
    );
}
