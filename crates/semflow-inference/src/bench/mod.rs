//! Model benchmarks: embedding and reranking workloads (W1 queries, W2 fixed length, W3
//! realistic documents, W5 rerank) as token ids, run on an [`Inference`] and optionally
//! alternated round by round with peer processes (ONNX Runtime, transformers) on the same
//! model directories and ids.
//!
//! `semflow bench` runs these beside its pipeline workloads; this crate's `bench` example
//! runs them alone, so inference experiments (kernels, allocators, the CUDA build) build and
//! measure without the engine.

pub mod machine;
pub mod peer;
pub mod workload;

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::machine::Machine;
use self::peer::{Peer, PeerInfo};
use self::workload::{Kind, Metric, Workload};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::model::dir::ModelDir;
use crate::service::Inference;

/// The model workloads, by the names `--workloads` takes.
pub const WORKLOADS: [&str; 4] = ["w1", "w2", "w3", "w5"];

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
    /// Minor page faults of the process during the pass: the allocator handing the forward
    /// pass fresh pages (each zeroed by the kernel) instead of reusing freed ones.
    #[serde(default)]
    pub minor_faults: u64,
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

/// The median (the upper one of an even count; NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// The headline numbers of one workload (medians over rounds).
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// tokens/s for throughput workloads, p50 ms for latency workloads.
    pub value: f64,
    pub p99_ms: f64,
    pub sequences_per_s: f64,
    pub padding_fraction: f64,
    /// Minor page faults per round.
    pub minor_faults: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub metric: Metric,
    pub unit: &'static str,
    pub tokens: usize,
    pub sequences: usize,
    pub semflow: Side,
    pub semflow_rounds: Vec<Measurement>,
    /// Each peer's numbers, in the order the peers were given.
    pub peers: Vec<PeerResult>,
}

/// One peer's numbers on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct PeerResult {
    pub name: String,
    #[serde(flatten)]
    pub side: Side,
    /// > 1 means semflow is faster (throughput ratio, or latency ratio peer / semflow).
    pub speedup: f64,
    pub rounds: Vec<Measurement>,
}

/// What the workloads run on.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub backend: String,
    pub device: String,
    pub dtype: String,
    pub embed_model: String,
    pub rerank_model: String,
    /// The model directories (the peer loads the same ones).
    #[serde(skip)]
    pub embed_dir: Option<PathBuf>,
    #[serde(skip)]
    pub rerank_dir: Option<PathBuf>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Names from [`WORKLOADS`].
    pub workloads: Vec<String>,
    pub rounds: usize,
    pub seed: u64,
    /// W3 document count.
    pub docs: usize,
    /// W1 requests per batch size.
    pub queries: usize,
}

/// The model workloads' results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelResults {
    /// The peers run beside semflow, as they named themselves.
    pub peers: Vec<PeerInfo>,
    pub results: Vec<WorkloadResult>,
    /// The process's peak resident memory when they finished (model loading included).
    pub peak_rss_bytes: u64,
    /// The process's resident memory when they finished: the models' weights (their files
    /// are unmapped once loaded) and what the allocator kept.
    pub rss_bytes: u64,
}

/// The model workloads' report: where they ran, on what, and the results (the JSON of
/// `semflow bench --json` opens with these fields; the `bench` example writes this alone).
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub machine: Machine,
    #[serde(flatten)]
    pub setup: Setup,
    pub rounds: usize,
    /// W1, W2, W3 and W5, those asked for.
    #[serde(flatten)]
    pub models: ModelResults,
}

impl ModelReport {
    /// The report as Markdown: the setup's lines, then the table.
    pub fn render(&self) -> String {
        render_setup(&self.machine, &self.setup, self.rounds) + &render_results(&self.models)
    }
}

/// The process's minor page faults so far and its peak resident memory in bytes.
pub fn process_usage() -> (u64, u64) {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            // ru_maxrss is in KiB on Linux.
            return (u.ru_minflt.max(0) as u64, u.ru_maxrss.max(0) as u64 * 1024);
        }
    }
    (0, 0)
}

/// The process's resident memory now, in bytes (`/proc/self/statm`; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok());
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.map_or(0, |p| p * page.max(0) as u64)
}

