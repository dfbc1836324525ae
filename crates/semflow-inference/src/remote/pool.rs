//! A pool of interchangeable HTTP endpoints serving the same model, and the size-bounded
//! batching its callers cut requests with.
//!
//! Each request goes to the endpoint with the fewest requests in flight (ties rotate), waits
//! for one of that endpoint's `concurrency` slots, and on a retryable failure (429, 408, 5xx,
//! timeout, connection error, unreadable answer) moves to another endpoint, up to
//! `max_attempts` tries. A failed endpoint sits out a cool-down (or its `Retry-After`).
//! A background task probes `GET /health` on every endpoint's origin: one that does not
//! answer, or answers 5xx, is out of rotation until a probe succeeds again. When every
//! endpoint is out, requests still go to the least bad one rather than failing unheard.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use super::{retry_after, RemoteConfig};
use crate::error::{Error, Result};

/// How long a failed endpoint sits out when it gave no `Retry-After`.
const COOL_DOWN: Duration = Duration::from_secs(5);
/// Longest wait for a health probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// What the pool serves, for messages ("embedding", "rerank").
    pub label: &'static str,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub concurrency: usize,
    /// `None`: no health probes (failures still cool an endpoint down).
    pub health_interval: Option<Duration>,
}

impl PoolOptions {
    /// The settings a pool takes from the remote configuration.
    pub fn from_config(label: &'static str, api_key: Option<String>, cfg: &RemoteConfig) -> Self {
        Self {
            label,
            api_key,
            timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.1)),
            max_attempts: cfg.max_attempts,
            concurrency: cfg.concurrency,
            // 0 or less: no probes.
            health_interval: (cfg.health_interval_s > 0.0)
                .then(|| Duration::from_secs_f64(cfg.health_interval_s)),
        }
    }
}

/// Consecutive ranges of items whose sizes add up to at most `budget` (an item larger than
/// the budget goes alone) and that hold at most `max_items` items.
pub fn size_batches(
    sizes: impl IntoIterator<Item = usize>,
    budget: usize,
    max_items: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut used, mut n) = (0, 0, 0);
    for (i, size) in sizes.into_iter().enumerate() {
        if i > start && (used + size > budget || i - start >= max_items) {
            batches.push(start..i);
            start = i;
            used = 0;
        }
        used += size;
        n = i + 1;
    }
    if start < n {
        batches.push(start..n);
    }
    batches
}

/// Why a response could not be used.
#[derive(Debug)]
pub enum Failure {
    /// Worth another endpoint; `Some` says how long this one should sit out.
    Retry(String, Option<Duration>),
    /// The request itself is wrong: another endpoint would say the same.
    Fatal(String),
}

struct Endpoint {
    url: String,
    health_url: String,
    outstanding: AtomicUsize,
    slots: Semaphore,
    down_until: Mutex<Option<Instant>>,
    unhealthy: AtomicBool,
}

impl Endpoint {
    fn is_down(&self, now: Instant) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
            || self
                .down_until
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

struct Inner {
    options: PoolOptions,
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// Rotates ties between equally loaded endpoints.
    turn: AtomicUsize,
}

/// Endpoints serving one model; cheap to share.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("label", &self.inner.options.label)
            .field("urls", &self.urls().collect::<Vec<_>>())
            .finish()
    }
}

impl Pool {
    /// A pool over full request URLs. Starts the health prober when a tokio runtime is
    /// running; it stops when the pool is dropped.
    pub fn new(urls: Vec<String>, options: PoolOptions) -> Result<Self> {
        let label = options.label;
        if urls.is_empty() {
            return Err(Error::InvalidArgument(format!("no {label} endpoint given")));
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let parsed = reqwest::Url::parse(&url)
                .map_err(|e| Error::InvalidArgument(format!("{label} endpoint {url}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::InvalidArgument(format!(
                    "{label} endpoint {url}: only http and https URLs are supported"
                )));
            }
            let mut health = parsed.clone();
            health.set_path("/health");
            health.set_query(None);
            endpoints.push(Endpoint {
                url,
                health_url: health.to_string(),
                outstanding: AtomicUsize::new(0),
                slots: Semaphore::new(options.concurrency.max(1)),
                down_until: Mutex::new(None),
                unhealthy: AtomicBool::new(false),
            });
        }
        let http = crate::outbound::http_client()
            .timeout(options.timeout)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("{label} endpoints: {e}")))?;
        let interval = options.health_interval;
        let inner = Arc::new(Inner {
            options,
            http,
            // Start each process at a random endpoint, so workers that start together do
            // not all send their first requests to the first URL.
            turn: AtomicUsize::new(random_start(endpoints.len())),
            endpoints,
        });
        if let (Some(every), Ok(rt)) = (interval, tokio::runtime::Handle::try_current()) {
            rt.spawn(probe_forever(Arc::downgrade(&inner), every));
        }
        Ok(Self { inner })
    }

    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.inner.endpoints.iter().map(|e| e.url.as_str())
    }

    /// Whether endpoint `i` is currently in rotation (for tests and status).
    pub fn in_rotation(&self, i: usize) -> bool {
        self.inner
            .endpoints
            .get(i)
            .is_some_and(|e| !e.is_down(Instant::now()))
    }

    /// The endpoint to use next: in-rotation ones first, then fewest requests in flight,
    /// ties taken in turn.
    fn pick(&self) -> usize {
        let now = Instant::now();
        let n = self.inner.endpoints.len();
        let start = self.inner.turn.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .min_by_key(|&i| {
                let e = &self.inner.endpoints[i];
                (
                    e.is_down(now),
                    e.outstanding.load(Ordering::Relaxed),
                    (i + n - start) % n,
                )
            })
            .unwrap_or(0)
    }

    /// POSTs `body` to one endpoint after another until `parse` accepts an answer.
    pub async fn post<T>(
        &self,
        body: &Value,
        parse: impl Fn(Value) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let label = self.inner.options.label;
        let attempts = self.inner.options.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            let endpoint = &self.inner.endpoints[self.pick()];
            endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
            let result = match endpoint.slots.acquire().await {
                Ok(_permit) => self.send(endpoint, body).await.and_then(&parse),
                Err(_) => Err(Failure::Fatal("endpoint closed".into())),
            };
            endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(v) => {
                    endpoint.set_down(None);
                    return Ok(v);
                }
                Err(Failure::Fatal(m)) => {
                    return Err(Error::Inference(format!("{}: {m}", endpoint.url)))
                }
                Err(Failure::Retry(m, wait)) => {
                    tracing::warn!(endpoint = %endpoint.url, attempt, "{label} request failed: {m}");
                    endpoint.set_down(Some(Instant::now() + wait.unwrap_or(COOL_DOWN)));
                    last = format!("{}: {m}", endpoint.url);
                    // A short pause when every endpoint is out, so a brief outage can pass.
                    let now = Instant::now();
                    if self.inner.endpoints.iter().all(|e| e.is_down(now)) {
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
                    }
                }
            }
        }
        Err(Error::Inference(format!(
            "every {label} endpoint failed ({attempts} attempts); last: {last}"
        )))
    }

    async fn send(&self, endpoint: &Endpoint, body: &Value) -> std::result::Result<Value, Failure> {
        let mut req = self.inner.http.post(&endpoint.url).json(body);
        if let Some(k) = &self.inner.options.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Retry(crate::error::with_causes(&e), None))?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::Retry(e.to_string(), None))?;
        if !status.is_success() {
            let msg = format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
            let code = status.as_u16();
            return Err(if code == 429 || code == 408 || code >= 500 {
                Failure::Retry(msg, wait)
            } else {
                Failure::Fatal(msg)
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::Retry(format!("invalid JSON response: {e}"), None))
    }
}

