//! `semflow reindex`: rebuilds a Lance index with another embedding model while searches keep
//! running on the old one, then (optionally) switches readers over through an alias.
//!
//! 1. Pins the source's newest version (through its alias, if the location is one).
//! 2. Reads its rows in order, re-embeds the text column with this engine's embedding model
//!    and writes them to a new dataset, a batch per commit. Each commit records in its
//!    transaction properties how far it got (`semflow.reindex`) and the stream positions of
//!    the pinned version, so a killed reindex resumes where its last commit ended and a
//!    pipeline pointed at the new index later resumes from the pinned version's positions
//!    (catching up with what the old index received meanwhile, with the new model).
//! 3. With `--swap`, points the alias at the new dataset (one atomic rename): the next scan
//!    of every reader that opened the alias reads the new index. The vectors carry their
//!    model in the column metadata, so queries that embed with the old model against the new
//!    index, and writers still embedding with the old model, are refused with a message
//!    rather than answered with meaningless scores.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use lance::Dataset;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::offsets::{properties_at, read_all_offsets};
use crate::index::{alias, Change, LanceTable};
use crate::inference::tokenize::Truncation;
use crate::inference::{CallOptions, EmbedInput, Inference};
use crate::udf::embed::{vector_array, vector_item_field, DIMS_KEY, MODEL_KEY, WEIGHTS_KEY};

/// The transaction property holding a reindex's [`Progress`] as JSON.
pub const PROGRESS_PROPERTY: &str = "semflow.reindex";

/// What to rebuild, from where to where.
#[derive(Debug, Clone)]
pub struct ReindexOptions {
    /// The index to read: a Lance dataset or an alias (`*.alias`).
    pub from: String,
    /// The new dataset's location (must not exist, or be an earlier run's to resume).
    pub to: String,
    /// The column holding the text the vectors were made from.
    pub text_column: String,
    /// The vector column to rebuild.
    pub vector_column: String,
    /// A text column recording each row's model (`embed_model() AS model`), set to the new
    /// model's fingerprint.
    pub model_column: Option<String>,
    /// Query instruction or prompt name to embed with (documents: none).
    pub instruction: Option<String>,
    /// Keep the first `dims` components (Matryoshka); default the model's dimension.
    pub dims: Option<usize>,
    /// Rows per commit.
    pub batch_rows: usize,
    /// Point the alias `from` at `to` once every row is written.
    pub swap: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    pub source: String,
    pub source_version: u64,
    pub target: String,
    pub model: String,
    pub rows: u64,
    /// Rows an earlier, interrupted run had already written.
    pub resumed_at: u64,
    pub seconds: f64,
    pub swapped: bool,
}

/// How far a reindex got, recorded with each of its commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// The source dataset (an alias's target at the start).
    source: String,
    /// Its pinned version.
    version: u64,
    /// Source rows written so far (in scan order).
    rows: u64,
    /// All rows written.
    done: bool,
}

/// Runs a reindex (or resumes one) with `inference`'s embedding model.
pub async fn reindex(inference: &Inference, options: &ReindexOptions) -> Result<ReindexReport> {
    let started = Instant::now();
    check_options(options)?;
    let source = LanceTable::open(&options.from, None, None).await?;
    let earlier = match crate::index::table::open_dataset(&options.to).await {
        Ok(ds) => Some(progress_of(&ds, &options.to).await?),
        Err(lance::Error::DatasetNotFound { .. }) => None,
        Err(e) => return Err(Error::Index(format!("{}: {e}", options.to))),
    };
    let (source_uri, version) = match &earlier {
        Some(p) => (p.source.clone(), p.version),
        None => {
            let ds = source.latest().await?.ok_or_else(|| {
                Error::InvalidArgument(format!("--from {}: the index is empty", options.from))
            })?;
            (source.uri(), ds.version().version)
        }
    };
    if same_location(&source_uri, &options.to) {
        return Err(Error::InvalidArgument(format!(
            "--to {}: that is the index being rebuilt; choose a new location",
            options.to
        )));
    }
    let pinned = open_version(&source_uri, version).await?;
    let total = pinned
        .count_rows(None)
        .await
        .map_err(|e| Error::Index(format!("{source_uri}: {e}")))? as u64;
    let dir = inference.embed_model_dir().await?;
    let dims = output_dims(options.dims, dir.config.hidden_size)?;
    let output = Output {
        inference,
        options,
        schema: target_schema(&pinned, options, &dir.id, &dir.weights_digest, dims)?,
        dims,
        model: format!("{}@{}", dir.id, dir.weights_digest),
    };
    let resumed_at = earlier.as_ref().map_or(0, |p| p.rows);
    let mut progress = Progress {
        source: source_uri.clone(),
        version,
        rows: resumed_at,
        done: earlier.as_ref().is_some_and(|p| p.done),
    };
    if !progress.done {
        let target = LanceTable::open(
            &options.to,
            Some(output.schema.clone()),
            source.primary_key().map(String::from),
        )
        .await?;
        copy_rows(&output, &pinned, &target, &mut progress, total).await?;
    }
    let swapped = if options.swap {
        alias::point(std::path::Path::new(&options.from), &options.to)?;
        true
    } else {
        false
    };
    Ok(ReindexReport {
        source: source_uri,
        source_version: version,
        target: options.to.clone(),
        model: output.model,
        rows: progress.rows,
        resumed_at,
        seconds: started.elapsed().as_secs_f64(),
        swapped,
    })
}