/// Loads the models the workloads need and describes them.
pub async fn setup(inference: &Inference, embed: bool, rerank: bool) -> Result<Setup> {
    let cfg = inference.config();
    let embed_dir = match embed {
        true => Some(inference.embed_model_dir().await?),
        false => None,
    };
    let rerank_dir = match rerank {
        true => Some(inference.rerank_model_dir().await?),
        false => None,
    };
    let describe = |d: Option<&ModelDir>| {
        d.map_or("-".to_string(), |d| {
            format!(
                "{} (hidden {}, {} layers)",
                d.id, d.config.hidden_size, d.config.num_hidden_layers
            )
        })
    };
    let dtype = cfg.load.dtype.candle(cfg.load.device)?;
    Ok(Setup {
        backend: format!("{:?}", cfg.backend).to_lowercase(),
        device: match cfg.load.device {
            DeviceSpec::Cpu => "cpu".to_string(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
        },
        dtype: format!("{dtype:?}").to_lowercase(),
        embed_model: describe(embed_dir),
        rerank_model: describe(rerank_dir),
        embed_dir: embed_dir.map(|d| d.path.clone()),
        rerank_dir: rerank_dir.map(|d| d.path.clone()),
    })
}

/// Starts each peer command (see [`start_peer`]); a name given twice gets its place appended
/// (`onnxruntime#2`), so every column of the report is one process.
pub fn start_peers(commands: &[String], setup: &Setup) -> Result<Vec<Peer>> {
    let mut peers: Vec<Peer> = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let mut peer = start_peer(command, setup)?;
        if peers.iter().any(|p| p.info.name == peer.info.name) {
            peer.info.name = format!("{}#{}", peer.info.name, i + 1);
        }
        peers.push(peer);
    }
    Ok(peers)
}

/// Starts the peer `command` on the same model directories, device and dtype.
pub fn start_peer(command: &str, setup: &Setup) -> Result<Peer> {
    let mut args = Vec::new();
    if let Some(d) = &setup.embed_dir {
        args.extend(["--model".to_string(), d.to_string_lossy().into_owned()]);
    }
    if let Some(d) = &setup.rerank_dir {
        args.extend(["--reranker".to_string(), d.to_string_lossy().into_owned()]);
    }
    args.extend([
        "--device".into(),
        setup.device.clone(),
        "--dtype".into(),
        setup.dtype.clone(),
    ]);
    let peer = Peer::start(command, &args)?;
    eprintln!("peer {}: {}", peer.info.name, peer.info.about);
    Ok(peer)
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
        minor_faults: median(rounds.iter().map(|m| m.minor_faults as f64).collect()),
    }
}

async fn run_semflow(inference: &Inference, w: &Workload) -> Result<Measurement> {
    let mut m = Measurement::default();
    let (faults_before, _) = process_usage();
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
    m.minor_faults = process_usage().0.saturating_sub(faults_before);
    Ok(m)
}

/// Builds the selected workloads.
async fn workloads(inference: &Inference, opts: &ModelOptions) -> Result<Vec<Workload>> {
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
                    "--workloads: unknown model workload '{other}' (use {})",
                    WORKLOADS.join(", ")
                )))
            }
        }
    }
    Ok(out)
}

/// One workload: a warm-up, then `rounds` rounds alternating semflow and the peer.
async fn measure(
    inference: &Inference,
    peers: &mut [Peer],
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
    for p in peers.iter_mut() {
        p.run(&warm)?;
    }
    let mut ours = Vec::new();
    let mut theirs: Vec<Vec<Measurement>> = vec![Vec::new(); peers.len()];
    for round in 0..rounds {
        let m = run_semflow(inference, w).await?;
        eprintln!(
            "{} round {}: semflow {:.1} tok/s",
            w.name,
            round + 1,
            m.tokens_per_s()
        );
        ours.push(m);
        for (p, rounds) in peers.iter_mut().zip(&mut theirs) {
            let m = p.run(w)?;
            eprintln!(
                "{} round {}: {} {:.1} tok/s",
                w.name,
                round + 1,
                p.info.name,
                m.tokens_per_s()
            );
            rounds.push(m);
        }
    }
    let semflow = side(w.metric, &ours);
    let peers = peers
        .iter()
        .zip(theirs)
        .map(|(p, rounds)| {
            let side = side(w.metric, &rounds);
            PeerResult {
                name: p.info.name.clone(),
                speedup: match w.metric {
                    Metric::Throughput => semflow.value / side.value,
                    Metric::Latency => side.value / semflow.value,
                },
                side,
                rounds,
            }
        })
        .collect();
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
        semflow_rounds: ours,
        peers,
    })
}

/// Runs the workloads: for each, a warm-up, then `rounds` rounds alternating semflow and the
/// peers (A B C A B C …).
pub async fn run(
    inference: &Inference,
    opts: &ModelOptions,
    peers: &mut [Peer],
) -> Result<ModelResults> {
    let mut results = Vec::new();
    for w in workloads(inference, opts).await? {
        results.push(measure(inference, peers, &w, opts.rounds.max(1)).await?);
    }
    Ok(ModelResults {
        peers: peers.iter().map(|p| p.info.clone()).collect(),
        results,
        peak_rss_bytes: process_usage().1,
        rss_bytes: resident_bytes(),
    })
}

/// Where and on what the workloads ran, as the report's opening lines.
pub fn render_setup(machine: &Machine, setup: &Setup, rounds: usize) -> String {
    format!(
        "machine: {} ({} cores{}), commit {}\nbackend {}, device {}, dtype {}\nembedding model: {}\nreranker: {}\nrounds: {} (median)\n\n",
        machine.cpu,
        machine.cores,
        machine.gpu.as_ref().map(|g| format!(", GPU {g}")).unwrap_or_default(),
        machine.commit,
        setup.backend,
        setup.device,
        setup.dtype,
        setup.embed_model,
        setup.rerank_model,
        rounds,
    )
}

