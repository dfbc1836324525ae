//! A client for OpenAI-compatible `/chat/completions` endpoints (vLLM, mistral.rs server,
//! Ollama, OpenAI…): bounded concurrency, request/token rate limits, retries with exponential
//! backoff and full jitter on 429/5xx/timeouts/connection errors (honouring `Retry-After`),
//! and structured output (`response_format` JSON schema) with a fallback to plain text for
//! endpoints that reject it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::config::GeneratorConfig;
use super::limiter::RateLimiter;
use crate::error::{Error, Result};

/// Why a request failed (after its last attempt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
    /// A 2xx answer whose body is not a chat completion (e.g. truncated JSON).
    #[error("invalid response body: {0}")]
    InvalidResponse(String),
}

impl RequestError {
    /// The failure kind in reports.
    pub fn label(&self) -> String {
        match self {
            RequestError::Status { status, .. } => format!("http_{status}"),
            RequestError::Timeout => "timeout".into(),
            RequestError::Connection(_) => "connection".into(),
            RequestError::InvalidResponse(_) => "invalid_response".into(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            RequestError::Status { status, .. } => {
                *status == 408 || *status == 409 || *status == 429 || *status >= 500
            }
            _ => true,
        }
    }

    /// Failures no retry or other document can fix: wrong key, wrong URL or model.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RequestError::Status { status, .. } if [401, 403, 404].contains(status))
    }
}

/// Request counters for the run report.
#[derive(Debug, Default)]
pub struct Usage {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

/// One chat-completions endpoint.
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    cfg: GeneratorConfig,
    limiter: RateLimiter,
    slots: Semaphore,
    /// Set once the endpoint has rejected `response_format` (auto mode).
    plain_text: AtomicBool,
    pub usage: Usage,
}

impl std::fmt::Debug for ChatClient {
    // The API key stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("url", &self.url)
            .field("model", &self.cfg.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

enum Outcome {
    Reply(String),
    SchemaRejected,
    Failed(RequestError, Option<Duration>),
}

impl ChatClient {
    pub fn new(cfg: &GeneratorConfig) -> Result<Self> {
        let http = crate::inference::outbound::http_client()
            .timeout(Duration::from_secs_f64(cfg.timeout_s))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("generator HTTP client: {e}")))?;
        let base = cfg.base_url.trim_end_matches('/');
        let url = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        reqwest::Url::parse(&url).map_err(|e| {
            Error::InvalidArgument(format!("synth generator.base_url {:?}: {e}", cfg.base_url))
        })?;
        let api_key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        Ok(Self {
            http,
            url,
            api_key,
            limiter: RateLimiter::new(cfg.requests_per_minute, cfg.tokens_per_minute),
            slots: Semaphore::new(cfg.max_concurrency.max(1)),
            plain_text: AtomicBool::new(cfg.structured_output == "off"),
            cfg: cfg.clone(),
            usage: Usage::default(),
        })
    }

    pub fn max_concurrency(&self) -> usize {
        self.cfg.max_concurrency.max(1)
    }

    pub fn model(&self) -> &str {
        &self.cfg.model
    }

    /// Whether requests still ask for structured output.
    pub fn structured(&self) -> bool {
        !self.plain_text.load(Ordering::Relaxed)
    }

