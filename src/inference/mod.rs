//! Inference: turning texts into embeddings and (query, document) pairs into relevance.
//!
//! [`Inference`] is what SQL functions call. It owns the models (loaded lazily on first use),
//! deduplicates a batch's inputs, serves repeats from a content cache, formats and tokenizes
//! inputs in the Qwen3 formats, and hands token ids to the backend. Model work runs on a
//! dedicated runtime ([`block_on`]), never on DataFusion's threads.

pub mod cache;
pub mod cpu_kernels;
pub mod device;
pub mod local;
pub mod named;
pub mod packed;
pub mod prompts;
pub mod remote;
pub mod single_token;
pub mod tokenize;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::OnceCell;

use self::cache::{cache_key, ContentCache};
use self::local::{LoadOptions, LocalEmbedder, LocalReranker};
use self::packed::PackedWorker;
use self::tokenize::{QwenTokenizer, TooLong, Truncation};
use crate::error::{Error, Result};
use crate::model::dir::{Files, ModelDir, Role};

pub use self::named::{Models, NamedModel};

/// Which implementation runs the models (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// semflow's packed, padding-free Qwen3 forward pass on candle: mixed lengths batch
    /// together. The default.
    #[default]
    Packed,
    /// mistral.rs's pipelines (batches only equal-length inputs together).
    MistralRs,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "packed" => Ok(BackendKind::Packed),
            "mistralrs" | "mistral.rs" => Ok(BackendKind::MistralRs),
            other => Err(Error::InvalidArgument(format!(
                "--backend must be packed or mistralrs, got '{other}'"
            ))),
        }
    }
}

/// A loaded embedding model behind either backend, or remote endpoints.
enum Embedder {
    Packed(PackedWorker),
    MistralRs(LocalEmbedder),
    Remote(remote::RemoteEmbedder),
}

impl Embedder {
    async fn load(dir: ModelDir, cfg: &InferenceConfig) -> Result<Self> {
        if !cfg.remote.embed_endpoints.is_empty() {
            return Ok(Embedder::Remote(remote::RemoteEmbedder::new(
                dir,
                cfg.remote.clone(),
            )?));
        }
        Ok(match cfg.backend {
            BackendKind::Packed => {
                Embedder::Packed(PackedWorker::start(dir, cfg.load, false).await?)
            }
            BackendKind::MistralRs => {
                Embedder::MistralRs(LocalEmbedder::load(dir, cfg.load).await?)
            }
        })
    }

    fn dir(&self) -> &ModelDir {
        match self {
            Embedder::Packed(worker) => &worker.dir,
            Embedder::MistralRs(m) => &m.dir,
            Embedder::Remote(r) => &r.dir,
        }
    }

    /// The remote embedder when it takes formatted text instead of token ids.
    fn text_endpoint(&self) -> Option<&remote::RemoteEmbedder> {
        match self {
            Embedder::Remote(r) if r.takes_text() => Some(r),
            _ => None,
        }
    }

    async fn embed_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        match self {
            Embedder::Packed(worker) => worker.run(seqs).await,
            Embedder::MistralRs(m) => m.embed_ids(&seqs).await,
            Embedder::Remote(r) => r.embed_ids(&seqs).await,
        }
    }
}

/// A loaded reranker behind either backend.
enum Reranker {
    Packed(PackedWorker),
    MistralRs(LocalReranker),
}

impl Reranker {
    async fn load(dir: ModelDir, cfg: &InferenceConfig) -> Result<Self> {
        Ok(match cfg.backend {
            BackendKind::Packed => {
                Reranker::Packed(PackedWorker::start(dir, cfg.load, true).await?)
            }
            BackendKind::MistralRs => {
                Reranker::MistralRs(LocalReranker::load(dir, cfg.load).await?)
            }
        })
    }

    fn dir(&self) -> &ModelDir {
        match self {
            Reranker::Packed(worker) => &worker.dir,
            Reranker::MistralRs(m) => &m.dir,
        }
    }

    async fn score_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        match self {
            Reranker::Packed(worker) => Ok(worker
                .run(seqs)
                .await?
                .into_iter()
                .map(|yn| prompts::p_yes(yn[0], yn[1]))
                .collect()),
            Reranker::MistralRs(m) => m.score_ids(&seqs).await,
        }
    }
}

