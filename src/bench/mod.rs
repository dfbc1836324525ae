//! `semflow bench`: embedding and reranking workloads (W1 queries, W2 fixed length, W3
//! realistic documents, W5 rerank), optionally alternated round by round with a peer process
//! (Hugging Face transformers) on the same model directories and the same token ids; and
//! pipeline workloads: K1 (Kafka → embed → Lance), R1 (search under a stream, `retrieval`),
//! C1 (chunking, `chunking`), D1 (decoding JSON vs Avro records, `decode`).

pub mod chunking;
pub mod decode;
pub mod ingest;
pub mod retrieval;

use std::sync::Arc;

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::inference::bench::machine::Machine;
use crate::inference::bench::{self as models, ModelOptions, ModelReport};
// The median and nearest-rank percentile the pipeline workloads report with, as the model
// ones do.
use crate::inference::bench::{median, percentile};
use crate::inference::Inference;

/// The pipeline workloads, by the names `--workloads` takes.
const PIPELINE_WORKLOADS: [&str; 4] = ["k1", "r1", "c1", "d1"];

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine, setup and W1, W2, W3 and W5, those asked for.
    #[serde(flatten)]
    pub models: ModelReport,
    /// K1 (Kafka → embed → Lance), when asked for.
    /// K1 runs: one, or without and then with maintenance (`--k1-maintenance-commits`).
    pub ingest: Vec<ingest::IngestResult>,
    /// R1 (search quality and speed under a stream), when asked for.
    pub retrieval: Option<retrieval::RetrievalResult>,
    /// C1 (chunking throughput), when asked for.
    pub chunking: Option<chunking::ChunkingResult>,
    /// D1 (Kafka record decoding, JSON vs Avro), when asked for.
    pub decode: Option<decode::DecodeResult>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub workloads: Vec<String>,
    pub rounds: usize,
    pub seed: u64,
    /// W3 document count.
    pub docs: usize,
    /// W1 requests per batch size.
    pub queries: usize,
    /// Peer commands; semflow appends `--model DIR --reranker DIR --device D --dtype T`.
    pub peers: Vec<String>,
    /// K1 settings (Kafka address, documents, rate).
    pub ingest: Option<ingest::IngestOptions>,
    pub retrieval: retrieval::RetrievalOptions,
    /// C1: documents, and the chunks' size in tokens.
    pub chunk_docs: usize,
    pub chunk_tokens: usize,
    /// D1: records of each format.
    pub decode_records: usize,
}

impl BenchOptions {
    /// Whether workload `name` was asked for.
    fn wants(&self, name: &str) -> bool {
        self.workloads.iter().any(|w| w.eq_ignore_ascii_case(name))
    }

    /// The model workloads asked for; an unknown name is an error naming both lists.
    fn model_workloads(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for w in &self.workloads {
            let name = w.to_ascii_lowercase();
            if models::WORKLOADS.contains(&name.as_str()) {
                out.push(name);
            } else if !PIPELINE_WORKLOADS.contains(&name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "--workloads: unknown workload '{w}' (use {}, {})",
                    models::WORKLOADS.join(", "),
                    PIPELINE_WORKLOADS.join(", ")
                )));
            }
        }
        Ok(out)
    }
}

/// K1, R1 and C1, those asked for.
async fn pipeline_workloads(
    engine: &Engine,
    opts: &BenchOptions,
    ingest_opts: Option<ingest::IngestOptions>,
) -> Result<(
    Vec<ingest::IngestResult>,
    Option<retrieval::RetrievalResult>,
    Option<chunking::ChunkingResult>,
)> {
    let ingest = match ingest_opts {
        Some(o) => {
            eprintln!("K1: {} documents through Kafka at {} ...", o.docs, o.kafka);
            ingest::run(engine, &o).await?
        }
        None => Vec::new(),
    };
    let retrieval = if opts.wants("r1") {
        let r = &opts.retrieval;
        eprintln!(
            "R1: {} vectors of {} dims, {} stream commits of {} ...",
            r.rows, r.dims, r.batches, r.batch_rows
        );
        Some(retrieval::run(r).await?)
    } else {
        None
    };
    let chunking = if opts.wants("c1") {
        eprintln!("C1: chunking {} documents ...", opts.chunk_docs);
        Some(
            chunking::run(
                engine,
                opts.seed,
                opts.chunk_docs,
                opts.chunk_tokens,
                opts.rounds,
            )
            .await?,
        )
    } else {
        None
    };
    Ok((ingest, retrieval, chunking))
}

