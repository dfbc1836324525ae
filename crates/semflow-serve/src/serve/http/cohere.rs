//! Cohere's v2 API: `POST /v2/rerank` and `POST /v2/embed` (the Cohere SDK's `ClientV2`), with
//! its request ids, `meta.billed_units` and typed embeddings.
use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::calls::*;
use super::reply::*;
use super::AppState;
use crate::inference::tokenize::Truncation;
use crate::inference::truncate_dims;
use crate::serve::api::*;

/// A request id for APIs whose answers carry one.
pub(super) fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("semflow-{t:x}-{n}")
}

pub(super) fn cohere_meta(billed: CohereBilledUnits) -> CohereMeta {
    CohereMeta {
        api_version: CohereApiVersion { version: "2" },
        billed_units: billed,
    }
}

/// `POST /v2/rerank`: Cohere's v2 rerank (the Cohere SDK's `ClientV2.rerank`).
pub(super) async fn cohere_rerank(
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
pub(super) async fn cohere_embed(
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
