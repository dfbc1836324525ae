//! `semflow eval`: how well each of the engine's embedding models retrieves on an evaluation
//! set, and at what cost, side by side.
//!
//! The set is a BEIR / MTEB directory (read with [`crate::udf::ir::beir`]); its queries are
//! those its qrels split judges. For every model the engine has (the default, then each
//! `--model NAME=SPEC`) and every Matryoshka dimension asked for, one configuration:
//! 1. the corpus (`title` and `text` joined by a space) is embedded into a Lance table —
//!    throughput in documents per second, with the content cache off so every configuration
//!    pays its own embedding;
//! 2. each query runs as a user's search would: `ORDER BY cosine_similarity(embedding,
//!    embed(query, instruction, dims, model)) DESC LIMIT k`, served by Lance's exact (flat)
//!    search — latency per query, end to end (query embedding included);
//! 3. optionally the top `rerank_top` of that search are re-scored with `rerank()` (the
//!    default reranker) and the run is that reranked list;
//! 4. optionally an IVF_PQ index is built and the searches run again through it (`ivf_pq`
//!    rows: index size and latency of approximate search).
//!
//! Each run is measured with [`crate::udf::ir::measures`] (trec_eval's conventions), averaged
//! over the evaluated queries.
//!
//! With existing indexes ([`ExistingIndex`]: what a pipeline or `semflow reindex` built) the
//! corpus is not embedded: each index is one configuration, searched as it is (through its
//! own vector index when it has one), its queries embedded by the engine's model that made
//! its vectors, at their dimension.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::metadata::{FieldMetadata, ScalarAndMetadata};
use datafusion::common::{ParamValues, ScalarValue};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::LanceTable;
use crate::inference::NamedModel;
use crate::text::sql_string;
use crate::udf::embed::vector_model;
use crate::udf::ir::measures::{evaluate, Measure, Options, Qrels, Run};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// A BEIR directory: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.
    pub set: PathBuf,
    pub split: String,
    /// Matryoshka dimensions to try per model; empty: the model's full dimension only.
    pub dims: Vec<usize>,
    /// Documents retrieved per query.
    pub k: usize,
    pub measures: Vec<Measure>,
    /// The query side's instruction or prompt name.
    pub instruction: String,
    /// Also search through an IVF_PQ index.
    pub ann: bool,
    /// Rerank this many of the exact search's best documents.
    pub rerank_top: Option<usize>,
    /// Quantized forms searched besides float32.
    pub forms: Vec<Form>,
    /// Quantized searches are also rescored: their best `k × rescore` by the float vectors
    /// (0: not).
    pub rescore: usize,
    /// Where the Lance tables go (emptied first, removed after).
    pub work_dir: PathBuf,
    /// Evaluate the default model too, not only the named ones.
    pub include_default: bool,
    /// Search these indexes instead of embedding the corpus.
    pub indexes: Vec<ExistingIndex>,
}

/// An index built elsewhere (a `semflow run` pipeline, `semflow reindex`), searched as it is.
#[derive(Debug, Clone)]
pub struct ExistingIndex {
    /// A Lance dataset or an alias (`*.alias`).
    pub location: String,
    /// The column holding the qrels' document ids.
    pub id_column: String,
    pub vector_column: String,
    /// The text `--rerank-top` reranks.
    pub text_column: String,
}

/// One configuration's results.
#[derive(Debug, Clone, Serialize)]
pub struct Configuration {
    /// `default` or the `--model` name.
    pub model: String,
    /// The existing index searched (`--index`), if this is one.
    pub index: Option<String>,
    /// `embed_model()`: the model id and weights digest.
    pub fingerprint: String,
    pub dims: usize,
    /// How the vectors are stored.
    pub form: String,
    /// `exact` (flat search), `ivf_pq`, `hamming`, or `index` (an existing index's own
    /// vector index).
    pub search: String,
    pub rerank_top: Option<usize>,
    /// Quantized searches rescored by the float vectors: candidates per result.
    pub rescore: Option<usize>,
    /// Each measure's mean over the evaluated queries.
    pub measures: BTreeMap<String, f64>,
    pub bytes_per_vector: usize,
    /// The vector index's bytes on disk (`ivf_pq` rows).
    pub index_bytes: Option<u64>,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    /// Documents searched.
    pub documents: usize,
    /// Corpus embedding throughput (not for existing indexes).
    pub embed_docs_per_s: Option<f64>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub set: String,
    pub split: String,
    pub documents: usize,
    pub queries: usize,
    pub k: usize,
    pub instruction: String,
    /// The measures, in the order asked for.
    pub measures: Vec<String>,
    pub configurations: Vec<Configuration>,
}

/// Progress: units done of all units (documents embedded plus queries run), and what runs.
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub stage: &'a str,
}

