//! `semflow synth`: synthetic training pairs the way the Qwen3-Embedding recipe made them.
//! For each document an LLM writes a query (configuration stage, then query stage); the pair is
//! kept when cos(embed(query, instruction), embed(document)) is above the threshold; hard
//! negatives are mined from the same corpus; rows go out ready for InfoNCE training.
//!
//! - [`config`]: the TOML settings; [`recipe`]: templates and seeded draws;
//! - [`client`], [`limiter`]: the chat-completions client (retries, rate limits);
//! - [`generate`], [`parse`]: one document → one checked query;
//! - [`negatives`]: the filter and hard-negative candidates;
//! - [`docs`], [`output`], [`state`]: input, output targets, resumable progress.

// The LLM side lives in `generation` (also used by `generate_query()`); re-exported so
// `synth::config` and friends keep their paths.
pub use crate::generation::{client, config, generate, limiter, parse, recipe};

pub mod docs;
pub mod negatives;
pub mod output;
pub mod state;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::inference::tokenize::Truncation;
use crate::inference::{CallOptions, EmbedInput, RerankInput};
use config::SynthConfig;
use generate::{Failure, Generator};
use negatives::Corpus;
use output::{PairRow, Target};
use state::{Manifest, RunIdentity, State};

/// One synthesis job.
#[derive(Debug, Clone)]
pub struct SynthJob {
    /// A file, a `.lance` dataset, a table name (created by init SQL) or a SELECT.
    pub docs: String,
    /// See [`Target::parse`].
    pub out: String,
    /// Resumable progress (default: next to the output).
    pub state_dir: Option<PathBuf>,
    /// Process at most this many documents (of those not done yet).
    pub limit: Option<usize>,
    pub config: SynthConfig,
}

/// Progress figures, reported after every chunk.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub kept: u64,
    pub failed: u64,
}

/// The end-of-run report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub documents: usize,
    /// Documents earlier runs into the same output already finished.
    pub resumed: usize,
    pub processed: usize,
    pub generated: u64,
    pub kept: u64,
    pub kept_fraction: f64,
    pub below_threshold: u64,
    pub duplicate_queries: u64,
    pub negatives: u64,
    pub dropped_incomplete: u64,
    pub false_negatives_dropped: u64,
    /// Documents without a query, by the last failure's kind.
    pub failures: BTreeMap<String, u64>,
    /// Malformed replies by kind (a document can have two; a second ask may have fixed it).
    pub malformed_replies: BTreeMap<String, u64>,
    /// Input rows skipped (missing id, empty text, duplicate id).
    pub skipped_inputs: BTreeMap<String, u64>,
    pub requests: u64,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub rows_written: u64,
    /// Rows in the output, this run's and earlier runs' together.
    pub output_rows: u64,
    pub structured_output: bool,
    pub elapsed_s: f64,
    /// Wall time spent waiting for the generator.
    pub generation_s: f64,
    /// Everything else: embedding, filtering, mining, writing, state.
    pub overhead_s: f64,
    pub overhead_ms_per_pair: f64,
}

impl Report {
    pub fn render(&self) -> String {
        let kinds = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        format!(
            "documents {} ({} done earlier, {} processed now)\n\
             generated {}, kept {} ({:.1}%), below threshold {}, duplicate queries {}\n\
             negatives {} (pairs dropped for too few: {}, false negatives dropped: {})\n\
             failures: {}\n\
             malformed replies: {}\n\
             skipped inputs: {}\n\
             requests {} (retries {}), tokens {} prompt + {} completion{}\n\
             rows written {} (output now holds {})\n\
             time {:.1}s: generation {:.1}s, other {:.1}s ({:.2} ms per generated pair)",
            self.documents,
            self.resumed,
            self.processed,
            self.generated,
            self.kept,
            self.kept_fraction * 100.0,
            self.below_threshold,
            self.duplicate_queries,
            self.negatives,
            self.dropped_incomplete,
            self.false_negatives_dropped,
            kinds(&self.failures),
            kinds(&self.malformed_replies),
            kinds(&self.skipped_inputs),
            self.requests,
            self.retries,
            self.prompt_tokens,
            self.completion_tokens,
            if self.structured_output {
                ""
            } else {
                " (plain-text replies: the endpoint refused response_format)"
            },
            self.rows_written,
            self.output_rows,
            self.elapsed_s,
            self.generation_s,
            self.overhead_s,
            self.overhead_ms_per_pair,
        )
    }
}

