//! The HTTP front end (axum): `POST /v1/embeddings`, `POST /v1/rerank`, `POST /v1/score`, `POST /v1/sql`,
//! `GET /health`, `GET /metrics`. Binds 127.0.0.1 by default; any other address needs a bearer token (or
//! an explicit `--insecure-no-auth`). Tokens are compared in constant time and never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;

use super::access::Listener;
use super::api::*;
use crate::error::{Error, Result};
use crate::inference::tokenize::Truncation;
use crate::inference::{prompts, truncate_dims, CallOptions, EmbedInput, Inference, RerankInput};

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

/// An API error in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use semflow_inference::Error as Inference;
        let status = match &e {
            Error::InvalidArgument(_)
            | Error::Inference(Inference::TooLong { .. } | Inference::Tokenizer(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.user_message(),
            param: None,
        }
    }
}

impl From<semflow_inference::Error> for ApiError {
    fn from(e: semflow_inference::Error) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind,
                param: self.param,
                code: None,
            },
        };
        (self.status, Json(body)).into_response()
    }
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

/// Items and tokens per request, for batch-size histograms and tokens/s (`rate()`).
fn record_batch(route: &'static str, items: usize, tokens: usize) {
    metrics::histogram!("semflow_http_batch_items", "route" => route).record(items as f64);
    metrics::counter!("semflow_http_tokens_total", "route" => route).increment(tokens as u64);
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

const OPTIONS: CallOptions = CallOptions {
    truncation: Truncation::End,
    use_cache: true,
};

async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<EmbeddingsRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<EmbeddingsResponse>, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let inference = state.model(req.model.as_deref());
    let (texts, token_ids) = match req.input {
        EmbeddingInput::One(t) => (vec![t], None),
        EmbeddingInput::Many(t) => (t, None),
        EmbeddingInput::Tokens(t) => (Vec::new(), Some(vec![t])),
        EmbeddingInput::ManyTokens(t) => (Vec::new(), Some(t)),
    };
    let items = token_ids.as_ref().map_or(texts.len(), Vec::len);
    if items == 0 {
        return Err(ApiError::bad("input", "input must not be empty"));
    }
    too_many(items, state.options.max_items, "input")?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "encoding_format",
                format!("encoding_format must be float or base64, not {other}"),
            ))
        }
    };
    let dir = inference.embed_model_dir().await?;
    let hidden = dir.config.hidden_size;
    let model = req.model.clone().unwrap_or_else(|| dir.id.clone());
    let dims = matryoshka_dims(req.dimensions, hidden, "dimensions")?;
    let instruction = req.instruction.filter(|i| !i.is_empty());
    let prompt_tokens;
    let mut lengths = Vec::with_capacity(items);
    let vectors: Vec<Arc<[f32]>> = if let Some(seqs) = token_ids {
        if instruction.is_some() {
            return Err(ApiError::bad(
                "instruction",
                "instruction applies to text input; token ids must already hold the formatted query",
            ));
        }
        lengths.extend(seqs.iter().map(|ids| prompts::embedding_length(ids)));
        check_tokens(&lengths, &state.options, "input")?;
        prompt_tokens = lengths.iter().sum();
        inference
            .embed_ids(seqs, call_options(&state.options))
            .await
            .map_err(|e| match Error::from(e) {
                Error::InvalidArgument(m) => ApiError::bad("input", m),
                other => other.into(),
            })?
    } else {
        let (vectors, tokens) = embed_texts(
            &state,
            inference,
            texts,
            instruction,
            call_options(&state.options),
            "input",
        )
        .await?;
        prompt_tokens = tokens;
        vectors
    };
    record_batch("/v1/embeddings", items, prompt_tokens);
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let v = truncate_dims(v, dims);
            let embedding = if base64 {
                EmbeddingValue::Base64(base64_floats(&v))
            } else {
                EmbeddingValue::Float(v)
            };
            EmbeddingData {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

/// Little-endian f32 bytes in base64, as OpenAI and Cohere clients decode them.
fn base64_floats(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The requested Matryoshka size (1..=hidden), or the full dimension when none is asked.
fn matryoshka_dims(
    requested: Option<usize>,
    hidden: usize,
    param: &'static str,
) -> std::result::Result<usize, ApiError> {
    match requested {
        None => Ok(hidden),
        Some(d) if (1..=hidden).contains(&d) => Ok(d),
        Some(d) => Err(ApiError::bad(
            param,
            format!("{param} must be between 1 and {hidden}, not {d}"),
        )),
    }
}

/// Embeds texts (an instruction or prompt name applied) under the server's token limits;
/// returns the vectors and the tokens counted (each input's, plus its `<|endoftext|>`).
async fn embed_texts(
    state: &AppState,
    inference: &Inference,
    texts: Vec<String>,
    instruction: Option<String>,
    opts: CallOptions,
    param: &'static str,
) -> std::result::Result<(Vec<Arc<[f32]>>, usize), ApiError> {
    let inputs: Vec<EmbedInput> = texts
        .into_iter()
        .map(|text| EmbedInput {
            text,
            instruction: instruction.clone(),
        })
        .collect();
    // Tokenized once: the counts check the limits and fill `usage`, the ids are embedded.
    let ids = inference.tokenize_embed(&inputs).await?;
    let lengths: Vec<usize> = ids
        .iter()
        .map(|ids| prompts::embedding_length(ids))
        .collect();
    check_tokens(&lengths, &state.options, param)?;
    let rows = (0..inputs.len()).collect();
    let vectors = inference.embed_tokenized(inputs, ids, rows, opts).await?;
    Ok((vectors, lengths.iter().sum()))
}

/// P(yes) of each document for `query`, under the server's token limits.
async fn rerank_scores(
    state: &AppState,
    inference: &Inference,
    query: &str,
    documents: &[RerankDocument],
    instruction: Option<String>,
    route: &'static str,
) -> std::result::Result<Vec<f32>, ApiError> {
    if documents.is_empty() {
        return Err(ApiError::bad("documents", "documents must not be empty"));
    }
    too_many(documents.len(), state.options.max_items, "documents")?;
    let inputs: Vec<RerankInput> = documents
        .iter()
        .map(|d| RerankInput {
            query: query.to_string(),
            document: d.text().to_string(),
            instruction: instruction.clone(),
        })
        .collect();
    let rows = (0..inputs.len()).collect();
    let opts = call_options(&state.options);
    let items = inputs.len();
    let scores =
        if state.options.max_item_tokens.is_some() || state.options.max_request_tokens.is_some() {
            // Counted as the reranker reads them (the whole prompt around query and document),
            // tokenized once for the count and the scores.
            let bodies = inference.tokenize_rerank(&inputs).await?;
            let lengths = inference.rerank_prompt_lengths(&bodies).await?;
            check_tokens(&lengths, &state.options, "documents")?;
            inference
                .rerank_tokenized(inputs, bodies, rows, opts)
                .await?
        } else {
            inference.rerank(inputs, rows, opts).await?
        };
    // Rerank tokens are in the inference counters (semflow_inference_rerank_tokens).
    record_batch(route, items, 0);
    Ok(scores)
}

/// Document indexes by descending score (ties by index), the first `top_n`.
fn ranked(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    order.truncate(top_n.unwrap_or(order.len()));
    order
}

async fn rerank(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<RerankRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<RerankResponse>, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let inference = state.model(req.model.as_deref());
    let instruction = req.instruction.clone().filter(|i| !i.is_empty());
    let scores = rerank_scores(
        &state,
        inference,
        &req.query,
        &req.documents,
        instruction,
        "/v1/rerank",
    )
    .await?;
    let model = match req.model.clone() {
        Some(m) => m,
        None => inference.rerank_model_name().await?,
    };
    let order = ranked(&scores, req.top_n);
    let with_documents = req.return_documents.unwrap_or(false);
    let results = order
        .into_iter()
        .map(|index| RerankResult {
            index,
            relevance_score: scores[index],
            document: with_documents.then(|| RerankResultDocument {
                text: req.documents[index].text().to_string(),
            }),
        })
        .collect();
    Ok(Json(RerankResponse { model, results }))
}

/// A request id for APIs whose answers carry one.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("semflow-{t:x}-{n}")
}

fn cohere_meta(billed: CohereBilledUnits) -> CohereMeta {
    CohereMeta {
        api_version: CohereApiVersion { version: "2" },
        billed_units: billed,
    }
}

/// `POST /v2/rerank`: Cohere's v2 rerank (the Cohere SDK's `ClientV2.rerank`).
async fn cohere_rerank(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<CohereRerankRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<CohereRerankResponse>, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let inference = state.model(req.model.as_deref());
    if let Some(max) = req.max_tokens_per_doc {
        if let Some(limit) = inference.rerank_token_limit().await?.filter(|l| max < *l) {
            return Err(ApiError::bad(
                "max_tokens_per_doc",
                format!("max_tokens_per_doc below the model's limit ({limit}) is not supported; documents are cut at {limit} tokens"),
            ));
        }
    }
    let instruction = req.instruction.clone().filter(|i| !i.is_empty());
    let scores = rerank_scores(
        &state,
        inference,
        &req.query,
        &req.documents,
        instruction,
        "/v2/rerank",
    )
    .await?;
    let results = ranked(&scores, req.top_n)
        .into_iter()
        .map(|index| RerankResult {
            index,
            relevance_score: scores[index],
            document: None,
        })
        .collect();
    Ok(Json(CohereRerankResponse {
        id: request_id(),
        results,
        meta: cohere_meta(CohereBilledUnits {
            search_units: Some(1),
            ..Default::default()
        }),
    }))
}

/// `POST /v2/embed`: Cohere's v2 embed (the Cohere SDK's `ClientV2.embed`), text only.
async fn cohere_embed(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<CohereEmbedRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<CohereEmbedResponse>, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let inference = state.model(req.model.as_deref());
    if req.images.is_some() {
        return Err(ApiError::bad("images", "semflow embeds text only"));
    }
    if req.inputs.is_some() {
        return Err(ApiError::bad(
            "inputs",
            "semflow embeds text only; send texts",
        ));
    }
    let texts = req
        .texts
        .clone()
        .ok_or_else(|| ApiError::bad("texts", "texts is required"))?;
    if texts.is_empty() {
        return Err(ApiError::bad("texts", "texts must not be empty"));
    }
    too_many(texts.len(), state.options.max_items, "texts")?;
    let instruction = match req.input_type.as_deref() {
        Some("search_query") => Some("query".to_string()),
        None | Some("search_document" | "classification" | "clustering") => None,
        Some(other) => {
            return Err(ApiError::bad(
                "input_type",
                format!("input_type must be search_query, search_document, classification or clustering, not {other}"),
            ))
        }
    };
    let types = req
        .embedding_types
        .clone()
        .unwrap_or_else(|| vec!["float".into()]);
    if let Some(t) = types
        .iter()
        .find(|t| !matches!(t.as_str(), "float" | "base64"))
    {
        return Err(ApiError::bad(
            "embedding_types",
            format!("embedding_types may hold float and base64, not {t}"),
        ));
    }
    let mut opts = call_options(&state.options);
    match req
        .truncate
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("END") => {}
        Some("NONE") => opts.truncation = Truncation::Error,
        Some(other) => {
            return Err(ApiError::bad(
                "truncate",
                format!("truncate must be END or NONE, not {other}"),
            ))
        }
    }
    let dir = inference.embed_model_dir().await?;
    let hidden = dir.config.hidden_size;
    let dims = matryoshka_dims(req.output_dimension, hidden, "output_dimension")?;
    if let Some(max) = req.max_tokens {
        let limit = inference.embed_token_limit().await?;
        if max < limit {
            return Err(ApiError::bad(
                "max_tokens",
                format!("max_tokens below the model's limit ({limit}) is not supported"),
            ));
        }
    }
    let (vectors, tokens) =
        embed_texts(&state, inference, texts.clone(), instruction, opts, "texts").await?;
    record_batch("/v2/embed", texts.len(), tokens);
    let vectors: Vec<Vec<f32>> = vectors.iter().map(|v| truncate_dims(v, dims)).collect();
    let base64 = types
        .iter()
        .any(|t| t == "base64")
        .then(|| vectors.iter().map(|v| base64_floats(v)).collect());
    let float = types.iter().any(|t| t == "float").then_some(vectors);
    Ok(Json(CohereEmbedResponse {
        id: request_id(),
        response_type: "embeddings_by_type",
        embeddings: CohereEmbeddings { float, base64 },
        texts,
        meta: cohere_meta(CohereBilledUnits {
            input_tokens: Some(tokens),
            ..Default::default()
        }),
    }))
}

