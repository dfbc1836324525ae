//! A Lance dataset as a DataFusion table: `CREATE EXTERNAL TABLE idx (…) STORED AS LANCE
//! LOCATION 'path/'`. Scans read the newest version; INSERTs upsert by primary key.

use std::fmt;
use std::sync::{Arc, RwLock};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{exec_err, DataFusionError};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use futures::StreamExt;
use lance::datafusion::LanceTableProvider;
use lance::dataset::{WriteMode, WriteParams};
use lance::Dataset;
use tokio::sync::Mutex;

use super::offsets::{read_offsets, SourceOffsets};
use super::write::{
    check_vector_models, commit, commit_properties, conform, dedupe_last, document_keys,
    storage_schema, Change, CommitStats,
};
use crate::error::{Error, Result};

/// Marks the primary-key column in the Lance schema, so LanceDB/pylance see it too.
const LANCE_PRIMARY_KEY: &str = "lance-schema:unenforced-primary-key";
/// Marks the document-key column of a table of chunks, so a table reopened without the option
/// still replaces whole documents.
const DOCUMENT_KEY: &str = "semflow:document-key";

/// Rows per commit when a plain `INSERT … SELECT` streams a large result into the index.
const INSERT_CHUNK_ROWS: usize = 8192;

/// Lance's caches, shared by every table in the process. Lance's defaults (1 GiB of metadata,
/// 6 GiB of index per session) let a long stream writer grow without end: every commit adds a
/// manifest and fragment metadata (a 300 s soak grew ~2 MB/s). Caps sized for a worker: the
/// metadata of recent versions, and the IVF partitions a search touches; the environment
/// variables below change them (MiB).
const METADATA_CACHE_MIB: usize = 64;
const INDEX_CACHE_MIB: usize = 512;
const METADATA_CACHE_ENV: &str = "SEMFLOW_LANCE_METADATA_CACHE_MIB";
const INDEX_CACHE_ENV: &str = "SEMFLOW_LANCE_INDEX_CACHE_MIB";

/// A cache size in bytes: `var` in MiB when set to a number, else `default` MiB.
fn cache_bytes(var: &str, default: usize) -> usize {
    let mib = match std::env::var(var) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            tracing::warn!("{var}={v:?} is not a number of MiB; using {default}");
            default
        }),
        Err(_) => default,
    };
    mib << 20
}

/// The process-wide Lance session (caches and object stores).
pub(crate) fn session() -> Arc<lance::session::Session> {
    static SESSION: std::sync::OnceLock<Arc<lance::session::Session>> = std::sync::OnceLock::new();
    SESSION
        .get_or_init(|| {
            Arc::new(lance::session::Session::new(
                cache_bytes(INDEX_CACHE_ENV, INDEX_CACHE_MIB),
                cache_bytes(METADATA_CACHE_ENV, METADATA_CACHE_MIB),
                Default::default(),
            ))
        })
        .clone()
}

/// Bytes held by Lance's metadata and index caches (most of a long-running worker's memory
/// beyond the model: they fill up to their caps).
pub async fn cache_sizes() -> (usize, usize) {
    let session = session();
    let metadata = session.metadata_cache_stats().await.size_bytes;
    let index = session.index_cache_stats().await.size_bytes;
    (metadata, index)
}

/// Opens the newest version of the dataset at `uri` in the shared session.
pub async fn open_dataset(uri: &str) -> lance::Result<Dataset> {
    lance::dataset::builder::DatasetBuilder::from_uri(uri)
        .with_session(session())
        .load()
        .await
}

/// A Lance dataset (possibly not created yet) behind a SQL table. Clones share state.
#[derive(Clone)]
pub struct LanceTable {
    location: Arc<Location>,
    primary_key: Option<String>,
    /// For tables of document chunks: the column naming each row's document. A change then
    /// replaces whole documents (see [`Change::deletes`]).
    document_key: Option<String>,
    /// The declared schema until the dataset exists, then the dataset's.
    schema: Arc<RwLock<SchemaRef>>,
    declared: SchemaRef,
    dataset: Arc<Mutex<Option<Arc<Dataset>>>>,
}

