//! The HTTP front end (axum), one module per API dialect over shared steps:
//! - [`openai`]: `POST /v1/embeddings`, `POST /v1/chat/completions`;
//! - [`rerank`]: `POST /v1/rerank`, `POST /v1/score` (Jina / TEI / vLLM shapes);
//! - [`cohere`]: `POST /v2/rerank`, `POST /v2/embed`;
//! - [`sql`]: `POST /v1/sql`;
//! - here: the router, `GET /health`, `GET /metrics`, and the layers every route passes
//!   (authorization, admission, request metrics); [`reply`] (errors, limits) and [`calls`]
//!   (the inference steps the dialects share) below them.
//!
//! Binds 127.0.0.1 by default; any other address needs a bearer token (or an explicit
//! `--insecure-no-auth`). Tokens are compared in constant time and never logged.

mod calls;
mod cohere;
mod openai;
mod reply;
mod rerank;
mod sql;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use self::cohere::{cohere_embed, cohere_rerank};
use self::openai::{chat, embeddings};
use self::reply::ApiError;
use self::rerank::{rerank, score};
use self::sql::sql;
use super::access::Listener;
use crate::error::{Error, Result};
use crate::inference::Inference;

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address, TLS (HTTPS), admission; the secret is the bearer token every request except
    /// /health must carry. Beyond the admission budget requests get 429 with `Retry-After`.
    pub listener: Listener,
    /// Most inputs (embeddings) or documents (rerank) per request.
    pub max_items: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest input item in tokens (embeddings: the formatted input; rerank: query plus
    /// document); beyond it 413 instead of truncation. `None`: truncate at the model's limit.
    pub max_item_tokens: Option<usize>,
    /// Most tokens in one request, all items together (413 beyond).
    pub max_request_tokens: Option<usize>,
    /// Serves `POST /v1/chat/completions` when set.
    pub chat: Option<Arc<super::chat::ChatModel>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            listener: Listener::default(),
            max_items: 2048,
            max_body_bytes: 8 << 20,
            max_item_tokens: None,
            max_request_tokens: None,
            chat: None,
        }
    }
}

/// Refuses to expose an unauthenticated or unencrypted server beyond this machine.
pub fn check_exposure(options: &HttpOptions) -> Result<()> {
    options
        .listener
        .check_exposure("--http-addr", super::access::HOW_TO_SET_A_TOKEN)
}

struct AppState {
    /// The default model and the named ones a request's `model` field can pick.
    models: Arc<crate::inference::Models>,
    /// The engine, for /v1/sql.
    engine: crate::Engine,
    options: HttpOptions,
}

impl AppState {
    /// The model a request's `model` field names with `--model NAME=SPEC`; any other value
    /// (OpenAI and Cohere clients send names of their own) gets the default model.
    fn model(&self, requested: Option<&str>) -> &Arc<Inference> {
        self.models.by_request(requested)
    }
}

/// The router, for tests and embedding in other servers.
pub fn router(engine: &crate::Engine, options: HttpOptions) -> Router {
    // Install the Prometheus recorder now: metrics recorded before it exists are dropped.
    if let Err(e) = crate::telemetry::recorder() {
        tracing::warn!("metrics disabled: {e}");
    }
    let state = Arc::new(AppState {
        models: engine.models().clone(),
        engine: engine.clone(),
        options,
    });
    let inference_routes = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/rerank", post(rerank))
        .route("/v1/score", post(score))
        .route("/v2/rerank", post(cohere_rerank))
        .route("/v2/embed", post(cohere_embed))
        .route("/v1/sql", post(sql))
        .route("/v1/chat/completions", post(chat))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    let api = Router::new()
        .merge(inference_routes)
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(api)
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .layer(middleware::from_fn(record))
        .with_state(state)
}

/// Binds and serves until `shutdown` resolves (in-flight requests are drained).
pub async fn serve(
    engine: &crate::Engine,
    options: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    check_exposure(&options)?;
    let (listener, bound) = options.listener.bind().await?;
    on_bound(bound);
    let tls = options.listener.tls.clone();
    let app = router(engine, options);
    let served = match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls.acceptor(&[b"http/1.1"]))
                .map_err(|e| Error::InvalidArgument(format!("serve: {e}")))?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    served.map_err(|e| Error::InvalidArgument(format!("serve: {e}")))
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.options.listener.secret {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !super::access::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong bearer token".into(),
                param: None,
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// Bounded concurrency (shared with the other listeners): refused requests get 429 with
/// `Retry-After` at once instead of waiting unboundedly.
async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    use super::admission::Refused;
    let _permit = match state.options.listener.admission.enter("http").await {
        Ok(permit) => permit,
        Err(refused) => {
            let status = match refused {
                Refused::Busy => StatusCode::TOO_MANY_REQUESTS,
                Refused::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut response = ApiError {
                status,
                message: refused.to_string(),
                param: None,
            }
            .into_response();
            if refused == Refused::Busy {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            return response;
        }
    };
    next.run(request).await
}

async fn record(request: Request, next: Next) -> Response {
    let route = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("semflow_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("semflow_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> std::result::Result<String, ApiError> {
    Ok(crate::telemetry::render(state.models.default_model())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_needs_a_token_or_an_explicit_opt_out() {
        let mut o = HttpOptions::default();
        assert!(check_exposure(&o).is_ok());
        o.listener.addr = "0.0.0.0:8080".parse().unwrap();
        assert!(check_exposure(&o)
            .unwrap_err()
            .to_string()
            .contains("--insecure-no-auth"));
        o.listener.secret = Some("t".into());
        // A token alone is not enough: it would travel in clear text.
        assert!(check_exposure(&o)
            .unwrap_err()
            .to_string()
            .contains("--tls-cert"));
        o.listener.insecure_no_tls = true;
        assert!(check_exposure(&o).is_ok());
        o.listener.secret = None;
        o.listener.insecure_no_auth = true;
        assert!(check_exposure(&o).is_ok());
    }
}