/// A quantized form of the vectors, stored beside the float32 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `int8_quantize`, searched by cosine over the int8 vectors.
    Int8,
    /// `int8_quantize(v, calibration)` with each dimension's range over the corpus
    /// (`int8_calibration`), searched by cosine over the int8 vectors.
    Int8Calibrated,
    /// `binary_quantize`, searched by Hamming distance.
    Binary,
}

impl std::str::FromStr for Form {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "int8" => Ok(Form::Int8),
            "int8-calibrated" => Ok(Form::Int8Calibrated),
            "binary" => Ok(Form::Binary),
            other => Err(Error::InvalidArgument(format!(
                "--forms: unknown form {other:?} (float32, int8, int8-calibrated, binary)"
            ))),
        }
    }
}

impl Form {
    /// How `--forms` and the report name it.
    fn name(self) -> &'static str {
        match self {
            Form::Int8 => "int8",
            Form::Int8Calibrated => "int8-calibrated",
            Form::Binary => "binary",
        }
    }

    /// The SQL that ranks a row against the query vector `$1` (and the table's calibration,
    /// `$2`), and the order that puts the best first: the form a user writes, which the
    /// vector-search rewrite serves from Lance where Lance can (Hamming over the packed bits).
    fn key(self) -> (&'static str, &'static str) {
        match self {
            Form::Int8 => (
                "cosine_similarity(embedding_int8, int8_quantize($1))",
                "DESC",
            ),
            Form::Int8Calibrated => (
                "cosine_similarity(embedding_int8_calibrated, int8_quantize($1, $2))",
                "DESC",
            ),
            Form::Binary => (
                "hamming_distance(embedding_binary, binary_quantize($1))",
                "ASC",
            ),
        }
    }
}

/// One way of searching a configuration's table.
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// float32 cosine, Lance's flat search.
    Exact,
    /// `Exact`'s best n reranked.
    Rerank(usize),
    /// A quantized form's own scores, optionally rescored by the float vectors.
    Quantized { form: Form, rescore: Option<usize> },
    /// float32 through an IVF_PQ index.
    Ivf,
}

impl Pass {
    fn form(self) -> &'static str {
        match self {
            Pass::Quantized { form, .. } => form.name(),
            _ => "float32",
        }
    }

    fn search(self) -> &'static str {
        match self {
            Pass::Ivf => "ivf_pq",
            Pass::Quantized {
                form: Form::Binary, ..
            } => "hamming",
            _ => "exact",
        }
    }

    fn label(self) -> String {
        match self {
            Pass::Rerank(n) => format!("exact search + rerank top {n}"),
            Pass::Quantized { rescore, .. } => format!(
                "{} {} search{}",
                self.form(),
                self.search(),
                rescore.map_or(String::new(), |r| format!(" + rescore x{r}"))
            ),
            _ => format!("{} search", self.search()),
        }
    }

    /// The stored form's bytes per vector (a calibration's `2·d` floats are per table).
    fn bytes_per_vector(self, dims: usize) -> usize {
        match self {
            Pass::Quantized {
                form: Form::Int8 | Form::Int8Calibrated,
                ..
            } => dims,
            Pass::Quantized {
                form: Form::Binary, ..
            } => dims.div_ceil(8),
            _ => dims * std::mem::size_of::<f32>(),
        }
    }
}

/// One query of the set.
struct Query {
    id: String,
    text: String,
}

/// The in-memory table of a configuration's embedded corpus, before it is written.
const VECTORS: &str = "semflow_eval_vectors";
/// Its per-dimension int8 calibration (one row).
const CALIBRATION: &str = "semflow_eval_calibration";

/// The fewest rows IVF_PQ trains on.
const ANN_MIN_DOCS: usize = 256;

/// Runs the evaluation on `engine`'s models.
pub async fn run(
    engine: &Engine,
    options: &EvalOptions,
    progress: impl Fn(Progress<'_>),
) -> Result<EvalReport> {
    check(options)?;
    let set = sql_string(&options.set.to_string_lossy());
    let qrels_part = sql_string(&format!("qrels/{}", options.split));
    // Every configuration embeds for itself: cache hits would flatter the later ones.
    engine.run_sql("SET semflow.cache = false").await?;
    engine
        .run_sql(&format!(
            "CREATE OR REPLACE VIEW semflow_eval_qrels AS SELECT * FROM beir({set}, {qrels_part})"
        ))
        .await?;
    let qrels = read_qrels(engine).await?;
    let queries = read_queries(engine, &set).await?;
    if queries.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "eval: no query of {} is judged in qrels/{}.tsv",
            options.set.display(),
            options.split
        )));
    }
    let mut runner = Runner {
        engine,
        options,
        qrels: &qrels,
        queries: &queries,
        passes: passes(options),
        progress: &progress,
        done: 0,
        total: 0,
    };
    let (documents, configurations) = if options.indexes.is_empty() {
        runner.embedded(&set).await?
    } else {
        runner.existing().await?
    };
    Ok(EvalReport {
        set: options.set.display().to_string(),
        split: options.split.clone(),
        documents,
        queries: queries.len(),
        k: options.k,
        instruction: options.instruction.clone(),
        measures: options.measures.iter().map(ToString::to_string).collect(),
        configurations,
    })
}

