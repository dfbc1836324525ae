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

/// Where a chunk's rows go.
enum Writer {
    Parts,
    Lance(crate::index::LanceTable),
    Kafka(crate::kafka::producer::Producer, String),
}

impl Writer {
    async fn open(target: &Target, negatives: usize) -> Result<Self> {
        Ok(match target {
            Target::Parquet(_) | Target::Jsonl(_) => Writer::Parts,
            Target::Lance(uri) => Writer::Lance(
                crate::index::LanceTable::open(
                    uri,
                    Some(output::schema(negatives)),
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
        })
    }
}

const OPTS: CallOptions = CallOptions {
    truncation: Truncation::End,
    use_cache: true,
};

/// What one chunk of documents came to: added to the run's report and written into the
/// chunk's manifest, from this one value.
#[derive(Debug, Default)]
struct Counts {
    generated: u64,
    duplicate_queries: u64,
    below_threshold: u64,
    false_negatives_dropped: u64,
    dropped_incomplete: u64,
    kept: u64,
    negatives: u64,
    /// Documents without a query, by kind (reported, not kept in manifests).
    failures: BTreeMap<String, u64>,
}

impl Counts {
    fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("generated", self.generated),
            ("duplicate_queries", self.duplicate_queries),
            ("below_threshold", self.below_threshold),
            ("false_negatives_dropped", self.false_negatives_dropped),
            ("dropped_incomplete", self.dropped_incomplete),
            ("kept", self.kept),
            ("negatives", self.negatives),
        ]
    }

    fn record(&self, manifest: &mut Manifest) {
        for (key, n) in self.named() {
            *manifest.counts.entry(key.to_string()).or_default() += n;
        }
    }

    fn add_to(self, report: &mut Report) {
        report.generated += self.generated;
        report.duplicate_queries += self.duplicate_queries;
        report.below_threshold += self.below_threshold;
        report.false_negatives_dropped += self.false_negatives_dropped;
        report.dropped_incomplete += self.dropped_incomplete;
        report.kept += self.kept;
        report.negatives += self.negatives;
        for (kind, n) in self.failures {
            *report.failures.entry(kind).or_default() += n;
        }
    }
}

/// What every stage of a run reads.
struct Run {
    config: SynthConfig,
    generator: Arc<Generator>,
    inference: Arc<crate::inference::Inference>,
    /// The embedding model's fingerprint, written into every row.
    embedder: String,
    /// The query instruction, written into every row; empty for none.
    instruction: String,
    negatives: usize,
}

impl Run {
    /// The instruction as inference takes it.
    fn instruction(&self) -> Option<String> {
        Some(self.instruction.clone()).filter(|s| !s.is_empty())
    }
}

/// A generated query that is new to this run.
struct Fresh {
    doc: usize,
    generated: generate::Generated,
    normalized: String,
}

/// A query that passed the similarity filter.
struct Kept {
    fresh: Fresh,
    vector: Arc<[f32]>,
    score: f64,
}

