//! Request and token rate limits (per minute) as token buckets. A bucket holds at most one
//! second's worth, so requests are paced evenly instead of bursting a minute's budget; a
//! request may take the token bucket negative (one large prompt), which later ones repay.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    per_sec: f64,
    capacity: f64,
    level: f64,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let per_sec = f64::from(per_minute.max(1)) / 60.0;
        let capacity = per_sec.max(1.0);
        Self {
            per_sec,
            capacity,
            level: capacity,
        }
    }

    fn refill(&mut self, secs: f64) {
        self.level = (self.level + secs * self.per_sec).min(self.capacity);
    }

    /// Time until the level reaches `need` (0 when it already has).
    fn wait_for(&self, need: f64) -> Duration {
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.per_sec)
        }
    }
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    last: Instant,
}

/// Requests-per-minute and tokens-per-minute limits; either may be absent.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
}

impl RateLimiter {
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        Self {
            state: Mutex::new(State {
                requests: requests_per_minute.map(Bucket::new),
                tokens: tokens_per_minute.map(Bucket::new),
                last: Instant::now(),
            }),
        }
    }

    /// Waits until one request estimated at `tokens` tokens may start.
    pub async fn acquire(&self, tokens: u32) {
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let secs = now.duration_since(s.last).as_secs_f64();
                s.last = now;
                let mut wait = Duration::ZERO;
                if let Some(b) = s.requests.as_mut() {
                    b.refill(secs);
                    wait = wait.max(b.wait_for(1.0));
                }
                if let Some(b) = s.tokens.as_mut() {
                    b.refill(secs);
                    // Any positive level admits a request; its cost may overdraw the bucket.
                    wait = wait.max(b.wait_for(f64::MIN_POSITIVE));
                }
                if wait.is_zero() {
                    if let Some(b) = s.requests.as_mut() {
                        b.level -= 1.0;
                    }
                    if let Some(b) = s.tokens.as_mut() {
                        b.level -= f64::from(tokens);
                    }
                    return;
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_per_minute_paces_requests() {
        let l = RateLimiter::new(Some(600), None); // 10/s, bucket of 10
        let start = Instant::now();
        for _ in 0..15 {
            l.acquire(0).await;
        }
        // Ten at once, then one per 100 ms.
        let took = start.elapsed().as_secs_f64();
        assert!((0.45..0.9).contains(&took), "{took}");
    }

    #[tokio::test]
    async fn tokens_per_minute_makes_big_requests_wait() {
        let l = RateLimiter::new(None, Some(6000)); // 100 tokens/s, bucket of 100
        let start = Instant::now();
        l.acquire(150).await; // overdraws to -50
        l.acquire(10).await; // waits ~0.5 s for the debt
        let took = start.elapsed().as_secs_f64();
        assert!((0.45..0.9).contains(&took), "{took}");
    }

    #[tokio::test]
    async fn no_limits_never_wait() {
        let l = RateLimiter::new(None, None);
        let start = Instant::now();
        for _ in 0..1000 {
            l.acquire(10_000).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