/// The workloads' table (Markdown, the form BENCHMARKS.md keeps): semflow, then each peer
/// with semflow's speedup over it; empty when none ran.
pub fn render_results(results: &ModelResults) -> String {
    if results.results.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = results.peers.iter().map(|p| p.name.as_str()).collect();
    let mut s = String::new();
    for p in &results.peers {
        s.push_str(&format!("peer {}: {}\n", p.name, p.about));
    }
    if !names.is_empty() {
        s.push('\n');
    }
    let mut header = String::from("| workload | tokens | semflow |");
    for n in &names {
        header.push_str(&format!(" {n} | vs {n} |"));
    }
    let both = |what: &str| {
        format!(
            " {what} semflow{} |",
            names.iter().map(|n| format!(" / {n}")).collect::<String>()
        )
    };
    header.push_str(" semflow seq/s |");
    header.push_str(&both("padding"));
    header.push_str(&both("page faults/round"));
    let columns = header.matches('|').count() - 1;
    s.push_str(&header);
    s.push_str(&format!("\n| --- |{}\n", " ---: |".repeat(columns - 1)));
    let fmt = |r: &WorkloadResult, x: &Side| match r.metric {
        Metric::Throughput => format!("{:.0} tok/s", x.value),
        Metric::Latency => format!("p50 {:.1} ms, p99 {:.1} ms", x.value, x.p99_ms),
    };
    for r in &results.results {
        let mut row = format!("| {} | {} | {} |", r.name, r.tokens, fmt(r, &r.semflow));
        for p in &r.peers {
            row.push_str(&format!(" {} | {:.2}x |", fmt(r, &p.side), p.speedup));
        }
        let sides = || std::iter::once(&r.semflow).chain(r.peers.iter().map(|p| &p.side));
        let joined = |f: &dyn Fn(&Side) -> String| sides().map(f).collect::<Vec<_>>().join(" / ");
        row.push_str(&format!(
            " {:.1} | {} | {} |\n",
            r.semflow.sequences_per_s,
            joined(&|x| format!("{:.1}%", x.padding_fraction * 100.0)),
            joined(&|x| format!("{:.0}", x.minor_faults)),
        ));
        s.push_str(&row);
    }
    s.push_str(&format!(
        "\npeak resident memory (semflow): {:.0} MiB; at the end: {:.0} MiB\n",
        results.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        results.rss_bytes as f64 / (1024.0 * 1024.0)
    ));
    let find = |prefix: &str| results.results.iter().find(|r| r.name.starts_with(prefix));
    if let (Some(w3), Some(w2)) = (find("W3"), find("W2 fixed L=256")) {
        s.push_str(&format!(
            "W3 / W2@256 tokens/s (semflow): {:.2}\n",
            w3.semflow.value / w2.semflow.value
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::{tiny_model_dir, ModelKind};

    #[test]
    fn the_process_reports_its_faults_and_peak_memory() {
        let (faults, peak) = process_usage();
        // Touch 8 MiB of fresh pages: the fault count must grow and the peak cover them.
        let v = vec![1u8; 8 << 20];
        std::hint::black_box(&v);
        let (after, peak_after) = process_usage();
        assert!(after > faults, "{faults} -> {after}");
        assert!(peak_after >= peak && peak_after >= 8 << 20, "{peak_after}");
    }

    /// W3 and W5 on tiny models: rounds, faults and the table, as `semflow bench` and the
    /// `bench` example print them; an unknown name is refused by name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workloads_run_and_report() {
        let embed = tiny_model_dir(ModelKind::Embedding, 5);
        let rerank = tiny_model_dir(ModelKind::Reranker, 5);
        let inference = Inference::new(crate::InferenceConfig {
            embed_model: embed.path().to_string_lossy().into_owned(),
            rerank_model: rerank.path().to_string_lossy().into_owned(),
            ..crate::InferenceConfig::default()
        });
        let mut opts = ModelOptions {
            workloads: vec!["w3".into(), "W5".into()],
            rounds: 2,
            seed: 1,
            docs: 5,
            queries: 1,
        };
        let setup = setup(&inference, true, true).await.unwrap();
        assert_eq!(setup.embed_dir.as_deref(), Some(embed.path()));
        let results = run(&inference, &opts, &mut []).await.unwrap();
        let names: Vec<&str> = results.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["W3 realistic docs=5", "W5 rerank 1x100"]);
        for r in &results.results {
            assert_eq!(r.semflow_rounds.len(), 2);
            assert!(r.semflow.value > 0.0 && r.peers.is_empty());
        }
        assert!(results.peak_rss_bytes > 1 << 20);
        assert!(results.rss_bytes > 1 << 20 && results.rss_bytes <= results.peak_rss_bytes);
        let table = render_results(&results);
        assert!(table.contains("| W5 rerank 1x100 |"), "{table}");
        assert!(table.contains("peak resident memory"), "{table}");

        opts.workloads = vec!["w9".into()];
        let e = run(&inference, &opts, &mut []).await.unwrap_err();
        assert!(e.to_string().contains("'w9'"), "{e}");
    }
}
