//! Admission control shared by every listener of `semflow serve`: up to `max_concurrency`
//! requests (HTTP calls, Postgres queries, Flight SQL statements together) run at once, up to
//! `max_queue` more wait, the rest are refused at once. Each protocol translates a refusal into
//! its own answer (HTTP 429, SQLSTATE 53000, gRPC RESOURCE_EXHAUSTED).
//!
//! One budget for all front ends because they share the machine: SQL functions such as
//! `embed()` wait for the model inside `block_in_place`, and each such wait makes tokio start
//! another worker thread, so unbounded Postgres clients used to grow the thread count (and the
//! allocator's per-thread memory) with their number.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the server is at capacity; retry later")]
    Busy,
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The shared budget; clones share it.
#[derive(Debug, Clone)]
pub struct Admission {
    max_concurrency: usize,
    max_queue: usize,
    /// Running + queued requests.
    admitted: Arc<Semaphore>,
    /// Running requests.
    running: Arc<Semaphore>,
}

/// Held while a request runs; dropping it frees its slot.
#[derive(Debug)]
pub struct Permit {
    _running: OwnedSemaphorePermit,
    _admitted: OwnedSemaphorePermit,
}

impl Default for Admission {
    /// `--max-concurrency 4 --max-queue 64`.
    fn default() -> Self {
        Self::new(4, 64)
    }
}

impl Admission {
    /// `max_concurrency` of 0 counts as 1.
    pub fn new(max_concurrency: usize, max_queue: usize) -> Self {
        let max_concurrency = max_concurrency.max(1);
        Self {
            max_concurrency,
            max_queue,
            admitted: Arc::new(Semaphore::new(max_concurrency + max_queue)),
            running: Arc::new(Semaphore::new(max_concurrency)),
        }
    }

    /// Waits for a running slot when the queue has room; refuses at once when it has none.
    /// `front` labels the refusal counter (`http`, `postgres`, `flight`).
    pub async fn enter(&self, front: &'static str) -> Result<Permit, Refused> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            metrics::counter!("semflow_rejected_total", "front" => front).increment(1);
            return Err(Refused::Busy);
        };
        self.publish();
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refused::ShuttingDown)?;
        self.publish();
        Ok(Permit {
            _running: running,
            _admitted: admitted,
        })
    }

    /// Requests admitted (running or waiting).
    pub fn admitted(&self) -> usize {
        self.max_concurrency + self.max_queue - self.admitted.available_permits()
    }

    /// Requests waiting for a running slot.
    fn queued(&self) -> usize {
        let running = self.max_concurrency - self.running.available_permits();
        self.admitted().saturating_sub(running)
    }

    fn publish(&self) {
        metrics::gauge!("semflow_in_flight").set(self.admitted() as f64);
        metrics::gauge!("semflow_queue_depth").set(self.queued() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_queues_then_refuses() {
        let admission = Admission::new(1, 1);
        let first = admission.enter("test").await.unwrap();
        // The second waits for the running slot …
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.enter("test").await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        while admission.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // … and with the queue full, a third is refused at once.
        assert_eq!(admission.enter("test").await.err(), Some(Refused::Busy));
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(admission.admitted(), 0, "slots come back when permits drop");
    }

    #[test]
    fn zero_concurrency_counts_as_one() {
        let admission = Admission::new(0, 0);
        assert_eq!(admission.running.available_permits(), 1);
    }
}
