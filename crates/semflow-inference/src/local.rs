//! The in-process backend: Qwen3-Embedding and Qwen3-Reranker on mistral.rs.
//!
//! Inputs arrive as token ids (semflow tokenizes and formats them itself, see `prompts`), so
//! what the model sees is exactly the paper's format. mistral.rs's scheduler batches only
//! sequences of equal length, so callers submit many inputs at once, sorted by length: equal
//! lengths then meet in the scheduler's queue and share forward passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use mistralrs::{
    Constraint, CustomLogitsProcessor, DType, EmbeddingModelBuilder, Model, NormalRequest, Request,
    RequestMessage, SamplingParams, Tensor, TextModelBuilder, TokenSource,
};

use super::config::{BackendKind, LoadOptions};
use super::device::{DTypeSpec, DeviceSpec, Precision};
use super::prompts::{p_yes, NO_TOKEN_ID, YES_TOKEN_ID};
use super::single_token::single_token_embedding;
use crate::error::{Error, Result};
use crate::model::dir::ModelDir;

/// mistral.rs's name for a resolved precision.
fn model_dtype(precision: Precision) -> mistralrs::ModelDType {
    match precision {
        Precision::F32 => mistralrs::ModelDType::F32,
        Precision::F16 => mistralrs::ModelDType::F16,
        Precision::Bf16 => mistralrs::ModelDType::BF16,
        Precision::Auto => mistralrs::ModelDType::Auto,
    }
}

fn inference_err(model: &str, e: impl std::fmt::Display) -> Error {
    Error::Inference(format!("{model}: {e}"))
}

/// A loaded embedding model.
pub struct LocalEmbedder {
    pub dir: ModelDir,
    model: Model,
    /// One-token inputs (only `<|endoftext|>` alone in practice), computed on first use.
    single: Mutex<HashMap<u32, Vec<f32>>>,
}

impl LocalEmbedder {
    pub async fn load(dir: ModelDir, opts: LoadOptions) -> Result<Self> {
        require_top_level_rope_theta(&dir)?;
        let dtype = model_dtype(opts.precision(BackendKind::MistralRs)?);
        // The loader is named, not read from config.json: sentence-transformers fine-tunes say
        // `Qwen3Model`, which mistral.rs's architecture lookup does not know.
        let mut builder = EmbeddingModelBuilder::new(dir.path.to_string_lossy())
            .with_loader_type(mistralrs_core::EmbeddingLoaderType::Qwen3Embedding)
            .with_token_source(TokenSource::None)
            .with_tokenizer_json(dir.path.join("tokenizer.json").to_string_lossy())
            .with_dtype(dtype)
            .with_max_num_seqs(opts.max_batch);
        builder = match opts.device {
            DeviceSpec::Cpu => builder.with_force_cpu(),
            d => builder.with_device(DTypeSpec::device(d)?),
        };
        let model = builder
            .build()
            .await
            .map_err(|e| Error::model(&dir.id, format!("loading failed: {e:#}")))?;
        Ok(Self {
            dir,
            model,
            single: Mutex::new(HashMap::new()),
        })
    }

    /// Embedding dimension (the hidden size).
    pub fn dim(&self) -> usize {
        self.dir.config.hidden_size
    }

