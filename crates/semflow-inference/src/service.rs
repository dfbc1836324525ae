//! The inference core every caller goes through (SQL functions, the HTTP and Postgres front
//! ends, pipelines, synth, reindex): models loaded lazily on first use, then for each call
//! dedupe → content cache → format and tokenize (once) → length limits → backend. Protocol
//! front ends translate requests into these calls; they decide nothing about models.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::OnceCell;

use super::backend::{self, EmbedBackend, ScoreBackend};
use super::cache::{cache_key, CacheKey, CacheValue, ContentCache, ContentStore};
use super::config::{token_limit, CallOptions, InferenceConfig};
use super::prompts;
use super::remote;
use super::stats::{Stats, Task};
use super::tokenize::{QwenTokenizer, TooLong, Truncation};
use crate::error::{Error, Result};
use crate::model::dir::{Files, ModelDir, Role};

/// An embedding input: text plus optional query instruction (or prompt name).
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

/// The loaded embedding model: its backend and what the core needs to feed it.
struct EmbedModel {
    dir: ModelDir,
    backend: Box<dyn EmbedBackend>,
    tokenizer: Arc<QwenTokenizer>,
    max_tokens: usize,
}

impl EmbedModel {
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

    fn format(&self, input: &EmbedInput) -> String {
        prompts::format_embedding(&input.text, input.instruction.as_deref(), &self.dir.prompts)
    }
}

/// The loaded reranker: its backend and the identity its cached scores are filed under.
struct ScoreModel {
    backend: Box<dyn ScoreBackend>,
    identity: String,
}

/// The inference service of one model pair (the default, or a `--model NAME`).
pub struct Inference {
    config: InferenceConfig,
    embed_dir: OnceCell<ModelDir>,
    rerank_dir: OnceCell<ModelDir>,
    embedder: OnceCell<Arc<EmbedModel>>,
    scorer: OnceCell<Arc<ScoreModel>>,
    /// Each model's tokenizer, loaded once without the weights; the one owner every user
    /// shares (the model itself, `chunk()`, request limits and usage counts).
    embed_tokenizer: OnceCell<Arc<QwenTokenizer>>,
    rerank_tokenizer: OnceCell<Arc<QwenTokenizer>>,
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

impl Inference {
    /// A service with a content cache of its own (`config.cache_size`).
    pub fn new(config: InferenceConfig) -> Arc<Self> {
        let store = ContentStore::new(config.cache_size);
        Self::sharing(config, store)
    }

