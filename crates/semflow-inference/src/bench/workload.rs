//! Benchmark workloads as token ids, generated from a seed so semflow and the peer run the
//! identical inputs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};

use crate::prompts::EOS_TOKEN_ID;

/// Which model a workload runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Embed,
    Rerank,
}

/// What a workload reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// p50/p99 per request (lower is better).
    Latency,
    /// Real tokens per second (higher is better).
    Throughput,
}

/// A workload: requests, each a batch of token sequences sent together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub kind: Kind,
    pub metric: Metric,
    pub requests: Vec<Vec<Vec<u32>>>,
}

impl Workload {
    pub fn tokens(&self) -> usize {
        self.requests.iter().flatten().map(Vec::len).sum()
    }
}

/// Random "ordinary" token ids (below the special-token range).
fn random_tokens(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(100..150_000)).collect()
}

fn doc(rng: &mut ChaCha8Rng, len: usize) -> Vec<u32> {
    // `len` tokens in all, the last being <|endoftext|>.
    let mut ids = random_tokens(rng, len.saturating_sub(1));
    ids.push(EOS_TOKEN_ID);
    ids
}

/// W1: queries (an instruction prefix + 8–48 tokens), `requests` batches of `batch`.
pub fn w1(seed: u64, instruction_prefix: &[u32], batch: usize, requests: usize) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5731);
    let reqs = (0..requests)
        .map(|_| {
            (0..batch)
                .map(|_| {
                    let mut ids = instruction_prefix.to_vec();
                    let n = rng.random_range(8..=48);
                    ids.extend(random_tokens(&mut rng, n));
                    ids.push(EOS_TOKEN_ID);
                    ids
                })
                .collect()
        })
        .collect();
    Workload {
        name: format!("W1 queries b={batch}"),
        kind: Kind::Embed,
        metric: Metric::Latency,
        requests: reqs,
    }
}

/// W2: fixed-length documents, about `tokens_per_request` tokens per request.
pub fn w2(seed: u64, len: usize, tokens_per_request: usize, requests: usize) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5732 ^ len as u64);
    let per = (tokens_per_request / len).max(1);
    let reqs = (0..requests)
        .map(|_| (0..per).map(|_| doc(&mut rng, len)).collect())
        .collect();
    Workload {
        name: format!("W2 fixed L={len}"),
        kind: Kind::Embed,
        metric: Metric::Throughput,
        requests: reqs,
    }
}

/// W3: `docs` realistic documents in one request: log-normal lengths with median 200 and
/// p90 600 tokens, between 8 and 1024.
pub fn w3(seed: u64, docs: usize) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5733);
    // p90 / median = e^(1.2816 sigma) = 3.
    let sigma = 3f64.ln() / 1.2816;
    let dist =
        LogNormal::new(200f64.ln(), sigma).expect("constant log-normal parameters are valid");
    let batch = (0..docs)
        .map(|_| {
            let len = (dist.sample(&mut rng).round() as usize).clamp(8, 1024);
            doc(&mut rng, len)
        })
        .collect();
    Workload {
        name: format!("W3 realistic docs={docs}"),
        kind: Kind::Embed,
        metric: Metric::Throughput,
        requests: vec![batch],
    }
}

/// W5: one query against `docs` documents of ~256 tokens, as full reranker prompts built by
/// `prompt` from a body of token ids.
pub fn w5(seed: u64, docs: usize, prompt: impl Fn(Vec<u32>) -> Vec<u32>) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5735);
    let query = random_tokens(&mut rng, 12);
    let batch = (0..docs)
        .map(|_| {
            let mut body = query.clone();
            let n = rng.random_range(240..=272);
            body.extend(random_tokens(&mut rng, n));
            prompt(body)
        })
        .collect();
    Workload {
        name: format!("W5 rerank 1x{docs}"),
        kind: Kind::Rerank,
        metric: Metric::Throughput,
        requests: vec![batch],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_deterministic_and_shaped() {
        let a = w3(1, 500);
        assert_eq!(a.requests[0], w3(1, 500).requests[0]);
        let mut lens: Vec<usize> = a.requests[0].iter().map(Vec::len).collect();
        lens.sort();
        let (median, p90) = (lens[250], lens[450]);
        assert!((150..=260).contains(&median), "median {median}");
        assert!((430..=800).contains(&p90), "p90 {p90}");
        assert!(lens.iter().all(|&l| (8..=1024).contains(&l)));
        assert!(a.requests[0]
            .iter()
            .all(|d| d.last() == Some(&EOS_TOKEN_ID)));

        let w = w2(0, 128, 4096, 2);
        assert_eq!(w.requests.len(), 2);
        assert!(w.requests.iter().flatten().all(|s| s.len() == 128));
        let q = w1(0, &[1, 2, 3], 8, 3);
        assert!(q
            .requests
            .iter()
            .flatten()
            .all(|s| (3 + 8 + 1..=3 + 48 + 1).contains(&s.len())));
    }
}
