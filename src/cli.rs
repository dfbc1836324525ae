//! The `semflow` command line: `sql`, `shell`, `run`, `serve`, `bench` and `model random`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{inference_config, Settings};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::maintain::Policy;
use crate::model::config::Preset;
use crate::model::random::{write_random_model, ModelKind, RandomModelSpec, WeightDtype};
use crate::output::{write_results, Format, Progress};
use crate::udf::options::SemflowOptions;

/// semflow: a streaming SQL engine for semantic data.
#[derive(Debug, Parser)]
#[command(name = "semflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// PEM file of CA certificates to trust, besides the system's, for HTTPS towards remote
    /// inference endpoints and the generator (e.g. a private CA).
    #[arg(long, global = true, env = "SEMFLOW_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL statements and print their results.
    Sql(SqlArgs),
    /// Interactive SQL shell with history.
    Shell(EngineArgs),
    /// Model utilities.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Benchmark embedding and reranking workloads, optionally side by side with a peer.
    Bench(BenchArgs),
    /// Run a continuous pipeline (SQL or TOML file) until Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Serve the HTTP API (OpenAI-compatible embeddings, rerank, health, metrics).
    Serve(ServeArgs),
    /// Synthesize training pairs: an LLM writes a query per document, pairs with
    /// cosine(query, document) above the threshold are kept, hard negatives are mined.
    Synth(SynthArgs),
    /// Merge safetensors checkpoints by spherical linear interpolation (slerp).
    Merge(MergeArgs),
    /// Compact a Lance index, bring its vector and full-text indexes up to date and carry
    /// its stream positions forward; optionally remove old versions.
    Optimize(OptimizeArgs),
    /// Rebuild an index's vectors with this engine's embedding model (--embed-model) into a
    /// new dataset, resuming an interrupted run; with --swap, point the alias at it.
    Reindex(ReindexArgs),
    /// Point an index alias (a *.alias file, usable as a Lance table's LOCATION) at a
    /// dataset, atomically; creates the alias if needed.
    Alias(AliasArgs),
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// The index to rebuild: a Lance dataset or an alias (*.alias).
    #[arg(long)]
    pub from: String,
    /// Where the rebuilt dataset goes (new, or an interrupted run's to resume).
    #[arg(long)]
    pub to: String,
    /// The column with the text the vectors are made from.
    #[arg(long, default_value = "body")]
    pub text_column: String,
    /// The vector column to rebuild.
    #[arg(long, default_value = "embedding")]
    pub vector_column: String,
    /// A text column recording each row's model (`embed_model() AS model`), to set to the
    /// new model's fingerprint.
    #[arg(long)]
    pub model_column: Option<String>,
    /// Instruction or prompt name to embed with (default: none, as for documents).
    #[arg(long)]
    pub instruction: Option<String>,
    /// Keep the first N components (Matryoshka); default the model's dimension.
    #[arg(long)]
    pub dims: Option<usize>,
    /// Rows per commit (the most work an interruption repeats).
    #[arg(long, default_value_t = 512)]
    pub batch_rows: usize,
    /// When done, point the alias --from at the new dataset.
    #[arg(long)]
    pub swap: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct AliasArgs {
    /// The alias file (ends in .alias).
    pub alias: PathBuf,
    /// The Lance dataset it should point to (relative: to the alias's directory).
    pub target: String,
}