    /// A service filing its results in `store`, which other services may share.
    pub fn sharing(config: InferenceConfig, store: Arc<ContentStore>) -> Arc<Self> {
        Arc::new(Self {
            embed_cache: ContentCache::new(store.clone()),
            rerank_cache: ContentCache::new(store),
            config,
            embed_dir: OnceCell::new(),
            rerank_dir: OnceCell::new(),
            embedder: OnceCell::new(),
            scorer: OnceCell::new(),
            embed_tokenizer: OnceCell::new(),
            rerank_tokenizer: OnceCell::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &InferenceConfig {
        &self.config
    }

    // ---- models: resolved (enough to plan), then loaded on first use ----

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
        if !remote.serves_embeddings() {
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

    async fn embedder(&self) -> Result<Arc<EmbedModel>> {
        let loaded = self
            .embedder
            .get_or_try_init(|| async {
                let dir = self.embed_model_dir().await?.clone();
                let tokenizer = self.embed_tokenizer().await?;
                let max_tokens = self.token_limit_of(&dir);
                tracing::info!(model = %dir.id, "loading embedding model");
                let backend = backend::load_embedder(dir.clone(), &self.config).await?;
                Ok::<_, Error>(Arc::new(EmbedModel {
                    dir,
                    backend,
                    tokenizer,
                    max_tokens,
                }))
            })
            .await?;
        Ok(loaded.clone())
    }

    /// The reranking backend: endpoints when configured (their model is theirs to resolve),
    /// otherwise the local reranker.
    async fn scorer(&self) -> Result<Arc<ScoreModel>> {
        let loaded = self
            .scorer
            .get_or_try_init(|| async {
                if self.config.remote.serves_reranking() {
                    let r = remote::RemoteReranker::new(&self.config.remote)?;
                    let identity = r.identity().to_string();
                    let backend: Box<dyn ScoreBackend> = Box::new(r);
                    return Ok::<_, Error>(Arc::new(ScoreModel { backend, identity }));
                }
                let dir = self.rerank_model_dir().await?.clone();
                self.rerank_tokenizer().await?;
                tracing::info!(model = %dir.id, "loading reranker");
                let identity = dir.weights_digest.clone();
                let backend = backend::load_local_scorer(dir, &self.config).await?;
                Ok(Arc::new(ScoreModel { backend, identity }))
            })
            .await?;
        Ok(loaded.clone())
    }

    /// What building local reranker prompts needs: the tokenizer and the longest prompt.
    async fn rerank_prompting(&self) -> Result<(Arc<QwenTokenizer>, usize)> {
        let tokenizer = self.rerank_tokenizer().await?;
        Ok((
            tokenizer,
            self.token_limit_of(self.rerank_model_dir().await?),
        ))
    }

    /// The embedding model's tokenizer (its directory resolved, the weights not loaded).
    pub async fn embed_tokenizer(&self) -> Result<Arc<QwenTokenizer>> {
        let tokenizer = self
            .embed_tokenizer
            .get_or_try_init(|| async { load_tokenizer(self.embed_model_dir().await?, false) })
            .await?;
        Ok(tokenizer.clone())
    }

    /// The reranker's tokenizer (its directory resolved, the weights not loaded).
    async fn rerank_tokenizer(&self) -> Result<Arc<QwenTokenizer>> {
        let tokenizer = self
            .rerank_tokenizer
            .get_or_try_init(|| async { load_tokenizer(self.rerank_model_dir().await?, true) })
            .await?;
        Ok(tokenizer.clone())
    }

    // ---- embedding ----

    /// Full-dimension unit embeddings of `inputs`, in order. `rows[i]` is the SQL row of
    /// input `i`, used in error messages.
    pub async fn embed(
        &self,
        inputs: Vec<EmbedInput>,
        rows: Vec<usize>,
        opts: CallOptions,
    ) -> Result<Vec<Arc<[f32]>>> {
        self.embed_with(inputs, None, &rows, opts).await
    }

    /// The embedding model's token ids of each input (formatted, nothing appended): for
    /// callers that count tokens before asking ([`Self::embed_tokenized`] then reuses them).
    pub async fn tokenize_embed(&self, inputs: &[EmbedInput]) -> Result<Vec<Vec<u32>>> {
        let model = self.embedder().await?;
        model
            .tokenizer
            .encode_batch(inputs.iter().map(|i| model.format(i)).collect())
    }

    /// [`Self::embed`] of inputs already tokenized by [`Self::tokenize_embed`].
    pub async fn embed_tokenized(
        &self,
        inputs: Vec<EmbedInput>,
        ids: Vec<Vec<u32>>,
        rows: Vec<usize>,
        opts: CallOptions,
    ) -> Result<Vec<Arc<[f32]>>> {
        same_count(&ids, inputs.len())?;
        self.embed_with(inputs, Some(ids), &rows, opts).await
    }

    async fn embed_with(
        &self,
        inputs: Vec<EmbedInput>,
        mut ids: Option<Vec<Vec<u32>>>,
        rows: &[usize],
        opts: CallOptions,
    ) -> Result<Vec<Arc<[f32]>>> {
        self.stats.asked(Task::Embed, inputs.len());
        let model = self.embedder().await?;
        let identity = model.dir.weights_digest.as_bytes();
        let key = |i: &EmbedInput| {
            let parts: [&[u8]; 2] = [instruction(&i.instruction), i.text.as_bytes()];
            call_key(b"embed", identity, opts.truncation, &parts)
        };
        through_cache(&self.embed_cache, &inputs, key, opts.use_cache, |todo| {
            let known = take_known(&mut ids, &todo);
            self.infer_embeddings(&model, &inputs, todo, known, rows, opts.truncation)
        })
        .await
    }

    /// Embeds `inputs[todo]`: formatted, tokenized unless `known` holds their ids, finished
    /// and limited, then run on the backend.
    async fn infer_embeddings(
        &self,
        model: &EmbedModel,
        inputs: &[EmbedInput],
        todo: Vec<usize>,
        known: Option<Vec<Vec<u32>>>,
        rows: &[usize],
        truncation: Truncation,
    ) -> Result<Vec<Arc<[f32]>>> {
        let vectors = if model.backend.takes_text() {
            // The server tokenizes (and truncates) text inputs itself.
            let texts: Vec<String> = todo.iter().map(|&i| model.format(&inputs[i])).collect();
            self.stats.inferred_untokenized(Task::Embed, texts.len());
            model.backend.embed_texts(texts).await?
        } else {
            let bodies = match known {
                Some(ids) => ids,
                None => model
                    .tokenizer
                    .encode_batch(todo.iter().map(|&i| model.format(&inputs[i])).collect())?,
            };
            let mut seqs = Vec::with_capacity(bodies.len());
            for (&i, ids) in todo.iter().zip(bodies) {
                seqs.push(model.finish_ids(ids, truncation, rows[i])?);
            }
            self.stats.inferred(Task::Embed, &seqs);
            model.backend.embed_ids(seqs).await?
        };
        Ok(vectors.into_iter().map(Arc::from).collect())
    }

    /// Embeds caller-tokenized inputs (the HTTP API's token-id input): ids are checked
    /// against the vocabulary, `<|endoftext|>` is appended unless already last, and long
    /// inputs are truncated or refused as `opts.truncation` says (errors name the input's
    /// position); then deduplicated and cached like text inputs, keyed by the finished ids.
    pub async fn embed_ids(
        &self,
        seqs: Vec<Vec<u32>>,
        opts: CallOptions,
    ) -> Result<Vec<Arc<[f32]>>> {
        self.stats.asked(Task::Embed, seqs.len());
        let model = self.embedder().await?;
        let vocab = model.dir.config.vocab_size;
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
            finished.push(model.finish_ids(ids, opts.truncation, item)?);
        }
        let identity = model.dir.weights_digest.as_bytes();
        let key = |ids: &Vec<u32>| ids_key(b"embed-ids", identity, ids);
        through_cache(&self.embed_cache, &finished, key, opts.use_cache, |todo| {
            let seqs: Vec<Vec<u32>> = todo.iter().map(|&i| finished[i].clone()).collect();
            self.stats.inferred(Task::Embed, &seqs);
            let backend = &model.backend;
            async move {
                let vectors = backend.embed_ids(seqs).await?;
                Ok(vectors.into_iter().map(Arc::from).collect())
            }
        })
        .await
    }

    /// Embeds finished sequences (each already ending in `<|endoftext|>`), bypassing
    /// formatting, dedupe and cache: what benchmarks time.
    pub async fn embed_token_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        self.embedder().await?.backend.embed_ids(seqs).await
    }

    /// The longest embedding input in tokens.
    pub async fn embed_token_limit(&self) -> Result<usize> {
        let dir = self.embed_model_dir().await?;
        Ok(self.token_limit_of(dir))
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
        self.embed_tokenizer().await?.encode(text)
    }

    // ---- reranking ----

    /// P(yes) for each (query, document, instruction), in order.
    pub async fn rerank(
        &self,
        inputs: Vec<RerankInput>,
        rows: Vec<usize>,
        opts: CallOptions,
    ) -> Result<Vec<f32>> {
        self.rerank_with(inputs, None, &rows, opts).await
    }

    /// The reranker's token ids of each input's prompt body (between the fixed prefix and
    /// suffix, see [`Self::rerank_affixes`]); [`Self::rerank_tokenized`] reuses them.
    pub async fn tokenize_rerank(&self, inputs: &[RerankInput]) -> Result<Vec<Vec<u32>>> {
        let tokenizer = self.rerank_tokenizer().await?;
        tokenizer.encode_batch(inputs.iter().map(rerank_body).collect())
    }

    /// Tokens the reranker reads for each prompt body: its whole prompt, before truncation.
    pub async fn rerank_prompt_lengths(&self, bodies: &[Vec<u32>]) -> Result<Vec<usize>> {
        let tokenizer = self.rerank_tokenizer().await?;
        let (pre, post) = tokenizer.rerank_affixes();
        Ok(bodies
            .iter()
            .map(|b| pre.len() + b.len() + post.len())
            .collect())
    }

    /// [`Self::rerank`] of inputs already tokenized by [`Self::tokenize_rerank`].
    pub async fn rerank_tokenized(
        &self,
        inputs: Vec<RerankInput>,
        bodies: Vec<Vec<u32>>,
        rows: Vec<usize>,
        opts: CallOptions,
    ) -> Result<Vec<f32>> {
        same_count(&bodies, inputs.len())?;
        self.rerank_with(inputs, Some(bodies), &rows, opts).await
    }

    async fn rerank_with(
        &self,
        inputs: Vec<RerankInput>,
        mut bodies: Option<Vec<Vec<u32>>>,
        rows: &[usize],
        opts: CallOptions,
    ) -> Result<Vec<f32>> {
        self.stats.asked(Task::Rerank, inputs.len());
        let model = self.scorer().await?;
        let identity = model.identity.as_bytes();
        let key = |i: &RerankInput| {
            let parts: [&[u8]; 3] = [
                instruction(&i.instruction),
                i.query.as_bytes(),
                i.document.as_bytes(),
            ];
            call_key(b"rerank", identity, opts.truncation, &parts)
        };
        through_cache(&self.rerank_cache, &inputs, key, opts.use_cache, |todo| {
            let known = take_known(&mut bodies, &todo);
            self.infer_scores(&model, &inputs, todo, known, rows, opts.truncation)
        })
        .await
    }

    /// Scores `inputs[todo]`: prompts built and tokenized unless `known` holds their bodies,
    /// limited, then run on the backend (or sent whole to a backend that builds prompts).
    async fn infer_scores(
        &self,
        model: &ScoreModel,
        inputs: &[RerankInput],
        todo: Vec<usize>,
        known: Option<Vec<Vec<u32>>>,
        rows: &[usize],
        truncation: Truncation,
    ) -> Result<Vec<f32>> {
        if model.backend.takes_inputs() {
            // The server tokenizes: only the inputs can be counted here.
            self.stats.inferred_untokenized(Task::Rerank, todo.len());
            let pending = todo.iter().map(|&i| inputs[i].clone()).collect();
            return model.backend.score_inputs(pending).await;
        }
        let (tokenizer, max_tokens) = self.rerank_prompting().await?;
        let bodies = match known {
            Some(b) => b,
            None => {
                tokenizer.encode_batch(todo.iter().map(|&i| rerank_body(&inputs[i])).collect())?
            }
        };
        let mut seqs = Vec::with_capacity(bodies.len());
        for (&i, body) in todo.iter().zip(bodies) {
            let ids = tokenizer
                .finish_rerank_ids(body, max_tokens, truncation)
                .map_err(|TooLong(n)| Error::TooLong {
                    function: "rerank",
                    tokens: n,
                    max: max_tokens,
                    row: rows[i],
                })?;
            seqs.push(ids);
        }
        self.stats.inferred(Task::Rerank, &seqs);
        model.backend.score_ids(seqs).await
    }

    /// P(yes) of raw text pairs joined as they are (`text_1 + text_2`, nothing added): the
    /// `/v1/score` API, where the client sends the Qwen3 prompt split in two. Errors number
    /// the pairs; repeats are deduplicated and cached like rerank inputs, keyed by the ids.
    pub async fn score_raw_pairs(
        &self,
        pairs: Vec<(String, String)>,
        opts: CallOptions,
    ) -> Result<Vec<f32>> {
        self.stats.asked(Task::Rerank, pairs.len());
        let model = self.scorer().await?;
        if model.backend.takes_inputs() {
            return Err(Error::InvalidArgument(format!(
                "raw text pairs cannot be scored on rerank endpoints that build their own prompts ({})",
                model.identity
            )));
        }
        let (tokenizer, max_tokens) = self.rerank_prompting().await?;
        let mut seqs = Vec::with_capacity(pairs.len());
        for (item, (a, b)) in pairs.into_iter().enumerate() {
            let mut ids = tokenizer.encode(&a)?;
            ids.extend(tokenizer.encode(&b)?);
            if ids.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "pair {item}: both texts are empty"
                )));
            }
            let ids = QwenTokenizer::finish_raw_pair_ids(ids, max_tokens, opts.truncation)
                .map_err(|TooLong(n)| Error::TooLong {
                    function: "score",
                    tokens: n,
                    max: max_tokens,
                    row: item,
                })?;
            seqs.push(ids);
        }
        let identity = model.identity.as_bytes();
        let key = |ids: &Vec<u32>| ids_key(b"score-ids", identity, ids);
        through_cache(&self.rerank_cache, &seqs, key, opts.use_cache, |todo| {
            let todo: Vec<Vec<u32>> = todo.iter().map(|&i| seqs[i].clone()).collect();
            self.stats.inferred(Task::Rerank, &todo);
            model.backend.score_ids(todo)
        })
        .await
    }

    /// P(yes) for pre-built reranker prompts (token ids), bypassing dedupe and cache.
    pub async fn rerank_token_ids(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        self.scorer().await?.backend.score_ids(seqs).await
    }

    /// The longest reranker input in tokens; `None` when remote endpoints decide.
    pub async fn rerank_token_limit(&self) -> Result<Option<usize>> {
        if self.config.remote.serves_reranking() {
            return Ok(None);
        }
        let dir = self.rerank_model_dir().await?;
        Ok(Some(self.token_limit_of(dir)))
    }

    /// The reranker's name for API answers: the endpoint model (or the configured model)
    /// when remote, else the model directory's id.
    pub async fn rerank_model_name(&self) -> Result<String> {
        if self.config.remote.serves_reranking() {
            return Ok(self
                .config
                .remote
                .rerank_model
                .clone()
                .unwrap_or_else(|| self.config.rerank_model.clone()));
        }
        Ok(self.rerank_model_dir().await?.id.clone())
    }

    /// The reranker prompt's fixed token ids before and after the body.
    pub async fn rerank_affixes(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let tokenizer = self.rerank_tokenizer().await?;
        let (pre, post) = tokenizer.rerank_affixes();
        Ok((pre.to_vec(), post.to_vec()))
    }

    /// Counter name/value pairs for `semflow_stats()` and `/metrics`.
    pub fn stats_rows(&self) -> Vec<(&'static str, u64)> {
        let [ei, ein, et, ri, rin, rt] = self.stats.rows();
        let store = self.embed_cache.store();
        store.settle();
        vec![
            ei,
            ein,
            et,
            ("embed_cache_hits", self.embed_cache.hits()),
            ("embed_cache_misses", self.embed_cache.misses()),
            ri,
            rin,
            rt,
            ("rerank_cache_hits", self.rerank_cache.hits()),
            ("rerank_cache_misses", self.rerank_cache.misses()),
            ("cache_entries", store.entries()),
            ("cache_bytes", store.bytes()),
            ("cache_budget_bytes", store.budget()),
        ]
    }
}