    /// Sends `prompt` as one user message and returns the reply text. `schema` (name, JSON
    /// schema) is sent as `response_format` while the endpoint accepts it.
    pub async fn complete(
        &self,
        prompt: &str,
        schema: Option<(&str, &Value)>,
    ) -> std::result::Result<String, RequestError> {
        // A rough token estimate for the per-minute token budget: ~4 bytes per token.
        let estimate = (prompt.len() / 4) as u32 + self.cfg.max_tokens;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.limiter.acquire(estimate).await;
            let outcome = {
                let _slot = self.slots.acquire().await;
                let schema = schema.filter(|_| self.structured());
                self.send(prompt, schema).await
            };
            match outcome {
                Outcome::Reply(text) => return Ok(text),
                Outcome::SchemaRejected => {
                    tracing::warn!(
                        url = %self.url,
                        "the generator rejected response_format; continuing with plain-text replies"
                    );
                    self.plain_text.store(true, Ordering::Relaxed);
                    attempt -= 1; // not the endpoint's fault: the retry is free
                }
                Outcome::Failed(err, retry_after) => {
                    if !err.retryable() || attempt >= self.cfg.max_attempts {
                        return Err(err);
                    }
                    self.usage.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = self.backoff(attempt, retry_after);
                    tracing::debug!(%err, attempt, ?delay, "generator request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Full-jitter exponential backoff; a server's `Retry-After` wins when given.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(Duration::from_secs(300));
        }
        let cap = self.cfg.backoff_max_ms as f64;
        let exp = (self.cfg.backoff_initial_ms as f64) * 2f64.powi(attempt as i32 - 1);
        let ms = rand::rng().random_range(0.0..=exp.min(cap).max(1.0));
        Duration::from_secs_f64(ms / 1000.0)
    }

    async fn send(&self, prompt: &str, schema: Option<(&str, &Value)>) -> Outcome {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        });
        if let Some((name, schema)) = schema {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": true},
            });
        }
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        self.usage.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(transport_error(&e), None),
        };
        let status = resp.status();
        let retry_after = crate::inference::remote::retry_after(resp.headers());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(transport_error(&e), None),
        };
        if !status.is_success() {
            let lower = text.to_ascii_lowercase();
            if schema.is_some()
                && self.cfg.structured_output == "auto"
                && (status.as_u16() == 400 || status.as_u16() == 422)
                && (lower.contains("response_format") || lower.contains("json_schema"))
            {
                return Outcome::SchemaRejected;
            }
            let body: String = text.chars().take(300).collect();
            return Outcome::Failed(
                RequestError::Status {
                    status: status.as_u16(),
                    body,
                },
                retry_after,
            );
        }
        match parse_completion(&text) {
            Ok((content, prompt_tokens, completion_tokens)) => {
                self.usage
                    .prompt_tokens
                    .fetch_add(prompt_tokens, Ordering::Relaxed);
                self.usage
                    .completion_tokens
                    .fetch_add(completion_tokens, Ordering::Relaxed);
                Outcome::Reply(content)
            }
            Err(e) => Outcome::Failed(RequestError::InvalidResponse(e), None),
        }
    }
}

fn transport_error(e: &reqwest::Error) -> RequestError {
    if e.is_timeout() {
        RequestError::Timeout
    } else {
        // With the causes: "connection closed before message completed" and friends.
        RequestError::Connection(crate::error::with_causes(e))
    }
}

/// (content, prompt tokens, completion tokens) of a chat-completion body.
fn parse_completion(text: &str) -> std::result::Result<(String, u64, u64), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let message = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or_else(|| "no choices[0].message".to_string())?;
    // Some servers put JSON-mode output in `content` as null plus `refusal`; treat as empty.
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let usage = |k: &str| {
        v.get("usage")
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok((content, usage("prompt_tokens"), usage("completion_tokens")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_bodies() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        assert_eq!(parse_completion(ok), Ok(("hi".into(), 5, 2)));
        assert!(parse_completion(r#"{"choices":[{"message":{"content":"h"#).is_err());
        assert!(parse_completion(r#"{"error":"x"}"#).is_err());
    }

    #[test]
    fn what_is_retried() {
        let s = |status| RequestError::Status {
            status,
            body: String::new(),
        };
        assert!(s(429).retryable() && s(500).retryable() && s(503).retryable());
        assert!(!s(400).retryable() && !s(401).retryable());
        assert!(s(401).is_fatal() && !s(500).is_fatal());
        assert!(RequestError::Timeout.retryable());
        assert_eq!(s(429).label(), "http_429");
    }

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        let c = ChatClient::new(&GeneratorConfig::default()).unwrap();
        for attempt in 1..10 {
            assert!(c.backoff(attempt, None) <= Duration::from_millis(30_000));
        }
        assert!(c.backoff(1, None) <= Duration::from_millis(500));
        assert_eq!(
            c.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn bad_url_is_named() {
        let cfg = GeneratorConfig {
            base_url: "not a url".into(),
            ..Default::default()
        };
        let err = ChatClient::new(&cfg).unwrap_err().to_string();
        assert!(err.contains("generator.base_url"), "{err}");
    }
}
