//! embed() and rerank() on remote endpoints: semflow serve instances as the fleet. Same
//! vectors and scores as the local backend (within 1e-5) over /v1/embeddings, /v1/rerank and
//! /v1/score, spread over endpoints, the cache in front, failover past a dead endpoint and
//! one that answers 500, and health probes taking an endpoint out of rotation and back.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use semflow::inference::remote::{EmbedInputKind, RemoteConfig, RerankFormat};
use semflow::{Engine, InferenceConfig};

async fn server() -> (String, Engine) {
    let engine = common::tiny_engine();
    let addr = common::serve_http(engine.clone()).await;
    (format!("http://{addr}/v1"), engine)
}

/// A server that answers every request with 500.
async fn failing() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom")
                    .await;
            });
        }
    });
    format!("http://{addr}/v1")
}

fn remote_engine(endpoints: Vec<String>) -> Engine {
    remote_engine_with(RemoteConfig {
        embed_endpoints: endpoints,
        ..Default::default()
    })
}

fn remote_engine_with(remote: RemoteConfig) -> Engine {
    Engine::new(InferenceConfig {
        remote: RemoteConfig {
            timeout_s: 10.0,
            max_attempts: 4,
            ..remote
        },
        ..common::tiny_config()
    })
}

/// Every Float32 column of the last result, row by row.
async fn scores(engine: &Engine, sql: &str) -> Vec<f32> {
    let res = engine.run_sql(sql).await.unwrap();
    let mut out = Vec::new();
    for b in &res.last().unwrap().batches {
        for r in 0..b.num_rows() {
            for c in 0..b.num_columns() {
                out.push(b.column(c).as_primitive::<Float32Type>().value(r));
            }
        }
    }
    out
}

async fn vectors(engine: &Engine, sql: &str) -> Vec<Vec<f32>> {
    let res = engine.run_sql(sql).await.unwrap();
    let mut out = Vec::new();
    for b in &res.last().unwrap().batches {
        for c in 0..b.num_columns() {
            let list = b.column(c).as_fixed_size_list();
            for r in 0..list.len() {
                out.push(
                    list.value(r)
                        .as_primitive::<Float32Type>()
                        .values()
                        .to_vec(),
                );
            }
        }
    }
    out
}

