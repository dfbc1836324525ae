//! Prometheus metrics: the process-wide recorder, the text both `semflow run` and
//! `semflow serve` answer `GET /metrics` with (everything recorded plus the inference
//! counters), and the standalone endpoint `semflow run` starts.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, Result};
use crate::inference::Inference;

/// Why the metrics endpoint could not listen on `addr`; a port in use (a second pipeline on
/// the machine, usually) names the way out.
fn bind_failed(addr: SocketAddr, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there: pass --metrics-addr with a free HOST:PORT, or --metrics-addr off)"
        }
        _ => "",
    };
    Error::Pipeline(format!("--metrics-addr {addr}: {e}{hint}"))
}

/// Installs the process-wide recorder (once) and serves [`render`] at `/metrics` on `addr`;
/// returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, inference: Arc<Inference>) -> Result<SocketAddr> {
    recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bind_failed(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Pipeline(format!("--metrics-addr {addr}: {e}")))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let inference = inference.clone();
            async move {
                render(&inference)
                    .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

/// Everything recorded, as Prometheus text, with the inference counters refreshed first.
pub fn render(inference: &Inference) -> Result<String> {
    let handle = recorder()?;
    for (name, value) in inference.stats_rows() {
        metrics::gauge!(format!("semflow_inference_{name}")).set(value as f64);
    }
    Ok(handle.render())
}

/// How often recorded histogram samples are folded into their summaries.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed on first use).
pub fn recorder() -> Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Pipeline(format!("metrics recorder: {e}")))?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    // Histograms keep every sample until drained: without this, a process nobody scrapes
    // grows by each sample it records (install_recorder leaves the upkeep to the caller).
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })
        .map_err(|e| Error::Pipeline(format!("metrics upkeep thread: {e}")))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_names_the_flag_and_off() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = std::net::TcpListener::bind(addr).unwrap_err();
        let message = bind_failed(addr, e).to_string();
        assert!(
            message.contains(&format!("--metrics-addr {addr}")),
            "{message}"
        );
        assert!(message.contains("--metrics-addr off"), "{message}");
    }
}