/// What the rebuilt rows get: the new vectors, their shape and their model.
struct Output<'a> {
    inference: &'a Inference,
    options: &'a ReindexOptions,
    schema: SchemaRef,
    dims: usize,
    /// `<model id>@<weights digest>`, as `embed_model()` says.
    model: String,
}

/// `--dims`, checked against the model's dimension `hidden` (its default).
fn output_dims(requested: Option<usize>, hidden: usize) -> Result<usize> {
    match requested {
        None => Ok(hidden),
        Some(d) if (1..=hidden).contains(&d) => Ok(d),
        Some(d) => Err(Error::InvalidArgument(format!(
            "--dims {d}: must be between 1 and {hidden} (the model's dimension)"
        ))),
    }
}

/// Re-embeds the pinned version's rows after `progress.rows` (in scan order) into `target`,
/// a commit per batch recording the progress and the version's stream positions.
async fn copy_rows(
    output: &Output<'_>,
    pinned: &Dataset,
    target: &LanceTable,
    progress: &mut Progress,
    total: u64,
) -> Result<()> {
    let source = |e: lance::Error| Error::Index(format!("{}: {e}", progress.source));
    let offsets = read_all_offsets(pinned).await?;
    let mut scanner = pinned.scan();
    scanner
        .scan_in_order(true)
        .batch_size(output.options.batch_rows)
        .limit(None, Some(progress.rows as i64))
        .map_err(source)?;
    let mut rows = scanner.try_into_stream().await.map_err(source)?;
    while let Some(batch) = rows.try_next().await.map_err(source)? {
        let batch = reembed(output, batch).await?;
        progress.rows += batch.num_rows() as u64;
        progress.done = progress.rows >= total;
        target
            .apply(Change {
                rows: vec![batch],
                offsets: (!offsets.is_empty()).then(|| offsets.clone()),
                properties: vec![(PROGRESS_PROPERTY.to_string(), to_json(progress))],
                ..Default::default()
            })
            .await?;
        tracing::info!(rows = progress.rows, total, "reindex progress");
    }
    if !progress.done {
        return Err(Error::Index(format!(
            "{}@{}: read {} of {total} rows",
            progress.source, progress.version, progress.rows
        )));
    }
    Ok(())
}

fn check_options(options: &ReindexOptions) -> Result<()> {
    if options.batch_rows == 0 {
        return Err(Error::InvalidArgument(
            "--batch-rows must be at least 1".into(),
        ));
    }
    if options.swap && !alias::is_alias(&options.from) {
        return Err(Error::InvalidArgument(format!(
            "--swap: --from {} is not an alias (a *.{} file); create one with `semflow alias`",
            options.from,
            alias::EXTENSION
        )));
    }
    if alias::is_alias(&options.to) {
        return Err(Error::InvalidArgument(format!(
            "--to {}: give the new dataset's location, not an alias",
            options.to
        )));
    }
    Ok(())
}

fn same_location(a: &str, b: &str) -> bool {
    let canonical = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
    a == b || canonical(a) == canonical(b)
}