/// Refuses options that cannot run together.
fn check(options: &EvalOptions) -> Result<()> {
    let refuse = |m: &str| Err(Error::InvalidArgument(format!("eval: {m}")));
    if options.k == 0 {
        return refuse("--k must be at least 1");
    }
    if options.measures.is_empty() {
        return refuse("--measures names no measure");
    }
    if !options.indexes.is_empty() {
        if !options.dims.is_empty() {
            return refuse(
                "--dims does not apply to --index: an index's vectors have their dimension",
            );
        }
        if !options.forms.is_empty() {
            return refuse("--forms needs the corpus embedded by eval (its quantized columns); not with --index");
        }
        if options.ann {
            return refuse("--ann builds an index over the corpus eval embeds; with --index, the index is searched as it is");
        }
    }
    Ok(())
}

/// One evaluation under way: the set, the passes, and the progress made.
struct Runner<'a, P: Fn(Progress<'_>)> {
    engine: &'a Engine,
    options: &'a EvalOptions,
    qrels: &'a Qrels,
    queries: &'a [Query],
    passes: Vec<Pass>,
    progress: &'a P,
    done: usize,
    total: usize,
}

impl<P: Fn(Progress<'_>)> Runner<'_, P> {
    /// Every model × dims: the corpus embedded into a table of its own, searched, dropped.
    async fn embedded(&mut self, set: &str) -> Result<(usize, Vec<Configuration>)> {
        let (engine, options) = (self.engine, self.options);
        engine
            .run_sql(&format!(
                "CREATE OR REPLACE VIEW semflow_eval_corpus AS
                   SELECT doc_id, trim(concat_ws(' ', title, text)) AS body FROM beir({set}, 'corpus')"
            ))
            .await?;
        let documents = count(engine, "SELECT count(*) FROM semflow_eval_corpus").await?;
        if options.ann && documents < ANN_MIN_DOCS {
            return Err(Error::InvalidArgument(format!(
                "eval: --ann builds an IVF_PQ index, which needs at least {ANN_MIN_DOCS} documents; the corpus has {documents}"
            )));
        }
        let mut models: Vec<Option<String>> = Vec::new();
        if options.include_default {
            models.push(None);
        }
        models.extend(engine.models().names().map(|n| Some(n.to_string())));
        if models.is_empty() {
            return Err(Error::InvalidArgument(
                "eval: no model to evaluate (name some with --model NAME=SPEC)".into(),
            ));
        }
        let dims: Vec<Option<usize>> = if options.dims.is_empty() {
            vec![None]
        } else {
            options.dims.iter().copied().map(Some).collect()
        };
        self.total =
            models.len() * dims.len() * (documents + self.passes.len() * self.queries.len());
        let mut configurations = Vec::new();
        std::fs::create_dir_all(&options.work_dir).map_err(|e| Error::io(&options.work_dir, e))?;
        for model in &models {
            for d in &dims {
                let i = configurations.len();
                let mut table = Table::create(engine, options, i, model, *d).await?;
                self.report(&format!(
                    "{}: embedding {documents} documents",
                    table.label()
                ));
                table.fill(engine, documents).await?;
                self.done += documents;
                configurations.extend(self.search(&table).await?);
                table.drop(engine).await?;
            }
        }
        let _ = std::fs::remove_dir_all(&options.work_dir);
        Ok((documents, configurations))
    }

    /// Every existing index, searched as it is; the first one's rows are the report's
    /// documents.
    async fn existing(&mut self) -> Result<(usize, Vec<Configuration>)> {
        let mut tables = Vec::new();
        for (i, index) in self.options.indexes.iter().enumerate() {
            tables.push(Table::open(self.engine, i, index).await?);
        }
        self.total = tables.len() * self.passes.len() * self.queries.len();
        let mut configurations = Vec::new();
        for table in &tables {
            configurations.extend(self.search(table).await?);
            table.drop(self.engine).await?;
        }
        Ok((tables.first().map_or(0, |t| t.documents), configurations))
    }

    /// Every pass over `table`: a configuration each.
    async fn search(&mut self, table: &Table) -> Result<Vec<Configuration>> {
        let mut configurations = Vec::new();
        for pass in self.passes.clone() {
            let index_bytes = match pass {
                Pass::Ivf => Some(table.build_index(self.engine).await?),
                _ => table.index_bytes(),
            };
            let stage = format!("{}: {}", table.label(), pass.label());
            let (done, total) = (self.done, self.total);
            let timed = table
                .search_all(self.engine, self.options, self.queries, pass, |i| {
                    (self.progress)(Progress {
                        done: done + i,
                        total,
                        stage: &stage,
                    })
                })
                .await?;
            self.done += self.queries.len();
            let mut c = table.configuration(pass, index_bytes);
            timed.into_configuration(&mut c, self.qrels, self.options);
            configurations.push(c);
        }
        Ok(configurations)
    }

    fn report(&self, stage: &str) {
        (self.progress)(Progress {
            done: self.done,
            total: self.total,
            stage,
        });
    }
}

/// The ways each configuration's table is searched, in report order.
fn passes(options: &EvalOptions) -> Vec<Pass> {
    let mut passes = vec![Pass::Exact];
    passes.extend(options.rerank_top.map(Pass::Rerank));
    for &form in &options.forms {
        passes.push(Pass::Quantized {
            form,
            rescore: None,
        });
        if options.rescore > 1 {
            passes.push(Pass::Quantized {
                form,
                rescore: Some(options.rescore),
            });
        }
    }
    if options.ann {
        passes.push(Pass::Ivf);
    }
    passes
}

/// A merge sweep's point: the model name it is evaluated under, and its directory.
pub fn sweep_point(t: f64, out: &Path) -> NamedModel {
    NamedModel {
        name: format!("t={t}"),
        spec: out.join(format!("t-{t}")).to_string_lossy().into_owned(),
    }
}

/// Merges two checkpoints at every interpolation point of `points` (each in [0, 1]) into
/// `out/t-<t>`; the points as named models to evaluate.
pub fn merge_sweep(models: &[PathBuf], points: &[f64], out: &Path) -> Result<Vec<NamedModel>> {
    if models.len() != 2 {
        return Err(Error::InvalidArgument(format!(
            "--sweep interpolates between exactly two models, got {}",
            models.len()
        )));
    }
    if let Some(t) = points.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Error::InvalidArgument(format!(
            "--sweep: every point must be between 0 and 1, got {t}"
        )));
    }
    let mut named = Vec::with_capacity(points.len());
    for &t in points {
        let point = sweep_point(t, out);
        let weights = crate::model::merge::weights(2, Some(t), None)?;
        crate::model::merge::merge(models, &weights, Path::new(&point.spec))?;
        named.push(point);
    }
    Ok(named)
}

