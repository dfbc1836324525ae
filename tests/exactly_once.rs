//! Exactly-once indexing under crashes, against a real broker:
//! - `semflow run` is SIGKILLed at random points while 20,000 operations (inserts, updates,
//!   deletes) flow through a 3-partition topic, restarted each time (also over chunk tables
//!   and as Debezium change events);
//! - two workers in one consumer group share a 4-partition topic and one is SIGKILLed midway
//!   (tests/fleet.rs does the same with an inference fleet);
//! - two workers in one group, either one SIGKILLed at random every few seconds and
//!   restarted, over a table of chunks, plain documents and Debezium change events, with
//!   poison records among them;
//! - the same with the index on an S3-compatible store (moto), where Lance commits by
//!   conditional put.
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

/// Poison records (values that are not JSON) right after about one record in `every`, for
/// the same key: they are dead-lettered, and the update or deletion before them still counts
/// (also when both fall in one batch).
fn with_poison(ops: Records, every: usize, seed: u64) -> Records {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(ops.len() + ops.len() / every + 1);
    for op in ops {
        let key = op.0.clone();
        out.push(op);
        if rng.random_range(0..every) == 0 {
            out.push((key, Some("{\"id\": not json".to_string())));
        }
    }
    out
}

/// What happens to one of two workers in [`either_of_two`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// SIGKILL, then a restart at once.
    Kill,
    /// SIGSTOP until the other worker has taken its partitions over (past its session
    /// timeout), then SIGCONT: it wakes up holding a batch of partitions it lost.
    Pause,
}

/// What [`either_of_two`] saw.
struct PairRun {
    /// Disruptions per worker.
    hits: [usize; 2],
    committed: [u64; 2],
    fenced: usize,
    elapsed: Duration,
}

/// Two `semflow run` workers in one group while `ops` are produced; for each of `schedule`,
/// one of the two, picked at random, is disrupted a random 0.5–3 s into its run. Then both
/// catch up and stop on SIGTERM.
async fn either_of_two(s: &Setup, ops: Records, schedule: &[Disruption], seed: u64) -> PairRun {
    let logs = [s.dir.path().join("a.log"), s.dir.path().join("b.log")];
    let records = ops.len() as u64;
    let producing = produce_in_background(&s.topic, ops);
    let began = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut workers = [start(&s.pipeline, &logs[0]), start(&s.pipeline, &logs[1])];
    let mut started = [Instant::now(); 2];
    let mut run = PairRun {
        hits: [0; 2],
        committed: [0; 2],
        fenced: 0,
        elapsed: Duration::ZERO,
    };
    let mut log_starts = [0usize; 2];
    for disruption in schedule {
        let i = rng.random_range(0..2usize);
        // Once it has held partitions, a random while into its run.
        wait_assigned(&logs[i], log_starts[i], 1).await;
        let at = Duration::from_millis(rng.random_range(500..3000));
        tokio::time::sleep(at.saturating_sub(started[i].elapsed())).await;
        if let Some(status) = workers[i].try_wait().unwrap() {
            panic!(
                "worker {i} exited early with {status}; log:\n{}",
                log_text(&logs[i])
            );
        }
        run.hits[i] += 1;
        match disruption {
            Disruption::Kill => {
                workers[i].kill().unwrap(); // SIGKILL
                workers[i].wait().unwrap();
                run.committed[i] += read_by_run(&logs[i], log_starts[i]);
                log_starts[i] = log_len(&logs[i]);
                workers[i] = start(&s.pipeline, &logs[i]);
                started[i] = Instant::now();
            }
            Disruption::Pause => {
                let other = 1 - i;
                let before = assignments_since(&logs[other], 0);
                common::signal(&workers[i], "STOP");
                wait_assigned(&logs[other], 0, before + 1).await;
                common::signal(&workers[i], "CONT");
            }
        }
    }
    let delivered = producing.await.unwrap();
    for (i, log) in logs.iter().enumerate() {
        wait_assigned(log, log_starts[i], 1).await;
    }
    {
        let [a, b] = &mut workers;
        wait_caught_up(
            s,
            &end_offsets(&delivered, PARTITIONS),
            &mut [(a, &logs[0]), (b, &logs[1])],
        )
        .await;
    }
    run.elapsed = began.elapsed();
    for (i, worker) in workers.iter_mut().enumerate() {
        terminate(worker, &logs[i]);
        run.committed[i] += read_by_run(&logs[i], log_starts[i]);
        run.fenced += log_text(&logs[i]).matches("rejoining the group").count();
    }
    // Every commit is fenced at where its batch began: no record is committed twice (a
    // refused batch is not counted), and no stored position ever moves back.
    let committed = run.committed.iter().sum::<u64>();
    assert!(
        committed <= records,
        "{committed} records committed in total for {records}"
    );
    assert_positions_never_move_back(&s.location).await;
    run
}