/// Engine-wide inference settings.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Hugging Face id, local directory, or `random:PRESET[:SEED]`.
    pub embed_model: String,
    pub rerank_model: String,
    pub backend: BackendKind,
    pub load: LoadOptions,
    /// Entries per content cache (embeddings, rerank scores); 0 turns caching off.
    pub cache_capacity: usize,
    /// Longest input in tokens; `None` means the model's `max_position_embeddings`.
    pub max_tokens: Option<usize>,
    /// Remote embedding endpoints (empty: the local backend).
    pub remote: remote::RemoteConfig,
    /// More models by name (`--model NAME=SPEC`), each with these settings.
    pub models: Vec<NamedModel>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            embed_model: "Qwen/Qwen3-Embedding-0.6B".into(),
            rerank_model: "Qwen/Qwen3-Reranker-0.6B".into(),
            backend: BackendKind::Packed,
            load: LoadOptions {
                device: device::DeviceSpec::Cpu,
                dtype: device::DTypeSpec::Auto,
                max_batch: 64,
            },
            cache_capacity: 100_000,
            max_tokens: None,
            remote: remote::RemoteConfig::default(),
            models: Vec::new(),
        }
    }
}

/// An embedding input: text plus optional query instruction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmbedInput {
    pub text: String,
    pub instruction: Option<String>,
}

/// A reranker input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RerankInput {
    pub query: String,
    pub document: String,
    pub instruction: Option<String>,
}

/// Per-call options that come from the SQL session.
#[derive(Debug, Clone, Copy)]
pub struct CallOptions {
    pub truncation: Truncation,
    pub use_cache: bool,
}

/// Counters exposed by `semflow_stats()`.
#[derive(Debug, Default)]
pub struct Stats {
    pub embed_inputs: AtomicU64,
    pub embed_inferred: AtomicU64,
    pub embed_tokens: AtomicU64,
    pub rerank_inputs: AtomicU64,
    pub rerank_inferred: AtomicU64,
    pub rerank_tokens: AtomicU64,
}

struct Loaded<M> {
    backend: M,
    tokenizer: Arc<QwenTokenizer>,
    max_tokens: usize,
}

impl Loaded<Embedder> {
    /// Appends `<|endoftext|>` (once) and applies the length limit; `row` names the input
    /// in the error.
    fn finish_ids(&self, ids: Vec<u32>, truncation: Truncation, row: usize) -> Result<Vec<u32>> {
        QwenTokenizer::finish_embedding_ids(ids, self.max_tokens, truncation).map_err(
            |TooLong(n)| Error::TooLong {
                function: "embed",
                tokens: n,
                max: self.max_tokens,
                row,
            },
        )
    }
}

/// The inference service shared by every SQL function of an engine.
pub struct Inference {
    config: InferenceConfig,
    embed_dir: OnceCell<ModelDir>,
    rerank_dir: OnceCell<ModelDir>,
    embedder: OnceCell<Arc<Loaded<Embedder>>>,
    reranker: OnceCell<Arc<Loaded<Reranker>>>,
    /// The reranker's tokenizer, also without its weights (request limits count prompts).
    rerank_tokenizer: OnceCell<Arc<QwenTokenizer>>,
    remote_reranker: OnceCell<Arc<remote::RemoteReranker>>,
    embed_cache: ContentCache<Arc<[f32]>>,
    rerank_cache: ContentCache<f32>,
    pub stats: Stats,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The runtime model work runs on: loading, request fan-out, waiting on mistral.rs.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("semflow-inference")
            .enable_all()
            .build()
            // Without a runtime nothing can run; failing to create threads at start-up is fatal.
            .expect("failed to start the semflow-inference runtime")
    })
}

/// The context every Qwen3-Embedding and Qwen3-Reranker model card advertises (32k tokens).
/// Some published configs say `max_position_embeddings` 40960 (the base model's room for
/// generated text), which the embedding and reranking training never used.
pub const ADVERTISED_CONTEXT: usize = 32_768;