/// The token ids a caller already made for the inputs at `todo`, when it made them.
fn take_known(ids: &mut Option<Vec<Vec<u32>>>, todo: &[usize]) -> Option<Vec<Vec<u32>>> {
    let ids = ids.as_mut()?;
    Some(todo.iter().map(|&i| std::mem::take(&mut ids[i])).collect())
}

/// `dir`'s tokenizer, checked for the special tokens its role reads (`reranker`: yes/no too).
fn load_tokenizer(dir: &ModelDir, reranker: bool) -> Result<Arc<QwenTokenizer>> {
    let tokenizer = QwenTokenizer::from_file(&dir.path.join("tokenizer.json"))?;
    tokenizer.check_special_tokens(&dir.id, reranker)?;
    Ok(Arc::new(tokenizer))
}

/// The reranker prompt's variable part for one input.
fn rerank_body(i: &RerankInput) -> String {
    prompts::rerank_body(&i.query, &i.document, i.instruction.as_deref())
}

/// The path every call shares: dedupe `inputs`, answer repeats from `cache`, run `infer` once
/// on the positions (in `inputs`) of the unique inputs left, file its answers in the cache,
/// and return one output per input, in order.
async fn through_cache<I, O, Fut>(
    cache: &ContentCache<O>,
    inputs: &[I],
    key: impl Fn(&I) -> CacheKey,
    use_cache: bool,
    infer: impl FnOnce(Vec<usize>) -> Fut,
) -> Result<Vec<O>>
where
    I: Eq + std::hash::Hash,
    O: CacheValue,
    Fut: Future<Output = Result<Vec<O>>>,
{
    let (unique, slots) = dedupe(inputs);
    let mut results: Vec<Option<O>> = unique
        .iter()
        .map(|&u| use_cache.then(|| cache.get(key(&inputs[u]))).flatten())
        .collect();
    let todo: Vec<usize> = (0..unique.len())
        .filter(|&k| results[k].is_none())
        .collect();
    if !todo.is_empty() {
        let outputs = infer(todo.iter().map(|&k| unique[k]).collect()).await?;
        if outputs.len() != todo.len() {
            return Err(Error::Inference(format!(
                "the backend answered {} of {} inputs",
                outputs.len(),
                todo.len()
            )));
        }
        for (&k, out) in todo.iter().zip(outputs) {
            if use_cache {
                cache.put(key(&inputs[unique[k]]), out.clone());
            }
            results[k] = Some(out);
        }
    }
    slots
        .into_iter()
        .map(|k| {
            results[k]
                .clone()
                .ok_or_else(|| Error::Inference("an input got no answer".into()))
        })
        .collect()
}