/// Runs a synthesis job to the end (or to the first fatal generator error), in stages:
/// load the corpus, embed it, then per chunk of documents generate queries, filter them by
/// similarity, mine hard negatives and write the rows (then the manifest that says so).
pub async fn run(engine: &Engine, job: SynthJob, progress: impl Fn(&Progress)) -> Result<Report> {
    let started = Instant::now();
    job.config.validate()?;
    let target = Target::parse(&job.out)?;
    let inference = engine.inference().clone();
    let dir = inference.embed_model_dir().await?;
    let run = Run {
        generator: Arc::new(Generator::from_config(&job.config)?),
        embedder: format!("{}@{}", dir.id, dir.weights_digest),
        instruction: job.config.recipe.instruction.clone(),
        negatives: job.config.negatives.count,
        config: job.config.clone(),
        inference,
    };
    let identity = RunIdentity {
        embedder: run.embedder.clone(),
        instruction: run.instruction.clone(),
        threshold: run.config.filter.threshold,
        negatives: run.negatives,
    };
    let state_dir = job
        .state_dir
        .clone()
        .unwrap_or_else(|| target.default_state_dir());
    let mut state = State::open(&state_dir, &identity)?;

    let docs = docs::load(engine, &job.docs, &run.config.docs).await?;
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
    let writer = Writer::open(&target, run.negatives).await?;
    let (corpus, position, mine) = embed_corpus(&run, &docs, &todo).await?;

    let mut generation = Duration::ZERO;
    let mut seen: HashSet<String> = state.queries.clone();
    let mut prog = Progress {
        total: todo.len(),
        ..Default::default()
    };
    progress(&prog);
    for chunk in todo.chunks(run.config.run.chunk_docs) {
        let mut counts = Counts::default();
        let mut manifest = Manifest {
            part: state.next_part(),
            ..Default::default()
        };
        let t = Instant::now();
        let results = generate_queries(&run, &docs, chunk).await;
        generation += t.elapsed();
        let fresh = sort_out(&run, &docs, results, &mut seen, &mut counts, &mut manifest)?;
        let kept = filter(&run, &corpus, &position, fresh, &mut seen, &mut counts).await?;
        let negatives = mine_negatives(&run, &corpus, &position, &kept, mine, &mut counts).await?;
        let rows = pair_rows(
            &run,
            &docs,
            &corpus,
            kept,
            negatives,
            &mut seen,
            &mut counts,
            &mut manifest,
        );

        // Rows first, then the manifest that says they are there.
        manifest.rows = rows.len() as u64;
        write_rows(&writer, &state, &manifest, &rows, run.negatives).await?;
        report.rows_written += rows.len() as u64;
        counts.record(&mut manifest);
        state.commit(manifest)?;
        prog.failed += counts.failures.values().sum::<u64>();
        counts.add_to(&mut report);
        prog.done += chunk.len();
        prog.kept = report.kept;
        progress(&prog);
    }

    if target.keeps_parts() {
        assemble_parts(&target, &state, run.negatives)?;
    }
    report.processed = todo.len();
    report.output_rows = state.previous_rows + report.rows_written;
    finish_report(&mut report, &run.generator, started.elapsed(), generation);
    Ok(report)
}

/// Document vectors: the whole corpus when mining negatives (a partial one would give wrong
/// negatives), else only the documents to process. Returns the corpus, each document's
/// position in it, and whether negatives can be mined.
async fn embed_corpus(
    run: &Run,
    docs: &docs::Docs,
    todo: &[usize],
) -> Result<(Corpus, Vec<usize>, bool)> {
    let mut corpus = Corpus::default();
    let embed_all = run.negatives > 0 && !todo.is_empty();
    let rows: Vec<usize> = if embed_all {
        (0..docs.rows.len()).collect()
    } else {
        todo.to_vec()
    };
    let mut position = vec![usize::MAX; docs.rows.len()];
    for chunk in rows.chunks(256) {
        let inputs: Vec<EmbedInput> = chunk
            .iter()
            .map(|&i| EmbedInput {
                text: docs.rows[i].1.clone(),
                instruction: None,
            })
            .collect();
        let vectors = run.inference.embed(inputs, chunk.to_vec(), OPTS).await?;
        for (&i, v) in chunk.iter().zip(vectors) {
            position[i] = corpus.ids.len();
            corpus.ids.push(docs.rows[i].0.clone());
            corpus.texts.push(docs.rows[i].1.clone());
            corpus.vectors.push(v);
        }
    }
    Ok((corpus, position, embed_all))
}

/// Asks the generator for one query per document of `chunk`, several at a time.
async fn generate_queries(
    run: &Run,
    docs: &docs::Docs,
    chunk: &[usize],
) -> Vec<(usize, std::result::Result<generate::Generated, Failure>)> {
    futures::stream::iter(chunk.iter().map(|&i| {
        let g = run.generator.clone();
        let (id, text) = docs.rows[i].clone();
        async move { (i, g.generate(&id, &text).await) }
    }))
    .buffered(run.config.generator.max_concurrency.max(1) * 2)
    .collect()
    .await
}

