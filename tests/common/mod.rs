//! Shared test helpers: random tiny models written once per build, and engines over them.
#![allow(dead_code)]

pub mod fake_llm;
pub mod hub;
pub mod kafka;
pub mod layouts;
pub mod pipeline;
pub mod raw_http;

use std::path::PathBuf;
use std::sync::OnceLock;

use semflow::inference::BackendKind;
use semflow::model::config::Preset;
use semflow::model::random::{write_random_model, ModelKind, RandomModelSpec, WeightDtype};
use semflow::{Engine, InferenceConfig};

/// Seeds of the parity fixture's models (scripts/parity_reference.py).
pub const EMBED_SEED: u64 = 42;
pub const RERANK_SEED: u64 = 43;

/// A random tiny model directory, written once under Cargo's test temp dir.
pub fn tiny_model(kind: ModelKind, seed: u64) -> PathBuf {
    random_model(kind, Preset::Tiny, seed)
}

/// A random model directory of any preset, written once under Cargo's test temp dir.
pub fn random_model(kind: ModelKind, preset: Preset, seed: u64) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    let name = match preset {
        Preset::Tiny => format!("{kind:?}-tiny-f32-{seed}"),
        other => format!("{kind:?}-{other:?}-f32-{seed}"),
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("models")
        .join(name);
    if !dir.join("model.safetensors").is_file() {
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let spec = RandomModelSpec {
            kind,
            preset,
            seed,
            dtype: WeightDtype::F32,
        };
        write_random_model(&spec, &tmp).unwrap();
        std::fs::rename(&tmp, &dir).unwrap();
    }
    dir
}

/// Engine settings over the parity models.
pub fn tiny_config() -> InferenceConfig {
    tiny_config_with(BackendKind::Packed)
}

/// Engine settings over the parity models with a chosen backend.
pub fn tiny_config_with(backend: BackendKind) -> InferenceConfig {
    InferenceConfig {
        backend,
        embed_model: tiny_model(ModelKind::Embedding, EMBED_SEED)
            .to_string_lossy()
            .into_owned(),
        rerank_model: tiny_model(ModelKind::Reranker, RERANK_SEED)
            .to_string_lossy()
            .into_owned(),
        ..InferenceConfig::default()
    }
}

pub fn tiny_engine() -> Engine {
    Engine::new(tiny_config())
}

/// A JSON array of numbers as f64s.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `semflow serve`'s HTTP API over `engine`, in-process on 127.0.0.1:0; returns its address.
pub async fn serve_http(engine: Engine) -> std::net::SocketAddr {
    use semflow::serve::http::{serve, HttpOptions};
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let options = HttpOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..HttpOptions::default()
        };
        serve(&engine, options, std::future::pending(), move |a| {
            let _ = tx.send(a);
        })
        .await
        .unwrap();
    });
    rx.await.unwrap()
}

/// Whether `psql` can be run; CI (SEMFLOW_TEST_PSQL=required) fails instead of skipping.
pub fn psql_available() -> bool {
    let required = std::env::var("SEMFLOW_TEST_PSQL").as_deref() == Ok("required");
    if std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!required, "psql is not installed");
        eprintln!("psql not installed: skipped");
        return false;
    }
    true
}