    /// Embeds token sequences (each ending in `<|endoftext|>`); returns unit vectors in order.
    pub async fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        let (singles, multi): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&i| seqs[i].len() <= 1);
        for i in singles {
            let token = *seqs[i]
                .first()
                .ok_or_else(|| Error::Inference("empty token sequence".into()))?;
            out[i] = self.single_token(token)?;
        }
        if !multi.is_empty() {
            let request = mistralrs::EmbeddingRequest::builder()
                .add_tokens_batch(multi.iter().map(|&i| seqs[i].clone()));
            let vectors = self
                .model
                .generate_embeddings(request)
                .await
                .map_err(|e| inference_err(&self.dir.id, e))?;
            if vectors.len() != multi.len() {
                return Err(inference_err(
                    &self.dir.id,
                    format!("{} embeddings for {} inputs", vectors.len(), multi.len()),
                ));
            }
            for (i, v) in multi.into_iter().zip(vectors) {
                if v.len() != self.dim() {
                    return Err(inference_err(
                        &self.dir.id,
                        format!("embedding of length {} (expected {})", v.len(), self.dim()),
                    ));
                }
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn single_token(&self, token: u32) -> Result<Vec<f32>> {
        let mut cache = self
            .single
            .lock()
            .map_err(|_| Error::Inference("single-token cache poisoned".into()))?;
        if let Some(v) = cache.get(&token) {
            return Ok(v.clone());
        }
        let v = single_token_embedding(&self.dir, token)?;
        cache.insert(token, v.clone());
        Ok(v)
    }
}

/// A loaded reranker: a Qwen3 causal LM whose last-position "yes"/"no" logits give P(yes).
pub struct LocalReranker {
    pub dir: ModelDir,
    model: Model,
}

/// mistral.rs reads `config.json` itself and requires a top-level `rope_theta`; configs written
/// by transformers 5 keep it in `rope_parameters` only. Say so instead of mistral.rs's
/// "missing field".
fn require_top_level_rope_theta(dir: &ModelDir) -> Result<()> {
    let path = dir.path.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
    if json.get("rope_theta").is_none() {
        return Err(Error::model(
            &dir.id,
            "config.json has rope_theta only inside rope_parameters, which the mistralrs backend cannot read; use --backend packed (the default)",
        ));
    }
    Ok(())
}

/// Loads a Qwen3 causal LM directory offline on mistral.rs (the reranker, and the chat model
/// of `semflow serve --chat-model`).
pub async fn load_causal_lm(
    dir: &ModelDir,
    opts: LoadOptions,
    prefix_cache: bool,
    loader: Option<mistralrs::NormalLoaderType>,
) -> Result<Model> {
    require_top_level_rope_theta(dir)?;
    let dtype = model_dtype(opts.precision(BackendKind::MistralRs)?);
    let mut builder = TextModelBuilder::new(dir.path.to_string_lossy())
        .with_token_source(TokenSource::None)
        .with_tokenizer_json(dir.path.join("tokenizer.json").to_string_lossy())
        .with_dtype(dtype)
        .with_max_num_seqs(opts.max_batch);
    if let Some(loader) = loader {
        builder = builder.with_loader_type(loader);
    }
    if !prefix_cache {
        builder = builder.with_prefix_cache_n(None);
    }
    builder = match opts.device {
        DeviceSpec::Cpu => builder.with_force_cpu(),
        d => builder.with_device(DTypeSpec::device(d)?),
    };
    builder
        .build()
        .await
        .map_err(|e| Error::model(&dir.id, format!("loading failed: {e:#}")))
}

impl LocalReranker {
    pub async fn load(dir: ModelDir, opts: LoadOptions) -> Result<Self> {
        // Scores are one forward pass each; a prefix cache would only hold memory.
        // Named, not read from config.json (a fine-tune may not say Qwen3ForCausalLM).
        let model =
            load_causal_lm(&dir, opts, false, Some(mistralrs::NormalLoaderType::Qwen3)).await?;
        Ok(Self { dir, model })
    }

    /// P(yes) for each full prompt (token ids from `QwenTokenizer::finish_rerank_ids`).
    pub async fn score_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let futures = order.iter().map(|&i| self.score_one(seqs[i].clone()));
        let scores = join_all(futures).await;
        let mut out = vec![0.0f32; seqs.len()];
        for (i, s) in order.into_iter().zip(scores) {
            out[i] = s?;
        }
        Ok(out)
    }

    /// One prompt, one generated token. The "yes"/"no" logits are read by a logits processor
    /// at the last prompt position: unlike mistral.rs's raw-logits responses (batch size 1
    /// only), this lets the scheduler batch equal-length prompts together.
    async fn score_one(&self, ids: Vec<u32>) -> Result<f32> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let mut sampling = SamplingParams::deterministic();
        sampling.max_len = Some(1);
        let capture = Arc::new(CaptureYesNo::default());
        let request = Request::Normal(Box::new(NormalRequest {
            messages: RequestMessage::CompletionTokens(ids),
            sampling_params: sampling,
            response: tx,
            return_logprobs: false,
            is_streaming: false,
            id: 0,
            constraint: Constraint::None,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![capture.clone() as Arc<dyn CustomLogitsProcessor>]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        let sender = self
            .model
            .inner()
            .get_sender(None)
            .map_err(|e| inference_err(&self.dir.id, e))?;
        sender
            .send(request)
            .await
            .map_err(|e| inference_err(&self.dir.id, e))?;
        rx.recv()
            .await
            .ok_or_else(|| inference_err(&self.dir.id, "engine closed the response channel"))?
            .as_result()
            .map_err(|e| inference_err(&self.dir.id, e))?;
        let (yes, no) = capture
            .take()
            .ok_or_else(|| inference_err(&self.dir.id, "no logits were produced for the prompt"))?;
        Ok(p_yes(yes, no))
    }
}

/// Records the "yes" and "no" logits of the first (and only) sampling step.
#[derive(Default)]
struct CaptureYesNo {
    slot: Mutex<Option<(f32, f32)>>,
}

impl CaptureYesNo {
    fn take(&self) -> Option<(f32, f32)> {
        self.slot.lock().ok().and_then(|mut s| s.take())
    }
}

impl CustomLogitsProcessor for CaptureYesNo {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> candle_core::Result<Tensor> {
        let flat = logits.flatten_all()?.to_dtype(DType::F32)?;
        let yes = flat.get(YES_TOKEN_ID as usize)?.to_scalar::<f32>()?;
        let no = flat.get(NO_TOKEN_ID as usize)?.to_scalar::<f32>()?;
        if let Ok(mut slot) = self.slot.lock() {
            // Keep the first step only: that is the last prompt position.
            slot.get_or_insert((yes, no));
        }
        Ok(logits.clone())
    }
}
