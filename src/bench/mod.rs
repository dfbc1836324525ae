//! `semflow bench`: embedding and reranking workloads (W1 queries, W2 fixed length, W3
//! realistic documents, W5 rerank), optionally alternated round by round with a peer process
//! (Hugging Face transformers) on the same model directories and the same token ids; and
//! pipeline workloads: K1 (Kafka → embed → Lance), R1 (search under a stream, `retrieval`),
//! C1 (chunking, `chunking`), D1 (decoding JSON vs Avro records, `decode`).

pub mod chunking;
pub mod decode;
pub mod ingest;
pub mod machine;
pub mod peer;
pub mod retrieval;
pub mod workload;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::machine::Machine;
use self::peer::Peer;
use self::workload::{Kind, Metric, Workload};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::inference::Inference;

/// One timed pass over a workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measurement {
    /// Sum of request latencies (requests run one after another).
    pub seconds: f64,
    /// Real tokens processed.
    pub tokens: usize,
    /// Tokens including padding (equal to `tokens` when nothing is padded).
    pub padded_tokens: usize,
    pub sequences: usize,
    pub latencies_ms: Vec<f64>,
}

impl Measurement {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
    pub fn sequences_per_s(&self) -> f64 {
        self.sequences as f64 / self.seconds.max(1e-9)
    }
    pub fn padding_fraction(&self) -> f64 {
        1.0 - self.tokens as f64 / (self.padded_tokens.max(self.tokens).max(1)) as f64
    }
    /// Latency percentile (nearest rank).
    pub fn percentile_ms(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, q)
    }
}

/// The `q` quantile of `sorted` by nearest rank (NaN when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The headline numbers of one workload (medians over rounds).
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// tokens/s for throughput workloads, p50 ms for latency workloads.
    pub value: f64,
    pub p99_ms: f64,
    pub sequences_per_s: f64,
    pub padding_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub metric: Metric,
    pub unit: &'static str,
    pub tokens: usize,
    pub sequences: usize,
    pub semflow: Side,
    pub peer: Option<Side>,
    /// > 1 means semflow is faster (throughput ratio, or latency ratio peer / semflow).
    pub speedup: Option<f64>,
    pub semflow_rounds: Vec<Measurement>,
    pub peer_rounds: Vec<Measurement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub backend: String,
    pub device: String,
    pub dtype: String,
    pub embed_model: String,
    pub rerank_model: String,
    pub rounds: usize,
    pub results: Vec<WorkloadResult>,
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
    /// Peer command; semflow appends `--model DIR --reranker DIR --device D --dtype T`.
    pub peer: Option<String>,
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
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn side(metric: Metric, rounds: &[Measurement]) -> Side {
    let value = match metric {
        Metric::Throughput => median(rounds.iter().map(Measurement::tokens_per_s).collect()),
        Metric::Latency => median(rounds.iter().map(|m| m.percentile_ms(0.5)).collect()),
    };
    Side {
        value,
        p99_ms: median(rounds.iter().map(|m| m.percentile_ms(0.99)).collect()),
        sequences_per_s: median(rounds.iter().map(Measurement::sequences_per_s).collect()),
        padding_fraction: median(rounds.iter().map(Measurement::padding_fraction).collect()),
    }
}

