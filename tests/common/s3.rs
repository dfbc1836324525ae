//! A local S3-compatible object store for tests: moto's server (PyPI `moto[server]`, which
//! honours conditional puts, `If-None-Match: *`, as Lance's commits need) on a free loopback
//! port, one per test binary, and a bucket per test. Lance reaches it through the standard AWS
//! environment variables, set for this process and so inherited by every `semflow` it starts,
//! as a user's deployment would set them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::kafka::unique;

/// Starts moto on 127.0.0.1:0 and prints its port; it stops when its stdin closes, that is
/// when the test binary exits however it exits, so no server outlives its tests.
const LAUNCHER: &str = "
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
";

/// The running store.
pub struct S3 {
    pub endpoint: String,
    /// Where the server listens (127.0.0.1 and a free port).
    pub addr: std::net::SocketAddr,
    /// Kept so its stdin stays open while the tests run.
    _server: Child,
}

/// The store, started on first use. `None`, with a message, when moto is not installed —
/// unless `SEMFLOW_TEST_S3=required` (CI installs it), then the test fails.
pub fn store() -> Option<&'static S3> {
    static STORE: OnceLock<Option<S3>> = OnceLock::new();
    STORE.get_or_init(start).as_ref()
}

fn start() -> Option<S3> {
    let required = std::env::var("SEMFLOW_TEST_S3").as_deref() == Ok("required");
    let python = std::env::var("SEMFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    // Its log goes to a file: a pipe nobody drains would fill, and moto would then block
    // on every request it logs.
    let log_path = std::env::temp_dir().join(format!("semflow-moto-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("moto's log file");
    let mut child = Command::new(python)
        .args(["-c", LAUNCHER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("moto's port");
    let Ok(port) = line.trim().parse::<u16>() else {
        let _ = child.wait();
        let err = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !required && err.contains("No module named") {
            eprintln!("moto is not installed: skipped (pip install 'moto[server]')");
            return None;
        }
        panic!("moto did not start: {err}");
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    // Before any thread of this process reads them: the tests set them once, first thing.
    for (name, value) in [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "semflow-test"),
        ("AWS_SECRET_ACCESS_KEY", "semflow-test"),
    ] {
        std::env::set_var(name, value);
    }
    Some(S3 {
        endpoint,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        _server: child,
    })
}

impl S3 {
    /// A new bucket; returns its name.
    pub async fn bucket(&self, prefix: &str) -> String {
        let name = unique(prefix).to_lowercase();
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "creating bucket {name}: {}",
            response.status()
        );
        name
    }
}

/// Moves `setup`'s index to a new bucket on the store (rewriting its pipeline file).
pub async fn index_on_s3(store: &S3, setup: &mut super::pipeline::Setup) {
    let location = format!("s3://{}/idx.lance", store.bucket("idx").await);
    let text = std::fs::read_to_string(&setup.pipeline).unwrap();
    let changed = text.replace(
        &format!("LOCATION '{}'", setup.location),
        &format!("LOCATION '{location}'"),
    );
    assert_ne!(text, changed, "the pipeline names no index location");
    std::fs::write(&setup.pipeline, changed).unwrap();
    setup.location = location;
}
