//! Counters of inference work, read by `semflow_stats()`, `/metrics` and progress output.

use std::sync::atomic::{AtomicU64, Ordering};

/// Inputs asked for, inputs sent to a model and their tokens, per task.
#[derive(Debug, Default)]
pub struct Stats {
    pub embed_inputs: AtomicU64,
    pub embed_inferred: AtomicU64,
    pub embed_tokens: AtomicU64,
    pub rerank_inputs: AtomicU64,
    pub rerank_inferred: AtomicU64,
    pub rerank_tokens: AtomicU64,
}

/// The two tasks counted.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    Embed,
    Rerank,
}

impl Stats {
    fn counters(&self, task: Task) -> (&AtomicU64, &AtomicU64, &AtomicU64) {
        match task {
            Task::Embed => (&self.embed_inputs, &self.embed_inferred, &self.embed_tokens),
            Task::Rerank => (
                &self.rerank_inputs,
                &self.rerank_inferred,
                &self.rerank_tokens,
            ),
        }
    }

    /// Inputs a caller asked for (before dedupe and cache).
    pub fn asked(&self, task: Task, inputs: usize) {
        self.counters(task)
            .0
            .fetch_add(inputs as u64, Ordering::Relaxed);
    }

    /// Sequences sent to a model, and their tokens.
    pub fn inferred(&self, task: Task, seqs: &[Vec<u32>]) {
        let (_, inferred, tokens) = self.counters(task);
        let n: usize = seqs.iter().map(Vec::len).sum();
        tokens.fetch_add(n as u64, Ordering::Relaxed);
        inferred.fetch_add(seqs.len() as u64, Ordering::Relaxed);
    }

    /// Inputs sent to a backend that tokenizes them itself (only they can be counted).
    pub fn inferred_untokenized(&self, task: Task, inputs: usize) {
        self.counters(task)
            .1
            .fetch_add(inputs as u64, Ordering::Relaxed);
    }

    /// Name/value pairs of the counters.
    pub fn rows(&self) -> [(&'static str, u64); 6] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("embed_inputs", l(&self.embed_inputs)),
            ("embed_inferred", l(&self.embed_inferred)),
            ("embed_tokens", l(&self.embed_tokens)),
            ("rerank_inputs", l(&self.rerank_inputs)),
            ("rerank_inferred", l(&self.rerank_inferred)),
            ("rerank_tokens", l(&self.rerank_tokens)),
        ]
    }
}
