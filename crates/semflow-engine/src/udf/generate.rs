//! `generate_query(document [, options])` → struct (query, persona, query_type, difficulty,
//! length, language, error): the synthesis recipe as a SQL function, so
//! `… WHERE cosine_similarity(embed(g.query, instr), embed(doc)) > 0.7` is a synthesis job in
//! SQL (batch or as a Kafka pipeline). The generator comes from `SET semflow.generator_url`,
//! `semflow.generator_model` and `semflow.synth_config`; `options` is a JSON object fixing
//! any of persona, query_type, difficulty, length, language, or giving a seed. A document the
//! generator fails on gets a NULL query and the failure kind in `error`. Each distinct
//! (document, settings) is generated once per process (up to 64 MiB of results are remembered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, StringBuilder, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use futures::StreamExt;

use super::args::{expect_string, StringArg};
use super::options::SemflowOptions;
use crate::error::{arg_err, Error};
use crate::generation::config::SynthConfig;
use crate::generation::generate::{Failure, Generated, Generator};
use crate::inference::block_on;
use crate::inference::cache::ENTRY_OVERHEAD;

const FIELDS: [&str; 7] = [
    "query",
    "persona",
    "query_type",
    "difficulty",
    "length",
    "language",
    "error",
];

/// The struct `generate_query` returns.
pub fn result_type() -> DataType {
    DataType::Struct(Fields::from(
        FIELDS
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

type Generators = Arc<Mutex<HashMap<String, Arc<Generator>>>>;

/// Generation outcomes by (settings key, document). DataFusion may inline the call into
/// every `g['field']` reference of a query (and a pipeline retries failed batches row by row),
/// so one document would be generated several times; this keeps it to one request chain. Keys
/// hold whole documents, so the cache is bounded in bytes ([`RESULTS_BUDGET`]), not entries.
type Results = moka::sync::Cache<(String, String), GenResult>;
type GenResult = std::result::Result<Generated, Failure>;

/// The `generate_query` SQL function. Generators are built per distinct settings and reused.
pub struct GenerateQueryUdf {
    signature: Signature,
    generators: Generators,
    results: Results,
}

/// Not derived: the results' Debug would print every cached document.
impl std::fmt::Debug for GenerateQueryUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateQueryUdf")
            .field("signature", &self.signature)
            .field("cached_results", &self.results.entry_count())
            .finish_non_exhaustive()
    }
}

impl PartialEq for GenerateQueryUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.generators, &other.generators)
    }
}
impl Eq for GenerateQueryUdf {}
impl std::hash::Hash for GenerateQueryUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.generators) as usize).hash(state);
    }
}

impl Default for GenerateQueryUdf {
    fn default() -> Self {
        Self {
            // Volatile: LLM sampling differs per call, so the planner must neither fold nor
            // duplicate it (a filter on its result must not call it twice).
            signature: Signature::user_defined(Volatility::Volatile),
            generators: Arc::default(),
            results: moka::sync::Cache::builder()
                .max_capacity(RESULTS_BUDGET)
                .weigher(result_weight)
                .build(),
        }
    }
}

/// Bytes the generation results may hold (documents in the keys, queries and settings).
const RESULTS_BUDGET: u64 = 64 << 20;

/// What one generation result costs [`RESULTS_BUDGET`]: its strings plus moka's bookkeeping per
/// entry, as measured for the content cache ([`ENTRY_OVERHEAD`]).
fn result_weight((settings, document): &(String, String), result: &GenResult) -> u32 {
    let produced = match result {
        Ok(g) => {
            let c = &g.config;
            g.query.len()
                + c.persona.len()
                + c.query_type.len()
                + c.difficulty.len()
                + c.length.len()
                + c.language.len()
        }
        Err(_) => 64,
    };
    let strings = (settings.len() + document.len() + produced) as u64;
    u32::try_from(strings + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// Applies an options object (`{"language": "German", "seed": 3, …}`) to a recipe.
fn apply_options(cfg: &mut SynthConfig, options: &str) -> std::result::Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(options).map_err(|e| format!("options are not JSON: {e}"))?;
    let obj = v.as_object().ok_or("options must be a JSON object")?;
    for (k, v) in obj {
        let text = || {
            v.as_str()
                .map(|s| vec![s.to_string()])
                .ok_or(format!("option {k} must be a string"))
        };
        let r = &mut cfg.recipe;
        match k.as_str() {
            "persona" => {
                r.personas = text()?;
                r.choose = "sample".into();
            }
            "query_type" => r.query_types = text()?,
            "difficulty" => r.difficulties = text()?,
            "length" => r.lengths = text()?,
            "language" => r.languages = text()?,
            "instruction" => {}
            "choose" => r.choose = text()?.remove(0),
            "seed" => r.seed = v.as_u64().ok_or("option seed must be a non-negative integer")?,
            other => {
                return Err(format!(
                    "unknown option {other:?} (known: persona, query_type, difficulty, length, language, choose, seed)"
                ))
            }
        }
    }
    Ok(())
}

impl GenerateQueryUdf {
    fn settings_key(opts: &SemflowOptions, options: Option<&str>) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            opts.synth_config,
            opts.generator_url,
            opts.generator_model,
            options.unwrap_or("")
        )
    }

    fn generator(&self, opts: &SemflowOptions, options: Option<&str>) -> Result<Arc<Generator>> {
        let key = Self::settings_key(opts, options);
        let mut cache = match self.generators.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if let Some(g) = cache.get(&key) {
            return Ok(g.clone());
        }
        let mut cfg = if opts.synth_config.is_empty() {
            SynthConfig::default()
        } else {
            SynthConfig::from_path(std::path::Path::new(&opts.synth_config))
                .map_err(|e| Error::sql_argument(e.to_string()))?
        };
        if !opts.generator_url.is_empty() {
            cfg.generator.base_url = opts.generator_url.clone();
        }
        if !opts.generator_model.is_empty() {
            cfg.generator.model = opts.generator_model.clone();
        }
        if let Some(o) = options {
            if let Err(e) = apply_options(&mut cfg, o) {
                return arg_err!("generate_query(): argument 2 (options): {e}");
            }
        }
        let g = Arc::new(
            Generator::from_config(&cfg)
                .and_then(|g| {
                    cfg.validate()?;
                    Ok(g)
                })
                .map_err(|e| Error::sql_argument(format!("generate_query(): {e}")))?,
        );
        cache.insert(key, g.clone());
        Ok(g)
    }
}