/// Runs the benchmark: the model workloads (each a warm-up, then `rounds` rounds alternating
/// semflow and the peer, A B A B …), then the pipeline workloads asked for.
pub async fn run(engine: &Engine, opts: &BenchOptions) -> Result<Report> {
    let inference: Arc<Inference> = engine.inference().clone();
    let ingest_opts = match (opts.wants("k1"), &opts.ingest) {
        (true, Some(o)) => Some(o.clone()),
        (true, None) => {
            return Err(Error::InvalidArgument(
                "--workloads k1 needs a Kafka broker: --kafka HOST:PORT (or SEMFLOW_KAFKA)".into(),
            ))
        }
        (false, _) => None,
    };
    let model_opts = ModelOptions {
        workloads: opts.model_workloads()?,
        rounds: opts.rounds,
        seed: opts.seed,
        docs: opts.docs,
        queries: opts.queries,
    };
    // The embedding model serves every workload but W5 (reranking), R1 (vectors) and D1.
    let needs_embed = opts
        .workloads
        .iter()
        .any(|w| !["w5", "r1", "d1"].contains(&w.to_ascii_lowercase().as_str()));
    let setup = models::setup(&inference, needs_embed, opts.wants("w5")).await?;
    let mut peers = models::start_peers(&opts.peers, &setup)?;
    let model_results = models::run(&inference, &model_opts, &mut peers).await?;
    let (ingest, retrieval, chunking) = pipeline_workloads(engine, opts, ingest_opts).await?;
    let decode = if opts.wants("d1") {
        eprintln!(
            "D1: decoding {} records as JSON and as Avro ...",
            opts.decode_records
        );
        Some(decode::run(opts.seed, opts.decode_records, opts.rounds).await?)
    } else {
        None
    };
    Ok(Report {
        models: ModelReport {
            machine: Machine::detect(),
            setup,
            rounds: opts.rounds,
            models: model_results,
        },
        ingest,
        retrieval,
        chunking,
        decode,
    })
}