/// The cache key of one input of `task` on the model `identity`: the truncation setting is
/// part of it, since a result computed from a truncated input must not answer a query that
/// asked for over-long inputs to fail.
fn call_key(task: &[u8], identity: &[u8], truncation: Truncation, input: &[&[u8]]) -> CacheKey {
    let truncation: &[u8] = match truncation {
        Truncation::End => b"end",
        Truncation::Error => b"error",
    };
    let mut parts = vec![task, identity, truncation];
    parts.extend_from_slice(input);
    cache_key(&parts)
}

/// The cache key of caller-made token ids (already finished: appended, limited).
fn ids_key(task: &[u8], identity: &[u8], ids: &[u32]) -> CacheKey {
    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
    cache_key(&[task, identity, &bytes])
}

fn instruction(i: &Option<String>) -> &[u8] {
    i.as_deref().unwrap_or("").as_bytes()
}

/// Caller-made token ids must come one per input.
fn same_count(tokenized: &[Vec<u32>], inputs: usize) -> Result<()> {
    if tokenized.len() == inputs {
        return Ok(());
    }
    Err(Error::Inference(format!(
        "{} tokenized inputs for {inputs} inputs",
        tokenized.len()
    )))
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
    fn through_cache_runs_each_unique_input_once_and_remembers_it() {
        let cache = ContentCache::new(ContentStore::new(crate::cache::CacheSize(1 << 20)));
        let key = |s: &&str| cache_key(&[s.as_bytes()]);
        let calls = std::sync::Mutex::new(Vec::new());
        let run = |inputs: Vec<&'static str>| {
            let calls = &calls;
            let cache = &cache;
            async move {
                through_cache(cache, &inputs, key, true, |todo| {
                    calls.lock().unwrap().push(todo.clone());
                    let answers = todo.iter().map(|&i| inputs[i].len() as f32).collect();
                    async move { Ok(answers) }
                })
                .await
            }
        };
        let out = futures::executor::block_on(run(vec!["a", "bb", "a"])).unwrap();
        assert_eq!(out, vec![1.0, 2.0, 1.0]);
        let out = futures::executor::block_on(run(vec!["bb", "ccc"])).unwrap();
        assert_eq!(out, vec![2.0, 3.0]);
        // The first call ran positions 0 and 1; the second only "ccc" (position 1).
        assert_eq!(*calls.lock().unwrap(), vec![vec![0, 1], vec![1]]);
    }

    #[test]
    fn through_cache_refuses_a_short_answer() {
        let cache: ContentCache<f32> =
            ContentCache::new(ContentStore::new(crate::cache::CacheSize(0)));
        let inputs = ["a", "b"];
        let err = futures::executor::block_on(through_cache(
            &cache,
            &inputs,
            |s| cache_key(&[s.as_bytes()]),
            false,
            |_| async { Ok(vec![1.0]) },
        ))
        .unwrap_err();
        assert!(matches!(err, Error::Inference(_)), "{err}");
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use crate::model::random::{tiny_model_dir, ModelKind};

    /// One tokenizer per model: `chunk()`, usage counts and the loaded model share the
    /// service's, and asking for it loads no weights.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_model_and_its_callers_share_one_tokenizer() {
        let dir = tiny_model_dir(ModelKind::Embedding, 3);
        let svc = Inference::new(InferenceConfig {
            embed_model: dir.path().to_string_lossy().into_owned(),
            ..InferenceConfig::default()
        });
        let first = svc.embed_tokenizer().await.unwrap();
        assert!(
            svc.embedder.get().is_none(),
            "the tokenizer loaded the model"
        );
        assert!(Arc::ptr_eq(&first, &svc.embed_tokenizer().await.unwrap()));
        let model = svc.embedder().await.unwrap();
        assert!(Arc::ptr_eq(&first, &model.tokenizer));
    }

    fn counter(svc: &Inference, name: &str) -> u64 {
        let rows = svc.stats_rows();
        rows.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }

    const CACHED: CallOptions = CallOptions {
        truncation: Truncation::End,
        use_cache: true,
    };

    /// Token-id inputs (HTTP's `input` as ids) take the path text inputs take: repeats in a
    /// request run once, a later request is answered from the cache, and the answers are
    /// those of an uncached call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_id_inputs_are_deduplicated_and_cached() {
        let dir = tiny_model_dir(ModelKind::Embedding, 4);
        let svc = Inference::new(InferenceConfig {
            embed_model: dir.path().to_string_lossy().into_owned(),
            ..InferenceConfig::default()
        });
        let (a, b) = (vec![11, 12, 13], vec![21, 22]);
        let first = svc
            .embed_ids(vec![a.clone(), b.clone(), a.clone()], CACHED)
            .await
            .unwrap();
        assert_eq!(counter(&svc, "embed_inferred"), 2);
        assert_eq!(first[0], first[2]);
        let again = svc.embed_ids(vec![b.clone()], CACHED).await.unwrap();
        assert_eq!(
            counter(&svc, "embed_inferred"),
            2,
            "answered from the cache"
        );
        assert_eq!(counter(&svc, "embed_cache_hits"), 1);
        assert_eq!(again[0], first[1]);
        let uncached = CallOptions {
            use_cache: false,
            ..CACHED
        };
        let fresh = svc.embed_ids(vec![b], uncached).await.unwrap();
        assert_eq!(counter(&svc, "embed_inferred"), 3);
        // Recomputed alone rather than packed beside `a`: the matmuls' blocking (and so their
        // summation order) depends on the pass's rows, which moves the last bits on CPUs
        // whose kernels tile by rows (seen on AVX2-only Zen 3).
        let drift = fresh[0]
            .iter()
            .zip(first[1].iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(drift < 1e-5, "recomputed embedding differs by {drift}");
        let e = svc
            .embed_ids(vec![vec![1], vec![]], CACHED)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("input 1: no token ids"), "{e}");
    }

    /// `/v1/score`'s raw pairs likewise; a pair past the limit is cut from the front or, with
    /// `Truncation::Error`, refused naming the pair.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_pairs_are_deduplicated_cached_and_limited() {
        let dir = tiny_model_dir(ModelKind::Reranker, 4);
        let svc = Inference::new(InferenceConfig {
            rerank_model: dir.path().to_string_lossy().into_owned(),
            max_tokens: Some(16),
            ..InferenceConfig::default()
        });
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        let scores = svc
            .score_raw_pairs(
                vec![
                    pair("query: x", " doc"),
                    pair("q", "d"),
                    pair("query: x", " doc"),
                ],
                CACHED,
            )
            .await
            .unwrap();
        assert_eq!(counter(&svc, "rerank_inferred"), 2);
        assert_eq!(scores[0], scores[2]);
        let again = svc
            .score_raw_pairs(vec![pair("q", "d")], CACHED)
            .await
            .unwrap();
        assert_eq!(counter(&svc, "rerank_inferred"), 2);
        assert_eq!(again[0], scores[1]);
        let long = "word ".repeat(40);
        let strict = CallOptions {
            truncation: Truncation::Error,
            ..CACHED
        };
        let e = svc
            .score_raw_pairs(vec![pair("q", "d"), pair(&long, "d")], strict)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooLong {
                    row: 1,
                    max: 16,
                    ..
                }
            ),
            "{e}"
        );
        let cut = svc
            .score_raw_pairs(vec![pair(&long, "d")], CACHED)
            .await
            .unwrap();
        assert!((0.0..=1.0).contains(&cut[0]));
    }
}
