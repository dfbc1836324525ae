//! The peer: a long-lived process (by default `scripts/peer_bench.py`, Hugging Face
//! transformers) that runs the same workloads on the same model directories. It reads one
//! JSON workload per line on stdin and answers one JSON [`Measurement`] per line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::workload::Workload;
use super::Measurement;
use crate::error::{Error, Result};

pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts `command` (run by `sh -c`) with the model arguments appended.
    pub fn start(command: &str, args: &[String]) -> Result<Self> {
        let quoted: Vec<String> = args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let full = format!("{command} {}", quoted.join(" "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::InvalidArgument(format!("--peer: cannot start `{full}`: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::InvalidArgument("--peer: no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::InvalidArgument("--peer: no stdout".into()))?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Runs one workload on the peer and returns its own timing.
    pub fn run(&mut self, workload: &Workload) -> Result<Measurement> {
        let line = serde_json::to_string(workload)
            .map_err(|e| Error::InvalidArgument(format!("workload: {e}")))?;
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| Error::InvalidArgument(format!("--peer stopped accepting work: {e}")))?;
        let mut answer = String::new();
        let n = self
            .stdout
            .read_line(&mut answer)
            .map_err(|e| Error::InvalidArgument(format!("--peer: {e}")))?;
        if n == 0 {
            return Err(Error::InvalidArgument(
                "--peer exited before answering (see its output above)".into(),
            ));
        }
        serde_json::from_str(&answer)
            .map_err(|e| Error::InvalidArgument(format!("--peer answered {answer:?}: {e}")))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