/// The report as a Markdown table (the form BENCHMARKS.md keeps).
pub fn render(report: &Report) -> String {
    let mut s = report.models.render();
    for k in &report.ingest {
        let rate = if k.rate_asked > 0.0 {
            format!("produced at {:.0} docs/s", k.rate_asked)
        } else {
            "produced as a backlog".to_string()
        };
        let setting = match (k.index_rows, k.maintenance_commits) {
            (0, None) => String::new(),
            (rows, m) => format!(
                " ({rows} rows indexed before; maintenance {}, {} rounds)",
                match m {
                    Some(0) => "off".to_string(),
                    Some(n) => format!("every {n} commits"),
                    None => "as the session sets it".to_string(),
                },
                k.maintenance_rounds
            ),
        };
        s.push_str(&format!(
            "\nK1 Kafka → embed → Lance{}: {} docs ({} tokens, {rate}), {} micro-batches: {:.0} docs/s, {:.0} tokens/s over {:.1} s; first commit after {:.1} s, {:.0} docs/s after it; lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
            setting,
            k.docs,
            k.tokens,
            k.batches,
            k.docs_per_s,
            k.tokens_per_s,
            k.seconds,
            k.first_commit_s,
            k.steady_docs_per_s,
            k.lag_p50_ms,
            k.lag_p99_ms,
            k.lag_max_ms,
        ));
    }
    if let [off, on] = report.ingest.as_slice() {
        s.push_str(&format!(
            "K1 with maintenance / without: {:.3} (docs/s after the first commit)\n",
            on.steady_docs_per_s / off.steady_docs_per_s
        ));
    }
    if let Some(r) = &report.retrieval {
        s.push_str(&format!(
            "\nR1 search under a stream: {} vectors x {} dims, IVF_PQ built in {:.1} s; {} commits of {} upserts, one every {} ms\n",
            r.options.rows, r.options.dims, r.index_build_s, r.options.batches, r.options.batch_rows, r.options.commit_ms,
        ));
        for (name, run) in [
            ("without maintenance", &r.without_maintenance),
            ("maintenance beside it", &r.with_maintenance),
        ] {
            s.push_str(&format!(
                "  stream {:<22} {:.1} s, {:.2} s inside commits (slowest {:.0} ms), {} rounds of {:.1} s (every {} commits)\n",
                name, run.seconds, run.commit_s, run.commit_max_ms, run.rounds, run.round_mean_s, r.options.maintenance_every,
            ));
        }
        for p in &r.phases {
            s.push_str(&format!(
                "  {:<40} effort {:.1} refine {:>2}  rows {:>7}  fragments {:>4} ({:>2} with deletions)  unindexed {:>6}  segments {:>2}  recall@10 {:.3}  p50 {:.2} ms  p99 {:.2} ms\n",
                p.name, p.effort.effort, p.effort.refine, p.rows, p.fragments, p.fragments_with_deletions, p.unindexed_rows, p.index_segments, p.recall_at_10, p.p50_ms, p.p99_ms
            ));
        }
    }
    if let Some(c) = &report.chunking {
        s.push_str(&format!(
            "\nC1 chunking: {} documents, {:.2} MB into {} chunks of <= {} tokens in {:.2} s ({:.2} MB/s); with embed() of every chunk {:.2} s: chunking is {:.1}% of it\n",
            c.docs, c.bytes as f64 / 1e6, c.chunks, c.max_tokens, c.chunk_s, c.chunk_mb_per_s, c.chunk_and_embed_s, c.chunk_share * 100.0
        ));
    }
    if let Some(d) = &report.decode {
        s.push_str(&format!(
            "\nD1 decoding {} records: JSON {:.0} records/s ({:.1} MB), Avro {:.0} records/s ({:.1} MB): Avro/JSON {:.2}\n",
            d.records, d.json_records_per_s, d.json_bytes as f64 / 1e6, d.avro_records_per_s, d.avro_bytes as f64 / 1e6, d.avro_vs_json
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::bench::{ModelResults, Setup};

    #[test]
    fn a_report_without_model_workloads_has_no_empty_table() {
        let report = Report {
            models: ModelReport {
                machine: Machine {
                    cpu: "cpu".into(),
                    cores: 2,
                    gpu: None,
                    os: "linux".into(),
                    commit: "abc".into(),
                },
                setup: Setup {
                    backend: "packed".into(),
                    device: "cpu".into(),
                    dtype: "f32".into(),
                    embed_model: "tiny".into(),
                    rerank_model: "tiny".into(),
                    embed_dir: None,
                    rerank_dir: None,
                },
                rounds: 1,
                models: ModelResults::default(),
            },
            ingest: Vec::new(),
            retrieval: None,
            chunking: Some(chunking::ChunkingResult {
                docs: 40,
                bytes: 4000,
                max_tokens: 32,
                chunks: 90,
                chunk_s: 0.1,
                chunk_mb_per_s: 0.04,
                chunk_and_embed_s: 1.0,
                chunk_share: 0.1,
            }),
            decode: None,
        };
        let text = render(&report);
        assert!(!text.contains("| workload |"), "{text}");
        assert!(text.contains("C1 chunking: 40 documents"), "{text}");
    }
}
