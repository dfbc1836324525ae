//! `semflow shell`: an interactive SQL prompt with history (like datafusion-cli).

use std::time::Instant;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::output::Progress;
use crate::output::{write_results, Format};

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".semflow_history"))
}

/// A backslash command of the shell (as in psql), read when no statement is half typed.
#[derive(Debug, PartialEq, Eq)]
enum Meta {
    Quit,
    Help,
    /// A command answered by running this SQL.
    Sql(String),
    Unknown(String),
}

const HELP: &str = "\\d          list tables
\\dt         list tables
\\d NAME     describe a table's columns
\\?          this help
\\q          quit (also quit, exit, Ctrl-D)
Statements end with ';' and may span lines.";

/// The tables of every schema but the catalog's own.
const LIST_TABLES: &str = "SELECT table_schema AS schema, table_name AS name, table_type AS type \
     FROM information_schema.tables \
     WHERE table_schema NOT IN ('information_schema', 'pg_catalog') \
     ORDER BY table_schema, table_name";

/// `line` as a shell command, or `None` when it is SQL.
fn meta_command(line: &str) -> Option<Meta> {
    let line = line.trim();
    if matches!(line, "quit" | "exit") {
        return Some(Meta::Quit);
    }
    let rest = line.strip_prefix('\\')?;
    let rest = rest.trim_end_matches(';').trim();
    let (command, argument) = match rest.split_once(char::is_whitespace) {
        Some((c, a)) => (c, a.trim()),
        None => (rest, ""),
    };
    Some(match (command, argument) {
        ("q", "") => Meta::Quit,
        ("?", "") => Meta::Help,
        ("d" | "dt", "") => Meta::Sql(LIST_TABLES.to_string()),
        ("d", table) => Meta::Sql(format!("DESCRIBE {table}")),
        _ => Meta::Unknown(line.to_string()),
    })
}

/// Reads statements until EOF (Ctrl-D) or `\q`; a statement ends with `;`.
pub async fn run(engine: Engine) -> Result<()> {
    let mut editor = DefaultEditor::new().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("semflow shell: end statements with ';', \\? for help, \\q to quit");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "semflow> "
        } else {
            "     ..> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() {
                    if let Some(meta) = meta_command(trimmed) {
                        let _ = editor.add_history_entry(trimmed);
                        match meta {
                            Meta::Quit => break,
                            Meta::Help => println!("{HELP}"),
                            Meta::Sql(sql) => run_statements(&engine, &sql).await,
                            Meta::Unknown(c) => {
                                eprintln!("error: unknown command {c}; \\? lists the commands")
                            }
                        }
                        continue;
                    }
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !trimmed.ends_with(';') {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.trim());
                let sql = std::mem::take(&mut buffer);
                run_statements(&engine, &sql).await;
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Error::InvalidArgument(e.to_string())),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

async fn run_statements(engine: &Engine, sql: &str) {
    let statements = match Engine::parse(sql) {
        Ok(s) => s,
        Err(e) => return eprintln!("error: {e}"),
    };
    for statement in statements {
        let start = Instant::now();
        let progress = Progress::start(engine);
        let result = engine.execute(statement).await;
        progress.finish();
        match result {
            Ok(r) => {
                let rows: usize = r.batches.iter().map(|b| b.num_rows()).sum();
                let mut out = std::io::stdout().lock();
                if let Err(e) = write_results(Format::Table, &r.schema, &r.batches, &mut out) {
                    eprintln!("error: {e}");
                }
                println!("{rows} row(s) in {:.3}s", start.elapsed().as_secs_f64());
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_commands() {
        assert_eq!(meta_command("\\q"), Some(Meta::Quit));
        assert_eq!(meta_command("  exit "), Some(Meta::Quit));
        assert_eq!(meta_command("\\?"), Some(Meta::Help));
        assert_eq!(meta_command("\\d"), Some(Meta::Sql(LIST_TABLES.into())));
        assert_eq!(meta_command("\\dt;"), Some(Meta::Sql(LIST_TABLES.into())));
        assert_eq!(
            meta_command("\\d  docs "),
            Some(Meta::Sql("DESCRIBE docs".into()))
        );
        assert_eq!(meta_command("\\x"), Some(Meta::Unknown("\\x".into())));
        assert_eq!(meta_command("SELECT 1;"), None);
    }
}