async fn run_semflow(inference: &Inference, w: &Workload) -> Result<Measurement> {
    let mut m = Measurement::default();
    for request in &w.requests {
        let start = Instant::now();
        match w.kind {
            Kind::Embed => drop(inference.embed_token_ids(request.clone()).await?),
            Kind::Rerank => drop(inference.rerank_token_ids(request.clone()).await?),
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        m.latencies_ms.push(ms);
        m.seconds += ms / 1000.0;
        let tokens: usize = request.iter().map(Vec::len).sum();
        m.tokens += tokens;
        m.padded_tokens += tokens; // packed: no padding
        m.sequences += request.len();
    }
    Ok(m)
}

/// Builds the selected workloads.
async fn workloads(inference: &Inference, opts: &BenchOptions) -> Result<Vec<Workload>> {
    let mut out = Vec::new();
    for name in &opts.workloads {
        match name.to_ascii_lowercase().as_str() {
            "w1" => {
                let prefix = inference
                    .embed_tokenize(
                        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
                    )
                    .await?;
                for batch in [1, 8, 32] {
                    out.push(workload::w1(opts.seed, &prefix, batch, opts.queries));
                }
            }
            "w2" => {
                for len in [128, 256, 512, 2048] {
                    out.push(workload::w2(opts.seed, len, 4096, 4));
                }
            }
            "w3" => out.push(workload::w3(opts.seed, opts.docs)),
            // Not token-id workloads; `run` handles them.
            "k1" | "r1" | "c1" | "d1" => {}
            "w5" => {
                let (pre, post) = inference.rerank_affixes().await?;
                out.push(workload::w5(opts.seed, 100, |body| {
                    let mut ids = pre.clone();
                    ids.extend(body);
                    ids.extend_from_slice(&post);
                    ids
                }));
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--workloads: unknown workload '{other}' (use w1, w2, w3, w5, k1, r1, c1, d1)"
                )))
            }
        }
    }
    Ok(out)
}

/// One workload: a warm-up, then `rounds` rounds alternating semflow and the peer.
async fn measure(
    inference: &Inference,
    mut peer: Option<&mut Peer>,
    w: &Workload,
    rounds: usize,
) -> Result<WorkloadResult> {
    // Warm-up: the first request, at most 8 of its sequences (a one-request workload such as
    // W3 would otherwise run twice).
    let first = &w.requests[0];
    let warm = Workload {
        requests: vec![first[..first.len().min(8)].to_vec()],
        ..w.clone()
    };
    run_semflow(inference, &warm).await?;
    if let Some(p) = peer.as_deref_mut() {
        p.run(&warm)?;
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let m = run_semflow(inference, w).await?;
        eprintln!(
            "{} round {}: semflow {:.1} tok/s",
            w.name,
            round + 1,
            m.tokens_per_s()
        );
        ours.push(m);
        if let Some(p) = peer.as_deref_mut() {
            let m = p.run(w)?;
            eprintln!(
                "{} round {}: peer    {:.1} tok/s",
                w.name,
                round + 1,
                m.tokens_per_s()
            );
            theirs.push(m);
        }
    }
    let semflow = side(w.metric, &ours);
    let peer_side = (!theirs.is_empty()).then(|| side(w.metric, &theirs));
    let speedup = peer_side.as_ref().map(|p| match w.metric {
        Metric::Throughput => semflow.value / p.value,
        Metric::Latency => p.value / semflow.value,
    });
    Ok(WorkloadResult {
        unit: match w.metric {
            Metric::Throughput => "tokens/s",
            Metric::Latency => "ms p50",
        },
        name: w.name.clone(),
        metric: w.metric,
        tokens: w.tokens(),
        sequences: w.requests.iter().map(Vec::len).sum(),
        semflow,
        peer: peer_side,
        speedup,
        semflow_rounds: ours,
        peer_rounds: theirs,
    })
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

/// Runs the benchmark: for each workload, a warm-up, then `rounds` rounds alternating
/// semflow and the peer (A B A B …).
pub async fn run(engine: &Engine, opts: &BenchOptions) -> Result<Report> {
    let inference: Arc<Inference> = engine.inference().clone();
    let cfg = inference.config().clone();
    let ingest_opts = match (opts.wants("k1"), &opts.ingest) {
        (true, Some(o)) => Some(o.clone()),
        (true, None) => {
            return Err(Error::InvalidArgument(
                "--workloads k1 needs a Kafka broker: --kafka HOST:PORT (or SEMFLOW_KAFKA)".into(),
            ))
        }
        (false, _) => None,
    };
    let needs_rerank = opts.wants("w5");
    let needs_embed = opts
        .workloads
        .iter()
        .any(|w| !w.eq_ignore_ascii_case("w5") && !w.eq_ignore_ascii_case("r1"));
    let embed_dir = if needs_embed {
        Some(inference.embed_model_dir().await?.clone())
    } else {
        None
    };
    let rerank_dir = if needs_rerank {
        Some(inference.rerank_model_dir().await?.clone())
    } else {
        None
    };
    let describe = |d: &Option<crate::model::dir::ModelDir>| {
        d.as_ref().map_or("-".to_string(), |d| {
            format!(
                "{} (hidden {}, {} layers)",
                d.id, d.config.hidden_size, d.config.num_hidden_layers
            )
        })
    };
    let dtype = cfg.load.dtype.candle(cfg.load.device)?;
    let device = match cfg.load.device {
        crate::inference::device::DeviceSpec::Cpu => "cpu".to_string(),
        crate::inference::device::DeviceSpec::Cuda(n) => format!("cuda:{n}"),
    };
    let mut peer = match &opts.peer {
        Some(cmd) => {
            let mut args = Vec::new();
            if let Some(d) = &embed_dir {
                args.extend(["--model".to_string(), d.path.to_string_lossy().into_owned()]);
            }
            if let Some(d) = &rerank_dir {
                args.extend([
                    "--reranker".to_string(),
                    d.path.to_string_lossy().into_owned(),
                ]);
            }
            args.extend([
                "--device".into(),
                device.clone(),
                "--dtype".into(),
                format!("{dtype:?}").to_lowercase(),
            ]);
            Some(Peer::start(cmd, &args)?)
        }
        None => None,
    };
    let mut results = Vec::new();
    for w in workloads(&inference, opts).await? {
        results.push(measure(&inference, peer.as_mut(), &w, opts.rounds).await?);
    }
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
        ingest,
        retrieval,
        chunking,
        decode,
        machine: Machine::detect(),
        backend: format!("{:?}", cfg.backend).to_lowercase(),
        device,
        dtype: format!("{dtype:?}").to_lowercase(),
        embed_model: describe(&embed_dir),
        rerank_model: describe(&rerank_dir),
        rounds: opts.rounds,
        results,
    })
}