/// Longest input in tokens: `--max-tokens` when given (up to `max_position_embeddings`),
/// otherwise the smaller of `max_position_embeddings` and [`ADVERTISED_CONTEXT`].
pub fn token_limit(max_position_embeddings: usize, configured: Option<usize>) -> usize {
    configured.map_or(max_position_embeddings.min(ADVERTISED_CONTEXT), |m| {
        m.min(max_position_embeddings)
    })
}

/// Runs `fut` on the inference runtime and waits for it. Called from synchronous code such as
/// a DataFusion scalar function: on a multi-threaded tokio worker the wait uses
/// `block_in_place`, so the runtime moves its other tasks to another thread meanwhile.
pub fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = runtime().spawn(fut);
    let wait = move || futures::executor::block_on(handle);
    let joined = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    };
    joined.map_err(|e| Error::Inference(format!("inference task failed: {e}")))
}

impl Inference {
    pub fn new(config: InferenceConfig) -> Arc<Self> {
        Arc::new(Self {
            embed_cache: ContentCache::new(config.cache_capacity),
            rerank_cache: ContentCache::new(config.cache_capacity),
            config,
            embed_dir: OnceCell::new(),
            rerank_dir: OnceCell::new(),
            embedder: OnceCell::new(),
            reranker: OnceCell::new(),
            rerank_tokenizer: OnceCell::new(),
            remote_reranker: OnceCell::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &InferenceConfig {
        &self.config
    }

    /// The embedding model's directory (downloaded if needed, not loaded): enough to plan.
    pub async fn embed_model_dir(&self) -> Result<&ModelDir> {
        self.embed_dir
            .get_or_try_init(|| self.resolve_embed_model())
            .await
    }

    /// Where the embedding model's files come from: everything for local inference; config and
    /// tokenizer only with endpoints (the weights stay on the servers); in text mode nothing
    /// unless `--embed-model` is a local directory, since the servers also tokenize.
    async fn resolve_embed_model(&self) -> Result<ModelDir> {
        let spec = &self.config.embed_model;
        let remote = &self.config.remote;
        if remote.embed_endpoints.is_empty() {
            return ModelDir::resolve(spec, Role::Embedding).await;
        }
        let text_mode = remote.embed_input == remote::EmbedInputKind::Text;
        if text_mode && !std::path::Path::new(spec).is_dir() {
            let dims = match remote.embed_dims {
                Some(d) => d,
                None => remote::RemoteEmbedder::probe_dims(remote).await?,
            };
            let path = crate::model::dir::remote_text_model_dir(dims)?;
            return ModelDir::open_files(spec, &path, Role::Embedding, Files::NoWeights);
        }
        ModelDir::resolve_files(spec, Role::Embedding, Files::NoWeights).await
    }

    /// The reranker's directory (downloaded if needed, not loaded).
    pub async fn rerank_model_dir(&self) -> Result<&ModelDir> {
        self.rerank_dir
            .get_or_try_init(|| ModelDir::resolve(&self.config.rerank_model, Role::Reranker))
            .await
    }

    /// The longest input `dir`'s model takes here, in tokens (see [`token_limit`]).
    pub fn token_limit_of(&self, dir: &ModelDir) -> usize {
        token_limit(dir.config.max_position_embeddings, self.config.max_tokens)
    }

    async fn embedder(&self) -> Result<Arc<Loaded<Embedder>>> {
        let loaded = self
            .embedder
            .get_or_try_init(|| async {
                let dir = self.embed_model_dir().await?.clone();
                let tokenizer =
                    Arc::new(QwenTokenizer::from_file(&dir.path.join("tokenizer.json"))?);
                tokenizer.check_special_tokens(&dir.id, false)?;
                let max_tokens = self.token_limit_of(&dir);
                tracing::info!(model = %dir.id, "loading embedding model");
                let backend = Embedder::load(dir, &self.config).await?;
                Ok::<_, Error>(Arc::new(Loaded {
                    backend,
                    tokenizer,
                    max_tokens,
                }))
            })
            .await?;
        Ok(loaded.clone())
    }

    async fn reranker(&self) -> Result<Arc<Loaded<Reranker>>> {
        let loaded = self
            .reranker
            .get_or_try_init(|| async {
                let dir = self.rerank_model_dir().await?.clone();
                let tokenizer = self.rerank_tokenizer().await?;
                let max_tokens = self.token_limit_of(&dir);
                tracing::info!(model = %dir.id, "loading reranker");
                let backend = Reranker::load(dir, &self.config).await?;
                Ok::<_, Error>(Arc::new(Loaded {
                    backend,
                    tokenizer,
                    max_tokens,
                }))
            })
            .await?;
        Ok(loaded.clone())
    }

    /// Full-dimension unit embeddings of `inputs`, in order. `rows[i]` is the SQL row of
    /// input `i`, used in error messages.
    pub async fn embed(
        &self,
        inputs: Vec<EmbedInput>,
        rows: Vec<usize>,
        opts: CallOptions,
    ) -> Result<Vec<Arc<[f32]>>> {
        self.stats
            .embed_inputs
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        let model = self.embedder().await?;
        let digest = model.backend.dir().weights_digest.clone();
        let key = |i: &EmbedInput| {
            cache_key(&[
                b"embed",
                digest.as_bytes(),
                truncation_tag(opts.truncation),
                i.instruction.as_deref().unwrap_or("").as_bytes(),
                i.text.as_bytes(),
            ])
        };
        let (unique, slots) = dedupe(&inputs);
        let mut results: Vec<Option<Arc<[f32]>>> = unique
            .iter()
            .map(|&u| {
                opts.use_cache
                    .then(|| self.embed_cache.get(key(&inputs[u])))
                    .flatten()
            })
            .collect();
        let todo: Vec<usize> = (0..unique.len())
            .filter(|&k| results[k].is_none())
            .collect();
        if !todo.is_empty() {
            let texts: Vec<String> = todo
                .iter()
                .map(|&k| {
                    let i = &inputs[unique[k]];
                    prompts::format_embedding(
                        &i.text,
                        i.instruction.as_deref(),
                        &model.backend.dir().prompts,
                    )
                })
                .collect();
            let vectors = match model.backend.text_endpoint() {
                // The server tokenizes (and truncates) text-mode inputs itself.
                Some(remote) => {
                    self.stats
                        .embed_inferred
                        .fetch_add(texts.len() as u64, Ordering::Relaxed);
                    remote.embed_texts(&texts).await?
                }
                None => {
                    let encoded = model.tokenizer.encode_batch(texts)?;
                    let mut seqs = Vec::with_capacity(encoded.len());
                    for (&k, ids) in todo.iter().zip(encoded) {
                        seqs.push(model.finish_ids(ids, opts.truncation, rows[unique[k]])?);
                    }
                    self.infer_embeddings(&model, seqs).await?
                }
            };
            for (&k, v) in todo.iter().zip(vectors) {
                let v: Arc<[f32]> = v.into();
                if opts.use_cache {
                    self.embed_cache.put(key(&inputs[unique[k]]), v.clone());
                }
                results[k] = Some(v);
            }
        }
        slots
            .into_iter()
            .map(|k| {
                results[k]
                    .clone()
                    .ok_or_else(|| Error::Inference("missing embedding".into()))
            })
            .collect()
    }

    /// The remote reranker, when rerank endpoints are configured.
    async fn remote_reranker(&self) -> Result<Option<Arc<remote::RemoteReranker>>> {
        if self.config.remote.rerank_endpoints.is_empty() {
            return Ok(None);
        }
        let r = self
            .remote_reranker
            .get_or_try_init(|| async {
                remote::RemoteReranker::new(&self.config.remote).map(Arc::new)
            })
            .await?;
        Ok(Some(r.clone()))
    }

    /// The longest embedding input in tokens.
    pub async fn embed_token_limit(&self) -> Result<usize> {
        let dir = self.embed_model_dir().await?;
        Ok(self.token_limit_of(dir))
    }

    /// The longest reranker input in tokens; `None` when remote endpoints decide.
    pub async fn rerank_token_limit(&self) -> Result<Option<usize>> {
        if !self.config.remote.rerank_endpoints.is_empty() {
            return Ok(None);
        }
        let dir = self.rerank_model_dir().await?;
        Ok(Some(self.token_limit_of(dir)))
    }

    /// The reranker's name for API answers: the endpoint model (or the configured model)
    /// when remote, else the model directory's id.
    pub async fn rerank_model_name(&self) -> Result<String> {
        if !self.config.remote.rerank_endpoints.is_empty() {
            return Ok(self
                .config
                .remote
                .rerank_model
                .clone()
                .unwrap_or_else(|| self.config.rerank_model.clone()));
        }
        Ok(self.rerank_model_dir().await?.id.clone())
    }

    /// P(yes) for each (query, document, instruction), in order.
    pub async fn rerank(
        &self,
        inputs: Vec<RerankInput>,
        rows: Vec<usize>,
        opts: CallOptions,
    ) -> Result<Vec<f32>> {
        self.stats
            .rerank_inputs
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        let remote = self.remote_reranker().await?;
        let digest = match &remote {
            Some(r) => r.identity().to_string(),
            None => self.reranker().await?.backend.dir().weights_digest.clone(),
        };
        let key = |i: &RerankInput| {
            cache_key(&[
                b"rerank",
                digest.as_bytes(),
                truncation_tag(opts.truncation),
                i.instruction.as_deref().unwrap_or("").as_bytes(),
                i.query.as_bytes(),
                i.document.as_bytes(),
            ])
        };
        let (unique, slots) = dedupe(&inputs);
        let mut results: Vec<Option<f32>> = unique
            .iter()
            .map(|&u| {
                opts.use_cache
                    .then(|| self.rerank_cache.get(key(&inputs[u])))
                    .flatten()
            })
            .collect();
        let todo: Vec<usize> = (0..unique.len())
            .filter(|&k| results[k].is_none())
            .collect();
        if !todo.is_empty() {
            let pending: Vec<(&RerankInput, usize)> = todo
                .iter()
                .map(|&k| (&inputs[unique[k]], rows[unique[k]]))
                .collect();
            let scores = match &remote {
                Some(r) => {
                    // The server tokenizes: only the inputs can be counted here.
                    self.stats
                        .rerank_inferred
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    let refs: Vec<&RerankInput> = pending.iter().map(|(i, _)| *i).collect();
                    r.score(&refs).await?
                }
                None => self.rerank_local(&pending, opts.truncation).await?,
            };
            for (&k, s) in todo.iter().zip(scores) {
                if opts.use_cache {
                    self.rerank_cache.put(key(&inputs[unique[k]]), s);
                }
                results[k] = Some(s);
            }
        }
        slots
            .into_iter()
            .map(|k| results[k].ok_or_else(|| Error::Inference("missing score".into())))
            .collect()
    }

    /// Scores (input, SQL row) pairs on the local reranker.
    async fn rerank_local(
        &self,
        pending: &[(&RerankInput, usize)],
        truncation: Truncation,
    ) -> Result<Vec<f32>> {
        let model = self.reranker().await?;
        let bodies: Vec<String> = pending
            .iter()
            .map(|(i, _)| prompts::rerank_body(&i.query, &i.document, i.instruction.as_deref()))
            .collect();
        let encoded = model.tokenizer.encode_batch(bodies)?;
        let mut seqs = Vec::with_capacity(encoded.len());
        for ((_, row), body) in pending.iter().zip(encoded) {
            let ids = model
                .tokenizer
                .finish_rerank_ids(body, model.max_tokens, truncation)
                .map_err(|TooLong(n)| Error::TooLong {
                    function: "rerank",
                    tokens: n,
                    max: model.max_tokens,
                    row: *row,
                })?;
            seqs.push(ids);
        }
        count_work(
            &self.stats.rerank_inferred,
            &self.stats.rerank_tokens,
            &seqs,
        );
        model.backend.score_ids(seqs).await
    }

    /// P(yes) of raw text pairs joined as they are (`text_1 + text_2`, nothing added): the
    /// `/v1/score` API, where the client sends the Qwen3 prompt split in two. `item` numbers
    /// pairs in errors.
    pub async fn score_raw_pairs(
        &self,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
    ) -> Result<Vec<f32>> {
        if let Some(r) = self.remote_reranker().await? {
            return Err(Error::InvalidArgument(format!(
                "raw text pairs cannot be scored on remote rerank endpoints ({})",
                r.identity()
            )));
        }
        let model = self.reranker().await?;
        let mut seqs = Vec::with_capacity(pairs.len());
        for (item, (a, b)) in pairs.into_iter().enumerate() {
            let mut ids = model.tokenizer.encode(&a)?;
            ids.extend(model.tokenizer.encode(&b)?);
            if ids.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "pair {item}: both texts are empty"
                )));
            }
            if ids.len() > model.max_tokens {
                if truncation == Truncation::Error {
                    return Err(Error::TooLong {
                        function: "score",
                        tokens: ids.len(),
                        max: model.max_tokens,
                        row: item,
                    });
                }
                // Keep the end: the prompt's last position is where the answer is read.
                ids.drain(..ids.len() - model.max_tokens);
            }
            seqs.push(ids);
        }
        count_work(
            &self.stats.rerank_inferred,
            &self.stats.rerank_tokens,
            &seqs,
        );
        model.backend.score_ids(seqs).await
    }

    /// Embeds pre-tokenized sequences (each already ending in `<|endoftext|>`), bypassing
    /// formatting, dedupe and cache: what benchmarks time.
    pub async fn embed_token_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let model = self.embedder().await?;
        model.backend.embed_ids(seqs).await
    }

    /// Embeds caller-tokenized inputs (the HTTP API's token-id input): ids are checked
    /// against the vocabulary, `<|endoftext|>` is appended unless already last, and long
    /// inputs are truncated or refused as `truncation` says. `item` names the input in errors.
    pub async fn embed_ids(
        &self,
        seqs: Vec<Vec<u32>>,
        truncation: Truncation,
    ) -> Result<Vec<Vec<f32>>> {
        let model = self.embedder().await?;
        let vocab = model.backend.dir().config.vocab_size;
        let mut finished = Vec::with_capacity(seqs.len());
        for (item, ids) in seqs.into_iter().enumerate() {
            if ids.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "input {item}: no token ids"
                )));
            }
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidArgument(format!(
                    "input {item}: token id {bad} is outside the vocabulary (size {vocab})"
                )));
            }
            finished.push(model.finish_ids(ids, truncation, item)?);
        }
        self.infer_embeddings(&model, finished).await
    }

    /// Runs finished embedding inputs through the backend, counting them.
    async fn infer_embeddings(
        &self,
        model: &Loaded<Embedder>,
        seqs: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<f32>>> {
        count_work(&self.stats.embed_inferred, &self.stats.embed_tokens, &seqs);
        model.backend.embed_ids(seqs).await
    }

    /// P(yes) for pre-built reranker prompts (token ids), bypassing dedupe and cache.
    pub async fn rerank_token_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        let model = self.reranker().await?;
        model.backend.score_ids(seqs).await
    }

    /// The reranker's tokenizer (its directory resolved, the weights not loaded).
    async fn rerank_tokenizer(&self) -> Result<Arc<QwenTokenizer>> {
        let tokenizer = self
            .rerank_tokenizer
            .get_or_try_init(|| async {
                let dir = self.rerank_model_dir().await?;
                let tokenizer = QwenTokenizer::from_file(&dir.path.join("tokenizer.json"))?;
                tokenizer.check_special_tokens(&dir.id, true)?;
                Ok::<_, Error>(Arc::new(tokenizer))
            })
            .await?;
        Ok(tokenizer.clone())
    }

    /// Tokens the reranker reads for each input: its whole prompt, before any truncation.
    pub async fn rerank_lengths(&self, inputs: &[RerankInput]) -> Result<Vec<usize>> {
        let tokenizer = self.rerank_tokenizer().await?;
        let (pre, post) = tokenizer.rerank_affixes();
        let bodies = inputs
            .iter()
            .map(|i| prompts::rerank_body(&i.query, &i.document, i.instruction.as_deref()))
            .collect();
        Ok(tokenizer
            .encode_batch(bodies)?
            .iter()
            .map(|body| pre.len() + body.len() + post.len())
            .collect())
    }

    /// The reranker prompt's fixed token ids before and after the body (loads the model).
    pub async fn rerank_affixes(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let model = self.reranker().await?;
        let (pre, post) = model.tokenizer.rerank_affixes();
        Ok((pre.to_vec(), post.to_vec()))
    }

    /// The text the embedding model reads for `text` and its instruction or prompt name.
    pub async fn embedding_text(&self, text: &str, instruction: Option<&str>) -> Result<String> {
        let dir = self.embed_model_dir().await?;
        Ok(prompts::format_embedding(text, instruction, &dir.prompts))
    }

    /// The embedding model's named prompts (name → text prepended).
    pub async fn embed_prompts(&self) -> Result<Vec<(String, String)>> {
        let dir = self.embed_model_dir().await?;
        Ok(dir.prompts.clone().into_iter().collect())
    }

    /// Token ids of `text` with the embedding model's tokenizer (nothing appended).
    pub async fn embed_tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let model = self.embedder().await?;
        model.tokenizer.encode(text)
    }

    /// Counter name/value pairs for `semflow_stats()`.
    pub fn stats_rows(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("embed_inputs", l(&s.embed_inputs)),
            ("embed_inferred", l(&s.embed_inferred)),
            ("embed_tokens", l(&s.embed_tokens)),
            ("embed_cache_hits", self.embed_cache.hits()),
            ("embed_cache_misses", self.embed_cache.misses()),
            ("embed_cache_entries", self.embed_cache.len() as u64),
            ("rerank_inputs", l(&s.rerank_inputs)),
            ("rerank_inferred", l(&s.rerank_inferred)),
            ("rerank_tokens", l(&s.rerank_tokens)),
            ("rerank_cache_hits", self.rerank_cache.hits()),
            ("rerank_cache_misses", self.rerank_cache.misses()),
            ("rerank_cache_entries", self.rerank_cache.len() as u64),
        ]
    }
}

