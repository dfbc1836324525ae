//! Scale-out: two `semflow serve` processes as an inference fleet and two `semflow run`
//! workers in one consumer group that embed through both (`SEMFLOW_EMBED_ENDPOINTS`). One
//! server and one worker are SIGKILLed midway; the other worker takes over the partitions,
//! its requests fail over to the surviving server, and the index must still equal the
//! topic's final state exactly — every document once, at its latest version.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{end_offsets, produce, producer};
use common::pipeline::*;

const OPS: usize = 6_000;
const PARTITIONS: i32 = 4;

/// `semflow serve` on an ephemeral HTTP port (Postgres off), logging to `log`; returns the
/// process and its `/v1` base URL.
async fn inference_server(log: &Path) -> (Child, String) {
    inference_server_with(log, &[]).await
}

// The child is returned to the caller, which kills and waits for it.
#[allow(clippy::zombie_processes)]
async fn inference_server_with(log: &Path, envs: &[(&str, &str)]) -> (Child, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut child = common::semflow_command()
        .args(["serve", "--http-addr", "127.0.0.1:0", "--pg-addr", "off"])
        .env("SEMFLOW_LOG", "semflow=info")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = log_text(log);
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.strip_prefix("serving http://"))
            .and_then(|a| a.split_whitespace().next())
        {
            return (child, format!("http://{addr}/v1"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Embedding requests a server answered successfully, from its `/metrics`.
async fn served(base: &str) -> u64 {
    let url = format!("{}/metrics", base.trim_end_matches("/v1"));
    let text = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .map(|r| r.into_string().unwrap_or_default())
            .unwrap_or_default()
    })
    .await
    .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("semflow_http_requests_total")
                && l.contains("/v1/embeddings")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_two_workers_lose_one_of_each_and_index_everything_once() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    let s = setup("fleet", PARTITIONS).await;
    let path = |name: &str| -> PathBuf { s.dir.path().join(name) };
    let (log_a, log_b, log_sa, log_sb) = (
        path("worker-a.log"),
        path("worker-b.log"),
        path("serve-a.log"),
        path("serve-b.log"),
    );
    // The whole topic first, so the time to index it is the fleet's throughput.
    let (ops, expected) = workload(21, OPS);
    let delivered = produce(&producer(), &s.topic, &ops).await;
    let ends = end_offsets(&delivered, PARTITIONS);

    let (mut server_a, url_a) = inference_server(&log_sa).await;
    let (mut server_b, url_b) = inference_server(&log_sb).await;
    let endpoints = format!("{url_a},{url_b}");
    let envs = [
        ("SEMFLOW_EMBED_ENDPOINTS", endpoints.as_str()),
        ("SEMFLOW_ENDPOINT_HEALTH_INTERVAL", "1"),
        // Every document is new text: caching would only hide the fleet's work.
        ("SEMFLOW_CACHE_SIZE", "0"),
    ];
    let began = Instant::now();
    let mut a = start_with(&s.pipeline, &log_a, &envs);
    let mut b = start_with(&s.pipeline, &log_b, &envs);

    // Both workers hold partitions and have committed work through both servers …
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut before_a, mut before_b) = (0, 0);
    while read_by_run(&log_b, 0) == 0
        || read_by_run(&log_a, 0) == 0
        || before_a == 0
        || before_b == 0
    {
        assert!(
            Instant::now() < deadline,
            "both workers must index through both servers ({before_a} / {before_b} requests):\nA: {}\nB: {}",
            log_text(&log_a),
            log_text(&log_b)
        );
        assert!(b.try_wait().unwrap().is_none(), "{}", log_text(&log_b));
        tokio::time::sleep(Duration::from_millis(50)).await;
        (before_a, before_b) = (served(&url_a).await, served(&url_b).await);
    }
    // … then server B and worker B die without a goodbye.
    server_b.kill().unwrap();
    server_b.wait().unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    let killed_at = began.elapsed();
    let read_b = read_by_run(&log_b, 0);

    // Worker A takes over B's partitions and finishes on server A alone.
    wait_caught_up(&s, &ends, &mut [(&mut a, &log_a)]).await;
    let elapsed = began.elapsed();
    terminate(&mut a, &log_a);
    let read_a = read_by_run(&log_a, 0);
    assert!(
        read_a + read_b <= OPS as u64,
        "A committed {read_a} and B {read_b} records: some were committed twice"
    );
    assert!(
        served(&url_a).await > before_a,
        "server A served nothing after B died"
    );
    assert_index_equals(&s.location, &expected).await;
    server_a.kill().unwrap();
    server_a.wait().unwrap();
    println!(
        "fleet: {OPS} operations ({} final documents) over {PARTITIONS} partitions, 2 serve + 2 run processes on this machine; \
         server B and worker B SIGKILLed at {:.1} s (B had committed {read_b} records); caught up in {:.1} s = {:.0} operations/s end to end",
        expected.len(),
        killed_at.as_secs_f64(),
        elapsed.as_secs_f64(),
        OPS as f64 / elapsed.as_secs_f64()
    );
}