#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// The Lance dataset (a path or URI).
    pub location: String,
    /// Afterwards, remove versions older than this many seconds (the stream positions
    /// survive: the maintenance commit carries them).
    #[arg(long)]
    pub cleanup_older_than: Option<u64>,
    /// Rewrite fragments once this fraction of their rows is deleted (0: any) —
    /// semflow.maintenance_deleted_fraction under `semflow run`.
    #[arg(long, default_value_t = SemflowOptions::default().maintenance_deleted_fraction,
          value_parser = non_negative)]
    pub deleted_fraction: f64,
    /// Segments each index keeps (at least 1) — semflow.maintenance_index_segments under
    /// `semflow run`.
    #[arg(long, default_value_t = SemflowOptions::default().maintenance_index_segments,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub index_segments: u64,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Documents: a .parquet/.jsonl/.csv file, a .lance dataset, a table created by --init,
    /// or a SELECT statement.
    #[arg(long)]
    pub docs: String,
    /// Output: a .parquet or .jsonl file, a .lance dataset (upserted by pair_id), or
    /// kafka://HOST:PORT/TOPIC.
    #[arg(long)]
    pub out: String,
    /// SQL run first (e.g. CREATE EXTERNAL TABLE for --docs).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Directory for resumable progress (default: <out>.parts for files).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.
    #[arg(long, env = "SEMFLOW_GENERATOR_URL")]
    pub generator_url: Option<String>,
    /// Model name sent to the generator.
    #[arg(long, env = "SEMFLOW_GENERATOR_MODEL")]
    pub generator_model: Option<String>,
    /// Keep pairs with cosine strictly above this (default 0.7; may be negative).
    #[arg(long, allow_hyphen_values = true)]
    pub threshold: Option<f64>,
    /// Hard negatives per pair (default 3; 0 turns mining off).
    #[arg(long)]
    pub negatives: Option<usize>,
    #[arg(long)]
    pub id_column: Option<String>,
    #[arg(long)]
    pub text_column: Option<String>,
    /// Process at most this many documents not done yet.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the final report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Model directories (safetensors), merged pairwise in order.
    #[arg(required = true, num_args = 2..)]
    pub models: Vec<PathBuf>,
    /// Interpolation factor for two models: 0 gives the first, 1 the second.
    #[arg(long, conflicts_with = "weights")]
    pub t: Option<f64>,
    /// Relative weights for two or more models (default equal); model k is merged into the
    /// running result with t = w_k / (w_1 + … + w_k).
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    /// Output directory (config and tokenizer files are copied from the first model).
    #[arg(short, long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTP listen address. Anything but loopback needs --api-token (or --insecure-no-auth)
    /// and TLS (or --insecure-no-tls).
    #[arg(long, env = "SEMFLOW_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Certificate chain (PEM) for HTTPS and Postgres TLS; needs --tls-key.
    #[arg(long, env = "SEMFLOW_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SEMFLOW_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Allow a non-loopback address without TLS (e.g. behind a TLS-terminating proxy).
    #[arg(long)]
    pub insecure_no_tls: bool,
    /// Bearer token required on every request but /health (prefer the environment variable).
    #[arg(long, env = "SEMFLOW_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Allow a non-loopback address without a token.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Most inputs or documents per request (more: 413).
    #[arg(long, default_value_t = 2048)]
    pub max_items: usize,
    /// Largest request body in bytes (more: 413).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Requests (HTTP calls, Postgres queries, Flight SQL statements together) running at once.
    #[arg(long, default_value_t = 4)]
    pub max_concurrency: usize,
    /// Requests waiting for a slot; beyond this, HTTP 429 with Retry-After, SQLSTATE 53000
    /// over Postgres and Flight SQL.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Longest input item in tokens; longer items get 413 instead of being truncated.
    #[arg(long)]
    pub max_item_tokens: Option<usize>,
    /// Most tokens in one request (413 beyond).
    #[arg(long)]
    pub max_request_tokens: Option<usize>,
    /// Postgres wire protocol address ("off" disables). Anything but loopback needs
    /// --pg-password (or --insecure-no-auth) and TLS (or --insecure-no-tls).
    #[arg(long, env = "SEMFLOW_PG_ADDR", default_value = "127.0.0.1:5433")]
    pub pg_addr: String,
    /// Password every Postgres client must give, by SCRAM-SHA-256 (any user name; prefer
    /// the variable).
    #[arg(long, env = "SEMFLOW_PG_PASSWORD", hide_env_values = true)]
    pub pg_password: Option<String>,
    /// Arrow Flight SQL address (gRPC; "off" disables it), e.g. 127.0.0.1:50051. Clients
    /// authenticate with --api-token (bearer, or Basic with the token as password); anything
    /// but loopback needs it (or --insecure-no-auth) and TLS (or --insecure-no-tls).
    #[arg(long, env = "SEMFLOW_FLIGHT_ADDR", default_value = "off")]
    pub flight_addr: String,
    /// A Qwen3 causal LM (directory or random:PRESET[:SEED]) served at
    /// POST /v1/chat/completions, with JSON-schema constrained decoding.
    #[arg(long, env = "SEMFLOW_CHAT_MODEL")]
    pub chat_model: Option<String>,
    /// SQL run at start-up, e.g. CREATE EXTERNAL TABLE for the Lance index
    /// (`${VAR:-default}` from the environment).
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline: a .sql file ending in INSERT INTO … SELECT … FROM <kafka table>, or a
    /// .toml file naming source, sink, query and settings.
    pub file: PathBuf,
    /// Where to serve Prometheus metrics (GET /metrics); "off" disables them.
    #[arg(long, env = "SEMFLOW_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads: w1 (queries, batch 1/8/32), w2 (fixed 128/256/512/2048 tokens),
    /// w3 (log-normal document lengths), w5 (rerank 1 query x 100 documents); not in the
    /// default set: k1 (Kafka → embed → Lance ingest; needs --kafka), r1 (vector search
    /// recall and latency while a stream updates the index, maintenance off and on), c1
    /// (chunking throughput), d1 (Kafka record decoding, JSON vs registry-framed Avro).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w5")]
    pub workloads: Vec<String>,
    /// Timed rounds per workload (the report gives medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seed of the generated token ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// W3 document count.
    #[arg(long, default_value_t = 256)]
    pub docs: usize,
    /// W1 requests per batch size.
    #[arg(long, default_value_t = 10)]
    pub queries: usize,
    /// Peer command run alternately with semflow (A B A B), e.g.
    /// ".venv/bin/python scripts/peer_bench.py"; semflow appends the model directories.
    #[arg(long)]
    pub peer: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file (the table still goes to stdout).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers for K1 (Kafka → embed → Lance ingest).
    #[arg(long, env = "SEMFLOW_KAFKA")]
    pub kafka: Option<String>,
    /// K1 documents.
    #[arg(long, default_value_t = 5000)]
    pub k1_docs: usize,
    /// K1 production rate in documents/s; 0 produces a backlog (the pipeline's peak rate).
    #[arg(long, default_value_t = 0.0)]
    pub k1_rate: f64,
    /// K1: short documents embedded and indexed (IVF_PQ on the vectors, full-text on the
    /// bodies) in the table before the stream; 0 starts from an empty table.
    #[arg(long, default_value_t = 0)]
    pub k1_index_rows: usize,
    /// K1 runs twice: maintenance off, then a round every N commits (its ingest cost).
    #[arg(long, value_name = "N")]
    pub k1_maintenance_commits: Option<u64>,
    /// R1 vectors in the table before the stream.
    #[arg(long, default_value_t = 100_000)]
    pub r1_rows: usize,
    /// R1 vector length.
    #[arg(long, default_value_t = 1024)]
    pub r1_dims: usize,
    /// R1 stream commits.
    #[arg(long, default_value_t = 50)]
    pub r1_batches: usize,
    /// R1 upserts per commit (half replace existing vectors, half add new ones).
    #[arg(long, default_value_t = 1000)]
    pub r1_batch_rows: usize,
    /// R1 search queries per measurement.
    #[arg(long, default_value_t = 200)]
    pub r1_queries: usize,
    /// R1 commits between maintenance rounds on the maintained copy.
    #[arg(long, default_value_t = 10)]
    pub r1_maintenance_every: usize,
    /// R1 milliseconds from one stream commit to the next: the time a pipeline spends
    /// embedding a batch (0: commits back to back, faster than any embedding model).
    #[arg(long, default_value_t = 500)]
    pub r1_commit_ms: u64,
    /// R1 maintenance: rewrite fragments once this fraction of their rows is deleted
    /// (semflow.maintenance_deleted_fraction).
    #[arg(long, default_value_t = SemflowOptions::default().maintenance_deleted_fraction,
          value_parser = non_negative)]
    pub r1_deleted_fraction: f64,
    /// R1 maintenance: segments an index keeps after a round
    /// (semflow.maintenance_index_segments).
    #[arg(long, default_value_t = SemflowOptions::default().maintenance_index_segments,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub r1_index_segments: u64,
    /// C1 documents.
    #[arg(long, default_value_t = 2000)]
    pub c1_docs: usize,
    /// C1 chunk size in tokens.
    #[arg(long, default_value_t = 256)]
    pub c1_tokens: usize,
    /// D1 records (each format).
    #[arg(long, default_value_t = 20000)]
    pub d1_records: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Engine settings shared by every command that runs SQL.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// TOML file with engine settings (keys as the flags, with underscores).
    #[arg(long, env = "SEMFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

