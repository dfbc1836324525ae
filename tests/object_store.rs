//! Serving from an index on an S3-compatible store (moto on loopback) while it is written:
//! two `semflow serve` replicas over one Lance dataset at `s3://…`, a writer committing row
//! after row, and how long each committed row takes to show in each replica's answers; and a
//! worker cut off from the broker and the store by the network (its own network namespace,
//! the link dropped past its session timeout). (Two workers with SIGKILLs and a zombie on the
//! store: tests/exactly_once.rs.)

use crate::common;

use std::time::{Duration, Instant};

use serde_json::json;

/// Rows the writer commits, one commit each.
const ROWS: i64 = 40;
/// The longest a committed row may take to show in a replica's answers.
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// Posts `sql` to a replica's `/v1/sql` and returns the first row's `m`.
async fn max_id(client: &reqwest::Client, http: std::net::SocketAddr) -> Option<i64> {
    let v: serde_json::Value = client
        .post(format!("http://{http}/v1/sql"))
        .json(&json!({"sql": "SELECT max(id) AS m FROM kb"}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["rows"][0]["m"].as_i64()
}

/// When each row (by id) was first seen by the replica at `http`, polling until it has seen
/// `ROWS` or `limit` passes.
async fn watch(http: std::net::SocketAddr, limit: Instant) -> Vec<Option<Instant>> {
    let client = reqwest::Client::new();
    let mut seen = vec![None; ROWS as usize + 1];
    while Instant::now() < limit {
        let m = max_id(&client, http).await.unwrap_or(0);
        let now = Instant::now();
        for slot in seen.iter_mut().take(m.clamp(0, ROWS) as usize + 1).skip(1) {
            slot.get_or_insert(now);
        }
        if m >= ROWS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_replicas_see_every_commit_on_object_storage() {
    let Some(store) = common::s3::store() else {
        return;
    };
    let _heavy = common::one_heavy_test_at_a_time().await;
    let location = format!("s3://{}/kb.lance", store.bucket("serve").await);
    let create = format!(
        "CREATE EXTERNAL TABLE kb (id BIGINT NOT NULL, body TEXT, embedding FLOAT[64], PRIMARY KEY (id))
           STORED AS LANCE LOCATION '{location}';"
    );
    let writer = common::tiny_engine();
    writer.run_sql(&create).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.sql");
    std::fs::write(&init, &create).unwrap();
    let init = init.to_string_lossy().into_owned();
    let mut replicas = [
        common::spawn_serve(&["--init", &init]).await,
        common::spawn_serve(&["--init", &init]).await,
    ];

    let limit = Instant::now() + Duration::from_secs(120);
    let watchers: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(watch(r.http, limit)))
        .collect();
    let mut committed = Vec::with_capacity(ROWS as usize + 1);
    committed.push(Instant::now());
    for id in 1..=ROWS {
        writer
            .run_sql(&format!(
                "INSERT INTO kb SELECT {id}, 'document {id}', embed('document {id}')"
            ))
            .await
            .unwrap();
        committed.push(Instant::now());
    }

    let mut report = Vec::new();
    for (r, watcher) in watchers.into_iter().enumerate() {
        let seen = watcher.await.unwrap();
        let mut delays: Vec<Duration> = (1..=ROWS as usize)
            .map(|id| {
                let at = seen[id].unwrap_or_else(|| panic!("replica {r} never saw row {id}"));
                at.saturating_duration_since(committed[id])
            })
            .collect();
        delays.sort();
        let (p50, max) = (delays[delays.len() / 2], delays[delays.len() - 1]);
        assert!(
            max <= VISIBLE_WITHIN,
            "replica {r}: a committed row took {max:?} to show"
        );
        report.push(format!(
            "replica {r}: p50 {:.0} ms, max {:.0} ms",
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ));
    }

    // Both answer searches over every row: the last document is its own nearest neighbour.
    let client = reqwest::Client::new();
    for replica in &replicas {
        let v: serde_json::Value = client
            .post(format!("http://{}/v1/sql", replica.http))
            .json(&json!({"sql": format!(
                "SELECT id, count(*) OVER () AS n FROM kb
                 ORDER BY cosine_similarity(embedding, embed('document {ROWS}')) DESC LIMIT 1"
            )}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["rows"][0]["id"], ROWS, "{v}");
        assert_eq!(v["rows"][0]["n"], ROWS, "{v}");
    }
    for replica in &mut replicas {
        common::terminate_child(&mut replica.child);
    }
    println!(
        "two serve replicas on S3 (moto): {ROWS} commits; commit to visible: {}",
        report.join("; ")
    );
}

/// A worker cut off from the broker and the store by the network rather than by a signal:
/// worker A runs in a network namespace of its own and reaches the broker and the S3 store
/// over a veth link (through relays on the host's end); worker B runs on the host. Once A has
/// committed, its link is dropped — its packets lost, its connections neither closed nor
/// reset — past the group's 6 s session timeout: B takes every partition over and commits on
/// while records keep arriving. Then the link comes back; whatever A was doing when it was
/// cut (a batch half-written, a commit in flight) must not land over B's work. Both catch up;
/// the index is exact and no stored position moved back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_by_the_network_neither_loses_nor_overwrites() {
    use common::outage::{Broker, Proxy};
    use common::pipeline::*;
    let Some(store) = common::s3::store() else {
        return;
    };
    let _heavy = common::one_heavy_test_at_a_time().await;
    let Some(ns) = common::netns::Namespace::create() else {
        return;
    };
    // The broker (advertising its relay) and the store, both on the host's end of the link.
    let kafka_addr = ns.free_host_addr();
    let broker = Broker::start(kafka_addr).await;
    let _kafka_relay = Proxy::start(kafka_addr, broker.addr).await;
    let s3_addr = ns.free_host_addr();
    let _s3_relay = Proxy::start(s3_addr, store.addr).await;
    let bootstrap = kafka_addr.to_string();

    let mut s = setup_source(&bootstrap, "netns-chunks", 3, Target::Chunks, "").await;
    common::s3::index_on_s3(store, &mut s).await;
    set_batch_rows(&s, 200);
    let (ops, expected) = revision_workload(107, 800);
    let records = ops.len();
    // About 20 s of records, so they keep coming while A is cut off.
    let producing = produce_paced(&bootstrap, &s.topic, ops, 120, Duration::from_secs(1));
    let logs = [s.dir.path().join("a.log"), s.dir.path().join("b.log")];
    let s3_endpoint = format!("http://{s3_addr}");
    let mut a = start_in(
        &ns,
        &s.pipeline,
        &logs[0],
        &[("AWS_ENDPOINT", s3_endpoint.as_str())],
    );
    let mut b = start(&s.pipeline, &logs[1]);

    common::wait_until("worker A's first commit", Duration::from_secs(90), || {
        read_by_run(&logs[0], 0) > 0
    })
    .await;
    let cut_at = Instant::now();
    let b_assignments = assignments(&logs[1]);
    ns.cut();
    // B gets A's partitions once A's session has expired, and commits records of them.
    common::wait_until(
        "worker B to take A's partitions",
        Duration::from_secs(60),
        || assignments(&logs[1]) > b_assignments,
    )
    .await;
    let b_read = read_by_run(&logs[1], 0);
    common::wait_until("worker B to commit on", Duration::from_secs(60), || {
        read_by_run(&logs[1], 0) > b_read
    })
    .await;
    let taken_over = cut_at.elapsed();
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(taken_over)).await;
    let cut_for = cut_at.elapsed();
    ns.restore();

    let delivered = producing.await.unwrap();
    wait_caught_up(
        &s,
        &common::kafka::end_offsets(&delivered, 3),
        &mut [(&mut a, &logs[0]), (&mut b, &logs[1])],
    )
    .await;
    terminate(&mut a, &logs[0]);
    terminate(&mut b, &logs[1]);
    let positions = assert_positions_never_move_back(&s.location).await;
    assert_chunks_equal(&s.location, &expected).await;
    let rejoined = log_text(&logs[0]).matches("rejoining the group").count();
    println!(
        "worker cut off by the network: {records} records over 3 partitions, A's link dropped for \
         {:.1} s (B took over and committed after {:.1} s); A fenced {rejoined} batch(es); \
         committed A {} B {}; {positions} stored positions, none moving back",
        cut_for.as_secs_f64(),
        taken_over.as_secs_f64(),
        read_by_run(&logs[0], 0),
        read_by_run(&logs[1], 0),
    );
    drop(broker);
}
