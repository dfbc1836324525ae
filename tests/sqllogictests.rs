//! Runs every `sql/*.slt` file against an engine with random tiny models.

use crate::common;

use std::path::PathBuf;

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct SemflowDb {
    engine: semflow::Engine,
}

/// Floats as sqllogictest files write them: integral values without ".0", others with at most
/// 12 significant digits.
fn format_float(text: String) -> String {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => {
            if v == v.trunc() && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                let s = format!("{:.*e}", 11, v);
                s.parse::<f64>().map(|x| x.to_string()).unwrap_or(text)
            }
        }
        _ => text,
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean => {
            DefaultColumnType::Text
        }
        _ => DefaultColumnType::Any,
    }
}

#[async_trait::async_trait]
impl AsyncDB for SemflowDb {
    type Error = semflow::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, semflow::Error> {
        let mut results = self.engine.run_sql(sql).await?;
        let Some(result) = results.pop() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        if result.schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = result
            .schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let mut rows = Vec::new();
        for batch in &result.batches {
            for r in 0..batch.num_rows() {
                let row = batch
                    .columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            Ok("NULL".to_string())
                        } else {
                            array_value_to_string(c, r).map(|s| {
                                if c.data_type().is_floating() {
                                    format_float(s)
                                } else if s.is_empty() {
                                    "(empty)".into()
                                } else {
                                    s
                                }
                            })
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                rows.push(row);
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok(SemflowDb {
                engine: common::tiny_engine(),
            })
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} .slt file(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