fn pair_id(doc_id: &str, normalized_query: &str) -> String {
    let d = Sha256::new()
        .chain_update(doc_id.as_bytes())
        .chain_update([0u8])
        .chain_update(normalized_query.as_bytes())
        .finalize();
    hex::encode(&d[..16])
}

fn bump(m: &mut Manifest, key: &str, n: u64) {
    *m.counts.entry(key.to_string()).or_default() += n;
}

/// Where a chunk's rows go.
enum Writer {
    Parts,
    Lance(crate::index::LanceTable),
    Kafka(crate::kafka::producer::Producer, String),
}

const OPTS: CallOptions = CallOptions {
    truncation: Truncation::End,
    use_cache: true,
};

/// Runs a synthesis job to the end (or to the first fatal generator error).
pub async fn run(engine: &Engine, job: SynthJob, progress: impl Fn(&Progress)) -> Result<Report> {
    let started = Instant::now();
    let cfg = &job.config;
    cfg.validate()?;
    let target = Target::parse(&job.out)?;
    let generator = Arc::new(Generator::from_config(cfg)?);
    let inference = engine.inference().clone();
    let dir = inference.embed_model_dir().await?;
    let embedder = format!("{}@{}", dir.id, dir.weights_digest);
    let instruction = cfg.recipe.instruction.clone();
    let n_neg = cfg.negatives.count;
    let identity = RunIdentity {
        embedder: embedder.clone(),
        instruction: instruction.clone(),
        threshold: cfg.filter.threshold,
        negatives: n_neg,
    };
    let state_dir = job
        .state_dir
        .clone()
        .unwrap_or_else(|| target.default_state_dir());
    let mut state = State::open(&state_dir, &identity)?;

    let docs = docs::load(engine, &job.docs, &cfg.docs).await?;
    let mut report = Report {
        documents: docs.rows.len(),
        skipped_inputs: docs.skipped.clone(),
        ..Default::default()
    };
    let mut todo: Vec<usize> = (0..docs.rows.len())
        .filter(|&i| !state.done.contains(&docs.rows[i].0))
        .collect();
    report.resumed = docs.rows.len() - todo.len();
    if let Some(limit) = job.limit {
        todo.truncate(limit);
    }

    let writer = match &target {
        Target::Parquet(_) | Target::Jsonl(_) => Writer::Parts,
        Target::Lance(uri) => Writer::Lance(
            crate::index::LanceTable::open(
                uri,
                Some(output::schema(n_neg)),
                Some("pair_id".into()),
            )
            .await?,
        ),
        Target::Kafka { bootstrap, topic } => {
            let opts = crate::kafka::options::KafkaOptions::parse(
                topic,
                &std::collections::HashMap::from([(
                    "bootstrap.servers".to_string(),
                    bootstrap.clone(),
                )]),
            )?;
            Writer::Kafka(crate::kafka::producer::Producer::new(&opts)?, topic.clone())
        }
    };

    // Document vectors: the whole corpus when mining negatives, else only what is processed.
    let mut corpus = Corpus::default();
    let embed_all = n_neg > 0 && !todo.is_empty();
    let corpus_rows: Vec<usize> = if embed_all {
        (0..docs.rows.len()).collect()
    } else {
        todo.clone()
    };
    let mut position = vec![usize::MAX; docs.rows.len()];
    for chunk in corpus_rows.chunks(256) {
        let inputs: Vec<EmbedInput> = chunk
            .iter()
            .map(|&i| EmbedInput {
                text: docs.rows[i].1.clone(),
                instruction: None,
            })
            .collect();
        let vectors = inference.embed(inputs, chunk.to_vec(), OPTS).await?;
        for (&i, v) in chunk.iter().zip(vectors) {
            position[i] = corpus.ids.len();
            corpus.ids.push(docs.rows[i].0.clone());
            corpus.texts.push(docs.rows[i].1.clone());
            corpus.vectors.push(v);
        }
    }
    // Negatives come only from the whole corpus; a partial one would give wrong negatives.
    let mine = embed_all;

    let mut generation = Duration::ZERO;
    let mut seen: HashSet<String> = state.queries.clone();
    let mut prog = Progress {
        total: todo.len(),
        ..Default::default()
    };
    progress(&prog);
    for chunk in todo.chunks(cfg.run.chunk_docs) {
        let t = Instant::now();
        let results: Vec<_> = futures::stream::iter(chunk.iter().map(|&i| {
            let g = generator.clone();
            let (id, text) = docs.rows[i].clone();
            async move { (i, g.generate(&id, &text).await) }
        }))
        .buffered(cfg.generator.max_concurrency.max(1) * 2)
        .collect()
        .await;
        generation += t.elapsed();

        let mut manifest = Manifest {
            part: state.next_part(),
            ..Default::default()
        };
        let mut fresh = Vec::new();
        for (i, r) in results {
            match r {
                Ok(g) => {
                    report.generated += 1;
                    bump(&mut manifest, "generated", 1);
                    manifest.docs.push(docs.rows[i].0.clone());
                    let norm = parse::normalize(&g.query);
                    if !seen.insert(norm.clone()) {
                        report.duplicate_queries += 1;
                        bump(&mut manifest, "duplicate_queries", 1);
                        continue;
                    }
                    fresh.push((i, g, norm));
                }
                Err(Failure::Request(e)) if e.is_fatal() => {
                    return Err(Error::InvalidArgument(format!(
                        "the generator at {} refused the request ({e}); check generator.base_url, generator.model and the key in ${}",
                        cfg.generator.base_url, cfg.generator.api_key_env
                    )));
                }
                Err(f) => {
                    prog.failed += 1;
                    *report.failures.entry(f.label()).or_default() += 1;
                }
            }
        }

        // Score every fresh query against its document.
        let inputs: Vec<EmbedInput> = fresh
            .iter()
            .map(|(_, g, _)| EmbedInput {
                text: g.query.clone(),
                instruction: Some(instruction.clone()).filter(|s| !s.is_empty()),
            })
            .collect();
        let rows_for_errors = (0..inputs.len()).collect();
        let qvecs = if inputs.is_empty() {
            Vec::new()
        } else {
            inference.embed(inputs, rows_for_errors, OPTS).await?
        };
        let mut kept = Vec::new();
        for ((i, g, norm), qv) in fresh.into_iter().zip(qvecs) {
            let score = crate::udf::vector::cosine_similarity(&qv, &corpus.vectors[position[i]]);
            if negatives::keep(score, cfg.filter.threshold) {
                kept.push((i, g, norm, qv, score));
            } else {
                report.below_threshold += 1;
                bump(&mut manifest, "below_threshold", 1);
                // A dropped query may come back for another document; it was not kept.
                seen.remove(&norm);
            }
        }

        // Hard negatives.
        let mut cands: Vec<Vec<negatives::Candidate>> = kept
            .iter()
            .map(|(i, _, _, qv, score)| {
                if mine {
                    negatives::candidates(&corpus, qv, position[*i], *score, &cfg.negatives)
                } else {
                    Vec::new()
                }
            })
            .collect();
        if let (Some(limit), true) = (cfg.negatives.rerank_threshold, mine) {
            let mut inputs = Vec::new();
            for ((_, g, _, _, _), cs) in kept.iter().zip(&cands) {
                for c in cs {
                    inputs.push(RerankInput {
                        query: g.query.clone(),
                        document: corpus.texts[c.index].clone(),
                        instruction: Some(instruction.clone()).filter(|s| !s.is_empty()),
                    });
                }
            }
            let rows = (0..inputs.len()).collect();
            let scores = if inputs.is_empty() {
                Vec::new()
            } else {
                inference.rerank(inputs, rows, OPTS).await?
            };
            let mut s = scores.into_iter();
            for cs in cands.iter_mut() {
                let before = cs.len();
                cs.retain(|_| s.next().is_some_and(|p| f64::from(p) <= limit));
                let dropped = (before - cs.len()) as u64;
                report.false_negatives_dropped += dropped;
                bump(&mut manifest, "false_negatives_dropped", dropped);
            }
        }
        let mut rows = Vec::new();
        for ((i, g, norm, _, score), cs) in kept.into_iter().zip(cands) {
            let take: Vec<_> = cs.into_iter().take(n_neg).collect();
            if take.len() < n_neg && cfg.negatives.incomplete == "drop" {
                seen.remove(&norm);
                report.dropped_incomplete += 1;
                bump(&mut manifest, "dropped_incomplete", 1);
                continue;
            }
            report.kept += 1;
            report.negatives += take.len() as u64;
            bump(&mut manifest, "kept", 1);
            bump(&mut manifest, "negatives", take.len() as u64);
            let (doc_id, positive) = docs.rows[i].clone();
            rows.push(PairRow {
                pair_id: pair_id(&doc_id, &norm),
                anchor: g.query,
                positive,
                negatives: take.iter().map(|c| corpus.texts[c.index].clone()).collect(),
                negative_ids: take.iter().map(|c| corpus.ids[c.index].clone()).collect(),
                negative_scores: take.iter().map(|c| c.score).collect(),
                instruction: instruction.clone(),
                score,
                doc_id,
                config: g.config,
                generator_model: generator.client.model().to_string(),
                embedder_model: embedder.clone(),
            });
            manifest.queries.push(norm);
        }

        // Rows first, then the manifest that says they are there.
        manifest.rows = rows.len() as u64;
        let batch = output::to_batch(&rows, n_neg)?;
        match &writer {
            Writer::Parts => {
                let path = state.part_path(manifest.part, "parquet");
                output::write_parquet(&path, &[batch], output::schema(n_neg))?;
            }
            Writer::Lance(table) => {
                if !rows.is_empty() {
                    table
                        .apply(crate::index::write::Change {
                            rows: vec![batch],
                            ..Default::default()
                        })
                        .await?;
                }
            }
            Writer::Kafka(producer, topic) => {
                let records = crate::kafka::table::json_records(&batch, Some("pair_id"))?;
                producer.send_all(topic, records).await?;
            }
        }
        report.rows_written += rows.len() as u64;
        state.commit(manifest)?;
        prog.done += chunk.len();
        prog.kept = report.kept;
        progress(&prog);
    }

    if target.keeps_parts() {
        let mut batches = Vec::new();
        for p in state.committed_parts()? {
            batches.extend(output::read_parquet(&p)?);
        }
        match &target {
            Target::Parquet(p) => output::write_parquet(p, &batches, output::schema(n_neg))?,
            Target::Jsonl(p) => output::write_jsonl(p, &batches)?,
            _ => {}
        }
    }

    report.processed = todo.len();
    report.output_rows = state.previous_rows + report.rows_written;
    report.kept_fraction = if report.generated == 0 {
        0.0
    } else {
        report.kept as f64 / report.generated as f64
    };
    report.malformed_replies = generator
        .malformed_counts()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let u = &generator.client.usage;
    report.requests = u.requests.load(Ordering::Relaxed);
    report.retries = u.retries.load(Ordering::Relaxed);
    report.prompt_tokens = u.prompt_tokens.load(Ordering::Relaxed);
    report.completion_tokens = u.completion_tokens.load(Ordering::Relaxed);
    report.structured_output = generator.client.structured();
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.generation_s = generation.as_secs_f64();
    report.overhead_s = (report.elapsed_s - report.generation_s).max(0.0);
    report.overhead_ms_per_pair = if report.generated == 0 {
        0.0
    } else {
        report.overhead_s * 1000.0 / report.generated as f64
    };
    Ok(report)
}