/// Where the dataset is: its URI, or an alias file naming it (which may change).
#[derive(Debug)]
struct Location {
    alias: Option<std::path::PathBuf>,
    target: RwLock<String>,
}

impl fmt::Debug for LanceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LanceTable")
            .field("location", &self.location)
            .field("primary_key", &self.primary_key)
            .field("document_key", &self.document_key)
            .finish()
    }
}

impl LanceTable {
    /// Opens the dataset at `uri` if it exists; otherwise the table starts empty with the
    /// `declared` schema and the dataset is created by the first write.
    pub async fn open(
        uri: &str,
        declared: Option<SchemaRef>,
        primary_key: Option<String>,
    ) -> Result<Self> {
        let alias = super::alias::is_alias(uri).then(|| std::path::PathBuf::from(uri));
        let target = match &alias {
            Some(path) => super::alias::resolve(path)?,
            None => uri.to_string(),
        };
        let uri = target.as_str();
        let existing = match open_dataset(uri).await {
            Ok(ds) => Some(Arc::new(ds)),
            Err(lance::Error::DatasetNotFound { .. }) => None,
            Err(e) => return Err(Error::Index(format!("{uri}: {e}"))),
        };
        let (schema, declared) = match (&existing, declared) {
            (Some(ds), declared) => {
                let schema: SchemaRef = Arc::new(Schema::from(ds.schema()));
                if let Some(d) = &declared {
                    check_declared(uri, d, &schema)?;
                }
                (schema.clone(), declared.unwrap_or(schema))
            }
            (None, Some(d)) if !d.fields().is_empty() => (d.clone(), d),
            (None, _) => {
                return Err(Error::Index(format!(
                    "{uri} is not a Lance dataset yet: declare its columns, e.g. CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, embedding FLOAT[]) STORED AS LANCE LOCATION '{uri}'"
                )))
            }
        };
        let primary_key = primary_key.or_else(|| marked(&schema, LANCE_PRIMARY_KEY));
        let document_key = marked(&schema, DOCUMENT_KEY);
        if let Some(pk) = &primary_key {
            if schema.field_with_name(pk).is_err() {
                return Err(Error::Index(format!(
                    "{uri}: primary key {pk} is not one of its columns"
                )));
            }
        }
        Ok(Self {
            location: Arc::new(Location {
                alias,
                target: RwLock::new(target.clone()),
            }),
            primary_key,
            document_key,
            schema: Arc::new(RwLock::new(schema)),
            declared,
            dataset: Arc::new(Mutex::new(existing)),
        })
    }