impl EngineArgs {
    pub fn engine(&self) -> Result<Engine> {
        let file = match &self.config {
            Some(p) => Settings::from_path(p)?,
            None => Settings::default(),
        };
        self.engine_with(&file)
    }

    /// An engine from these flags over `file` settings (read elsewhere).
    pub fn engine_with(&self, file: &Settings) -> Result<Engine> {
        let settings = self.settings.clone().over(file.clone());
        Ok(Engine::new(inference_config(&settings)?))
    }
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Statements to run (`;`-separated).
    pub statements: Option<String>,
    /// Read statements from a file instead (`${VAR}` / `${VAR:-default}` are replaced from
    /// the environment).
    #[arg(short = 'f', long = "file", conflicts_with = "statements")]
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write results to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a complete Qwen3 model directory with random weights (for tests and benchmarks).
    Random {
        #[arg(long, value_enum)]
        kind: ModelKind,
        #[arg(long, value_enum, default_value_t = Preset::Tiny)]
        preset: Preset,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Storage dtype of the weights (real Qwen3 checkpoints are bf16).
        #[arg(long, value_enum, default_value_t = WeightDtype::Bf16)]
        dtype: WeightDtype,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    if let Some(ca) = &cli.ca_cert {
        crate::tls::trust_ca_file(ca)?;
    }
    match cli.command {
        Command::Sql(args) => run_sql(args).await,
        Command::Shell(args) => crate::shell::run(args.engine()?).await,
        Command::Bench(args) => run_bench(args).await,
        Command::Run(args) => run_pipeline(args).await,
        Command::Serve(args) => run_serve(args).await,
        Command::Synth(args) => run_synth(args).await,
        Command::Optimize(args) => run_optimize(args).await,
        Command::Reindex(args) => run_reindex(args).await,
        Command::Alias(args) => run_alias(args),
        Command::Merge(args) => {
            let weights = crate::model::merge::weights(args.models.len(), args.t, args.weights)?;
            let stats = crate::model::merge::merge(&args.models, &weights, &args.out)?;
            println!(
                "merged {} models into {}: {} tensors ({} interpolated linearly as nearly parallel)",
                args.models.len(),
                args.out.display(),
                stats.tensors,
                stats.linear
            );
            Ok(())
        }
        Command::Model(ModelCommand::Random {
            kind,
            preset,
            seed,
            dtype,
            out,
        }) => {
            let spec = RandomModelSpec {
                kind,
                preset,
                seed,
                dtype,
            };
            let cfg = write_random_model(&spec, &out)?;
            println!(
                "wrote random {kind:?} model ({preset:?}: {} layers, hidden {}) to {}",
                cfg.num_hidden_layers,
                cfg.hidden_size,
                out.display()
            );
            Ok(())
        }
    }
}

async fn run_reindex(args: ReindexArgs) -> Result<()> {
    let engine = args.engine.engine()?;
    let options = crate::reindex::ReindexOptions {
        from: args.from,
        to: args.to,
        text_column: args.text_column,
        vector_column: args.vector_column,
        model_column: args.model_column,
        instruction: args.instruction,
        dims: args.dims,
        batch_rows: args.batch_rows,
        swap: args.swap,
    };
    let report = crate::reindex::reindex(engine.inference(), &options).await?;
    let resumed = if report.resumed_at > 0 {
        format!(" (resumed at row {})", report.resumed_at)
    } else {
        String::new()
    };
    println!(
        "reindexed {} rows of {}@{} into {} with {} in {:.1} s{resumed}",
        report.rows,
        report.source,
        report.source_version,
        report.target,
        report.model,
        report.seconds
    );
    if report.swapped {
        println!("{} now points to {}", options.from, report.target);
    }
    Ok(())
}

fn run_alias(args: AliasArgs) -> Result<()> {
    let path = args.alias.to_string_lossy();
    if !crate::index::alias::is_alias(&path) {
        return Err(Error::InvalidArgument(format!(
            "{path}: an alias file name ends in .{}",
            crate::index::alias::EXTENSION
        )));
    }
    crate::index::alias::point(&args.alias, &args.target)?;
    println!("{path} -> {}", args.target);
    Ok(())
}

/// A flag's value that must be a finite number of 0 or more (clap names the flag).
fn non_negative(value: &str) -> std::result::Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a number of 0 or more")),
    }
}