impl ScalarUDFImpl for GenerateQueryUdf {
    fn name(&self) -> &str {
        "generate_query"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.is_empty() || arg_types.len() > 2 {
            return arg_err!(
                "generate_query() takes 1 or 2 arguments (document [, options]), got {}",
                arg_types.len()
            );
        }
        let mut out = vec![expect_string(
            "generate_query",
            1,
            "document",
            &arg_types[0],
        )?];
        if let Some(t) = arg_types.get(1) {
            out.push(expect_string("generate_query", 2, "options", t)?);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(result_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let opts = args
            .config_options
            .extensions
            .get::<SemflowOptions>()
            .cloned()
            .unwrap_or_default();
        let docs = StringArg::new(&args.args[0])?;
        let options = match args.args.get(1) {
            Some(v) => StringArg::new(v)?,
            None => StringArg::Scalar(None),
        };
        let rows = args.number_rows;
        let mut jobs = Vec::new();
        let mut cached = Vec::new();
        for row in 0..rows {
            if let Some(doc) = docs.get(row) {
                let key = (Self::settings_key(&opts, options.get(row)), doc.to_string());
                match self.results.get(&key) {
                    Some(r) => cached.push((row, r)),
                    None => {
                        let g = self.generator(&opts, options.get(row))?;
                        jobs.push((row, g, key));
                    }
                }
            }
        }
        let concurrency = jobs
            .first()
            .map(|(_, g, _)| g.client.max_concurrency())
            .unwrap_or(1);
        let fresh = block_on(async move {
            futures::stream::iter(jobs.into_iter().map(|(row, g, key)| async move {
                // Draws are keyed by the document text: the same document, the same draws.
                let r = g.generate(&key.1, &key.1).await;
                (row, key, r)
            }))
            .buffered(concurrency * 2)
            .collect::<Vec<_>>()
            .await
        })
        .map_err(crate::error::Error::from)?;
        let mut results = cached;
        for (row, key, r) in fresh {
            // Failures too: a failed document costs its retries once per process, not once
            // per reference to its result.
            if !matches!(&r, Err(Failure::Request(e)) if e.is_fatal()) {
                self.results.insert(key, r.clone());
            }
            results.push((row, r));
        }
        let array = result_array(rows, results)?;
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// One struct row per input row, in row order: the generated query and its settings, the
/// failure kind in `error`, or NULL for rows without a document. A refused request (bad
/// URL, model or key) fails the query instead.
fn result_array(
    rows: usize,
    mut results: Vec<(usize, std::result::Result<Generated, Failure>)>,
) -> Result<StructArray> {
    results.sort_by_key(|(row, _)| *row);
    let mut builders: Vec<StringBuilder> = FIELDS.iter().map(|_| StringBuilder::new()).collect();
    let mut valid = vec![false; rows];
    let mut results = results.into_iter().peekable();
    for (row, ok) in valid.iter_mut().enumerate() {
        let values: [Option<String>; 7] = match results.next_if(|(r, _)| *r == row) {
            None => Default::default(),
            Some((_, Ok(g))) => {
                *ok = true;
                [
                    Some(g.query),
                    Some(g.config.persona),
                    Some(g.config.query_type),
                    Some(g.config.difficulty),
                    Some(g.config.length),
                    Some(g.config.language),
                    None,
                ]
            }
            Some((_, Err(Failure::Request(e)))) if e.is_fatal() => {
                return exec_err!("generate_query(): the generator refused the request: {e}");
            }
            Some((_, Err(f))) => {
                *ok = true;
                let mut v: [Option<String>; 7] = Default::default();
                v[6] = Some(f.label());
                v
            }
        };
        for (b, v) in builders.iter_mut().zip(values) {
            b.append_option(v);
        }
    }
    let DataType::Struct(fields) = result_type() else {
        return exec_err!("generate_query(): internal type error");
    };
    let columns: Vec<ArrayRef> = builders
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
    Ok(StructArray::try_new(fields, columns, nulls)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_fix_the_configuration_or_are_named() {
        let mut cfg = SynthConfig::default();
        apply_options(
            &mut cfg,
            r#"{"language": "German", "persona": "a chef", "seed": 4}"#,
        )
        .unwrap();
        assert_eq!(cfg.recipe.languages, vec!["German"]);
        assert_eq!(cfg.recipe.personas, vec!["a chef"]);
        assert_eq!(cfg.recipe.seed, 4);
        let err = apply_options(&mut cfg, r#"{"langauge": "x"}"#).unwrap_err();
        assert!(err.contains("langauge"), "{err}");
        assert!(apply_options(&mut cfg, "[1]").is_err());
    }
}