    /// The dataset's URI (an alias's current target).
    pub fn uri(&self) -> String {
        match self.location.target.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The alias's target when the alias now names another dataset than the one in use.
    fn moved_target(&self) -> Result<Option<(&std::path::Path, String)>> {
        let Some(alias) = &self.location.alias else {
            return Ok(None);
        };
        let target = super::alias::resolve(alias)?;
        Ok((target != self.uri()).then_some((alias.as_path(), target)))
    }

    fn set_target(&self, alias: &std::path::Path, target: String) {
        tracing::info!(alias = %alias.display(), %target, "index alias moved");
        match self.location.target.write() {
            Ok(mut t) => *t = target,
            Err(poisoned) => *poisoned.into_inner() = target,
        }
    }

    /// Follows the alias to a new target when it changed: `slot` is emptied so the caller
    /// opens the new dataset.
    fn follow_alias(&self, slot: &mut Option<Arc<Dataset>>) -> Result<()> {
        if let Some((alias, target)) = self.moved_target()? {
            self.set_target(alias, target);
            *slot = None;
        }
        Ok(())
    }

    /// [`Self::follow_alias`] from synchronous code (planning): when the alias moved, opens
    /// the new target right away so its schema is the one planned with. Skipped while a
    /// commit holds the table (that commit's refresh follows the alias).
    fn follow_alias_now(&self) -> Result<()> {
        let Some((alias, target)) = self.moved_target()? else {
            return Ok(());
        };
        let Ok(mut guard) = self.dataset.try_lock() else {
            return Ok(());
        };
        let opening = target.clone();
        let ds = crate::inference::block_on(async move { open_dataset(&opening).await })?
            .map_err(|e| Error::Index(format!("{}: {target}: {e}", alias.display())))?;
        self.set_target(alias, target);
        self.set_schema(&ds);
        *guard = Some(Arc::new(ds));
        Ok(())
    }

    pub fn primary_key(&self) -> Option<&str> {
        self.primary_key.as_deref()
    }

    /// Makes this a table of document chunks: `column` names each row's document, and a
    /// change's [`Change::deletes`] are documents whose rows it replaces. Needs a primary key
    /// (the chunk's own, e.g. `doc_id || '#' || seq`).
    pub fn with_document_key(mut self, column: String) -> Result<Self> {
        if self.primary_key.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{}: document_key needs a primary key for the chunk rows too, e.g. PRIMARY KEY (chunk_id)",
                self.uri()
            )));
        }
        if self.current_schema().field_with_name(&column).is_err() {
            return Err(Error::InvalidArgument(format!(
                "{}: document_key {column} is not one of its columns",
                self.uri()
            )));
        }
        self.document_key = Some(column);
        Ok(self)
    }

    pub fn document_key(&self) -> Option<&str> {
        self.document_key.as_deref()
    }

    fn current_schema(&self) -> SchemaRef {
        match self.schema.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The newest version of the dataset, or `None` before the first write.
    pub async fn latest(&self) -> Result<Option<Arc<Dataset>>> {
        let mut guard = self.dataset.lock().await;
        self.refresh(&mut guard).await?;
        Ok(guard.clone())
    }

    /// Runs `step` on the newest version while this process's own commits to the table wait
    /// (another process's do not). For maintenance that keeps losing commit races.
    pub async fn exclusively<T, F, Fut>(&self, step: F) -> Result<Option<T>>
    where
        F: FnOnce(Arc<Dataset>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut guard = self.dataset.lock().await;
        self.refresh(&mut guard).await?;
        match guard.clone() {
            Some(ds) => step(ds).await.map(Some),
            None => Ok(None),
        }
    }

    async fn refresh(&self, slot: &mut Option<Arc<Dataset>>) -> Result<()> {
        self.follow_alias(slot)?;
        let fresh = match slot.as_ref() {
            Some(ds) => {
                let mut ds = (**ds).clone();
                ds.checkout_latest()
                    .await
                    .map_err(|e| Error::Index(format!("{}: {e}", self.uri())))?;
                Some(ds)
            }
            None => match open_dataset(&self.uri()).await {
                Ok(ds) => Some(ds),
                Err(lance::Error::DatasetNotFound { .. }) => None,
                Err(e) => return Err(Error::Index(format!("{}: {e}", self.uri()))),
            },
        };
        if let Some(ds) = fresh {
            self.set_schema(&ds);
            *slot = Some(Arc::new(ds));
        }
        Ok(())
    }

    fn set_schema(&self, ds: &Dataset) {
        let schema = Arc::new(Schema::from(ds.schema()));
        match self.schema.write() {
            Ok(mut s) => *s = schema,
            Err(poisoned) => *poisoned.into_inner() = schema,
        }
    }

    /// Rows in the table and the length of the fixed-size vectors in `column`.
    pub async fn vector_shape(&self, column: &str) -> Result<(usize, usize)> {
        let ds = self.latest().await?.ok_or_else(|| {
            Error::Index(format!(
                "{}: the table is empty; index it after the first rows",
                self.uri()
            ))
        })?;
        let schema = Schema::from(ds.schema());
        let field = schema
            .field_with_name(column)
            .map_err(|_| Error::Index(format!("{}: no column {column}", self.uri())))?;
        let arrow::datatypes::DataType::FixedSizeList(_, dims) = field.data_type() else {
            return Err(Error::Index(format!(
                "{}: column {column} is {}, not a vector (fixed-size list)",
                self.uri(),
                field.data_type()
            )));
        };
        let rows = ds
            .count_rows(None)
            .await
            .map_err(|e| Error::Index(format!("{}: {e}", self.uri())))?;
        Ok((rows, *dims as usize))
    }

    /// Whether an index (other than Lance's system indexes) covers `column`.
    pub async fn has_index_on(&self, column: &str) -> Result<bool> {
        let Some(ds) = self.latest().await? else {
            return Ok(false);
        };
        let Some(field) = ds.schema().field(column) else {
            return Ok(false);
        };
        use lance::index::DatasetIndexExt;
        let indices = ds
            .load_indices()
            .await
            .map_err(|e| Error::Index(format!("{}: {e}", self.uri())))?;
        Ok(indices
            .iter()
            .any(|i| !lance_index::is_system_index(i) && i.fields.contains(&field.id)))
    }

    /// Builds (or replaces) a vector index on `column` and commits it.
    pub async fn create_vector_index(
        &self,
        column: &str,
        name: Option<String>,
        params: &lance::index::vector::VectorIndexParams,
    ) -> Result<()> {
        self.create_index(column, name, lance_index::IndexType::Vector, params)
            .await
    }

    /// Builds (or replaces) a BM25 full-text (inverted) index on the string column `column`.
    pub async fn create_text_index(&self, column: &str, name: Option<String>) -> Result<()> {
        let schema = self.schema();
        let field = schema
            .field_with_name(column)
            .map_err(|_| Error::Index(format!("{}: no column {column}", self.uri())))?;
        if !matches!(
            field.data_type(),
            arrow::datatypes::DataType::Utf8 | arrow::datatypes::DataType::LargeUtf8
        ) {
            return Err(Error::Index(format!(
                "{}: column {column} is {}, not text; inverted indexes are built on strings",
                self.uri(),
                field.data_type()
            )));
        }
        let params = lance_index::scalar::InvertedIndexParams::default();
        self.create_index(column, name, lance_index::IndexType::Inverted, &params)
            .await
    }

    async fn create_index(
        &self,
        column: &str,
        name: Option<String>,
        kind: lance_index::IndexType,
        params: &dyn lance_index::IndexParams,
    ) -> Result<()> {
        use lance::index::DatasetIndexExt;
        let mut guard = self.dataset.lock().await;
        self.refresh(&mut guard).await?;
        let Some(ds) = guard.as_ref() else {
            return Err(Error::Index(format!(
                "{}: the table is empty; index it after the first rows",
                self.uri()
            )));
        };
        let mut ds = (**ds).clone();
        ds.create_index(&[column], kind, name, params, true)
            .await
            .map_err(|e| {
                Error::Index(format!(
                    "{}: building the index on {column}: {e}",
                    self.uri()
                ))
            })?;
        *guard = Some(Arc::new(ds));
        Ok(())
    }

    /// The stream offsets recorded in the index for `wanted` partitions.
    pub async fn offsets(&self, wanted: &[(String, i32)]) -> Result<SourceOffsets> {
        match self.latest().await? {
            Some(ds) => read_offsets(&ds, wanted).await,
            None => Ok(SourceOffsets::default()),
        }
    }

    /// Applies `change` as one commit (retrying on concurrent-writer conflicts).
    pub async fn apply(&self, change: Change) -> Result<CommitStats> {
        let Change {
            rows,
            deletes,
            offsets,
            properties,
            fence,
        } = change;
        let properties = commit_properties(offsets.as_ref(), properties);
        let rows: Vec<RecordBatch> = rows.into_iter().filter(|b| b.num_rows() > 0).collect();
        let rows = match &self.primary_key {
            Some(pk) if !rows.is_empty() => dedupe_last(rows, pk)?,
            _ => rows,
        };
        let mut guard = self.dataset.lock().await;
        self.refresh(&mut guard).await?;
        if guard.is_none() {
            if rows.is_empty() {
                // Nothing was ever written: there is nothing to delete, and replaying these
                // offsets later writes nothing either.
                return Ok(CommitStats::default());
            }
            *guard = Some(self.create(&rows).await?);
        }
        let mut attempt = 0;
        loop {
            let Some(ds) = guard.clone() else {
                return Err(Error::Index(format!("{}: dataset vanished", self.uri())));
            };
            if let Some(fence) = &fence {
                fence.check(&ds).await?;
            }
            let target = Arc::new(Schema::from(ds.schema()));
            check_vector_models(&target, &rows)?;
            let conformed = rows
                .iter()
                .map(|b| conform(b, &target))
                .collect::<Result<Vec<_>>>()?;
            match commit(
                ds,
                self.primary_key.as_deref(),
                self.document_key.as_deref(),
                conformed,
                &deletes,
                &properties,
                fence.as_ref(),
            )
            .await
            {
                Ok((new, stats)) => {
                    self.set_schema(&new);
                    *guard = Some(Arc::new(new));
                    return Ok(stats);
                }
                // Another writer committed first (a second worker): rebuild on its version.
                Err(Error::IndexConflict { message, .. }) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!(attempt, "index commit conflict, retrying: {message}");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                    self.refresh(&mut guard).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn create(&self, sample: &[RecordBatch]) -> Result<Arc<Dataset>> {
        let mut schema = (*storage_schema(&self.declared, sample)?).clone();
        if let Some(pk) = &self.primary_key {
            schema = mark(schema, pk, LANCE_PRIMARY_KEY);
        }
        if let Some(column) = &self.document_key {
            schema = mark(schema, column, DOCUMENT_KEY);
        }
        let schema = Arc::new(schema);
        let empty = arrow::record_batch::RecordBatchIterator::new(vec![], schema);
        let params = WriteParams {
            mode: WriteMode::Create,
            session: Some(session()),
            ..Default::default()
        };
        match Dataset::write(empty, self.uri().as_str(), Some(params)).await {
            Ok(ds) => {
                self.set_schema(&ds);
                Ok(Arc::new(ds))
            }
            // Another worker created it a moment ago.
            Err(lance::Error::DatasetAlreadyExists { .. }) => {
                let ds = open_dataset(&self.uri())
                    .await
                    .map_err(|e| Error::Index(format!("{}: {e}", self.uri())))?;
                self.set_schema(&ds);
                Ok(Arc::new(ds))
            }
            Err(e) => Err(Error::Index(format!("creating {}: {e}", self.uri()))),
        }
    }
}

/// The column whose metadata has `key` set (a primary or document key), if any.
fn marked(schema: &Schema, key: &str) -> Option<String> {
    schema
        .fields()
        .iter()
        .find(|f| f.metadata().get(key).map(String::as_str) == Some("true"))
        .map(|f| f.name().clone())
}

/// `schema` with `key` set in the metadata of column `name` (a primary key is never null).
fn mark(schema: Schema, name: &str, key: &str) -> Schema {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == name {
                let mut md = f.metadata().clone();
                md.insert(key.into(), "true".into());
                let nullable = f.is_nullable() && key != LANCE_PRIMARY_KEY;
                Arc::new(f.as_ref().clone().with_nullable(nullable).with_metadata(md))
            } else {
                f.clone()
            }
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// A declared schema must name the dataset's columns (types may differ in list flavour).
fn check_declared(uri: &str, declared: &SchemaRef, actual: &SchemaRef) -> Result<()> {
    if declared.fields().is_empty() {
        return Ok(());
    }
    let names = |s: &SchemaRef| {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
    };
    if names(declared) != names(actual) {
        return Err(Error::Index(format!(
            "{uri} already exists with columns ({}), not the declared ({})",
            names(actual).join(", "),
            names(declared).join(", ")
        )));
    }
    Ok(())
}

#[async_trait]
impl TableProvider for LanceTable {
    fn schema(&self) -> SchemaRef {
        // Planning reads the schema before any scan: a moved alias must be seen here already,
        // or a query would be planned against the old dataset's columns.
        if let Err(e) = self.follow_alias_now() {
            tracing::warn!("{e}");
        }
        self.current_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let ds = self
            .latest()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        match ds {
            Some(ds) => {
                LanceTableProvider::new(ds, false, false)
                    .scan(state, projection, filters, limit)
                    .await
            }
            None => {
                let schema = self.current_schema();
                let schema = match projection {
                    Some(p) => Arc::new(schema.project(p)?),
                    None => schema,
                };
                Ok(Arc::new(EmptyExec::new(schema)))
            }
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        // Lance evaluates every filter it is given exactly; before the dataset exists the
        // scan is empty, which satisfies any filter.
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return exec_err!(
                "{}: only INSERT INTO (upsert by primary key) is supported, not {insert_op}",
                self.uri()
            );
        }
        let sink = LanceSink {
            table: self.clone(),
            schema: self.current_schema(),
            written_documents: Default::default(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// The INSERT path: commits the input in chunks of [`INSERT_CHUNK_ROWS`].
#[derive(Debug)]
struct LanceSink {
    table: LanceTable,
    schema: SchemaRef,
    /// Documents this INSERT has written (tables of chunks): a document whose chunks span two
    /// commits is replaced by the first only.
    written_documents: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl LanceSink {
    /// In a table of chunks, the documents `rows` replace: those not written earlier in this
    /// INSERT. Empty for other tables, where rows upsert by primary key.
    fn replaced_documents(&self, rows: &[RecordBatch]) -> Result<Vec<String>> {
        let Some(column) = self.table.document_key() else {
            return Ok(Vec::new());
        };
        let mut written = match self.written_documents.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut fresh = Vec::new();
        for batch in rows {
            for key in document_keys(batch, column)? {
                if written.insert(key.clone()) {
                    fresh.push(key);
                }
            }
        }
        Ok(fresh)
    }

    /// Commits one chunk of the INSERT's rows; returns how many were written.
    async fn commit(&self, rows: Vec<RecordBatch>) -> datafusion::common::Result<u64> {
        let deletes = self
            .replaced_documents(&rows)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let change = Change {
            rows,
            deletes,
            ..Default::default()
        };
        Ok(self.table.apply(change).await?.rows)
    }
}

impl DisplayAs for LanceSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LanceSink: {}", self.table.uri())
    }
}

#[async_trait]
impl DataSink for LanceSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::common::Result<u64> {
        let mut pending = Vec::new();
        let mut pending_rows = 0;
        let mut written = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            pending_rows += batch.num_rows();
            pending.push(batch);
            if pending_rows >= INSERT_CHUNK_ROWS {
                written += self.commit(std::mem::take(&mut pending)).await?;
                pending_rows = 0;
            }
        }
        if pending_rows > 0 {
            written += self.commit(pending).await?;
        }
        Ok(written)
    }
}

/// `STORED AS LANCE`: options `primary_key` (or a PRIMARY KEY constraint) and `document_key`
/// (tables of chunks: the column naming each row's document).
#[derive(Debug, Default)]
pub struct LanceTableFactory;

#[async_trait]
impl TableProviderFactory for LanceTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let external = |e: Error| DataFusionError::External(Box::new(e));
        let declared: SchemaRef = Arc::new(cmd.schema.as_arrow().clone());
        let mut primary_key = None;
        let mut document_key = None;
        for (key, value) in &cmd.options {
            match key.strip_prefix("format.").unwrap_or(key) {
                "primary_key" => primary_key = Some(value.clone()),
                "document_key" => document_key = Some(value.clone()),
                other => {
                    return Err(external(Error::InvalidArgument(format!(
                    "STORED AS LANCE: unknown option '{other}' (known: primary_key, document_key)"
                ))))
                }
            }
        }
        for constraint in cmd.constraints.iter() {
            if let datafusion::common::Constraint::PrimaryKey(cols) = constraint {
                if cols.len() != 1 {
                    return Err(external(Error::InvalidArgument(
                        "STORED AS LANCE: the primary key must be one column".into(),
                    )));
                }
                let name = declared.field(cols[0]).name().clone();
                primary_key = Some(name);
            }
        }
        let mut table = LanceTable::open(&cmd.location, Some(declared), primary_key)
            .await
            .map_err(external)?;
        if let Some(column) = document_key {
            table = table.with_document_key(column).map_err(external)?;
        }
        Ok(Arc::new(table))
    }
}