/// Of `models`, the one whose first configuration (exact search, no rerank, the first dims)
/// has the highest `measure`; the earliest of equals.
pub fn best<'a>(
    report: &'a EvalReport,
    models: &[String],
    measure: &str,
) -> Option<&'a Configuration> {
    models
        .iter()
        .filter_map(|m| report.configurations.iter().find(|c| &c.model == m))
        .fold(None, |best: Option<&Configuration>, c| match best {
            Some(b) if b.measures.get(measure) >= c.measures.get(measure) => Some(b),
            _ => Some(c),
        })
}

/// A model name as the SQL functions' `model` argument: a string, or NULL for the default.
fn model_arg(model: &Option<String>) -> String {
    model.as_deref().map_or("NULL".into(), sql_string)
}

/// `embed_model(model)`: the model's id and weights digest.
async fn fingerprint(engine: &Engine, model: &Option<String>) -> Result<String> {
    let rows = text_rows(
        engine,
        &format!("SELECT embed_model({})", model_arg(model)),
        1,
    )
    .await?;
    rows.into_iter()
        .next()
        .and_then(|mut r| r.pop())
        .ok_or_else(|| Error::InvalidArgument("eval: embed_model() returned nothing".into()))
}

/// Of the engine's models (the default, then the named ones), the one whose fingerprint is
/// `made_by`: its name and fingerprint.
async fn model_that_made(
    engine: &Engine,
    made_by: &str,
) -> Result<Option<(Option<String>, String)>> {
    let candidates =
        std::iter::once(None).chain(engine.models().names().map(|n| Some(n.to_string())));
    for model in candidates.collect::<Vec<_>>() {
        let fingerprint = fingerprint(engine, &model).await?;
        if fingerprint == made_by {
            return Ok(Some((model, fingerprint)));
        }
    }
    Ok(None)
}

fn column_names(schema: &arrow::datatypes::Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

async fn count(engine: &Engine, sql: &str) -> Result<usize> {
    let results = engine.run_sql(sql).await?;
    let value = results
        .first()
        .and_then(|r| r.batches.first())
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        });
    Ok(value.unwrap_or(0).max(0) as usize)
}

