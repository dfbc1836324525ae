//! Training rows and where they go. Rows follow the sentence-transformers convention
//! (`anchor`, `positive`, `negative_1..n`) plus provenance columns. Outputs: a Parquet or JSONL
//! file (assembled at the end from durable part files, so a crash never leaves a half file),
//! a Lance table (upserted by `pair_id`, so a redone chunk writes nothing twice) or a Kafka
//! topic (keyed by `pair_id`; at-least-once).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, ListBuilder, StringArray, StringBuilder};
use arrow::array::{Float64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;

use crate::error::{Error, Result};
use crate::generation::recipe::QueryConfig;

/// One kept pair with its negatives.
#[derive(Debug, Clone)]
pub struct PairRow {
    pub pair_id: String,
    pub anchor: String,
    pub positive: String,
    pub negatives: Vec<String>,
    pub negative_ids: Vec<String>,
    pub negative_scores: Vec<f64>,
    pub instruction: String,
    pub score: f64,
    pub doc_id: String,
    pub config: QueryConfig,
    pub generator_model: String,
    pub embedder_model: String,
}

/// The output schema for `n` negatives.
pub fn schema(n: usize) -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let mut fields = vec![text("anchor", false), text("positive", false)];
    for i in 1..=n {
        fields.push(text(&format!("negative_{i}"), true));
    }
    fields.extend([
        text("pair_id", false),
        text("doc_id", false),
        text("instruction", false),
        Field::new("score", DataType::Float64, false),
        Field::new(
            "negative_ids",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
        Field::new(
            "negative_scores",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            false,
        ),
        text("persona", false),
        text("query_type", false),
        text("difficulty", false),
        text("length", false),
        text("language", false),
        text("generator_model", false),
        text("embedder_model", false),
    ]);
    Arc::new(Schema::new(fields))
}

/// `rows` as one batch of [`schema`]`(n)`.
pub fn to_batch(rows: &[PairRow], n: usize) -> Result<RecordBatch> {
    let col = |f: &dyn Fn(&PairRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let mut columns: Vec<ArrayRef> = vec![col(&|r| &r.anchor), col(&|r| &r.positive)];
    for i in 0..n {
        columns.push(Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.negatives.get(i).map(String::as_str)),
        )));
    }
    columns.extend([
        col(&|r| &r.pair_id),
        col(&|r| &r.doc_id),
        col(&|r| &r.instruction),
    ]);
    columns.push(Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|r| r.score),
    )));
    let mut ids = ListBuilder::new(StringBuilder::new());
    let mut scores = ListBuilder::new(Float64Builder::new());
    for r in rows {
        for id in &r.negative_ids {
            ids.values().append_value(id);
        }
        ids.append(true);
        for s in &r.negative_scores {
            scores.values().append_value(*s);
        }
        scores.append(true);
    }
    columns.push(Arc::new(ids.finish()));
    columns.push(Arc::new(scores.finish()));
    columns.extend([
        col(&|r| &r.config.persona),
        col(&|r| &r.config.query_type),
        col(&|r| &r.config.difficulty),
        col(&|r| &r.config.length),
        col(&|r| &r.config.language),
        col(&|r| &r.generator_model),
        col(&|r| &r.embedder_model),
    ]);
    Ok(RecordBatch::try_new(schema(n), columns)?)
}

/// Where rows go, from `--out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Parquet(PathBuf),
    Jsonl(PathBuf),
    Lance(String),
    /// `kafka://BOOTSTRAP/TOPIC`.
    Kafka {
        bootstrap: String,
        topic: String,
    },
}