/// Waits (up to 60 s) until `log` shows at least `n` partition assignments from byte `from`.
async fn wait_assigned(log: &std::path::Path, from: usize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while assignments_since(log, from) < n {
        assert!(
            Instant::now() < deadline,
            "no partition assignment; log:\n{}",
            log_text(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Partition assignments a log shows from byte `from` on.
fn assignments_since(log: &std::path::Path, from: usize) -> usize {
    log_text(log)
        .get(from..)
        .unwrap_or_default()
        .matches("partitions assigned")
        .count()
}

/// Prints what [`either_of_two`] saw.
fn report(what: &str, ops: usize, live: usize, run: &PairRun) {
    println!(
        "two workers, {what}: {ops} records ({live} live documents) over {PARTITIONS} partitions; disruptions A {} B {}; committed A {} B {} records; {} batches fenced; caught up in {:.1} s",
        run.hits[0],
        run.hits[1],
        run.committed[0],
        run.committed[1],
        run.fenced,
        run.elapsed.as_secs_f64()
    );
}

/// pipelines/index-chunks.sql's shape under two workers, either one SIGKILLed at random and
/// restarted, as the scale-out issue reported it: 200-record batches, documents each
/// updated one to three times with bodies of one to nine sentences (updates grow and shrink
/// their chunk counts), tombstones and poison records. Every live document ends with exactly
/// its current chunks, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chunked_workers_survive_sigkills_of_either() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    let s = setup_source(
        &common::kafka::bootstrap(),
        "pair-chunks",
        PARTITIONS,
        Target::Chunks,
        "",
    )
    .await;
    set_batch_rows(&s, 200);
    let (ops, expected) = revision_workload(41, 1_300);
    let ops = with_poison(ops, 200, 43);
    let n = ops.len();
    let run = either_of_two(&s, ops, &[Disruption::Kill; KILLS], 47).await;
    assert_chunks_equal(&s.location, &expected).await;
    report("chunks", n, expected.len(), &run);
}

/// The same two-worker schedule over one row per document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_document_workers_survive_sigkills_of_either() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 6_000;
    let s = setup("pair-docs", PARTITIONS).await;
    let (ops, expected) = workload(53, OPS);
    let ops = with_poison(ops, 200, 59);
    let n = ops.len();
    let run = either_of_two(&s, ops, &[Disruption::Kill; KILLS], 61).await;
    assert_index_equals(&s.location, &expected).await;
    report("documents", n, expected.len(), &run);
}

/// The same two-worker schedule over Debezium change events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_debezium_workers_survive_sigkills_of_either() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 6_000;
    let s = setup_source(
        &common::kafka::bootstrap(),
        "pair-cdc",
        PARTITIONS,
        Target::Documents,
        ", 'envelope' 'debezium'",
    )
    .await;
    let (ops, expected) = workload(67, OPS);
    let events = with_poison(as_debezium(&ops), 200, 71);
    let n = events.len();
    let run = either_of_two(&s, events, &[Disruption::Kill; KILLS], 73).await;
    assert_index_equals(&s.location, &expected).await;
    report("Debezium", n, expected.len(), &run);
}

/// The chunk scenario with a worker SIGSTOPped past its session timeout and resumed (a
/// zombie holding a batch of partitions it lost), between SIGKILLs of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chunked_workers_survive_a_zombie_and_sigkills() {
    use Disruption::{Kill, Pause};
    let _heavy = common::one_heavy_test_at_a_time().await;
    const OPS: usize = 4_000;
    let s = setup_source(
        &common::kafka::bootstrap(),
        "zombie-chunks",
        PARTITIONS,
        Target::Chunks,
        "",
    )
    .await;
    let (ops, expected) = chunk_workload(79, OPS);
    let ops = with_poison(ops, 200, 83);
    let n = ops.len();
    let run = either_of_two(&s, ops, &[Kill, Pause, Kill, Pause], 89).await;
    assert_chunks_equal(&s.location, &expected).await;
    report("chunks, zombies", n, expected.len(), &run);
}

/// The two-worker chunk scenario with the index on an S3-compatible store (moto on loopback),
/// where Lance commits by conditional put and the fence's check must hold through it:
/// SIGKILLs of either worker and a zombie; the index ends exact, with no stored position
/// moving back (checked by [`either_of_two`]), read back through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chunked_workers_on_object_storage_survive_sigkills_and_a_zombie() {
    use Disruption::{Kill, Pause};
    let Some(store) = common::s3::store() else {
        return;
    };
    let _heavy = common::one_heavy_test_at_a_time().await;
    let mut s = setup_source(
        &common::kafka::bootstrap(),
        "s3-chunks",
        PARTITIONS,
        Target::Chunks,
        "",
    )
    .await;
    common::s3::index_on_s3(store, &mut s).await;
    set_batch_rows(&s, 200);
    let (ops, expected) = revision_workload(97, 800);
    let ops = with_poison(ops, 200, 101);
    let n = ops.len();
    let run = either_of_two(&s, ops, &[Kill, Pause, Kill, Kill], 103).await;
    assert!(
        !s.dir.path().join("idx").exists(),
        "the index was written to the local disk"
    );
    assert_chunks_equal(&s.location, &expected).await;
    report("chunks on S3", n, expected.len(), &run);
}
