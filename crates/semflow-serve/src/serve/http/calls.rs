//! The inference steps the dialects share: embedding texts and scoring documents under the
//! server's token limits, ranking, Matryoshka sizes and base64 vectors.
use std::sync::Arc;

use base64::Engine as _;

use super::reply::*;
use super::AppState;
use crate::inference::{prompts, CallOptions, EmbedInput, Inference, RerankInput};
use crate::serve::api::*;

/// Little-endian f32 bytes in base64, as OpenAI and Cohere clients decode them.
pub(super) fn base64_floats(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The requested Matryoshka size (1..=hidden), or the full dimension when none is asked.
pub(super) fn matryoshka_dims(
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
pub(super) async fn embed_texts(
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
pub(super) async fn rerank_scores(
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
pub(super) fn ranked(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    order.truncate(top_n.unwrap_or(order.len()));
    order
}
