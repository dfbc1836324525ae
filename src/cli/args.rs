//! The command line's arguments: each subcommand's flags (clap), and the engine settings every
//! SQL-running command shares.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{inference_config, Settings};
use crate::engine::Engine;
use crate::error::Result;
use crate::inference::NamedModel;
use crate::model::config::Preset;
use crate::model::random::{ModelKind, WeightDtype};
use crate::output::Format;
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
    /// Measure retrieval on a BEIR evaluation set for every model (--embed-model and each
    /// --model) and Matryoshka dimension: nDCG, recall, MRR…, bytes per vector, index size,
    /// query latency and embedding throughput, side by side.
    Eval(EvalArgs),
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
pub struct EvalArgs {
    /// A BEIR / MTEB directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.
    #[arg(long)]
    pub set: PathBuf,
    /// Search these existing indexes (Lance datasets or aliases; repeat or comma-separate)
    /// instead of embedding the set's corpus: each is searched as it is, with the model of
    /// this engine that made its vectors.
    #[arg(long, value_delimiter = ',')]
    pub index: Vec<String>,
    /// With --index: the column holding the qrels' document ids.
    #[arg(long, default_value = "id", requires = "index")]
    pub id_column: String,
    /// With --index: the vector column.
    #[arg(long, default_value = "embedding", requires = "index")]
    pub vector_column: String,
    /// With --index: the text column --rerank-top reranks.
    #[arg(long, default_value = "body", requires = "index")]
    pub text_column: String,
    #[command(flatten)]
    pub eval: EvalSettings,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// How `semflow eval` (and `semflow merge --sweep`) evaluates.
#[derive(Debug, Clone, Args)]
pub struct EvalSettings {
    /// The qrels split whose queries are evaluated.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Matryoshka dimensions to evaluate per model, e.g. 1024,256 (default: the full one).
    #[arg(long, value_delimiter = ',')]
    pub dims: Vec<usize>,
    /// Documents retrieved per query.
    #[arg(long, default_value_t = 100)]
    pub k: usize,
    /// Measures, comma-separated (ndcg@k, map@k, mrr@k, recall@k, precision@k); a sweep's
    /// best point is the one with the highest first measure.
    #[arg(long, default_value = "ndcg@10,recall@100,mrr@10")]
    pub measures: String,
    /// The query side's instruction, or a prompt name of the model.
    #[arg(long, default_value = "query")]
    pub instruction: String,
    /// Also search through an IVF_PQ index (at least 256 documents).
    #[arg(long)]
    pub ann: bool,
    /// Also rerank the best N of the exact search with the reranker (--rerank-model).
    #[arg(long)]
    pub rerank_top: Option<usize>,
    /// Quantized forms searched besides float32: int8 (cosine over int8_quantize),
    /// int8-calibrated (the same with each dimension's range over the corpus, int8_calibration)
    /// and/or binary (Hamming distance over binary_quantize), e.g. int8,binary.
    #[arg(long, value_delimiter = ',')]
    pub forms: Vec<String>,
    /// Each quantized search also rescored: its best k × N by the float32 vectors (0: not).
    #[arg(long, default_value_t = 4)]
    pub rescore: usize,
    /// Where the evaluation's Lance tables are written (removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Model directories (safetensors), merged pairwise in order.
    // Its own id: the engine's settings (flattened below) call --model's values "models".
    #[arg(id = "checkpoints", value_name = "MODELS", required = true, num_args = 2..)]
    pub models: Vec<PathBuf>,
    /// Interpolation factor for two models: 0 gives the first, 1 the second.
    #[arg(long, conflicts_with_all = ["weights", "sweep"])]
    pub t: Option<f64>,
    /// Relative weights for two or more models (default equal); model k is merged into the
    /// running result with t = w_k / (w_1 + … + w_k).
    #[arg(long, value_delimiter = ',', conflicts_with = "sweep")]
    pub weights: Option<Vec<f64>>,
    /// Output directory (config and tokenizer files are copied from the first model); with
    /// --sweep, one subdirectory t-<t> per point.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Interpolation points for two models, e.g. 0,0.25,0.5,0.75,1: each is merged and
    /// evaluated on --eval-set (with any --model given, for comparison), and the best named.
    #[arg(long, value_delimiter = ',', requires = "eval_set")]
    pub sweep: Option<Vec<f64>>,
    /// The BEIR directory a sweep is evaluated on.
    #[arg(long, requires = "sweep")]
    pub eval_set: Option<PathBuf>,
    #[command(flatten)]
    pub eval: EvalSettings,
    #[command(flatten)]
    pub engine: EngineArgs,
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
    /// Peer command run alternately with semflow (A B A B); repeatable (A B C A B C), e.g.
    /// ".venv/bin/python scripts/peer_onnx.py" (ONNX Runtime) and
    /// ".venv/bin/python scripts/peer_bench.py" (transformers); semflow appends the model
    /// directories.
    #[arg(long)]
    pub peer: Vec<String>,
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
        self.engine_with(&self.file_settings()?)
    }

    /// An engine from these flags over `file` settings (read elsewhere).
    pub fn engine_with(&self, file: &Settings) -> Result<Engine> {
        self.engine_adding(file, Vec::new())
    }

    /// An engine from these flags over `file` settings, with `models` named besides those of
    /// `--model`.
    pub fn engine_adding(&self, file: &Settings, models: Vec<NamedModel>) -> Result<Engine> {
        let settings = self.settings.clone().over(file.clone());
        let mut config = inference_config(&settings)?;
        config.models.extend(models);
        Ok(Engine::new(config))
    }

    /// The `--config` file's settings (none without one).
    pub fn file_settings(&self) -> Result<Settings> {
        match &self.config {
            Some(p) => Settings::from_path(p),
            None => Ok(Settings::default()),
        }
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

/// A flag's value that must be a finite number of 0 or more (clap names the flag).
fn non_negative(value: &str) -> std::result::Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a number of 0 or more")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (unique ids, valid requires/conflicts), which otherwise
    /// only fire when a user runs the command.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
