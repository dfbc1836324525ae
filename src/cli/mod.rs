//! The `semflow` command line: `sql`, `shell`, `run`, `serve`, `bench` and `model random`.
//! `args` declares the flags, `serve` wires the servers; the other commands run from here.

mod args;
mod serve;

pub use self::args::*;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::maintain::Policy;
use crate::model::random::{write_random_model, RandomModelSpec};
use crate::output::{write_results, Progress};

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
        Command::Serve(args) => serve::run(args).await,
        Command::Synth(args) => run_synth(args).await,
        Command::Optimize(args) => run_optimize(args).await,
        Command::Reindex(args) => run_reindex(args).await,
        Command::Eval(args) => run_eval(args).await,
        Command::Alias(args) => run_alias(args),
        Command::Merge(mut args) => {
            if let (Some(points), Some(set)) = (args.sweep.take(), args.eval_set.take()) {
                return run_merge_sweep(args, points, set).await;
            }
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

async fn run_eval(args: EvalArgs) -> Result<()> {
    let engine = args.engine.engine()?;
    let mut options = eval_options(args.set, &args.eval, true)?;
    options.indexes = args
        .index
        .iter()
        .map(|location| crate::eval::ExistingIndex {
            location: location.clone(),
            id_column: args.id_column.clone(),
            vector_column: args.vector_column.clone(),
            text_column: args.text_column.clone(),
        })
        .collect();
    let report = evaluate_with_progress(&engine, &options).await?;
    print!("{}", report.render());
    write_json(args.eval.json.as_deref(), &report)
}

/// `semflow merge --sweep`: every point merged, all evaluated in one engine (with the
/// `--model`s given, for comparison), the best point named.
async fn run_merge_sweep(args: MergeArgs, points: Vec<f64>, set: std::path::PathBuf) -> Result<()> {
    let named = crate::eval::merge_sweep(&args.models, &points, &args.out)?;
    let names: Vec<String> = named.iter().map(|m| m.name.clone()).collect();
    let dirs: std::collections::HashMap<String, String> = named
        .iter()
        .map(|m| (m.name.clone(), m.spec.clone()))
        .collect();
    for m in &named {
        eprintln!("merged {} into {}", m.name, m.spec);
    }
    let engine = args
        .engine
        .engine_adding(&args.engine.file_settings()?, named)?;
    let options = eval_options(set, &args.eval, false)?;
    let report = evaluate_with_progress(&engine, &options).await?;
    print!("{}", report.render());
    let measure = report.measures.first().cloned().unwrap_or_default();
    let best = crate::eval::best(&report, &names, &measure);
    if let Some(b) = best {
        println!(
            "best: {} ({measure} {:.4}) in {}",
            b.model,
            b.measures.get(&measure).copied().unwrap_or_default(),
            dirs.get(&b.model).map_or("?", String::as_str)
        );
    }
    let json = serde_json::json!({
        "best": best.map(|b| b.model.clone()),
        "measure": measure,
        "eval": report,
    });
    write_json(args.eval.json.as_deref(), &json)
}

fn eval_options(
    set: std::path::PathBuf,
    settings: &EvalSettings,
    include_default: bool,
) -> Result<crate::eval::EvalOptions> {
    let measures = crate::udf::ir::measures::parse_measures(&settings.measures)
        .map_err(|e| Error::InvalidArgument(format!("--measures: {e}")))?;
    Ok(crate::eval::EvalOptions {
        set,
        split: settings.split.clone(),
        dims: settings.dims.clone(),
        k: settings.k,
        measures,
        instruction: settings.instruction.clone(),
        ann: settings.ann,
        rerank_top: settings.rerank_top,
        forms: settings
            .forms
            .iter()
            .filter(|f| f.trim() != "float32")
            .map(|f| f.parse())
            .collect::<Result<_>>()?,
        rescore: settings.rescore,
        work_dir: settings.work_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("semflow-eval-{}", std::process::id()))
        }),
        include_default,
        indexes: Vec::new(),
    })
}

/// Runs an evaluation with a progress bar on a terminal, each stage in the log otherwise.
async fn evaluate_with_progress(
    engine: &Engine,
    options: &crate::eval::EvalOptions,
) -> Result<crate::eval::EvalReport> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {percent}%  ETA {eta}  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let last_stage = std::sync::Mutex::new(String::new());
    let progress = |p: crate::eval::Progress<'_>| {
        if let Some(bar) = &bar {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(p.stage.to_string());
            return;
        }
        if let Ok(mut last) = last_stage.lock() {
            if *last != p.stage {
                tracing::info!("eval: {} ({}/{})", p.stage, p.done, p.total);
                *last = p.stage.to_string();
            }
        }
    };
    let report = crate::eval::run(engine, options, progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    report
}

/// Writes `value` as pretty JSON to `path`, when there is one.
fn write_json(path: Option<&std::path::Path>, value: &impl serde::Serialize) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::InvalidArgument(format!("report: {e}")))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
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

async fn run_optimize(args: OptimizeArgs) -> Result<()> {
    let table = crate::index::LanceTable::open(&args.location, None, None).await?;
    let policy = Policy::new(args.deleted_fraction, args.index_segments)?;
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

async fn run_bench(args: BenchArgs) -> Result<()> {
    let engine = args.engine.engine()?;
    let opts = crate::bench::BenchOptions {
        workloads: args.workloads,
        rounds: args.rounds.max(1),
        seed: args.seed,
        docs: args.docs.max(1),
        queries: args.queries.max(1),
        peers: args.peer,
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
            policy: Policy::new(args.r1_deleted_fraction, args.r1_index_segments)?,
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
