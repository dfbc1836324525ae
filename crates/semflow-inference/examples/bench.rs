//! The model workloads of `semflow bench` (W1 queries, W2 fixed lengths, W3 realistic
//! documents, W5 rerank) on this crate alone: no DataFusion, Lance or Kafka to build, so a
//! kernel, allocator or CUDA experiment rebuilds in seconds and travels as a small binary.
//!
//!     cargo run --release -p semflow-inference --example bench -- \
//!         --embed-model random:small --rerank-model random:small --workloads w2,w3
//!
//! `--features mimalloc` builds it on mimalloc instead of the system allocator with semflow's
//! settings (the allocator A/B of BENCHMARKS §7). `--peer CMD` alternates with a peer as
//! `semflow bench` does.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use semflow_inference::bench::{self, machine::Machine, ModelOptions};
use semflow_inference::{Inference, InferenceConfig};

#[derive(Parser)]
struct Args {
    /// Hugging Face id, local directory, or random:PRESET[:SEED].
    #[arg(long, default_value = "random:small")]
    embed_model: String,
    #[arg(long, default_value = "random:small")]
    rerank_model: String,
    /// w1, w2, w3, w5.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w5")]
    workloads: Vec<String>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// W3 document count.
    #[arg(long, default_value_t = 256)]
    docs: usize,
    /// W1 requests per batch size.
    #[arg(long, default_value_t = 10)]
    queries: usize,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// auto, f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Peer command run alternately (semflow appends the model directories); repeatable,
    /// e.g. scripts/peer_onnx.py and scripts/peer_bench.py.
    #[arg(long)]
    peer: Vec<String>,
    /// Also write the report (machine, setup, results: `semflow bench --json`'s fields) as JSON
    /// to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(not(feature = "mimalloc"))]
    for refused in semflow_inference::allocator::configure() {
        eprintln!("{refused}");
    }
    let args = Args::parse();
    // The workloads bypass the content cache (`embed_token_ids`): every round computes.
    let mut config = InferenceConfig {
        embed_model: args.embed_model,
        rerank_model: args.rerank_model,
        ..InferenceConfig::default()
    };
    config.load.device = args.device.parse()?;
    config.load.dtype = args.dtype.parse()?;
    let opts = ModelOptions {
        workloads: args.workloads,
        rounds: args.rounds,
        seed: args.seed,
        docs: args.docs.max(1),
        queries: args.queries.max(1),
    };
    let needs_embed = opts.workloads.iter().any(|w| !w.eq_ignore_ascii_case("w5"));
    let needs_rerank = opts.workloads.iter().any(|w| w.eq_ignore_ascii_case("w5"));
    let peer_cmd = args.peer;
    let (setup, results) = semflow_inference::block_on(async move {
        let inference = Inference::new(config);
        let setup = bench::setup(&inference, needs_embed, needs_rerank).await?;
        let mut peers = bench::start_peers(&peer_cmd, &setup)?;
        let results = bench::run(&inference, &opts, &mut peers).await?;
        Ok::<_, semflow_inference::Error>((setup, results))
    })??;
    let report = bench::ModelReport {
        machine: Machine::detect(),
        setup,
        rounds: args.rounds.max(1),
        models: results,
    };
    print!(
        "{}",
        bench::render_setup(&report.machine, &report.setup, report.rounds)
    );
    if cfg!(feature = "mimalloc") {
        println!("allocator: mimalloc\n");
    } else {
        println!("allocator: system (semflow's settings unless the environment sets its own)\n");
    }
    print!("{}", bench::render_results(&report.models));
    if let Some(path) = args.json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}
