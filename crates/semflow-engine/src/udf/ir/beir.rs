//! `beir(directory, part)`: an evaluation set in the BEIR / MTEB layout as a table, with the
//! column names `ir_measures` reads, so a downloaded set is queried without renaming:
//!
//! | part | file | columns |
//! | --- | --- | --- |
//! | `'corpus'` | `corpus.jsonl` (`_id`, `title`, `text`) | `doc_id`, `title`, `text` |
//! | `'queries'` | `queries.jsonl` (`_id`, `text`) | `query_id`, `text` |
//! | `'qrels'`, `'qrels/<split>'` | `qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`; split `test` by default) | `query_id`, `doc_id`, `relevance` |
//!
//! Other JSON fields (`metadata`) are ignored. The files are read when the table is scanned,
//! by DataFusion's JSON and CSV readers (streamed, in parallel).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, Result};
use datafusion::datasource::TableType;
use datafusion::execution::options::{CsvReadOptions, JsonReadOptions};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::arg_err;
use crate::udf::args::table_string_arg;

const NAME: &str = "beir";

/// The `beir` table function.
#[derive(Debug, Default)]
pub struct BeirFunction;

impl TableFunctionImpl for BeirFunction {
    fn call(&self, exprs: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        if exprs.len() != 2 {
            return arg_err!(
                "{NAME}(directory, part) takes 2 arguments, got {}",
                exprs.len()
            );
        }
        let dir = PathBuf::from(table_string_arg(NAME, exprs, 0, "directory")?);
        let part = Part::parse(&table_string_arg(NAME, exprs, 1, "part")?)?;
        let file = part.file(&dir);
        if !file.is_file() {
            return arg_err!(
                "{NAME}(): {} not found (a BEIR directory has corpus.jsonl, queries.jsonl and qrels/<split>.tsv)",
                file.display()
            );
        }
        Ok(Arc::new(BeirTable {
            file,
            schema: part.schema(),
            part,
        }))
    }
}

/// Which of the set's files.
#[derive(Debug)]
enum Part {
    Corpus,
    Queries,
    Qrels { split: String },
}

impl Part {
    fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "corpus" => Ok(Part::Corpus),
            "queries" => Ok(Part::Queries),
            "qrels" => Ok(Part::Qrels {
                split: "test".into(),
            }),
            other => match other.strip_prefix("qrels/") {
                Some(split)
                    if !split.is_empty()
                        && split
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '-' || c == '_') =>
                {
                    Ok(Part::Qrels {
                        split: split.to_string(),
                    })
                }
                _ => arg_err!(
                    "{NAME}(): part must be 'corpus', 'queries', 'qrels' or 'qrels/<split>' (e.g. 'qrels/dev'), got {other:?}"
                ),
            },
        }
    }

    fn file(&self, dir: &Path) -> PathBuf {
        match self {
            Part::Corpus => dir.join("corpus.jsonl"),
            Part::Queries => dir.join("queries.jsonl"),
            Part::Qrels { split } => dir.join("qrels").join(format!("{split}.tsv")),
        }
    }

    /// The columns as the function returns them.
    fn schema(&self) -> SchemaRef {
        let text = |name: &str| Field::new(name, DataType::Utf8, true);
        Arc::new(Schema::new(match self {
            Part::Corpus => vec![text("doc_id"), text("title"), text("text")],
            Part::Queries => vec![text("query_id"), text("text")],
            Part::Qrels { .. } => vec![
                text("query_id"),
                text("doc_id"),
                Field::new("relevance", DataType::Int64, true),
            ],
        }))
    }

    /// The file's own fields, in the order of [`Part::schema`]'s columns.
    fn file_schema(&self) -> Schema {
        let text = |name: &str| Field::new(name, DataType::Utf8, true);
        Schema::new(match self {
            Part::Corpus => vec![text("_id"), text("title"), text("text")],
            Part::Queries => vec![text("_id"), text("text")],
            Part::Qrels { .. } => vec![
                text("query-id"),
                text("corpus-id"),
                Field::new("score", DataType::Int64, true),
            ],
        })
    }
}

/// One file of a BEIR directory.
#[derive(Debug)]
struct BeirTable {
    file: PathBuf,
    part: Part,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for BeirTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let ctx = super::session_of(state, NAME)?;
        let path = self.file.to_string_lossy();
        let file_schema = self.part.file_schema();
        let frame = match self.part {
            Part::Qrels { .. } => {
                let options = CsvReadOptions::new()
                    .delimiter(b'\t')
                    .has_header(true)
                    .file_extension(".tsv")
                    .schema(&file_schema);
                ctx.read_csv(path.as_ref(), options).await?
            }
            Part::Corpus | Part::Queries => {
                let options = JsonReadOptions::default()
                    .file_extension(".jsonl")
                    .schema(&file_schema);
                ctx.read_json(path.as_ref(), options).await?
            }
        };
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let columns = wanted
            .iter()
            .map(|&i| {
                Expr::Column(Column::from_name(file_schema.field(i).name()))
                    .alias(self.schema.field(i).name())
            })
            .collect::<Vec<_>>();
        frame
            .select(columns)?
            .limit(0, limit)?
            .create_physical_plan()
            .await
    }
}