/// Part of the cache key: a result computed from a truncated input must not answer a query
/// that asked for over-long inputs to fail.
fn truncation_tag(t: Truncation) -> &'static [u8] {
    match t {
        Truncation::End => b"end",
        Truncation::Error => b"error",
    }
}

/// Counts sequences sent to a model, and their tokens, for `semflow_stats()` and `/metrics`.
fn count_work(inferred: &AtomicU64, tokens: &AtomicU64, seqs: &[Vec<u32>]) {
    let n: usize = seqs.iter().map(Vec::len).sum();
    tokens.fetch_add(n as u64, Ordering::Relaxed);
    inferred.fetch_add(seqs.len() as u64, Ordering::Relaxed);
}

/// Unique inputs (index of first occurrence) and, for each input, its unique slot.
fn dedupe<T: Eq + std::hash::Hash>(inputs: &[T]) -> (Vec<usize>, Vec<usize>) {
    let mut seen: HashMap<&T, usize> = HashMap::with_capacity(inputs.len());
    let mut unique = Vec::new();
    let slots = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            *seen.entry(x).or_insert_with(|| {
                unique.push(i);
                unique.len() - 1
            })
        })
        .collect();
    (unique, slots)
}

/// L2-normalises in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

/// Matryoshka: the first `dims` components, re-normalised.
pub fn truncate_dims(v: &[f32], dims: usize) -> Vec<f32> {
    let mut out = v[..dims.min(v.len())].to_vec();
    normalize(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keeps_first_occurrence() {
        let (u, s) = dedupe(&["a", "b", "a", "c", "b"]);
        assert_eq!(u, vec![0, 1, 3]);
        assert_eq!(s, vec![0, 1, 0, 2, 1]);
    }

    #[test]
    fn token_limit_defaults_to_the_advertised_context() {
        // A 4B config's 40960 positions: 32k unless the user asks for more.
        assert_eq!(token_limit(40_960, None), 32_768);
        assert_eq!(token_limit(40_960, Some(40_000)), 40_000);
        assert_eq!(token_limit(40_960, Some(50_000)), 40_960);
        assert_eq!(token_limit(512, None), 512);
        assert_eq!(token_limit(512, Some(128)), 128);
    }

    #[test]
    fn matryoshka_renormalises() {
        let v = [0.6f32, 0.0, 0.8, 0.0];
        let t = truncate_dims(&v, 2);
        assert_eq!(t, vec![1.0, 0.0]);
        let mut z = vec![0.0f32; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
