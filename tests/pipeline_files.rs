//! The README's walkthrough with the shipped files: produce sample documents
//! (pipelines/sample-docs.sql), run pipelines/index.sql, pipelines/index.toml and
//! pipelines/index-chunks.sql with `semflow run` (metrics endpoint on), stop them with
//! SIGTERM, search the index (pipelines/search.sql) and read the chunks.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{bootstrap, unique};

fn semflow(env: &[(&str, String)]) -> Command {
    let mut c = common::semflow_command();
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of an unlabelled Prometheus counter in `text`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn run_pipeline(file: &str, env: &[(&str, String)], expect_rows: f64) {
    let mut child = semflow(env)
        .args(["run", file, "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = loop {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("metrics on http://")
                .and_then(|r| r.strip_suffix("/metrics"))
                .map(String::from)
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address: {:?}",
            lines.lock().unwrap()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Poll /metrics until `ready` holds for its text (or the deadline passes).
    let wait_for = |what: &str, ready: &dyn Fn(&str) -> bool| -> String {
        loop {
            let text = http_get(&addr, "/metrics");
            if ready(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}; metrics:\n{text}\nlog: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let text = wait_for("rows not written", &|text| {
        metric(text, "semflow_pipeline_rows_written_total") == Some(expect_rows)
    });
    assert!(text.contains("semflow_pipeline_commit_seconds"), "{text}");
    assert!(text.contains("semflow_pipeline_position{"), "{text}");
    assert!(text.contains("semflow_inference_"), "{text}");
    // Consumer lag comes from librdkafka's statistics (every 5 s): once everything is
    // committed (and reported to the group) every partition's lag reads 0.
    wait_for("consumer lag not reported as 0", &|text| {
        let lags: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("semflow_kafka_consumer_lag{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        !lags.is_empty() && lags.iter().all(|l| *l == 0.0)
    });
    let status = common::sigterm(&mut child);
    reader.join().unwrap();
    let log = lines.lock().unwrap().join("\n");
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("stopped:"), "{log}");
}

fn search(env: &[(&str, String)]) -> String {
    let out = semflow(env)
        .args(["sql", "-f", "pipelines/search.sql", "--format", "csv"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn readme_walkthrough_with_the_shipped_pipelines() {
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/index.sql")
        .is_file());
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("walk");
    let base = [("SEMFLOW_KAFKA", bootstrap()), ("SEMFLOW_TOPIC", topic)];
    let out = semflow(&base)
        .args(["sql", "-f", "pipelines/sample-docs.sql"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (file, name) in [
        ("pipelines/index.sql", "sql"),
        ("pipelines/index.toml", "toml"),
    ] {
        let mut env = base.to_vec();
        env.push(("SEMFLOW_GROUP", unique(name)));
        env.push((
            "SEMFLOW_INDEX",
            dir.path().join(name).to_string_lossy().into_owned(),
        ));
        run_pipeline(file, &env, 5.0);
        let csv = search(&env);
        let lines: Vec<&str> = csv.lines().collect();
        // count + model, then the top three documents with scores
        assert!(lines[1].starts_with("5,"), "{csv}");
        assert!(lines[1].contains('@'), "model fingerprint: {csv}");
        assert_eq!(lines[2], "id,title,score", "{csv}");
        assert_eq!(lines.len(), 6, "{csv}");
    }

    // pipelines/index-chunks.sql: the sample documents are short, one chunk each.
    let mut env = base.to_vec();
    env.push(("SEMFLOW_GROUP", unique("chunks")));
    let chunks = dir.path().join("chunks").to_string_lossy().into_owned();
    env.push(("SEMFLOW_INDEX", chunks.clone()));
    run_pipeline("pipelines/index-chunks.sql", &env, 5.0);
    let query = dir.path().join("chunks.sql");
    std::fs::write(
        &query,
        format!(
            "CREATE EXTERNAL TABLE chunks STORED AS LANCE LOCATION '{chunks}';
             SELECT chunk_id, doc_id, seq, text = body AS whole FROM chunks
             JOIN (VALUES ('rust', 'Rust is a systems programming language focused on safety and speed.')) AS d(id, body)
             ON doc_id = d.id;"
        ),
    )
    .unwrap();
    let out = semflow(&env)
        .args(["sql", "-f", query.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(csv.contains("rust#0,rust,0,true"), "{csv}");
}