async fn score(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<ScoreRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<ScoreResponse>, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let inference = state.model(req.model.as_deref());
    if req.truncate_prompt_tokens.is_some() {
        return Err(ApiError::bad(
            "truncate_prompt_tokens",
            "truncate_prompt_tokens is not supported; see --max-item-tokens",
        ));
    }
    let (a, b) = (req.text_1.as_slice(), req.text_2.as_slice());
    let pairs: Vec<(String, String)> = match (a.len(), b.len()) {
        (0, _) | (_, 0) => return Err(ApiError::bad("text_1", "text_1 and text_2 must not be empty")),
        (1, _) => b.iter().map(|t| (a[0].clone(), t.clone())).collect(),
        (_, 1) => a.iter().map(|t| (t.clone(), b[0].clone())).collect(),
        (n, m) if n == m => a.iter().cloned().zip(b.iter().cloned()).collect(),
        (n, m) => {
            return Err(ApiError::bad(
                "text_2",
                format!("text_1 has {n} texts and text_2 {m}: lists must be equally long (or one a single text)"),
            ))
        }
    };
    too_many(pairs.len(), state.options.max_items, "text_2")?;
    let model = match req.model.clone() {
        Some(m) => m,
        None => inference.rerank_model_name().await?,
    };
    let items = pairs.len();
    let scores = inference
        .score_raw_pairs(pairs, call_options(&state.options))
        .await?;
    record_batch("/v1/score", items, 0);
    let data = scores
        .into_iter()
        .enumerate()
        .map(|(index, score)| ScoreData {
            object: "score",
            index,
            score,
        })
        .collect();
    Ok(Json(ScoreResponse {
        object: "list",
        model,
        data,
    }))
}

