//! The backends behind one trait per task, as text-embeddings-inference shapes them: an
//! [`EmbedBackend`] turns finished token sequences into unit vectors, a [`ScoreBackend`] turns
//! reranker prompts into P(yes). Formatting, tokenizing, dedupe and caching are the core's
//! ([`super::service`]); a backend only runs a model (packed candle, mistral.rs) or forwards
//! to endpoints (remote). Remote endpoints that tokenize themselves say so
//! ([`EmbedBackend::takes_text`], [`ScoreBackend::takes_inputs`]) and get text instead.

use async_trait::async_trait;

use super::config::{BackendKind, InferenceConfig};
#[cfg(feature = "mistralrs")]
use super::local::{LocalEmbedder, LocalReranker};
use super::packed::{PackedScorer, PackedWorker};
use super::remote;
use super::service::RerankInput;
use crate::error::{Error, Result};
use crate::model::dir::ModelDir;

/// Embedding backends.
#[async_trait]
pub trait EmbedBackend: Send + Sync {
    /// Unit vectors for token sequences, each ending in `<|endoftext|>`, in order.
    async fn embed_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>>;

    /// Whether the backend reads formatted text and tokenizes it itself.
    fn takes_text(&self) -> bool {
        false
    }

    /// Unit vectors for formatted texts; only for backends that [take text](Self::takes_text).
    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let _ = texts;
        Err(Error::Inference(
            "this embedding backend reads token ids, not text".into(),
        ))
    }
}

/// Reranking backends.
#[async_trait]
pub trait ScoreBackend: Send + Sync {
    /// P(yes) for whole reranker prompts as token ids, in order.
    async fn score_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>>;

    /// Whether the backend reads (query, document, instruction) and builds prompts itself.
    fn takes_inputs(&self) -> bool {
        false
    }

    /// P(yes) per input; only for backends that [take inputs](Self::takes_inputs).
    async fn score_inputs(&self, inputs: Vec<RerankInput>) -> Result<Vec<f32>> {
        let _ = inputs;
        Err(Error::Inference(
            "this reranking backend reads token ids, not texts".into(),
        ))
    }
}

/// The embedding backend `cfg` asks for, loaded from `dir`: endpoints when configured,
/// otherwise the local backend.
pub async fn load_embedder(dir: ModelDir, cfg: &InferenceConfig) -> Result<Box<dyn EmbedBackend>> {
    if cfg.remote.serves_embeddings() {
        return Ok(Box::new(remote::RemoteEmbedder::new(
            dir,
            cfg.remote.clone(),
        )?));
    }
    Ok(match cfg.backend {
        BackendKind::Packed => Box::new(PackedWorker::start(dir, cfg.load, false).await?),
        #[cfg(feature = "mistralrs")]
        BackendKind::MistralRs => Box::new(LocalEmbedder::load(dir, cfg.load).await?),
        #[cfg(not(feature = "mistralrs"))]
        BackendKind::MistralRs => return Err(super::config::without_mistralrs("--backend")),
    })
}

/// The local reranking backend `cfg` asks for, loaded from `dir`.
pub async fn load_local_scorer(
    dir: ModelDir,
    cfg: &InferenceConfig,
) -> Result<Box<dyn ScoreBackend>> {
    Ok(match cfg.backend {
        BackendKind::Packed => Box::new(PackedScorer(
            PackedWorker::start(dir, cfg.load, true).await?,
        )),
        #[cfg(feature = "mistralrs")]
        BackendKind::MistralRs => Box::new(LocalReranker::load(dir, cfg.load).await?),
        #[cfg(not(feature = "mistralrs"))]
        BackendKind::MistralRs => return Err(super::config::without_mistralrs("--backend")),
    })
}

#[async_trait]
impl EmbedBackend for PackedWorker {
    async fn embed_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        self.run(seqs).await
    }
}

#[async_trait]
impl ScoreBackend for PackedScorer {
    async fn score_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        self.score(seqs).await
    }
}

#[cfg(feature = "mistralrs")]
#[async_trait]
impl EmbedBackend for LocalEmbedder {
    async fn embed_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        LocalEmbedder::embed_ids(self, &seqs).await
    }
}

#[cfg(feature = "mistralrs")]
#[async_trait]
impl ScoreBackend for LocalReranker {
    async fn score_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        LocalReranker::score_ids(self, &seqs).await
    }
}

#[async_trait]
impl EmbedBackend for remote::RemoteEmbedder {
    async fn embed_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        remote::RemoteEmbedder::embed_ids(self, &seqs).await
    }

    fn takes_text(&self) -> bool {
        remote::RemoteEmbedder::takes_text(self)
    }

    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        remote::RemoteEmbedder::embed_texts(self, &texts).await
    }
}

#[async_trait]
impl ScoreBackend for remote::RemoteReranker {
    async fn score_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        let _ = seqs;
        Err(Error::InvalidArgument(format!(
            "token prompts cannot be scored on remote rerank endpoints ({})",
            self.identity()
        )))
    }

    fn takes_inputs(&self) -> bool {
        true
    }

    async fn score_inputs(&self, inputs: Vec<RerankInput>) -> Result<Vec<f32>> {
        let refs: Vec<&RerankInput> = inputs.iter().collect();
        self.score(&refs).await
    }
}
