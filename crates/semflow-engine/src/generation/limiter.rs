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
            let wait = self.state.lock().await.take(Instant::now(), tokens);
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl State {
    /// At `now`: takes one request of `tokens` tokens from the buckets and returns zero, or
    /// takes nothing and returns how long to wait before trying again.
    fn take(&mut self, now: Instant, tokens: u32) -> Duration {
        let secs = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut wait = Duration::ZERO;
        if let Some(b) = self.requests.as_mut() {
            b.refill(secs);
            wait = wait.max(b.wait_for(1.0));
        }
        if let Some(b) = self.tokens.as_mut() {
            b.refill(secs);
            // Any positive level admits a request; its cost may overdraw the bucket.
            wait = wait.max(b.wait_for(f64::MIN_POSITIVE));
        }
        if wait.is_zero() {
            if let Some(b) = self.requests.as_mut() {
                b.level -= 1.0;
            }
            if let Some(b) = self.tokens.as_mut() {
                b.level -= f64::from(tokens);
            }
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs requests of `tokens` tokens through `limiter`'s buckets on a simulated clock that
    /// advances exactly by each wait; returns the simulated seconds they took.
    fn simulated_seconds(limiter: RateLimiter, requests: &[u32]) -> f64 {
        let mut state = limiter.state.into_inner();
        let start = state.last;
        let mut now = start;
        for &tokens in requests {
            loop {
                let wait = state.take(now, tokens);
                if wait.is_zero() {
                    break;
                }
                now += wait;
            }
        }
        now.duration_since(start).as_secs_f64()
    }

    #[test]
    fn requests_per_minute_paces_requests() {
        // 10/s, bucket of 10: ten at once, then one per 100 ms.
        let took = simulated_seconds(RateLimiter::new(Some(600), None), &[0; 15]);
        assert!((took - 0.5).abs() < 1e-6, "{took}");
    }

    #[test]
    fn tokens_per_minute_makes_big_requests_wait() {
        // 100 tokens/s, bucket of 100: 150 overdraws to -50, the next waits 0.5 s for the debt.
        let took = simulated_seconds(RateLimiter::new(None, Some(6000)), &[150, 10]);
        assert!((took - 0.5).abs() < 1e-6, "{took}");
    }

    #[test]
    fn both_limits_wait_for_the_slower() {
        // 1 request/s (bucket of 1) and 6000 tokens/min: three 10-token requests are paced by
        // the request bucket alone.
        let took = simulated_seconds(RateLimiter::new(Some(60), Some(6000)), &[10; 3]);
        assert!((took - 2.0).abs() < 1e-6, "{took}");
    }

    #[tokio::test]
    async fn no_limits_never_wait() {
        let took = simulated_seconds(RateLimiter::new(None, None), &[10_000; 1000]);
        assert_eq!(took, 0.0);
        // And the async path returns without sleeping.
        let l = RateLimiter::new(None, None);
        for _ in 0..1000 {
            l.acquire(10_000).await;
        }
    }
}
