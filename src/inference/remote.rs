//! A remote embedding backend: OpenAI-compatible `/v1/embeddings` endpoints (semflow serve,
//! vLLM, TEI, …) behind the same SQL functions. semflow still formats and tokenizes inputs
//! itself (instruction prefix, one trailing `<|endoftext|>`) and sends **token ids**, so a
//! remote server computes exactly what the local backend would; vectors are re-normalised
//! here and Matryoshka truncation stays client-side. Requests are batched by token budget,
//! spread over endpoints by least outstanding requests, and retried elsewhere on 429, 5xx,
//! timeouts and connection errors; a failing endpoint sits out a cool-down (or its
//! `Retry-After`) and rejoins when it answers again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::dir::ModelDir;

/// Tokens per request at most (inputs are never split; a longer one goes alone).
const TOKEN_BUDGET: usize = 16_384;
/// Inputs per request at most.
const MAX_INPUTS: usize = 256;
/// How long a failed endpoint sits out when it gave no `Retry-After`.
const COOL_DOWN: Duration = Duration::from_secs(5);

/// The `Retry-After` header as a duration (seconds form; capped at 5 minutes).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)))
}

/// Remote-backend settings.
#[derive(Debug, Clone, Default)]
pub struct RemoteConfig {
    /// Base URLs up to `/v1`.
    pub embed_endpoints: Vec<String>,
    /// Model name sent with each request (servers hosting several models need it).
    pub model: Option<String>,
    /// Bearer token for every endpoint.
    pub api_key: Option<String>,
    /// Seconds per request.
    pub timeout_s: f64,
    /// Tries per batch, across endpoints.
    pub max_attempts: u32,
}

struct Endpoint {
    url: String,
    outstanding: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .map(|d| d.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    fn set_down(&self, until: Option<Instant>) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = until;
        }
    }
}

/// Embeddings from a pool of endpoints.
pub struct RemoteEmbedder {
    pub dir: ModelDir,
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    cfg: RemoteConfig,
}

enum Failure {
    /// Worth another endpoint (and marks this one down until the instant).
    Retry(String, Instant),
    /// The request itself is wrong; another endpoint would say the same.
    Fatal(String),
}

impl RemoteEmbedder {
    pub fn new(dir: ModelDir, cfg: RemoteConfig) -> Result<Self> {
        if cfg.embed_endpoints.is_empty() {
            return Err(Error::InvalidArgument("no embedding endpoint given".into()));
        }
        let mut endpoints = Vec::new();
        for u in &cfg.embed_endpoints {
            let base = u.trim_end_matches('/');
            let url = if base.ends_with("/embeddings") {
                base.to_string()
            } else {
                format!("{base}/embeddings")
            };
            reqwest::Url::parse(&url)
                .map_err(|e| Error::InvalidArgument(format!("--embed-endpoint {u}: {e}")))?;
            endpoints.push(Endpoint {
                url,
                outstanding: AtomicUsize::new(0),
                down_until: Mutex::new(None),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.timeout_s.max(0.1)))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("embedding endpoints: {e}")))?;
        Ok(Self {
            dir,
            http,
            endpoints,
            cfg,
        })
    }

    /// The endpoint to use next: up ones first, then fewest requests in flight.
    fn pick(&self) -> usize {
        let now = Instant::now();
        (0..self.endpoints.len())
            .min_by_key(|&i| {
                let e = &self.endpoints[i];
                (e.is_down(now), e.outstanding.load(Ordering::Relaxed), i)
            })
            .unwrap_or(0)
    }

    /// Unit vectors for token-id sequences (each already ending in `<|endoftext|>`).
    pub async fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut tokens) = (0, 0);
        for (i, s) in seqs.iter().enumerate() {
            if i > start && (tokens + s.len() > TOKEN_BUDGET || i - start >= MAX_INPUTS) {
                batches.push(start..i);
                start = i;
                tokens = 0;
            }
            tokens += s.len();
        }
        if start < seqs.len() {
            batches.push(start..seqs.len());
        }
        let results = join_all(batches.iter().map(|r| self.embed_batch(&seqs[r.clone()]))).await;
        let mut out = Vec::with_capacity(seqs.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    async fn embed_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut body = json!({"input": seqs, "encoding_format": "float"});
        if let Some(m) = &self.cfg.model {
            body["model"] = Value::String(m.clone());
        }
        let mut last = String::new();
        for attempt in 0..self.cfg.max_attempts.max(1) {
            let i = self.pick();
            let endpoint = &self.endpoints[i];
            endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
            let result = self.send(endpoint, &body, seqs.len()).await;
            endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(v) => {
                    endpoint.set_down(None);
                    return Ok(v);
                }
                Err(Failure::Fatal(m)) => {
                    return Err(Error::Inference(format!("{}: {m}", endpoint.url)))
                }
                Err(Failure::Retry(m, until)) => {
                    tracing::warn!(endpoint = %endpoint.url, attempt, "embedding request failed: {m}");
                    endpoint.set_down(Some(until));
                    last = format!("{}: {m}", endpoint.url);
                    // Small pause when every endpoint is down, so a brief outage can pass.
                    if self.endpoints.iter().all(|e| e.is_down(Instant::now())) {
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
                    }
                }
            }
        }
        Err(Error::Inference(format!(
            "every embedding endpoint failed ({} attempts); last: {last}",
            self.cfg.max_attempts.max(1)
        )))
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        n: usize,
    ) -> std::result::Result<Vec<Vec<f32>>, Failure> {
        let mut req = self.http.post(&endpoint.url).json(body);
        if let Some(k) = &self.cfg.api_key {
            req = req.bearer_auth(k);
        }
        let cool = Instant::now() + COOL_DOWN;
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Retry(e.to_string(), cool))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers()).map(|d| Instant::now() + d);
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::Retry(e.to_string(), cool))?;
        if !status.is_success() {
            let msg = format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
            let code = status.as_u16();
            return Err(if code == 429 || code == 408 || code >= 500 {
                Failure::Retry(msg, retry_after.unwrap_or(cool))
            } else {
                Failure::Fatal(msg)
            });
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Failure::Retry(format!("invalid response: {e}"), cool))?;
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::Retry("response has no data array".into(), cool))?;
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
                .ok_or_else(|| {
                    Failure::Retry(format!("data[{pos}] has no float embedding"), cool)
                })?;
            super::normalize(&mut vector);
            if let Some(slot) = out.get_mut(index) {
                *slot = Some(vector);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| Failure::Retry(format!("no embedding for input {i}"), cool))
            })
            .collect()
    }
}
