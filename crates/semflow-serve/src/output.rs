//! Writing query results: an aligned table for people, CSV/JSON/NDJSON/Parquet for programs,
//! Arrow IPC streams for the network front ends.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::engine::Engine;
use crate::error::{Error, Result};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
    Ndjson,
    Parquet,
}

/// How a nested value is shown as text.
#[derive(Clone, Copy)]
enum NestedText {
    /// Every element (CSV has no nested types; nothing may be lost).
    Full,
    /// The first few elements and the length (tables for people: a 1024-dim vector would fill
    /// the screen).
    Short,
}

fn nested_to_string(c: &ArrayRef, i: usize, mode: NestedText) -> String {
    const SHOWN: usize = 4;
    let text = |a: &ArrayRef, j: usize| {
        arrow::util::display::array_value_to_string(a, j).unwrap_or_default()
    };
    let list = match (mode, c.data_type()) {
        (NestedText::Short, DataType::FixedSizeList(..)) => Some(c.as_fixed_size_list().value(i)),
        (NestedText::Short, DataType::List(_)) => Some(c.as_list::<i32>().value(i)),
        (NestedText::Short, DataType::LargeList(_)) => Some(c.as_list::<i64>().value(i)),
        _ => None,
    };
    match list {
        Some(values) if values.len() > SHOWN => {
            let head: Vec<String> = (0..SHOWN).map(|j| text(&values, j)).collect();
            format!("[{}, … ({} values)]", head.join(", "), values.len())
        }
        _ => text(c, i),
    }
}

/// Replaces nested columns (vectors, structs) by their text.
fn stringify_nested(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    mode: NestedText,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let nested = |t: &DataType| t.is_nested();
    if !schema.fields().iter().any(|f| nested(f.data_type())) {
        return Ok((schema.clone(), batches.to_vec()));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if nested(f.data_type()) {
                Field::new(f.name(), DataType::Utf8, true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let new_schema = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| {
                if nested(c.data_type()) {
                    Ok(Arc::new(arrow::array::StringArray::from_iter(
                        (0..c.len()).map(|i| (!c.is_null(i)).then(|| nested_to_string(c, i, mode))),
                    )) as ArrayRef)
                } else {
                    Ok(c.clone())
                }
            })
            .collect::<Result<_>>()?;
        out.push(RecordBatch::try_new(new_schema.clone(), cols)?);
    }
    Ok((new_schema, out))
}

/// `batches` as one Arrow IPC stream (`/v1/sql`'s `arrow` format, Flight's bound parameters).
pub fn arrow_ipc_stream(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    // Finishes the stream (end-of-stream marker) and hands the bytes back.
    Ok(writer.into_inner()?)
}

/// Writes `batches` in `format` to `out`.
pub fn write_results(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: &mut dyn Write,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("<output>", e);
    match format {
        Format::Table => {
            if schema.fields().is_empty() {
                return Ok(());
            }
            let (schema, batches) = stringify_nested(schema, batches, NestedText::Short)?;
            let shown: Vec<RecordBatch> =
                batches.into_iter().filter(|b| b.num_rows() > 0).collect();
            let table = if shown.is_empty() {
                // Still show the header for an empty result.
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(schema)])?
            } else {
                arrow::util::pretty::pretty_format_batches(&shown)?
            };
            writeln!(out, "{table}").map_err(io)?;
        }
        Format::Csv => {
            let (_, batches) = stringify_nested(schema, batches, NestedText::Full)?;
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for b in &batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            // One document per line, as the other text formats end.
            writeln!(out).map_err(io)?;
        }
        Format::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
                    &mut buf,
                    schema.clone(),
                    None,
                )
                .map_err(|e| Error::InvalidArgument(format!("parquet: {e}")))?;
                for b in batches {
                    w.write(b)
                        .map_err(|e| Error::InvalidArgument(format!("parquet: {e}")))?;
                }
                w.close()
                    .map_err(|e| Error::InvalidArgument(format!("parquet: {e}")))?;
            }
            out.write_all(&buf).map_err(io)?;
        }
    }
    Ok(())
}

/// The spinner's line: what the statement is waiting for, or what it has done so far.
fn progress_message(embedded: u64, reranked: u64, kafka_joining: usize) -> String {
    if kafka_joining > 0 {
        "waiting for the Kafka consumer group to assign partitions (after a member left, up to its session.timeout.ms)".to_string()
    } else {
        format!("running: {embedded} texts embedded, {reranked} pairs reranked")
    }
}

/// A spinner with inference counts while a statement runs, shown only on a terminal.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(engine: &Engine) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let inference = engine.inference().clone();
        let task = tokio::spawn(async move {
            // Quick statements finish before the spinner would appear.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let bar = indicatif::ProgressBar::new_spinner();
            let start = (
                inference.stats.embed_inferred.load(Ordering::Relaxed),
                inference.stats.rerank_inferred.load(Ordering::Relaxed),
            );
            loop {
                let e = inference.stats.embed_inferred.load(Ordering::Relaxed) - start.0;
                let r = inference.stats.rerank_inferred.load(Ordering::Relaxed) - start.1;
                let joining = crate::kafka::consumer::consumers_joining();
                bar.set_message(progress_message(e, r, joining));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { task: Some(task) }
    }

    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spinner_says_what_a_statement_waits_for() {
        assert!(progress_message(0, 0, 1).starts_with("waiting for the Kafka consumer group"));
        assert_eq!(
            progress_message(3, 2, 0),
            "running: 3 texts embedded, 2 pairs reranked"
        );
    }
}