/// Records committed to the index so far (the sum of its stored next offsets).
async fn committed(s: &Setup) -> i64 {
    let wanted: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (s.topic.clone(), p)).collect();
    match semflow::index::LanceTable::open(&s.location, None, None).await {
        Ok(table) => match table.offsets(&wanted).await {
            Ok(o) => (0..PARTITIONS).filter_map(|p| o.get(&s.topic, p)).sum(),
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

/// Measurement, not a check (run by hand: `scripts/with-kafka.sh cargo test --test workers fleet:: --
/// --ignored --nocapture`; `FLEET_PRESET=small` uses the `small` model preset instead of
/// `tiny`, `FLEET_OPS` sets the operations): two workers in one group index pre-produced
/// operations through one, then two `semflow serve` instances; the rate is taken between 10%
/// and 100% committed, so start-up and the group's first rebalance are not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement for docs/scaling.md"]
async fn fleet_throughput_with_one_and_two_servers() {
    let _heavy = common::one_heavy_test_at_a_time().await;
    let preset = match std::env::var("FLEET_PRESET").as_deref() {
        Ok("small") => semflow::model::config::Preset::Small,
        _ => semflow::model::config::Preset::Tiny,
    };
    let model = common::random_model(
        semflow::model::random::ModelKind::Embedding,
        preset,
        common::EMBED_SEED,
    );
    let model = model.to_string_lossy().into_owned();
    let bench_ops: usize = std::env::var("FLEET_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for servers in [1usize, 2] {
        let s = setup(&format!("fleet-bench{servers}"), PARTITIONS).await;
        let (ops, expected) = workload(31, bench_ops);
        let delivered = produce(&producer(), &s.topic, &ops).await;
        let ends = end_offsets(&delivered, PARTITIONS);
        let total: i64 = ends.iter().sum();
        let mut fleet = Vec::new();
        for i in 0..servers {
            let log = s.dir.path().join(format!("serve-{i}.log"));
            fleet.push(inference_server_with(&log, &[("SEMFLOW_EMBED_MODEL", &model)]).await);
        }
        let endpoints: Vec<&str> = fleet.iter().map(|(_, u)| u.as_str()).collect();
        let endpoints = endpoints.join(",");
        let envs = [
            ("SEMFLOW_EMBED_ENDPOINTS", endpoints.as_str()),
            ("SEMFLOW_CACHE_SIZE", "0"),
            ("SEMFLOW_EMBED_MODEL", model.as_str()),
        ];
        let logs = [s.dir.path().join("a.log"), s.dir.path().join("b.log")];
        let mut workers: Vec<Child> = logs
            .iter()
            .map(|l| start_with(&s.pipeline, l, &envs))
            .collect();
        let began = Instant::now();
        let mut from: Option<(Instant, i64)> = None;
        loop {
            let done = committed(&s).await;
            if from.is_none() && done >= total / 10 {
                from = Some((Instant::now(), done));
            }
            if done >= total {
                break;
            }
            assert!(began.elapsed() < Duration::from_secs(600), "no progress");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (t0, c0) = from.unwrap();
        let rate = (total - c0) as f64 / t0.elapsed().as_secs_f64();
        for (w, l) in workers.iter_mut().zip(&logs) {
            terminate(w, l);
        }
        for (mut child, _) in fleet {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let dims = semflow::model::config::QwenConfig::preset(preset).hidden_size;
        assert_index_equals_dims(&s.location, &expected, dims).await;
        println!(
            "fleet throughput ({preset:?} model): 2 workers, {servers} serve instance(s), {bench_ops} operations over {PARTITIONS} partitions: \
             {rate:.0} operations/s from 10% to 100% committed ({:.1} s in all)",
            began.elapsed().as_secs_f64()
        );
    }
}