/// Text columns of `sql`'s rows.
async fn text_rows(engine: &Engine, sql: &str, columns: usize) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for result in engine.run_sql(sql).await? {
        for batch in &result.batches {
            let texts: Vec<_> = (0..columns)
                .map(|c| arrow::compute::cast(batch.column(c), &DataType::Utf8))
                .collect::<std::result::Result<_, _>>()?;
            for i in 0..batch.num_rows() {
                rows.push(
                    texts
                        .iter()
                        .map(|a| a.as_string::<i32>().value(i).to_string())
                        .collect(),
                );
            }
        }
    }
    Ok(rows)
}

async fn read_qrels(engine: &Engine) -> Result<Qrels> {
    let mut qrels = Qrels::default();
    let rows = text_rows(
        engine,
        "SELECT query_id, doc_id, relevance FROM semflow_eval_qrels
         WHERE query_id IS NOT NULL AND doc_id IS NOT NULL AND relevance IS NOT NULL",
        3,
    )
    .await?;
    for row in rows {
        let grade = row[2].parse().map_err(|_| {
            Error::InvalidArgument(format!("eval: qrels grade {:?} is not an integer", row[2]))
        })?;
        qrels
            .insert(&row[0], &row[1], grade)
            .map_err(|e| Error::InvalidArgument(format!("eval: {e}")))?;
    }
    Ok(qrels)
}

/// The queries the split judges, by id.
async fn read_queries(engine: &Engine, set: &str) -> Result<Vec<Query>> {
    let rows = text_rows(
        engine,
        &format!(
            "SELECT q.query_id, q.text FROM beir({set}, 'queries') q
             WHERE q.text IS NOT NULL
               AND q.query_id IN (SELECT query_id FROM semflow_eval_qrels)
             ORDER BY q.query_id"
        ),
        2,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|mut r| Query {
            text: r.pop().unwrap_or_default(),
            id: r.pop().unwrap_or_default(),
        })
        .collect())
}

/// One configuration's Lance table: embedded by eval, or an existing index.
struct Table {
    name: String,
    location: PathBuf,
    model: Option<String>,
    fingerprint: String,
    dims: usize,
    /// The columns searches read: document id, vector, text (for reranking).
    id: String,
    vector: String,
    text: String,
    /// The existing index's location (`--index`); `None` for eval's own tables.
    existing: Option<String>,
    /// Whether the vector column has a vector index searches go through.
    indexed: bool,
    documents: usize,
    embed_docs_per_s: Option<f64>,
    /// The corpus's `int8_calibration` (eval's own tables, once filled).
    calibration: Option<ScalarValue>,
}