/// Inference options for a request: with a per-item token limit, long items are refused
/// (413 before inference) rather than truncated.
fn call_options(options: &HttpOptions) -> CallOptions {
    CallOptions {
        truncation: if options.max_item_tokens.is_some() {
            Truncation::Error
        } else {
            Truncation::End
        },
        ..OPTIONS
    }
}

/// Per-item and per-request token limits (413 naming the item).
fn check_tokens(
    lengths: &[usize],
    options: &HttpOptions,
    param: &'static str,
) -> std::result::Result<(), ApiError> {
    let too_large = |message: String| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message,
        param: Some(param),
    };
    if let Some(max) = options.max_item_tokens {
        if let Some((i, n)) = lengths.iter().enumerate().find(|(_, n)| **n > max) {
            return Err(too_large(format!(
                "{param}[{i}] has {n} tokens; the limit per item is {max}"
            )));
        }
    }
    if let Some(max) = options.max_request_tokens {
        let total: usize = lengths.iter().sum();
        if total > max {
            return Err(too_large(format!(
                "the request has {total} tokens; the limit per request is {max}"
            )));
        }
    }
    Ok(())
}

/// `POST /v1/chat/completions` (404 unless the server has a chat model).
async fn chat(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<
        Json<super::chat::ChatRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let Some(model) = state.options.chat.clone() else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: "this server has no chat model; start it with --chat-model".into(),
            param: None,
        });
    };
    let Json(req) = body.map_err(rejection)?;
    model.complete(req).await.map(Json).map_err(|e| match e {
        super::chat::ChatError::Bad(b) => ApiError::bad(b.param, b.message),
        super::chat::ChatError::Failed(m) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: m,
            param: None,
        },
    })
}