impl Target {
    pub fn parse(out: &str) -> Result<Self> {
        if let Some(rest) = out.strip_prefix("kafka://") {
            return match rest.split_once('/') {
                Some((b, t)) if !b.is_empty() && !t.is_empty() => Ok(Target::Kafka {
                    bootstrap: b.into(),
                    topic: t.into(),
                }),
                _ => Err(Error::InvalidArgument(format!(
                    "--out {out}: a topic is written as kafka://HOST:PORT/TOPIC"
                ))),
            };
        }
        let lower = out.to_ascii_lowercase();
        let trimmed = lower.trim_end_matches('/');
        if trimmed.ends_with(".parquet") {
            Ok(Target::Parquet(out.into()))
        } else if trimmed.ends_with(".jsonl") || trimmed.ends_with(".ndjson") {
            Ok(Target::Jsonl(out.into()))
        } else if trimmed.ends_with(".lance") {
            Ok(Target::Lance(out.trim_end_matches('/').into()))
        } else {
            Err(Error::InvalidArgument(format!(
                "--out {out}: expected a .parquet, .jsonl/.ndjson or .lance path, or kafka://HOST:PORT/TOPIC"
            )))
        }
    }

    /// The default directory for resumable progress.
    pub fn default_state_dir(&self) -> PathBuf {
        match self {
            Target::Parquet(p) | Target::Jsonl(p) => {
                PathBuf::from(format!("{}.parts", p.display()))
            }
            Target::Lance(u) => PathBuf::from(format!("{u}.synth-state")),
            Target::Kafka { topic, .. } => PathBuf::from(format!(".semflow-synth/{topic}")),
        }
    }

    /// Whether rows are kept in the state directory until the end (file outputs).
    pub fn keeps_parts(&self) -> bool {
        matches!(self, Target::Parquet(_) | Target::Jsonl(_))
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(&mut f)?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `batch` as a Parquet file at `path`, atomically.
pub fn write_parquet(path: &Path, batches: &[RecordBatch], schema: SchemaRef) -> Result<()> {
    write_atomic(path, |f| {
        let mut w = ArrowWriter::try_new(f, schema, None)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        for b in batches {
            w.write(b)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        }
        w.close()
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        Ok(())
    })
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    reader
        .map(|b| b.map_err(Error::from))
        .collect::<Result<Vec<_>>>()
}

/// Writes `batches` as JSON lines at `path`, atomically.
pub fn write_jsonl(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    write_atomic(path, |f| {
        let mut w = arrow::json::LineDelimitedWriter::new(std::io::BufWriter::new(f));
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> PairRow {
        PairRow {
            pair_id: "p".into(),
            anchor: "q".into(),
            positive: "d".into(),
            negatives: (0..n).map(|i| format!("n{i}")).collect(),
            negative_ids: (0..n).map(|i| i.to_string()).collect(),
            negative_scores: (0..n).map(|i| i as f64).collect(),
            instruction: "i".into(),
            score: 0.9,
            doc_id: "7".into(),
            config: QueryConfig {
                persona: "a".into(),
                query_type: "b".into(),
                difficulty: "c".into(),
                length: "d".into(),
                language: "e".into(),
            },
            generator_model: "g".into(),
            embedder_model: "m".into(),
        }
    }

    #[test]
    fn rows_round_trip_through_parquet_with_null_negatives() {
        let dir = tempfile::tempdir().unwrap();
        let batch = to_batch(&[row(2), row(1)], 2).unwrap();
        let path = dir.path().join("x.parquet");
        write_parquet(&path, std::slice::from_ref(&batch), schema(2)).unwrap();
        let back = read_parquet(&path).unwrap();
        assert_eq!(back, vec![batch]);
        let neg2 = back[0].column_by_name("negative_2").unwrap();
        assert_eq!(neg2.null_count(), 1);
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("out/p.parquet").unwrap(),
            Target::Parquet("out/p.parquet".into())
        );
        assert!(matches!(
            Target::parse("x.ndjson").unwrap(),
            Target::Jsonl(_)
        ));
        assert_eq!(
            Target::parse("data/pairs.lance/").unwrap(),
            Target::Lance("data/pairs.lance".into())
        );
        assert_eq!(
            Target::parse("kafka://127.0.0.1:9092/pairs").unwrap(),
            Target::Kafka {
                bootstrap: "127.0.0.1:9092".into(),
                topic: "pairs".into()
            }
        );
        let err = Target::parse("pairs.csv").unwrap_err().to_string();
        assert!(err.contains("--out pairs.csv"), "{err}");
        assert!(Target::parse("kafka://host").is_err());
    }
}