impl Table {
    async fn create(
        engine: &Engine,
        options: &EvalOptions,
        i: usize,
        model: &Option<String>,
        dims: Option<usize>,
    ) -> Result<Self> {
        let name = format!("semflow_eval_{i}");
        let location = options.work_dir.join(format!("{name}.lance"));
        if location.exists() {
            std::fs::remove_dir_all(&location).map_err(|e| Error::io(&location, e))?;
        }
        let model_arg = model_arg(model);
        let dims_arg = dims.map_or("NULL".into(), |d| d.to_string());
        let probe = engine
            .run_sql(&format!(
                "SELECT embed('probe', NULL, {dims_arg}, {model_arg}), embed_model({model_arg})"
            ))
            .await?;
        let batch = probe
            .first()
            .and_then(|r| r.batches.first())
            .ok_or_else(|| {
                Error::InvalidArgument("eval: the model probe returned nothing".into())
            })?;
        let dims = match batch.column(0).data_type() {
            DataType::FixedSizeList(_, n) => *n as usize,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "eval: embed() returned {other}, not a vector"
                )))
            }
        };
        let fingerprint = batch.column(1).as_string::<i32>().value(0).to_string();
        engine
            .run_sql(&format!(
                "CREATE EXTERNAL TABLE {name} (doc_id TEXT NOT NULL, body TEXT, embedding FLOAT[],
                   embedding_int8 TINYINT[], embedding_int8_calibrated TINYINT[],
                   embedding_binary TINYINT UNSIGNED[],
                   PRIMARY KEY (doc_id)) STORED AS LANCE LOCATION {}",
                sql_string(&location.to_string_lossy())
            ))
            .await?;
        Ok(Table {
            name,
            location,
            model: model.clone(),
            fingerprint,
            dims,
            id: "doc_id".into(),
            vector: "embedding".into(),
            text: "body".into(),
            existing: None,
            indexed: false,
            documents: 0,
            embed_docs_per_s: None,
            calibration: None,
        })
    }

    /// Registers an existing index and finds the engine's model that made its vectors (the
    /// default model when the column does not record one).
    async fn open(engine: &Engine, i: usize, index: &ExistingIndex) -> Result<Self> {
        let name = format!("semflow_eval_index_{i}");
        engine
            .run_sql(&format!(
                "CREATE EXTERNAL TABLE {name} STORED AS LANCE LOCATION {}",
                sql_string(&index.location)
            ))
            .await?;
        let refuse =
            |m: String| Error::InvalidArgument(format!("eval: --index {}: {m}", index.location));
        let provider = engine.context().table_provider(name.as_str()).await?;
        let table = provider
            .downcast_ref::<LanceTable>()
            .ok_or_else(|| refuse("not a Lance table".into()))?;
        let schema = datafusion::datasource::TableProvider::schema(table);
        for column in [&index.id_column, &index.vector_column] {
            if schema.field_with_name(column).is_err() {
                return Err(refuse(format!(
                    "no column {column} (it has {}); name the columns with --id-column and --vector-column",
                    column_names(&schema)
                )));
            }
        }
        let (documents, dims) = table.vector_shape(&index.vector_column).await?;
        let recorded = schema
            .field_with_name(&index.vector_column)
            .ok()
            .and_then(vector_model);
        let (model, fingerprint) = match &recorded {
            Some(made_by) => model_that_made(engine, made_by).await?.ok_or_else(|| {
                refuse(format!(
                    "its vectors were made by {made_by}, which is not a model of this engine (give it with --embed-model or --model NAME=SPEC)"
                ))
            })?,
            None => (None, fingerprint(engine, &None).await?),
        };
        Ok(Table {
            location: PathBuf::from(table.uri()),
            indexed: table.has_index_on(&index.vector_column).await?,
            name,
            model,
            fingerprint,
            dims,
            id: index.id_column.clone(),
            vector: index.vector_column.clone(),
            text: index.text_column.clone(),
            existing: Some(index.location.clone()),
            documents,
            embed_docs_per_s: None,
            calibration: None,
        })
    }

    /// How progress names this table.
    fn label(&self) -> String {
        match &self.existing {
            Some(location) => format!("{location} ({})", self.model_name()),
            None => format!("{} dims {}", self.model_name(), self.dims),
        }
    }

    /// The bytes of the vector index searches go through, for an existing index that has one
    /// (`indexed` is only ever set for those).
    fn index_bytes(&self) -> Option<u64> {
        self.indexed
            .then(|| directory_bytes(&self.location.join("_indices")))
    }

    fn model_name(&self) -> String {
        self.model.clone().unwrap_or_else(|| "default".into())
    }

    /// The report row of `pass` over this table, before its measures and latencies.
    fn configuration(&self, pass: Pass, index_bytes: Option<u64>) -> Configuration {
        let search = match pass {
            Pass::Exact | Pass::Rerank(_) if self.indexed => "index",
            _ => pass.search(),
        };
        Configuration {
            model: self.model_name(),
            index: self.existing.clone(),
            fingerprint: self.fingerprint.clone(),
            dims: self.dims,
            form: pass.form().into(),
            search: search.into(),
            rerank_top: match pass {
                Pass::Rerank(n) => Some(n),
                _ => None,
            },
            rescore: match pass {
                Pass::Quantized { rescore, .. } => rescore,
                _ => None,
            },
            measures: BTreeMap::new(),
            bytes_per_vector: pass.bytes_per_vector(self.dims),
            index_bytes,
            latency_ms_p50: 0.0,
            latency_ms_p99: 0.0,
            documents: self.documents,
            embed_docs_per_s: self.embed_docs_per_s,
        }
    }

    fn model_arg(&self) -> String {
        model_arg(&self.model)
    }

    /// Embeds the corpus (timed: the embedding throughput), calibrates int8 on it, and
    /// writes every form into the table.
    async fn fill(&mut self, engine: &Engine, documents: usize) -> Result<()> {
        let started = Instant::now();
        engine
            .run_sql(&format!(
                "CREATE OR REPLACE TABLE {VECTORS} AS
                   SELECT doc_id, body, embed(body, NULL, {}, {}) AS e FROM semflow_eval_corpus
                   WHERE doc_id IS NOT NULL AND body IS NOT NULL",
                self.dims,
                self.model_arg()
            ))
            .await?;
        self.documents = documents;
        self.embed_docs_per_s = Some(documents as f64 / started.elapsed().as_secs_f64().max(1e-9));
        let calibration = engine
            .run_sql(&format!(
                "CREATE OR REPLACE TABLE {CALIBRATION} AS SELECT int8_calibration(e) AS c FROM {VECTORS};
                 SELECT c FROM {CALIBRATION}"
            ))
            .await?
            .into_iter()
            .flat_map(|r| r.batches)
            .find(|b| b.num_rows() == 1)
            .ok_or_else(|| {
                Error::InvalidArgument("eval: the int8 calibration returned nothing".into())
            })?;
        let calibration = ScalarValue::try_from_array(calibration.column(0), 0)?;
        engine
            .run_sql(&format!(
                "INSERT INTO {} SELECT doc_id, body, e, int8_quantize(e), int8_quantize(e, c),
                   binary_quantize(e)
                 FROM {VECTORS} CROSS JOIN {CALIBRATION};
                 DROP TABLE {VECTORS}; DROP TABLE {CALIBRATION}",
                self.name
            ))
            .await?;
        self.calibration = Some(calibration);
        Ok(())
    }

    /// Builds the IVF_PQ index; its size on disk.
    async fn build_index(&self, engine: &Engine) -> Result<u64> {
        engine
            .run_sql(&format!(
                "CREATE INDEX {0}_idx ON {0} USING ivf_pq (embedding)",
                self.name
            ))
            .await?;
        Ok(directory_bytes(&self.location.join("_indices")))
    }

    /// The query's embedding, as a search with the vector in hand would have it.
    fn embed_sql(&self, options: &EvalOptions, query: &str) -> String {
        format!(
            "SELECT embed({}, {}, {}, {}) AS v",
            sql_string(query),
            sql_string(&options.instruction),
            self.dims,
            self.model_arg()
        )
    }

    /// The search SQL for one query: the user's form of top-k for `pass`. Quantized passes
    /// take the query's vector as the parameter `$1` (embedded once, as an application
    /// holding the vector would search).
    fn search_sql(&self, options: &EvalOptions, query: &str, pass: Pass) -> String {
        let q = sql_string(query);
        let t = &self.name;
        let (id, vector, text) = (&self.id, &self.vector, &self.text);
        let search = |limit: usize| {
            let body = match pass {
                Pass::Rerank(_) => format!(", {text} AS body"),
                _ => String::new(),
            };
            format!(
                "SELECT {id} AS doc_id{body}, cosine_similarity({vector}, embed({q}, {}, {}, {})) AS score
                 FROM {t} ORDER BY score DESC LIMIT {limit}",
                sql_string(&options.instruction),
                self.dims,
                self.model_arg(),
            )
        };
        let k = options.k;
        match pass {
            Pass::Exact | Pass::Ivf => search(k),
            Pass::Rerank(n) => format!(
                "WITH hits AS ({}) SELECT doc_id, CAST(rerank({q}, body) AS DOUBLE) AS score FROM hits",
                search(n)
            ),
            Pass::Quantized {
                form,
                rescore: None,
            } => {
                let (key, order) = form.key();
                // Higher is better in the run: distances are negated.
                let sign = if order == "ASC" { "-" } else { "" };
                format!(
                    "SELECT doc_id, {sign}CAST(key AS DOUBLE) AS score
                     FROM (SELECT doc_id, {key} AS key FROM {t} ORDER BY key {order} LIMIT {k})"
                )
            }
            Pass::Quantized {
                form,
                rescore: Some(r),
            } => {
                let (key, order) = form.key();
                format!(
                    "WITH c AS (SELECT doc_id, embedding, {key} AS key FROM {t}
                                ORDER BY key {order} LIMIT {})
                     SELECT doc_id, cosine_similarity(embedding, $1) AS score
                     FROM c ORDER BY score DESC LIMIT {k}",
                    k * r
                )
            }
        }
    }

    /// Embeds the query: its vector, with the field metadata naming its model.
    async fn query_vector(
        &self,
        engine: &Engine,
        options: &EvalOptions,
        query: &str,
    ) -> Result<ScalarAndMetadata> {
        let results = engine.run_sql(&self.embed_sql(options, query)).await?;
        let batch = results
            .into_iter()
            .next()
            .and_then(|r| r.batches.into_iter().next())
            .filter(|b| b.num_rows() == 1)
            .ok_or_else(|| Error::InvalidArgument("eval: a query embedded to nothing".into()))?;
        let value = ScalarValue::try_from_array(batch.column(0), 0)?;
        let metadata = FieldMetadata::from(batch.schema().field(0));
        Ok(ScalarAndMetadata::new(value, Some(metadata)))
    }

    /// `sql`'s rows, with `$1`, `$2`, … bound to `params`.
    async fn run_with(
        engine: &Engine,
        sql: &str,
        params: Vec<ScalarAndMetadata>,
    ) -> Result<Vec<RecordBatch>> {
        Ok(engine
            .context()
            .sql(sql)
            .await?
            .with_param_values(ParamValues::List(params))?
            .collect()
            .await?)
    }

    /// Runs every query, timing each (query embedding included); the run and the latencies.
    async fn search_all(
        &self,
        engine: &Engine,
        options: &EvalOptions,
        queries: &[Query],
        pass: Pass,
        progress: impl Fn(usize),
    ) -> Result<Timed> {
        let mut run = Run::default();
        let mut latencies = Vec::with_capacity(queries.len());
        for (i, query) in queries.iter().enumerate() {
            progress(i);
            let sql = self.search_sql(options, &query.text, pass);
            let started = Instant::now();
            let batches = match pass {
                Pass::Quantized { form, .. } => {
                    let mut params = vec![self.query_vector(engine, options, &query.text).await?];
                    if form == Form::Int8Calibrated {
                        let calibration = self.calibration.clone().ok_or_else(|| {
                            Error::InvalidArgument("eval: the table has no int8 calibration".into())
                        })?;
                        params.push(calibration.into());
                    }
                    Self::run_with(engine, &sql, params).await?
                }
                _ => engine
                    .run_sql(&sql)
                    .await?
                    .into_iter()
                    .flat_map(|r| r.batches)
                    .collect(),
            };
            latencies.push(started.elapsed());
            for batch in &batches {
                let docs = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
                let docs = docs.as_string::<i32>();
                let score_column = batch.num_columns() - 1;
                let scores = arrow::compute::cast(batch.column(score_column), &DataType::Float64)?;
                let scores = scores.as_primitive::<Float64Type>();
                for r in 0..batch.num_rows() {
                    if docs.is_null(r) || scores.is_null(r) {
                        continue;
                    }
                    run.insert(&query.id, docs.value(r), scores.value(r))
                        .map_err(|e| Error::InvalidArgument(format!("eval: {e}")))?;
                }
            }
        }
        Ok(Timed { run, latencies })
    }

    async fn drop(&self, engine: &Engine) -> Result<()> {
        engine
            .run_sql(&format!("DROP TABLE IF EXISTS {}", self.name))
            .await?;
        Ok(())
    }
}