async fn run_optimize(args: OptimizeArgs) -> Result<()> {
    let table = crate::index::LanceTable::open(&args.location, None, None).await?;
    let policy = Policy::from_options(&SemflowOptions {
        maintenance_deleted_fraction: args.deleted_fraction,
        maintenance_index_segments: args.index_segments,
        ..Default::default()
    })?;
    let report = crate::index::maintain::maintain(&table, policy).await?;
    println!(
        "{}: version {} -> {}: {} fragments compacted into {}, {} indexes updated, {} stream positions carried forward",
        args.location,
        report.versions.0,
        report.versions.1,
        report.fragments_removed,
        report.fragments_added,
        report.indexes,
        report.positions
    );
    if let Some(seconds) = args.cleanup_older_than {
        let removed =
            crate::index::maintain::cleanup(&table, std::time::Duration::from_secs(seconds))
                .await?;
        println!("{}: {removed} old versions removed", args.location);
    }
    Ok(())
}

async fn run_pipeline(args: RunArgs) -> Result<()> {
    let sql = crate::pipeline::spec::load(&args.file)?;
    let engine = args.engine.engine()?;
    if args.metrics_addr != "off" {
        let addr = args.metrics_addr.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "--metrics-addr {}: expected HOST:PORT or off",
                args.metrics_addr
            ))
        })?;
        let bound = crate::telemetry::serve(addr, engine.inference().clone()).await?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let status = |s: &crate::pipeline::RunStats| {
        let rate = s.records as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "{} records ({rate:.0}/s), {} rows written, {} deleted, {} dead-lettered, {} skipped, {} batches fenced",
            s.records, s.rows_written, s.deletes, s.dead_lettered, s.skipped, s.fenced
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            tracing::info!("{line}");
        }
    };
    let stats = crate::pipeline::run(&engine, &sql, shutdown_signal(), status).await?;
    if terminal {
        eprintln!();
    }
    eprintln!(
        "stopped: {} batches, {} records, {} rows written, {} deleted, {} dead-lettered, {} skipped, {} batches fenced",
        stats.batches, stats.records, stats.rows_written, stats.deletes, stats.dead_lettered, stats.skipped, stats.fenced
    );
    Ok(())
}