/// Counts generated queries and failures and keeps the queries new to this run; a request
/// the generator refuses outright (bad URL, model or key) ends the run.
fn sort_out(
    run: &Run,
    docs: &docs::Docs,
    results: Vec<(usize, std::result::Result<generate::Generated, Failure>)>,
    seen: &mut HashSet<String>,
    counts: &mut Counts,
    manifest: &mut Manifest,
) -> Result<Vec<Fresh>> {
    let mut fresh = Vec::new();
    for (doc, result) in results {
        match result {
            Ok(generated) => {
                counts.generated += 1;
                manifest.docs.push(docs.rows[doc].0.clone());
                let normalized = parse::normalize(&generated.query);
                if !seen.insert(normalized.clone()) {
                    counts.duplicate_queries += 1;
                    continue;
                }
                fresh.push(Fresh {
                    doc,
                    generated,
                    normalized,
                });
            }
            Err(Failure::Request(e)) if e.is_fatal() => {
                let g = &run.config.generator;
                return Err(Error::InvalidArgument(format!(
                    "the generator at {} refused the request ({e}); check generator.base_url, generator.model and the key in ${}",
                    g.base_url, g.api_key_env
                )));
            }
            Err(f) => *counts.failures.entry(f.label()).or_default() += 1,
        }
    }
    Ok(fresh)
}

/// Keeps the queries whose cosine similarity to their document passes the threshold.
async fn filter(
    run: &Run,
    corpus: &Corpus,
    position: &[usize],
    fresh: Vec<Fresh>,
    seen: &mut HashSet<String>,
    counts: &mut Counts,
) -> Result<Vec<Kept>> {
    let inputs: Vec<EmbedInput> = fresh
        .iter()
        .map(|f| EmbedInput {
            text: f.generated.query.clone(),
            instruction: run.instruction(),
        })
        .collect();
    let vectors = if inputs.is_empty() {
        Vec::new()
    } else {
        let rows = (0..inputs.len()).collect();
        run.inference.embed(inputs, rows, OPTS).await?
    };
    let mut kept = Vec::new();
    for (fresh, vector) in fresh.into_iter().zip(vectors) {
        let score =
            crate::udf::vector::cosine_similarity(&vector, &corpus.vectors[position[fresh.doc]]);
        if negatives::keep(score, run.config.filter.threshold) {
            kept.push(Kept {
                fresh,
                vector,
                score,
            });
        } else {
            counts.below_threshold += 1;
            // A dropped query may come back for another document; it was not kept.
            seen.remove(&fresh.normalized);
        }
    }
    Ok(kept)
}

/// Hard-negative candidates for each kept query, those the reranker scores above
/// `rerank_threshold` (likely true positives) dropped.
async fn mine_negatives(
    run: &Run,
    corpus: &Corpus,
    position: &[usize],
    kept: &[Kept],
    mine: bool,
    counts: &mut Counts,
) -> Result<Vec<Vec<negatives::Candidate>>> {
    let cfg = &run.config.negatives;
    let mut candidates: Vec<Vec<negatives::Candidate>> = kept
        .iter()
        .map(|k| {
            if mine {
                negatives::candidates(corpus, &k.vector, position[k.fresh.doc], k.score, cfg)
            } else {
                Vec::new()
            }
        })
        .collect();
    let Some(limit) = cfg.rerank_threshold.filter(|_| mine) else {
        return Ok(candidates);
    };
    let mut inputs = Vec::new();
    for (k, cs) in kept.iter().zip(&candidates) {
        for c in cs {
            inputs.push(RerankInput {
                query: k.fresh.generated.query.clone(),
                document: corpus.texts[c.index].clone(),
                instruction: run.instruction(),
            });
        }
    }
    let scores = if inputs.is_empty() {
        Vec::new()
    } else {
        let rows = (0..inputs.len()).collect();
        run.inference.rerank(inputs, rows, OPTS).await?
    };
    let mut s = scores.into_iter();
    for cs in candidates.iter_mut() {
        let before = cs.len();
        cs.retain(|_| s.next().is_some_and(|p| f64::from(p) <= limit));
        counts.false_negatives_dropped += (before - cs.len()) as u64;
    }
    Ok(candidates)
}

