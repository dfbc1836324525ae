//! `GET /metrics` (Prometheus text) for a running pipeline: the pipeline's counters and
//! histograms plus the inference counters.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, Result};
use crate::inference::Inference;

/// Installs the process-wide recorder (once) and serves it on `addr`; returns the bound
/// address (port 0 picks one).
pub async fn serve(addr: SocketAddr, inference: Arc<Inference>) -> Result<SocketAddr> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Pipeline(format!("--metrics-addr {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Pipeline(format!("--metrics-addr {addr}: {e}")))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            let inference = inference.clone();
            async move {
                for (name, value) in inference.stats_rows() {
                    metrics::gauge!(format!("semflow_inference_{name}")).set(value as f64);
                }
                handle.render()
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

/// The process-wide Prometheus recorder (installed on first use).
pub fn recorder() -> Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Pipeline(format!("metrics recorder: {e}")))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}