async fn run_synth(args: SynthArgs) -> Result<()> {
    // For synth, --config names the synthesis settings (pipelines/synth.toml); engine
    // settings go in its [engine] table.
    let mut config = match &args.engine.config {
        Some(p) => crate::generation::config::SynthConfig::from_path(p)?,
        None => crate::generation::config::SynthConfig::default(),
    };
    if let Some(u) = args.generator_url {
        config.generator.base_url = u;
    }
    if let Some(m) = args.generator_model {
        config.generator.model = m;
    }
    if let Some(t) = args.threshold {
        config.filter.threshold = t;
    }
    if let Some(n) = args.negatives {
        config.negatives.count = n;
    }
    if let Some(c) = args.id_column {
        config.docs.id_column = c;
    }
    if let Some(c) = args.text_column {
        config.docs.text_column = c;
    }
    config.validate()?;
    let engine = args.engine.engine_with(&config.engine)?;
    if let Some(init) = &args.init {
        let sql = crate::pipeline::spec::load(init)?;
        engine.run_sql(&sql).await?;
    }
    let job = crate::synth::SynthJob {
        docs: args.docs,
        out: args.out.clone(),
        state_dir: args.state_dir,
        limit: args.limit,
        config,
    };
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} docs  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = std::time::Instant::now();
    let last_log = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |p: &crate::synth::Progress| {
        let msg = format!("kept {}, failed {}", p.kept, p.failed);
        if let Some(bar) = &bar {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(msg);
            return;
        }
        // Without a terminal: the same figures in the log, at most every 5 s.
        let Ok(mut last) = last_log.lock() else {
            return;
        };
        if p.done < p.total && last.elapsed() < Duration::from_secs(5) && p.done > 0 {
            return;
        }
        *last = std::time::Instant::now();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = p.done as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0}s", (p.total - p.done) as f64 / rate)
        } else {
            "?".into()
        };
        tracing::info!(
            "synth: {}/{} docs ({rate:.1}/s, ETA {eta}), {msg}",
            p.done,
            p.total
        );
    };
    let report = crate::synth::run(&engine, job, progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report?;
    eprintln!("{}", report.render());
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::InvalidArgument(format!("report: {e}")))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    eprintln!("wrote {}", args.out);
    Ok(())
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let engine = args.engine.engine()?;
    if let Some(init) = &args.init {
        let sql = crate::pipeline::spec::load(init)?;
        engine.run_sql(&sql).await?;
    }
    let token = args.api_token.clone().filter(|t| !t.is_empty());
    let password = args.pg_password.clone().filter(|p| !p.is_empty());
    let shared = shared_listener(&args)?;
    let pg = listener_at(&shared, "--pg-addr", &args.pg_addr, password)?;
    let flight = listener_at(&shared, "--flight-addr", &args.flight_addr, token.clone())?;
    let listener = listener_at(&shared, "--http-addr", &args.http_addr, token)?
        .ok_or_else(|| Error::InvalidArgument("--http-addr cannot be off".into()))?;
    let mut http = crate::serve::http::HttpOptions {
        listener,
        max_items: args.max_items.max(1),
        max_body_bytes: args.max_body_bytes.max(1),
        max_item_tokens: args.max_item_tokens,
        max_request_tokens: args.max_request_tokens,
        chat: None,
    };
    // Every listener is checked before anything loads or starts: a refused one must not
    // leave the others up.
    crate::serve::http::check_exposure(&http)?;
    if let Some(o) = &pg {
        crate::serve::pg::check_exposure(o)?;
    }
    if let Some(o) = &flight {
        crate::serve::flight::check_exposure(o)?;
    }
    http.chat = load_chat_model(&engine, args.chat_model.as_deref()).await?;
    serve_listeners(&engine, http, pg, flight).await
}

