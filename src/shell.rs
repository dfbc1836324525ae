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

/// Reads statements until EOF (Ctrl-D) or `\q`; a statement ends with `;`.
pub async fn run(engine: Engine) -> Result<()> {
    let mut editor = DefaultEditor::new().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("semflow shell: end statements with ';', \\q to quit");
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
                if buffer.is_empty() && (trimmed == "\\q" || trimmed == "quit" || trimmed == "exit")
                {
                    break;
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