/// `POST /v1/sql`: `{"sql": "...", "format": "json" | "arrow"}` → the last statement's rows
/// as JSON objects (`columns`, `rows`) or an Arrow IPC stream.
async fn sql(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Json<SqlRequest>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Response, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let arrow_format = match req.format.as_deref() {
        None | Some("json") => false,
        Some("arrow") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "format",
                format!("format must be json or arrow, not {other}"),
            ))
        }
    };
    let sql_error = |e: crate::error::Error| {
        let code = super::sqlstate::of_error(&e);
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{} (SQLSTATE {code})", e.user_message()),
            param: Some("sql"),
        }
    };
    let statements = crate::Engine::parse(&req.sql).map_err(sql_error)?;
    if statements.is_empty() {
        return Err(ApiError::bad("sql", "no statement"));
    }
    let mut last = None;
    for statement in statements {
        let r = state.engine.execute(statement).await.map_err(sql_error)?;
        last = Some((r.schema, r.batches));
    }
    let Some((schema, batches)) = last else {
        return Err(ApiError::bad("sql", "no statement"));
    };
    if arrow_format {
        let buf = crate::output::arrow_ipc_stream(&schema, &batches).map_err(sql_error)?;
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
            buf,
        )
            .into_response());
    }
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b).map_err(|e| sql_error(e.into()))?;
    }
    w.finish().map_err(|e| sql_error(e.into()))?;
    let bytes = w.into_inner();
    let rows: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("sql", e.to_string()))?
    };
    let columns: Vec<SqlColumn> = schema
        .fields()
        .iter()
        .map(|f| SqlColumn {
            name: f.name().clone(),
            r#type: f.data_type().to_string(),
        })
        .collect();
    let row_count = batches.iter().map(|b| b.num_rows()).sum();
    Ok(Json(SqlResponse {
        columns,
        rows,
        row_count,
    })
    .into_response())
}

fn too_many(n: usize, max: usize, param: &'static str) -> std::result::Result<(), ApiError> {
    if n > max {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("{n} {param} in one request; the limit is {max}"),
            param: Some(param),
        });
    }
    Ok(())
}

fn rejection(r: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError {
        status: r.status(),
        message: r.body_text(),
        param: None,
    }
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