/// A random index below `n` (std's per-process random hasher keys; no extra dependency).
fn random_start(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(n);
    (h.finish() % n.max(1) as u64) as usize
}

/// Probes every endpoint each `every` until the pool is gone.
async fn probe_forever(pool: Weak<Inner>, every: Duration) {
    let Ok(http) = crate::outbound::http_client()
        .timeout(PROBE_TIMEOUT.min(every.max(Duration::from_millis(100))))
        .build()
    else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = pool.upgrade() else { return };
        let probes = inner.endpoints.iter().map(|e| {
            let http = http.clone();
            async move {
                // Any answer below 500 means the server is up: servers without a /health
                // route answer 404, which is as good a sign of life.
                match http.get(&e.health_url).send().await {
                    Ok(r) if r.status().as_u16() < 500 => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(err) => Err(crate::error::with_causes(&err)),
                }
            }
        });
        let results = futures::future::join_all(probes).await;
        for (e, r) in inner.endpoints.iter().zip(results) {
            let was_out = e.unhealthy.swap(r.is_err(), Ordering::Relaxed);
            match (&r, was_out) {
                (Err(m), false) => {
                    tracing::warn!(endpoint = %e.url, "{} endpoint out of rotation: health probe failed: {m}", inner.options.label)
                }
                (Ok(()), true) => {
                    tracing::info!(endpoint = %e.url, "{} endpoint back in rotation", inner.options.label)
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PoolOptions {
        PoolOptions {
            label: "test",
            api_key: None,
            timeout: Duration::from_secs(1),
            max_attempts: 2,
            concurrency: 2,
            health_interval: None,
        }
    }

    #[test]
    fn batches_respect_budget_and_count() {
        assert_eq!(size_batches([3, 3, 3], 6, 10), vec![0..2, 2..3]);
        assert_eq!(size_batches([10, 1], 5, 10), vec![0..1, 1..2]);
        assert_eq!(size_batches([1, 1, 1], 100, 2), vec![0..2, 2..3]);
        assert!(size_batches([], 5, 5).is_empty());
    }

    #[test]
    fn rejects_bad_urls_naming_them() {
        let err = Pool::new(vec!["not a url".into()], options())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a url"), "{err}");
        let err = Pool::new(vec!["ftp://h/v1".into()], options())
            .unwrap_err()
            .to_string();
        assert!(err.contains("http and https"), "{err}");
        assert!(Pool::new(vec![], options()).is_err());
    }

    #[test]
    fn health_url_is_on_the_origin() {
        let p = Pool::new(vec!["http://h:8000/v1/embeddings?x=1".into()], options()).unwrap();
        assert_eq!(p.inner.endpoints[0].health_url, "http://h:8000/health");
    }

    #[test]
    fn picks_in_rotation_least_loaded_and_rotates_ties() {
        let p = Pool::new(
            vec![
                "http://a/v1".into(),
                "http://b/v1".into(),
                "http://c/v1".into(),
            ],
            options(),
        )
        .unwrap();
        // Ties rotate.
        let picks: Vec<usize> = (0..3).map(|_| p.pick()).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "{picks:?}");
        // Least outstanding wins; an endpoint out of rotation is last.
        p.inner.endpoints[0].outstanding.store(3, Ordering::Relaxed);
        p.inner.endpoints[1]
            .unhealthy
            .store(true, Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(p.pick(), 2);
        }
        assert!(!p.in_rotation(1));
        p.inner.endpoints[2].set_down(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(p.pick(), 0);
    }
}
