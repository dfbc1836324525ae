//! The rerank shapes of the servers OpenAI-style clients also call: `POST /v1/rerank`
//! (Jina / TEI / vLLM: query + documents → ranked results) and `POST /v1/score` (vLLM: the
//! Qwen3 prompt sent as two texts, scored as given).
use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::calls::*;
use super::reply::*;
use super::AppState;
use crate::serve::api::*;

pub(super) async fn rerank(
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

pub(super) async fn score(
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
