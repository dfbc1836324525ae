//! embed() on remote endpoints: semflow serve instances as the fleet. Same vectors as the
//! local backend (within 1e-5), spread over endpoints, the cache in front, and failover past
//! a dead endpoint and one that answers 500.

mod common;

use std::net::SocketAddr;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use semflow::inference::remote::RemoteConfig;
use semflow::serve::http::{serve, HttpOptions};
use semflow::{Engine, InferenceConfig};

async fn server() -> (String, Engine) {
    let engine = common::tiny_engine();
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let e = engine.clone();
    tokio::spawn(async move {
        let options = HttpOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..HttpOptions::default()
        };
        serve(&e, options, std::future::pending(), move |a| {
            let _ = tx.send(a);
        })
        .await
        .unwrap();
    });
    (format!("http://{}/v1", rx.await.unwrap()), engine)
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
    Engine::new(InferenceConfig {
        remote: RemoteConfig {
            embed_endpoints: endpoints,
            timeout_s: 10.0,
            max_attempts: 4,
            ..Default::default()
        },
        ..common::tiny_config()
    })
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