const SQL: &str = "SELECT embed(t) AS a, embed(t, 'Given a web search query, retrieve relevant passages that answer the query') AS b, embed(t, 'q', 16) AS c
    FROM (SELECT 'graphene is a form of carbon' AS t UNION ALL SELECT 'pasta' UNION ALL SELECT '' UNION ALL SELECT 'a much longer text about streaming systems and their offsets')
    ORDER BY t";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_vectors_match_local_and_spread_over_endpoints() {
    let (a, engine_a) = server().await;
    let (b, engine_b) = server().await;
    let a_url = a.clone();
    let remote = remote_engine(vec![a, b]);
    let local = common::tiny_engine();
    let (r, l) = (vectors(&remote, SQL).await, vectors(&local, SQL).await);
    assert_eq!(r.len(), 12);
    let mut worst = 0f32;
    for (x, y) in r.iter().zip(&l) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
        }
    }
    assert!(worst < 1e-5, "max abs difference {worst}");

    // Text mode (servers that take only strings): semflow sends the formatted text and the
    // server tokenizes it; semflow serve appends the same single <|endoftext|>.
    let text = remote_engine_with(RemoteConfig {
        embed_endpoints: vec![a_url.clone()],
        embed_input: EmbedInputKind::Text,
        ..Default::default()
    });
    let t = vectors(&text, SQL).await;
    let worst_text = t
        .iter()
        .zip(&l)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(
        worst_text < 1e-5,
        "text mode: max abs difference {worst_text}"
    );

    // The cache sits in front of the remote backend: repeating the query sends nothing.
    let sent = |e: &Engine| {
        e.inference()
            .stats
            .embed_inferred
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = sent(&engine_a) + sent(&engine_b);
    vectors(&remote, SQL).await;
    assert_eq!(sent(&engine_a) + sent(&engine_b), before);

    // Concurrent queries go to both endpoints (least outstanding requests).
    let queries = (0..8).map(|i| {
        let remote = remote.clone();
        async move {
            remote
                .run_sql(&format!(
                    "SELECT embed('concurrent text number {i} with some words')"
                ))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(queries).await;
    assert!(
        sent(&engine_a) > 0 && sent(&engine_b) > 0,
        "{} / {}",
        sent(&engine_a),
        sent(&engine_b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_past_dead_and_failing_endpoints() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    }; // dropped: connections are refused
    let (good, _engine) = server().await;
    let remote = remote_engine(vec![dead, failing().await, good]);
    let local = common::tiny_engine();
    for i in 0..3 {
        let sql = format!("SELECT embed('failover round {i}')");
        let (r, l) = (vectors(&remote, &sql).await, vectors(&local, &sql).await);
        for (p, q) in r[0].iter().zip(&l[0]) {
            assert!((p - q).abs() < 1e-5);
        }
    }
    // With only failing endpoints the query fails with a clear error, not a hang.
    let remote = remote_engine(vec![failing().await]);
    let err = remote
        .run_sql("SELECT embed('x')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("every embedding endpoint failed"), "{err}");
}

const RERANK_SQL: &str =
    "SELECT rerank(q, d) AS a, rerank(q, d, 'Find code that answers the question') AS b
    FROM (SELECT 'how do I boil pasta' AS q, 'Boil salted water, add the pasta, stir.' AS d
          UNION ALL SELECT 'how do I boil pasta', 'Kafka keeps a log of records per partition.'
          UNION ALL SELECT 'what is graphene', 'Graphene is a single layer of carbon atoms.\n'
          UNION ALL SELECT 'what is graphene', ''
          UNION ALL SELECT '', 'an empty query')
    ORDER BY q, d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_rerank_matches_local_on_rerank_and_score_apis() {
    let (a, engine_a) = server().await;
    let (b, _engine_b) = server().await;
    let local = scores(&common::tiny_engine(), RERANK_SQL).await;
    assert_eq!(local.len(), 10);
    // /v1/rerank with the server building the prompt; /v1/score with semflow sending the
    // prompt split in two (vLLM's Qwen3-Reranker convention); both endpoints of each kind.
    for (endpoints, format) in [
        (vec![a.clone(), b.clone()], RerankFormat::Auto),
        (
            vec![format!("{a}/score"), format!("{b}/score")],
            RerankFormat::Auto,
        ),
    ] {
        let remote = remote_engine_with(RemoteConfig {
            rerank_endpoints: endpoints.clone(),
            rerank_format: format,
            ..Default::default()
        });
        let got = scores(&remote, RERANK_SQL).await;
        let worst = got
            .iter()
            .zip(&local)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{endpoints:?}: max abs difference {worst}");
    }

    // The rerank cache sits in front of the remote backend too.
    let remote = remote_engine_with(RemoteConfig {
        rerank_endpoints: vec![a.clone()],
        ..Default::default()
    });
    let sent = || {
        engine_a
            .inference()
            .stats
            .rerank_inferred
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    scores(&remote, RERANK_SQL).await;
    let before = sent();
    scores(&remote, RERANK_SQL).await;
    assert_eq!(sent(), before, "a repeated rerank query reached the server");

    // Failover: a refused port and an always-500 server in the rotation change nothing.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let remote = remote_engine_with(RemoteConfig {
        rerank_endpoints: vec![dead, failing().await, b.clone()],
        ..Default::default()
    });
    let got = scores(&remote, RERANK_SQL).await;
    for (x, y) in got.iter().zip(&local) {
        assert!((x - y).abs() < 1e-5, "after failover {x} vs local {y}");
    }

    // Only failing endpoints: a clear error naming the function's backend.
    let remote = remote_engine_with(RemoteConfig {
        rerank_endpoints: vec![format!("{}/score", failing().await)],
        ..Default::default()
    });
    let err = remote
        .run_sql("SELECT rerank('q', 'd')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("every rerank endpoint failed"), "{err}");
}

/// An embeddings endpoint whose `/health` answers 200 or 503 as `healthy` says (and counts
/// its probes); every embedding request gets unit vectors along the first axis and is counted.
async fn probed_endpoint(
    healthy: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (healthy, requests) = (healthy.clone(), requests.clone());
            let probes = probes.clone();
            tokio::spawn(async move {
                let Ok(Some(request)) = common::raw_http::read_request(&mut sock).await else {
                    return;
                };
                let (status, body) = if request.head.starts_with("GET /health") {
                    probes.fetch_add(1, Ordering::SeqCst);
                    if healthy.load(Ordering::SeqCst) {
                        ("200 OK", "ok".to_string())
                    } else {
                        ("503 Service Unavailable", "down".to_string())
                    }
                } else {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let req: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
                    let n = req["input"].as_array().unwrap().len();
                    let mut unit = vec![0.0f32; 64];
                    unit[0] = 1.0;
                    let data: Vec<_> = (0..n)
                        .map(|i| serde_json::json!({"index": i, "embedding": unit}))
                        .collect();
                    ("200 OK", serde_json::json!({"data": data}).to_string())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_take_an_endpoint_out_of_rotation_and_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let probed = probed_endpoint(healthy.clone(), probes.clone(), requests.clone()).await;
    // Probes run one after another: once two more have been answered after a change, the
    // first of them has been read and applied by the pool.
    let two_more_probes = |probes: &Arc<AtomicUsize>| {
        let seen = probes.load(Ordering::SeqCst);
        let probes = probes.clone();
        move || probes.load(Ordering::SeqCst) >= seen + 2
    };
    let limit = Duration::from_secs(30);
    let (good, _engine) = server().await;
    let remote = remote_engine_with(RemoteConfig {
        embed_endpoints: vec![probed, good],
        health_interval_s: 0.2,
        ..Default::default()
    });
    let local = common::tiny_engine();
    // The first query creates the pool (and its prober); wait for it to see the failing probes.
    vectors(&remote, "SELECT embed('health round 0')").await;
    common::wait_until("health probes", limit, two_more_probes(&probes)).await;
    let out_of_rotation = requests.load(Ordering::SeqCst);
    for i in 0..6 {
        let sql = format!("SELECT embed('while out {i}')");
        let (r, l) = (vectors(&remote, &sql).await, vectors(&local, &sql).await);
        for (p, q) in r[0].iter().zip(&l[0]) {
            assert!(
                (p - q).abs() < 1e-5,
                "an answer came from the unhealthy endpoint"
            );
        }
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        out_of_rotation,
        "requests reached an endpoint whose health probe fails"
    );
    // It recovers: probes put it back and it gets its share again.
    healthy.store(true, Ordering::SeqCst);
    common::wait_until("health probes", limit, two_more_probes(&probes)).await;
    for i in 0..6 {
        vectors(&remote, &format!("SELECT embed('back in {i}')")).await;
    }
    assert!(
        requests.load(Ordering::SeqCst) > out_of_rotation,
        "the recovered endpoint got no requests"
    );
}
