//! The documents a run reads: a Parquet/JSONL/CSV file, a Lance dataset, a table the
//! `--init` SQL created, or a `SELECT`; each row gives an id and a text.

use std::collections::{BTreeMap, HashSet};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generation::config::DocsConfig;
use crate::udf::args::StringArg;

/// The documents (id, text) in input order, and rows skipped by reason.
#[derive(Debug, Default)]
pub struct Docs {
    pub rows: Vec<(String, String)>,
    pub skipped: BTreeMap<String, u64>,
}

const SOURCE: &str = "__semflow_synth_docs";

/// Reads every document of `source` (see the module docs).
pub async fn load(engine: &Engine, source: &str, cfg: &DocsConfig) -> Result<Docs> {
    let ctx = engine.context();
    let lower = source.trim().to_ascii_lowercase();
    let from = if lower.starts_with("select ") || lower.starts_with("with ") {
        format!("({source})")
    } else if lower.ends_with(".parquet") {
        ctx.register_parquet(SOURCE, source, Default::default())
            .await?;
        SOURCE.to_string()
    } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
        let ext = std::path::Path::new(source)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("jsonl")
            .to_string();
        let opts = datafusion::datasource::file_format::options::JsonReadOptions::default()
            .file_extension(&ext);
        ctx.register_json(SOURCE, source, opts).await?;
        SOURCE.to_string()
    } else if lower.ends_with(".csv") {
        ctx.register_csv(SOURCE, source, Default::default()).await?;
        SOURCE.to_string()
    } else if lower.trim_end_matches('/').ends_with(".lance") {
        engine
            .run_sql(&format!(
                "CREATE EXTERNAL TABLE {SOURCE} STORED AS LANCE LOCATION {}",
                crate::text::sql_string(source)
            ))
            .await?;
        SOURCE.to_string()
    } else if ctx.table_exist(source)? {
        source.to_string()
    } else {
        return Err(Error::InvalidArgument(format!(
            "--docs {source}: not a .parquet/.jsonl/.csv file, a .lance dataset, a table created by --init, or a SELECT"
        )));
    };
    let probe = ctx.sql(&format!("SELECT * FROM {from} LIMIT 0")).await?;
    let columns: Vec<String> = probe
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for (option, name) in [
        ("id_column", &cfg.id_column),
        ("text_column", &cfg.text_column),
    ] {
        if !columns.contains(name) {
            return Err(Error::InvalidArgument(format!(
                "--docs {source} has no column {name:?} (columns: {}); set docs.{option} in the config or --{}",
                columns.join(", "),
                option.replace('_', "-")
            )));
        }
    }
    let sql = format!(
        "SELECT CAST(\"{}\" AS VARCHAR) AS id, CAST(\"{}\" AS VARCHAR) AS text FROM {from}",
        cfg.id_column.replace('"', "\"\""),
        cfg.text_column.replace('"', "\"\"")
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let _ = ctx.deregister_table(SOURCE);
    let mut docs = Docs::default();
    let mut seen = HashSet::new();
    let mut skip = |why: &str| *docs.skipped.entry(why.to_string()).or_default() += 1;
    let mut rows = Vec::new();
    for b in &batches {
        let ids = StringArg::Array(b.column(0).clone());
        let texts = StringArg::Array(b.column(1).clone());
        for i in 0..b.num_rows() {
            let Some(id) = ids.get(i).map(String::from) else {
                skip("missing_id");
                continue;
            };
            let Some(text) = texts
                .get(i)
                .filter(|t| !t.trim().is_empty())
                .map(String::from)
            else {
                skip("empty_document");
                continue;
            };
            if !seen.insert(id.clone()) {
                skip("duplicate_id");
                continue;
            }
            rows.push((id, text));
        }
    }
    docs.rows = rows;
    Ok(docs)
}
