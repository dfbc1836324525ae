//! `embed()` on OpenAI-compatible `/v1/embeddings` endpoints (semflow serve, vLLM, TEI, …).
//! By default semflow formats and tokenizes inputs itself (instruction prefix, one trailing
//! `<|endoftext|>`) and sends **token ids**, so a remote server computes exactly what the
//! local backend would. Servers that take only strings get the formatted text instead
//! ([`EmbedInputKind::Text`]: the instruction prefix is still applied here; the server
//! tokenizes, appends its end token and truncates). Vectors are re-normalised here and
//! Matryoshka truncation stays client-side. Requests are batched by size and sent
//! concurrently through the pool.

use futures::future::join_all;
use serde_json::{json, Value};

use super::pool::{size_batches, Failure, Pool, PoolOptions};
use super::RemoteConfig;
use crate::error::{Error, Result};
use crate::model::dir::ModelDir;

/// Tokens per request at most (inputs are never split; a longer one goes alone).
const TOKEN_BUDGET: usize = 16_384;
/// Inputs per request at most.
const MAX_INPUTS: usize = 256;
/// Text bytes per request at most in text mode (about 16k tokens).
const BYTE_BUDGET: usize = 64 * 1024;

/// What embedding requests carry (`--embed-endpoint-input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbedInputKind {
    /// Token ids, tokenized and finished here: results equal the local backend's.
    #[default]
    Tokens,
    /// Formatted text, for servers that accept only strings.
    Text,
}

impl std::str::FromStr for EmbedInputKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tokens" | "ids" => Ok(Self::Tokens),
            "text" => Ok(Self::Text),
            other => Err(Error::InvalidArgument(format!(
                "--embed-endpoint-input must be tokens or text, got '{other}'"
            ))),
        }
    }
}

/// Embeddings from a pool of endpoints.
pub struct RemoteEmbedder {
    pub dir: ModelDir,
    pool: Pool,
    model: Option<String>,
    input: EmbedInputKind,
}

impl RemoteEmbedder {
    pub fn new(dir: ModelDir, cfg: RemoteConfig) -> Result<Self> {
        Ok(Self {
            dir,
            pool: embedding_pool(&cfg)?,
            model: cfg.model,
            input: cfg.embed_input,
        })
    }

    /// The endpoints' embedding dimension, from the answer to one short text-mode request.
    pub async fn probe_dims(cfg: &RemoteConfig) -> Result<usize> {
        let pool = embedding_pool(cfg)?;
        let body = request_body(&["dimension probe"], cfg.model.as_deref());
        let vectors = pool.post(&body, |v| parse_embeddings(&v, 1)).await?;
        match vectors.first().map(Vec::len) {
            Some(d) if d > 0 => Ok(d),
            _ => Err(Error::Inference(
                "the embedding endpoints answered an empty vector; set --embed-endpoint-dims"
                    .into(),
            )),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether requests carry text rather than token ids.
    pub fn takes_text(&self) -> bool {
        self.input == EmbedInputKind::Text
    }

    /// Unit vectors for token-id sequences (each already ending in `<|endoftext|>`).
    pub async fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if self.takes_text() {
            return Err(Error::InvalidArgument(
                "token-id inputs cannot go to endpoints configured with --embed-endpoint-input text".into(),
            ));
        }
        self.embed_all(seqs, seqs.iter().map(Vec::len), TOKEN_BUDGET)
            .await
    }

    /// Unit vectors for formatted texts (text mode).
    pub async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.embed_all(texts, texts.iter().map(String::len), BYTE_BUDGET)
            .await
    }

    async fn embed_all<T: serde::Serialize + Sync>(
        &self,
        inputs: &[T],
        sizes: impl IntoIterator<Item = usize>,
        budget: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let batches = size_batches(sizes, budget, MAX_INPUTS);
        let results = join_all(batches.iter().map(|r| self.embed_batch(&inputs[r.clone()]))).await;
        let mut out = Vec::with_capacity(inputs.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    async fn embed_batch<T: serde::Serialize>(&self, inputs: &[T]) -> Result<Vec<Vec<f32>>> {
        let body = request_body(inputs, self.model.as_deref());
        let n = inputs.len();
        self.pool.post(&body, |v| parse_embeddings(&v, n)).await
    }
}

/// An OpenAI-shaped embeddings request for `inputs` (texts or token-id lists).
fn request_body<T: serde::Serialize>(inputs: &[T], model: Option<&str>) -> Value {
    let mut body = json!({"input": inputs, "encoding_format": "float"});
    if let Some(m) = model {
        body["model"] = Value::String(m.to_string());
    }
    body
}

/// One pool over the configured embedding URLs (`…/embeddings` appended to base URLs).
fn embedding_pool(cfg: &RemoteConfig) -> Result<Pool> {
    let urls = cfg
        .embed_endpoints
        .iter()
        .map(|u| {
            let base = u.trim().trim_end_matches('/');
            if base.ends_with("/embeddings") {
                base.to_string()
            } else {
                format!("{base}/embeddings")
            }
        })
        .collect();
    Pool::new(
        urls,
        PoolOptions::from_config("embedding", cfg.api_key.clone(), cfg),
    )
}

/// `data[*].embedding` in input order (by `index`), each L2-normalised.
fn parse_embeddings(v: &Value, n: usize) -> std::result::Result<Vec<Vec<f32>>, Failure> {
    let retry = |m: String| Failure::Retry(m, None);
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| retry("response has no data array".into()))?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (pos, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |i| i as usize);
        let mut vector: Vec<f32> = item
            .get("embedding")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| x as f32)
                    .collect()
            })
            .ok_or_else(|| retry(format!("data[{pos}] has no float embedding")))?;
        crate::normalize(&mut vector);
        if let Some(slot) = out.get_mut(index) {
            *slot = Some(vector);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| retry(format!("no embedding for input {i}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_kind_parses_and_names_the_flag() {
        assert_eq!(
            "text".parse::<EmbedInputKind>().unwrap(),
            EmbedInputKind::Text
        );
        assert_eq!(
            " Tokens ".parse::<EmbedInputKind>().unwrap(),
            EmbedInputKind::Tokens
        );
        let err = "words".parse::<EmbedInputKind>().unwrap_err().to_string();
        assert!(err.contains("--embed-endpoint-input"), "{err}");
    }

    #[test]
    fn embeddings_parse_by_index_and_normalise() {
        let v = json!({"data": [
            {"index": 1, "embedding": [0.0, 2.0]},
            {"index": 0, "embedding": [3.0, 4.0]}
        ]});
        let out = parse_embeddings(&v, 2).unwrap();
        assert_eq!(out, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert!(matches!(
            parse_embeddings(&json!({"data": []}), 1),
            Err(Failure::Retry(..))
        ));
    }
}
