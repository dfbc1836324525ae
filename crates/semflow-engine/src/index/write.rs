//! One atomic change to an index: upserted rows, deleted keys and (for streams) the source
//! offsets they came from, committed as a single Lance transaction.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast_with_options, take_record_batch, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use lance::dataset::transaction::{Operation, Transaction, TransactionBuilder};
use lance::dataset::{
    CommitBuilder, DeleteBuilder, InsertBuilder, MergeInsertBuilder, WhenMatched, WhenNotMatched,
    WhenNotMatchedBySource, WriteMode, WriteParams,
};
use lance::Dataset;

use super::fence::{Fence, FencedCommit};
use super::offsets::{SourceOffsets, OFFSETS_PROPERTY};
use crate::error::{Error, Result};

/// Rows to upsert (or append, without a primary key), keys to delete, and the stream
/// position this change brings the index to.
#[derive(Debug, Default)]
pub struct Change {
    pub rows: Vec<RecordBatch>,
    /// Keys, as text, of rows to delete: primary-key values (disjoint from the keys in
    /// `rows`); in a table of chunks, documents, whose rows other than those in `rows` go —
    /// so a document that shrank from 5 chunks to 3 keeps exactly its 3 new rows, and one
    /// listed without rows (a tombstone) loses all of them.
    pub deletes: Vec<String>,
    pub offsets: Option<SourceOffsets>,
    /// More transaction properties to record with the commit (a reindex's progress).
    pub properties: Vec<(String, String)>,
    /// For stream commits: where the batch began. The commit is refused with
    /// [`Error::Fenced`] unless the index still stands there.
    pub fence: Option<Fence>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitStats {
    pub version: u64,
    pub rows: u64,
    pub deleted: u64,
}

/// Commits `change` on top of `dataset` (already at the newest version) as one transaction.
/// `deletes` are values of `document_key` when given, else of `primary_key`.
#[allow(clippy::too_many_arguments)] // the parts of a `Change`, plus the table's two keys
pub async fn commit(
    dataset: Arc<Dataset>,
    primary_key: Option<&str>,
    document_key: Option<&str>,
    rows: Vec<RecordBatch>,
    deletes: &[String],
    properties: &HashMap<String, String>,
    fence: Option<&Fence>,
) -> Result<(Dataset, CommitStats)> {
    let row_count: usize = rows.iter().map(|b| b.num_rows()).sum();
    // The column `deletes` name values of: documents in a table of chunks, else primary keys.
    let delete_column = document_key.or(primary_key).unwrap_or_default();
    let (mut txn, mut commit, deleted) =
        prepare(&dataset, primary_key, delete_column, rows, deletes).await?;
    if !properties.is_empty() {
        set_properties(&mut txn, properties);
    }
    let fenced = match fence {
        Some(fence) => {
            let handler = Arc::new(FencedCommit::new(dataset.clone(), fence.clone()).await?);
            commit = commit.with_commit_handler(handler.clone());
            Some(handler)
        }
        None => None,
    };
    let new = match commit.execute(txn).await {
        Ok(new) => new,
        Err(e) => {
            return Err(fenced
                .and_then(|h| h.refusal())
                .unwrap_or_else(|| lance_error(dataset.uri(), e)))
        }
    };
    let stats = CommitStats {
        version: new.version().version,
        rows: row_count as u64,
        deleted,
    };
    Ok((new, stats))
}

/// The change as an uncommitted transaction, the commit that will apply it (told which rows
/// it touched, for conflict checks), and how many rows it deletes.
async fn prepare(
    dataset: &Arc<Dataset>,
    primary_key: Option<&str>,
    delete_column: &str,
    rows: Vec<RecordBatch>,
    deletes: &[String],
) -> Result<(Transaction, CommitBuilder<'static>, u64)> {
    let lance_err = |e: lance::Error| lance_error(dataset.uri(), e);
    let has_rows = rows.iter().any(|b| b.num_rows() > 0);
    let (txn, affected, deleted) = match (primary_key, has_rows, deletes.is_empty()) {
        (Some(pk), true, _) => {
            let mut builder = MergeInsertBuilder::try_new(dataset.clone(), vec![pk.to_string()])
                .map_err(lance_err)?;
            builder
                .when_matched(WhenMatched::UpdateAll)
                .when_not_matched(WhenNotMatched::InsertAll);
            if !deletes.is_empty() {
                // "Not matched by source and in the delete list" removes, in the same commit,
                // the listed primary keys (never among this change's rows) or the listed
                // documents' rows that this change does not rewrite.
                let predicate = key_predicate(dataset.schema().into(), delete_column, deletes)?;
                builder.when_not_matched_by_source(
                    WhenNotMatchedBySource::delete_if(dataset, &predicate).map_err(lance_err)?,
                );
            }
            let job = builder.try_build().map_err(lance_err)?;
            let out = job
                .execute_uncommitted_batches(rows)
                .await
                .map_err(lance_err)?;
            let deleted = out.stats.num_deleted_rows;
            (out.transaction, out.affected_rows, deleted)
        }
        (None, true, true) => {
            let params = WriteParams {
                mode: WriteMode::Append,
                ..Default::default()
            };
            let txn = InsertBuilder::new(dataset.clone())
                .with_params(&params)
                .execute_uncommitted(rows)
                .await
                .map_err(lance_err)?;
            (txn, None, 0)
        }
        (Some(_), false, false) => {
            let predicate = key_predicate(dataset.schema().into(), delete_column, deletes)?;
            let out = DeleteBuilder::new(dataset.clone(), predicate)
                .execute_uncommitted()
                .await
                .map_err(lance_err)?;
            (out.transaction, out.affected_rows, out.num_deleted_rows)
        }
        (None, _, false) => {
            return Err(Error::Index(
                "deletes need a primary key: declare PRIMARY KEY (col) or OPTIONS ('primary_key' 'col')"
                    .into(),
            ))
        }
        (_, false, true) => {
            // Nothing to write (every record was filtered out or dead-lettered): an empty
            // append still moves the stored offsets forward.
            let version = dataset.version().version;
            let txn =
                TransactionBuilder::new(version, Operation::Append { fragments: vec![] }).build();
            (txn, None, 0)
        }
    };
    let mut commit = CommitBuilder::new(dataset.clone());
    if let Some(rows) = affected {
        commit = commit.with_affected_rows(rows);
    }
    Ok((txn, commit, deleted))
}

/// Lance's commit conflicts as [`Error::IndexConflict`] (the caller may rebuild the change on
/// the newer version), anything else as [`Error::Index`].
fn lance_error(uri: &str, e: lance::Error) -> Error {
    if is_conflict(&e) {
        Error::IndexConflict {
            uri: uri.to_string(),
            message: e.to_string(),
        }
    } else {
        Error::Index(e.to_string())
    }
}

/// Whether Lance refused a commit because another one landed first (the change may be
/// rebuilt on the newer version and tried again).
pub(super) fn is_conflict(e: &lance::Error) -> bool {
    matches!(
        e,
        lance::Error::CommitConflict { .. }
            | lance::Error::RetryableCommitConflict { .. }
            | lance::Error::IncompatibleTransaction { .. }
    )
}

fn set_properties(txn: &mut Transaction, properties: &HashMap<String, String>) {
    let mut props: HashMap<String, String> = txn
        .transaction_properties
        .as_deref()
        .cloned()
        .unwrap_or_default();
    props.extend(properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    txn.transaction_properties = Some(Arc::new(props));
}

/// The transaction properties of a change: its stream offsets and its own properties.
pub fn commit_properties(
    offsets: Option<&SourceOffsets>,
    properties: Vec<(String, String)>,
) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = properties.into_iter().collect();
    if let Some(offsets) = offsets {
        all.insert(OFFSETS_PROPERTY.to_string(), offsets.to_property());
    }
    all
}

/// `pk IN (…)` for Lance's SQL filter, with literals typed like the key column.
fn key_predicate(schema: Schema, pk: &str, keys: &[String]) -> Result<String> {
    let field = schema
        .field_with_name(pk)
        .map_err(|_| Error::Index(format!("key column {pk} is not in the table")))?;
    let literals = keys
        .iter()
        .map(|k| match field.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Ok(crate::text::sql_string(k))
            }
            t if t.is_integer() => k.parse::<i64>().map(|v| v.to_string()).map_err(|_| {
                Error::Index(format!(
                    "cannot delete key {k:?}: primary key {pk} is an integer column"
                ))
            }),
            t => Err(Error::Index(format!(
                "deletes by key need a string or integer primary key; {pk} is {t}"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(format!("`{pk}` IN ({})", literals.join(", ")))
}

/// The distinct non-null values of `column` in `batch` as text: the documents a batch of
/// chunk rows belongs to.
pub fn document_keys(batch: &RecordBatch, column: &str) -> Result<Vec<String>> {
    let mut keys: Vec<String> = key_strings(batch, column)?.into_iter().flatten().collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// The primary-key values of `batch` as text (nulls as `None`).
pub fn key_strings(batch: &RecordBatch, pk: &str) -> Result<Vec<Option<String>>> {
    let column = batch
        .column_by_name(pk)
        .ok_or_else(|| Error::Index(format!("rows have no primary key column {pk}")))?;
    let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
    Ok((0..column.len())
        .map(|i| (!column.is_null(i)).then(|| formatter.value(i).to_string()))
        .collect())
}

/// Keeps the last row for each primary key across `batches` (later rows are newer), and
/// refuses rows whose key is null.
pub fn dedupe_last(batches: Vec<RecordBatch>, pk: &str) -> Result<Vec<RecordBatch>> {
    let mut last: HashMap<String, (usize, usize)> = HashMap::new();
    for (b, batch) in batches.iter().enumerate() {
        for (r, key) in key_strings(batch, pk)?.into_iter().enumerate() {
            let key =
                key.ok_or_else(|| Error::Index(format!("row {r}: primary key {pk} is null")))?;
            last.insert(key, (b, r));
        }
    }
    let mut keep: Vec<Vec<u32>> = vec![Vec::new(); batches.len()];
    for (b, r) in last.into_values() {
        keep[b].push(r as u32);
    }
    let mut out = Vec::new();
    for (batch, mut rows) in batches.into_iter().zip(keep) {
        if rows.len() == batch.num_rows() {
            out.push(batch);
        } else if !rows.is_empty() {
            rows.sort_unstable();
            out.push(take_record_batch(&batch, &UInt32Array::from(rows))?);
        }
    }
    Ok(out)
}

/// Casts `batch` to `target` column by column (by name): numeric widening, text kinds, and
/// variable-length lists of equal length into the fixed-size lists vector search needs.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) => c.clone(),
            None if field.is_nullable() => {
                arrow::array::new_null_array(field.data_type(), batch.num_rows())
            }
            None => {
                return Err(Error::Index(format!(
                    "rows have no column {} (NOT NULL in the table)",
                    field.name()
                )))
            }
        };
        let column = if column.data_type() == field.data_type() {
            column
        } else {
            cast_with_options(&column, field.data_type(), &options).map_err(|e| {
                Error::Index(format!(
                    "column {}: cannot store {} as {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })?
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::Index(format!(
                "column {} is NOT NULL but {} rows have no value",
                field.name(),
                column.null_count()
            )));
        }
        columns.push(column);
    }
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// The schema a new dataset gets from a declared one: variable-length lists of floats, int8 or
/// uint8 (vectors and their quantized forms, `int8_quantize`/`binary_quantize`) become
/// fixed-size lists sized by the first non-null value in `sample` (vector search needs them).
pub fn storage_schema(declared: &SchemaRef, sample: &[RecordBatch]) -> Result<SchemaRef> {
    let fields = declared
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::List(item) | DataType::LargeList(item)
                if is_vector_item(item.data_type()) =>
            {
                let len = first_list_len(sample, f.name()).ok_or_else(|| {
                    Error::Index(format!(
                        "column {}: cannot size the vector column before a non-null value arrives",
                        f.name()
                    ))
                })?;
                Ok(Arc::new(
                    Field::new(
                        f.name(),
                        DataType::FixedSizeList(item.clone(), len),
                        f.is_nullable(),
                    )
                    .with_metadata(with_vector_model(
                        f.metadata(),
                        sample,
                        f.name(),
                    )),
                ))
            }
            DataType::FixedSizeList(..) => {
                Ok(Arc::new(f.as_ref().clone().with_metadata(
                    with_vector_model(f.metadata(), sample, f.name()),
                )))
            }
            _ => Ok(f.clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        declared.metadata().clone(),
    )))
}

/// The element types of vector columns.
fn is_vector_item(t: &DataType) -> bool {
    t.is_floating() || matches!(t, DataType::Int8 | DataType::UInt8)
}

/// `metadata` plus the model that made the vectors of column `name` in `sample` (`embed()`'s
/// field metadata), so the index records its model.
fn with_vector_model(
    metadata: &HashMap<String, String>,
    sample: &[RecordBatch],
    name: &str,
) -> HashMap<String, String> {
    use crate::udf::embed::{DIMS_KEY, MODEL_KEY, WEIGHTS_KEY};
    let mut metadata = metadata.clone();
    let field = sample
        .first()
        .and_then(|b| b.schema().field_with_name(name).ok().cloned());
    if let Some(field) = field {
        for key in [MODEL_KEY, WEIGHTS_KEY, DIMS_KEY] {
            if let Some(v) = field.metadata().get(key) {
                metadata.entry(key.to_string()).or_insert_with(|| v.clone());
            }
        }
    }
    metadata
}

/// The refusal of `incoming`'s vectors for `column` when both fields record their model and
/// the models differ (`stored`: the index's column).
pub fn model_mismatch(column: &str, stored: &Field, incoming: &Field) -> Option<Error> {
    use crate::udf::embed::vector_model;
    let (stored, incoming) = (vector_model(stored)?, vector_model(incoming)?);
    (stored != incoming).then(|| {
        Error::InvalidArgument(format!(
            "column {column}: the index holds vectors of {stored}, these rows were embedded with {incoming}; embed with the index's model, or rebuild the index with `semflow reindex`"
        ))
    })
}

/// Refuses rows whose vectors come from another model than the one the table's columns
/// record (a pipeline restarted with a new model writing into an old index).
pub fn check_vector_models(table: &Schema, rows: &[RecordBatch]) -> Result<()> {
    for batch in rows {
        for incoming in batch.schema().fields() {
            let Ok(stored) = table.field_with_name(incoming.name()) else {
                continue;
            };
            if let Some(refused) = model_mismatch(incoming.name(), stored, incoming) {
                return Err(refused);
            }
        }
    }
    Ok(())
}

fn first_list_len(sample: &[RecordBatch], name: &str) -> Option<i32> {
    for batch in sample {
        let column = batch.column_by_name(name)?;
        match column.data_type() {
            DataType::FixedSizeList(_, n) => return Some(*n),
            DataType::List(_) => {
                let list = column.as_any().downcast_ref::<arrow::array::ListArray>()?;
                if let Some(i) = (0..list.len()).find(|i| !list.is_null(*i)) {
                    return Some(list.value_length(i));
                }
            }
            DataType::LargeList(_) => {
                let list = column
                    .as_any()
                    .downcast_ref::<arrow::array::LargeListArray>()?;
                if let Some(i) = (0..list.len()).find(|i| !list.is_null(*i)) {
                    return i32::try_from(list.value_length(i)).ok();
                }
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn batch(ids: &[&str], vals: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(StringArray::from(ids.to_vec())) as ArrayRef),
            ("v", Arc::new(Int64Array::from(vals.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn dedupe_keeps_the_last_row_per_key() {
        let out =
            dedupe_last(vec![batch(&["a", "b"], &[1, 2]), batch(&["a"], &[3])], "id").unwrap();
        let mut rows: Vec<(String, i64)> = Vec::new();
        for b in &out {
            let ids = key_strings(b, "id").unwrap();
            let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            for (i, id) in ids.into_iter().enumerate() {
                rows.push((id.unwrap(), v.value(i)));
            }
        }
        rows.sort();
        assert_eq!(rows, vec![("a".into(), 3), ("b".into(), 2)]);
    }

    #[test]
    fn key_predicate_quotes_strings_and_checks_integers() {
        let s = Schema::new(vec![Field::new("id", DataType::Utf8, false)]);
        assert_eq!(
            key_predicate(s, "id", &["a'b".into()]).unwrap(),
            "`id` IN ('a''b')"
        );
        let i = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        assert!(key_predicate(i.clone(), "id", &["x".into()]).is_err());
        assert_eq!(
            key_predicate(i, "id", &["7".into()]).unwrap(),
            "`id` IN (7)"
        );
    }
}