/// A pass's run and per-query latencies.
struct Timed {
    run: Run,
    latencies: Vec<Duration>,
}

impl Timed {
    fn into_configuration(mut self, c: &mut Configuration, qrels: &Qrels, options: &EvalOptions) {
        let scores = evaluate(&self.run, qrels, &options.measures, Options::default());
        for (m, measure) in options.measures.iter().enumerate() {
            let sum: f64 = scores.values().map(|v| v[m]).sum();
            let mean = if scores.is_empty() {
                0.0
            } else {
                sum / scores.len() as f64
            };
            c.measures.insert(measure.to_string(), mean);
        }
        self.latencies.sort();
        c.latency_ms_p50 = percentile_ms(&self.latencies, 0.50);
        c.latency_ms_p99 = percentile_ms(&self.latencies, 0.99);
    }
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// Bytes of every file under `dir` (0 when it does not exist).
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => directory_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

impl EvalReport {
    /// The configurations side by side, one row each.
    pub fn render(&self) -> String {
        let measures = &self.measures;
        let mut header = vec![
            "model".to_string(),
            "dims".into(),
            "form".into(),
            "search".into(),
        ];
        header.extend(measures.iter().cloned());
        header.extend([
            "bytes/vector".into(),
            "index bytes".into(),
            "p50 ms".into(),
            "p99 ms".into(),
            "embed docs/s".into(),
        ]);
        let mut rows = vec![header];
        for c in &self.configurations {
            let model = match &c.index {
                Some(index) => format!("{index} ({})", c.model),
                None => c.model.clone(),
            };
            let mut row = vec![
                model,
                c.dims.to_string(),
                c.form.clone(),
                format!(
                    "{}{}{}",
                    c.search,
                    c.rerank_top
                        .map_or(String::new(), |n| format!("+rerank@{n}")),
                    c.rescore
                        .map_or(String::new(), |r| format!("+rescore x{r}"))
                ),
            ];
            row.extend(measures.iter().map(|m| format!("{:.4}", c.measures[m])));
            row.extend([
                c.bytes_per_vector.to_string(),
                c.index_bytes.map_or("-".into(), |b| b.to_string()),
                format!("{:.2}", c.latency_ms_p50),
                format!("{:.2}", c.latency_ms_p99),
                c.embed_docs_per_s.map_or("-".into(), |r| format!("{r:.1}")),
            ]);
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "{} ({} split): {} documents, {} queries, top {}\n",
            self.set, self.split, self.documents, self.queries, self.k
        );
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 0.5), 50.0);
        assert_eq!(percentile_ms(&d, 0.99), 99.0);
        assert_eq!(percentile_ms(&d[..1], 0.99), 1.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