async fn open_version(uri: &str, version: u64) -> Result<Dataset> {
    let ds = crate::index::table::open_dataset(uri)
        .await
        .map_err(|e| Error::Index(format!("{uri}: {e}")))?;
    ds.checkout_version(version).await.map_err(|e| {
        Error::Index(format!(
            "{uri}: version {version}, which this reindex started from, is gone ({e}); remove the new dataset and start again"
        ))
    })
}

/// The progress an earlier run recorded in the target's history (newest first).
async fn progress_of(ds: &Dataset, location: &str) -> Result<Progress> {
    let mut version = ds.version().version;
    while version >= 1 {
        // A version removed by cleanup ends the history.
        let Some(properties) = properties_at(ds, version).await? else {
            break;
        };
        if let Some(text) = properties.get(PROGRESS_PROPERTY) {
            return serde_json::from_str(text).map_err(|e| {
                Error::Index(format!("{location}: {PROGRESS_PROPERTY} is not valid: {e}"))
            });
        }
        version -= 1;
    }
    Err(Error::InvalidArgument(format!(
        "--to {location}: a dataset is already there and no reindex wrote it; choose a new location"
    )))
}

fn to_json(progress: &Progress) -> String {
    // Strings, integers and a bool always serialise.
    serde_json::to_string(progress).unwrap_or_default()
}

/// The source's schema with the vector column rebuilt: `dims` components, tagged with the
/// model that makes them.
fn target_schema(
    source: &Dataset,
    options: &ReindexOptions,
    model_id: &str,
    weights: &str,
    dims: usize,
) -> Result<SchemaRef> {
    let schema = Schema::from(source.schema());
    let named = |column: &str, flag: &str| {
        schema.field_with_name(column).map_err(|_| {
            Error::InvalidArgument(format!(
                "{flag} {column}: the index has no such column (it has {})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let text = |column: &str, flag: &str| {
        let field = named(column, flag)?;
        match field.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(()),
            other => Err(Error::InvalidArgument(format!(
                "{flag} {column}: is {other}, not text"
            ))),
        }
    };
    text(&options.text_column, "--text-column")?;
    named(&options.vector_column, "--vector-column")?;
    if let Some(column) = &options.model_column {
        text(column, "--model-column")?;
    }
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() != &options.vector_column {
                return f.clone();
            }
            let mut metadata = f.metadata().clone();
            metadata.insert(MODEL_KEY.into(), model_id.into());
            metadata.insert(WEIGHTS_KEY.into(), weights.into());
            metadata.insert(DIMS_KEY.into(), dims.to_string());
            Arc::new(
                Field::new(
                    f.name(),
                    DataType::FixedSizeList(vector_item_field(), dims as i32),
                    f.is_nullable(),
                )
                .with_metadata(metadata),
            )
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// `batch` with its vector column recomputed from its text column (NULL text: NULL vector).
async fn reembed(output: &Output<'_>, batch: RecordBatch) -> Result<RecordBatch> {
    let Output {
        inference,
        options,
        schema,
        dims,
        model,
    } = output;
    let dims = *dims;
    let text = batch
        .column_by_name(&options.text_column)
        .ok_or_else(|| Error::Index(format!("no column {}", options.text_column)))?;
    let text = arrow::compute::cast(text, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let (mut inputs, mut rows) = (Vec::new(), Vec::new());
    for row in 0..text.len() {
        if text.is_valid(row) {
            inputs.push(EmbedInput {
                text: text.value(row).to_string(),
                instruction: options.instruction.clone().filter(|i| !i.is_empty()),
            });
            rows.push(row);
        }
    }
    let options_for_call = CallOptions {
        truncation: Truncation::End,
        // A rebuild reads each text once: caching would only evict what serving needs.
        use_cache: false,
    };
    let vectors = if inputs.is_empty() {
        Vec::new()
    } else {
        inference
            .embed(inputs, rows.clone(), options_for_call)
            .await?
    };
    let vectors = vector_array(text.len(), dims, &rows, &vectors)?;
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == &options.vector_column {
                Ok(Arc::new(vectors.clone()) as ArrayRef)
            } else if options.model_column.as_ref() == Some(f.name()) {
                let models =
                    arrow::array::StringArray::from(vec![model.as_str(); batch.num_rows()]);
                Ok(arrow::compute::cast(&models, f.data_type())?)
            } else {
                batch
                    .column_by_name(f.name())
                    .cloned()
                    .ok_or_else(|| Error::Index(format!("no column {}", f.name())))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
