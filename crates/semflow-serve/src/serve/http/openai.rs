//! OpenAI's shapes: `POST /v1/embeddings` (texts or token ids) and `POST /v1/chat/completions`
//! (the self-hosted generator, when the server has one).
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::calls::*;
use super::reply::*;
use super::AppState;
use crate::error::Error;
use crate::inference::{prompts, truncate_dims};
use crate::serve::api::*;

pub(super) async fn embeddings(
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

/// `POST /v1/chat/completions` (404 unless the server has a chat model).
pub(super) async fn chat(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<
        Json<crate::serve::chat::ChatRequest>,
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
        crate::serve::chat::ChatError::Bad(b) => ApiError::bad(b.param, b.message),
        crate::serve::chat::ChatError::Failed(m) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: m,
            param: None,
        },
    })
}