/// The report as a Markdown table (the form BENCHMARKS.md keeps).
pub fn render(report: &Report) -> String {
    let m = &report.machine;
    let mut s = format!(
        "machine: {} ({} cores{}), commit {}\nbackend {}, device {}, dtype {}\nembedding model: {}\nreranker: {}\nrounds: {} (median)\n\n",
        m.cpu,
        m.cores,
        m.gpu.as_ref().map(|g| format!(", GPU {g}")).unwrap_or_default(),
        m.commit,
        report.backend,
        report.device,
        report.dtype,
        report.embed_model,
        report.rerank_model,
        report.rounds,
    );
    // The model workloads' table, only when one ran (`--workloads c1` alone has none).
    if !report.results.is_empty() {
        s.push_str("| workload | tokens | semflow | peer | speedup | semflow seq/s | padding semflow / peer |\n");
        s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    }
    let fmt = |r: &WorkloadResult, x: &Side| match r.metric {
        Metric::Throughput => format!("{:.0} tok/s", x.value),
        Metric::Latency => format!("p50 {:.1} ms, p99 {:.1} ms", x.value, x.p99_ms),
    };
    for r in &report.results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1}% / {} |\n",
            r.name,
            r.tokens,
            fmt(r, &r.semflow),
            r.peer
                .as_ref()
                .map(|p| fmt(r, p))
                .unwrap_or_else(|| "-".into()),
            r.speedup
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.semflow.sequences_per_s,
            r.semflow.padding_fraction * 100.0,
            r.peer
                .as_ref()
                .map(|p| format!("{:.1}%", p.padding_fraction * 100.0))
                .unwrap_or_else(|| "-".into()),
        ));
    }
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
    let find = |prefix: &str| report.results.iter().find(|r| r.name.starts_with(prefix));
    if let (Some(w3), Some(w2)) = (find("W3"), find("W2 fixed L=256")) {
        s.push_str(&format!(
            "\nW3 / W2@256 tokens/s (semflow): {:.2}\n",
            w3.semflow.value / w2.semflow.value
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_without_model_workloads_has_no_empty_table() {
        let report = Report {
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                gpu: None,
                os: "linux".into(),
                commit: "abc".into(),
            },
            backend: "packed".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            embed_model: "tiny".into(),
            rerank_model: "tiny".into(),
            rounds: 1,
            results: Vec::new(),
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