/// The output rows: each kept query with its document and negatives (pairs with too few
/// negatives dropped when `negatives.incomplete = "drop"`).
#[allow(clippy::too_many_arguments)] // the stage's inputs and the chunk's three accumulators
fn pair_rows(
    run: &Run,
    docs: &docs::Docs,
    corpus: &Corpus,
    kept: Vec<Kept>,
    candidates: Vec<Vec<negatives::Candidate>>,
    seen: &mut HashSet<String>,
    counts: &mut Counts,
    manifest: &mut Manifest,
) -> Vec<PairRow> {
    let mut rows = Vec::new();
    for (k, cs) in kept.into_iter().zip(candidates) {
        let take: Vec<_> = cs.into_iter().take(run.negatives).collect();
        if take.len() < run.negatives && run.config.negatives.incomplete == "drop" {
            seen.remove(&k.fresh.normalized);
            counts.dropped_incomplete += 1;
            continue;
        }
        counts.kept += 1;
        counts.negatives += take.len() as u64;
        let (doc_id, positive) = docs.rows[k.fresh.doc].clone();
        rows.push(PairRow {
            pair_id: pair_id(&doc_id, &k.fresh.normalized),
            anchor: k.fresh.generated.query,
            positive,
            negatives: take.iter().map(|c| corpus.texts[c.index].clone()).collect(),
            negative_ids: take.iter().map(|c| corpus.ids[c.index].clone()).collect(),
            negative_scores: take.iter().map(|c| c.score).collect(),
            instruction: run.instruction.clone(),
            score: k.score,
            doc_id,
            config: k.fresh.generated.config,
            generator_model: run.generator.client.model().to_string(),
            embedder_model: run.embedder.clone(),
        });
        manifest.queries.push(k.fresh.normalized);
    }
    rows
}

/// Writes a chunk's rows: a part file, a Lance commit or Kafka records.
async fn write_rows(
    writer: &Writer,
    state: &State,
    manifest: &Manifest,
    rows: &[PairRow],
    negatives: usize,
) -> Result<()> {
    let batch = output::to_batch(rows, negatives)?;
    match writer {
        Writer::Parts => {
            let path = state.part_path(manifest.part, "parquet");
            output::write_parquet(&path, &[batch], output::schema(negatives))?;
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
    Ok(())
}

/// A Parquet or JSONL output is written whole from every committed part.
fn assemble_parts(target: &Target, state: &State, negatives: usize) -> Result<()> {
    let mut batches = Vec::new();
    for p in state.committed_parts()? {
        batches.extend(output::read_parquet(&p)?);
    }
    match target {
        Target::Parquet(p) => output::write_parquet(p, &batches, output::schema(negatives)),
        Target::Jsonl(p) => output::write_jsonl(p, &batches),
        _ => Ok(()),
    }
}

/// The report's ratios, the generator's usage and the timings.
fn finish_report(
    report: &mut Report,
    generator: &Generator,
    elapsed: Duration,
    generation: Duration,
) {
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
    report.elapsed_s = elapsed.as_secs_f64();
    report.generation_s = generation.as_secs_f64();
    report.overhead_s = (report.elapsed_s - report.generation_s).max(0.0);
    report.overhead_ms_per_pair = if report.generated == 0 {
        0.0
    } else {
        report.overhead_s * 1000.0 / report.generated as f64
    };
}
