//! Pipeline files: SQL (`*.sql`) or TOML (`*.toml`, naming the source, sink, query and
//! settings, turned into the same SQL). `${VAR}` and `${VAR:-default}` are replaced from the
//! environment in both, so one file serves a laptop, CI and a compose stack.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::text::{sql_string, substitute_env};

/// Reads a pipeline file as SQL.
pub fn load(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text =
        substitute_env(&text).map_err(|e| Error::Pipeline(format!("{}: {e}", path.display())))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            from_toml(&text).map_err(|e| Error::Pipeline(format!("{}: {e}", path.display())))
        }
        _ => Ok(text),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    source: Table,
    sink: Table,
    query: Query,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    /// SQL name of the table.
    table: String,
    /// KAFKA (the source's default) or LANCE (the sink's default).
    #[serde(default)]
    stored_as: Option<String>,
    /// The topic or the dataset path.
    location: String,
    /// Column definitions, as in CREATE TABLE.
    #[serde(default)]
    columns: Option<String>,
    #[serde(default)]
    primary_key: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    sql: String,
}

fn from_toml(text: &str) -> std::result::Result<String, String> {
    let spec: Spec = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut sql = String::new();
    for (key, value) in &spec.settings {
        sql.push_str(&format!("SET {key} = {};\n", literal(value)?));
    }
    sql.push_str(&create(&spec.source, "KAFKA")?);
    sql.push_str(&create(&spec.sink, "LANCE")?);
    sql.push_str(spec.query.sql.trim().trim_end_matches(';'));
    sql.push_str(";\n");
    Ok(sql)
}

fn create(t: &Table, default_kind: &str) -> std::result::Result<String, String> {
    let kind = t
        .stored_as
        .as_deref()
        .unwrap_or(default_kind)
        .to_uppercase();
    let mut columns = t.columns.clone().unwrap_or_default();
    if let Some(pk) = &t.primary_key {
        if columns.trim().is_empty() {
            return Err(format!("table {}: primary_key needs columns", t.table));
        }
        columns.push_str(&format!(", PRIMARY KEY ({pk})"));
    }
    let columns = if columns.trim().is_empty() {
        String::new()
    } else {
        format!(" ({columns})")
    };
    let mut options = Vec::new();
    for (k, v) in &t.options {
        options.push(format!("{} {}", sql_string(k), literal(v)?));
    }
    let options = if options.is_empty() {
        String::new()
    } else {
        format!(" OPTIONS ({})", options.join(", "))
    };
    Ok(format!(
        "CREATE EXTERNAL TABLE {}{columns} STORED AS {kind} LOCATION {}{options};\n",
        t.table,
        sql_string(&t.location)
    ))
}

fn literal(v: &toml::Value) -> std::result::Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(sql_string(s)),
        toml::Value::Integer(i) => Ok(format!("'{i}'")),
        toml::Value::Boolean(b) => Ok(format!("'{b}'")),
        toml::Value::Float(f) => Ok(format!("'{f}'")),
        other => Err(format!("unsupported setting value {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_becomes_sql() {
        let sql = from_toml(
            r#"
            [source]
            table = "docs"
            location = "docs"
            columns = "id TEXT NOT NULL, body TEXT"
            options = { "bootstrap.servers" = "b:9092", format = "json" }
            [sink]
            table = "idx"
            location = "data/idx"
            columns = "id TEXT NOT NULL, embedding FLOAT[]"
            primary_key = "id"
            [query]
            sql = "INSERT INTO idx SELECT id, embed(body) FROM docs;"
            [settings]
            "semflow.truncate" = "end"
            "#,
        )
        .unwrap();
        assert_eq!(
            sql,
            "SET semflow.truncate = 'end';\n\
             CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, body TEXT) STORED AS KAFKA LOCATION 'docs' OPTIONS ('bootstrap.servers' 'b:9092', 'format' 'json');\n\
             CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, embedding FLOAT[], PRIMARY KEY (id)) STORED AS LANCE LOCATION 'data/idx';\n\
             INSERT INTO idx SELECT id, embed(body) FROM docs;\n"
        );
        assert!(from_toml("[source]\ntable='a'").is_err());
    }
}