/// What `semflow serve`'s listeners share: TLS, the insecure opt-outs and one admission
/// budget (they share the model and the cores). Address and secret are each listener's.
fn shared_listener(args: &ServeArgs) -> Result<crate::serve::access::Listener> {
    Ok(crate::serve::access::Listener {
        insecure_no_auth: args.insecure_no_auth,
        tls: crate::tls::server_tls(args.tls_cert.as_ref(), args.tls_key.as_ref())?,
        insecure_no_tls: args.insecure_no_tls,
        admission: crate::serve::admission::Admission::new(args.max_concurrency, args.max_queue),
        ..Default::default()
    })
}

/// `shared` at the address `flag` gave (`value`), or `None` when it says `off`.
fn listener_at(
    shared: &crate::serve::access::Listener,
    flag: &str,
    value: &str,
    secret: Option<String>,
) -> Result<Option<crate::serve::access::Listener>> {
    if value == "off" {
        return Ok(None);
    }
    let addr = value.parse().map_err(|_| {
        Error::InvalidArgument(format!("{flag} {value}: expected HOST:PORT or off"))
    })?;
    Ok(Some(crate::serve::access::Listener {
        addr,
        secret,
        ..shared.clone()
    }))
}

/// Loads `--chat-model` when given (served at /v1/chat/completions).
async fn load_chat_model(
    engine: &Engine,
    spec: Option<&str>,
) -> Result<Option<std::sync::Arc<crate::serve::chat::ChatModel>>> {
    let Some(spec) = spec else { return Ok(None) };
    let load = engine.inference().config().load;
    let model = crate::serve::chat::ChatModel::load(spec, load).await?;
    eprintln!("chat model {} loaded", model.id);
    Ok(Some(std::sync::Arc::new(model)))
}

