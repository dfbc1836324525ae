//! C1: chunking throughput, and its share of a chunk-and-embed pipeline's time (issue 17).
//!
//! The K1 documents (log-normal lengths, median 150 words) go through
//! `unnest(chunk(body, max_tokens))` alone, then through the same query with `embed()` of
//! every chunk (cache off, so nothing is served from memory), alternating for `rounds` rounds.

use std::time::Instant;

use serde::Serialize;

use super::median;
use crate::engine::Engine;
use crate::error::Result;

/// What C1 measured (medians over rounds).
#[derive(Debug, Clone, Serialize)]
pub struct ChunkingResult {
    pub docs: usize,
    pub bytes: usize,
    pub max_tokens: usize,
    pub chunks: u64,
    pub chunk_s: f64,
    pub chunk_mb_per_s: f64,
    /// Chunking and embedding every chunk.
    pub chunk_and_embed_s: f64,
    /// Chunking's share of the chunk-and-embed time.
    pub chunk_share: f64,
}

/// Runs the query and returns its seconds and the first row's count.
async fn timed(engine: &Engine, sql: &str) -> Result<(f64, u64)> {
    let started = Instant::now();
    let results = engine.run_sql(sql).await?;
    let seconds = started.elapsed().as_secs_f64();
    let count = results
        .last()
        .and_then(|r| r.batches.first())
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0) as u64)
        })
        .unwrap_or(0);
    Ok((seconds, count))
}

pub async fn run(
    engine: &Engine,
    seed: u64,
    docs: usize,
    max_tokens: usize,
    rounds: usize,
) -> Result<ChunkingResult> {
    let documents = super::ingest::documents(seed, docs.max(1));
    let bytes = documents.iter().map(|(_, b)| b.len()).sum();
    super::ingest::register_source(engine, "c1_source", &documents)?;
    engine.run_sql("SET semflow.cache = false").await?;
    let chunks = format!("SELECT unnest(chunk(body, {max_tokens})) AS c FROM c1_source");
    let chunk_only = format!("SELECT count(*) FROM ({chunks})");
    let with_embed = format!("SELECT count(embed(c['text'])) FROM ({chunks})");
    // Warm-up: the tokenizer and the model load on first use.
    timed(engine, &format!("{with_embed} LIMIT 1")).await?;
    let (mut chunk_s, mut both_s, mut count) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds.max(1) {
        let (s, n) = timed(engine, &chunk_only).await?;
        chunk_s.push(s);
        count = n;
        both_s.push(timed(engine, &with_embed).await?.0);
    }
    engine.run_sql("SET semflow.cache = true").await?;
    let (chunk_s, both_s) = (median(chunk_s), median(both_s));
    Ok(ChunkingResult {
        docs: documents.len(),
        bytes,
        max_tokens,
        chunks: count,
        chunk_s,
        chunk_mb_per_s: bytes as f64 / 1e6 / chunk_s.max(1e-9),
        chunk_and_embed_s: both_s,
        chunk_share: chunk_s / both_s.max(1e-9),
    })
}