/// Serves every listener until Ctrl-C or SIGTERM.
async fn serve_listeners(
    engine: &Engine,
    http: crate::serve::http::HttpOptions,
    pg: Option<crate::serve::pg::PgOptions>,
    flight: Option<crate::serve::flight::FlightOptions>,
) -> Result<()> {
    use futures::FutureExt;
    let shutdown = shutdown_signal().shared();
    let scheme = if http.listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let http = crate::serve::http::serve(engine, http, shutdown.clone(), |a| {
        eprintln!("serving {scheme}://{a}")
    });
    let pg = async {
        let Some(o) = pg else { return Ok(()) };
        crate::serve::pg::serve(engine, o, shutdown.clone(), |a| {
            eprintln!(
                "serving postgres://{a} (psql -h {} -p {} -U semflow)",
                a.ip(),
                a.port()
            )
        })
        .await
    };
    let flight = async {
        let Some(o) = flight else { return Ok(()) };
        let scheme = if o.tls.is_some() { "grpc+tls" } else { "grpc" };
        crate::serve::flight::serve(engine, o, shutdown.clone(), |a| {
            eprintln!("serving {scheme}://{a} (Arrow Flight SQL)")
        })
        .await
    };
    tokio::try_join!(http, pg, flight).map(|_| ())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run_bench(args: BenchArgs) -> Result<()> {
    let engine = args.engine.engine()?;
    let opts = crate::bench::BenchOptions {
        workloads: args.workloads,
        rounds: args.rounds.max(1),
        seed: args.seed,
        docs: args.docs.max(1),
        queries: args.queries.max(1),
        peer: args.peer,
        ingest: args.kafka.map(|kafka| crate::bench::ingest::IngestOptions {
            kafka,
            docs: args.k1_docs,
            rate: args.k1_rate.max(0.0),
            seed: args.seed,
            index_rows: args.k1_index_rows,
            maintenance_commits: args.k1_maintenance_commits,
        }),
        retrieval: crate::bench::retrieval::RetrievalOptions {
            rows: args.r1_rows,
            dims: args.r1_dims,
            batches: args.r1_batches,
            batch_rows: args.r1_batch_rows,
            queries: args.r1_queries,
            maintenance_every: args.r1_maintenance_every,
            commit_ms: args.r1_commit_ms,
            seed: args.seed,
            policy: Policy::from_options(&SemflowOptions {
                maintenance_deleted_fraction: args.r1_deleted_fraction,
                maintenance_index_segments: args.r1_index_segments,
                ..Default::default()
            })?,
        },
        chunk_docs: args.c1_docs,
        chunk_tokens: args.c1_tokens,
        decode_records: args.d1_records,
    };
    let report = crate::bench::run(&engine, &opts).await?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::InvalidArgument(format!("report: {e}")))?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n")).map_err(|e| Error::io(path, e))?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{}", crate::bench::render(&report));
    }
    Ok(())
}

async fn run_sql(args: SqlArgs) -> Result<()> {
    let sql = match (&args.statements, &args.file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            crate::text::substitute_env(&text)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", f.display())))?
        }
        (None, None) => {
            return Err(Error::InvalidArgument(
                "give SQL statements or -f FILE (or use `semflow shell`)".into(),
            ))
        }
    };
    let engine = args.engine.engine()?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for statement in Engine::parse(&sql)? {
        let progress = Progress::start(&engine);
        let result = engine.execute(statement).await;
        progress.finish();
        let result = result?;
        write_results(args.format, &result.schema, &result.batches, &mut out)?;
    }
    out.flush().map_err(|e| Error::io("<output>", e))?;
    Ok(())
}
