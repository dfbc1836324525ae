//! A peer: a long-lived process (`scripts/peer_onnx.py`, ONNX Runtime; `scripts/peer_bench.py`,
//! Hugging Face transformers) that runs the same workloads on the same model directories.
//! Once its models are loaded it names itself in one JSON line (`{"peer": NAME, "about":
//! versions and settings}`); then it reads one JSON workload per line on stdin and answers one
//! JSON [`Measurement`] per line (the protocol: `scripts/peer_protocol.py`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::workload::Workload;
use super::Measurement;
use crate::error::{Error, Result};

/// Who a peer is, as its first line says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Short name, the report's column (e.g. `onnxruntime`).
    #[serde(rename = "peer")]
    pub name: String,
    /// Versions and settings (e.g. `onnxruntime 1.32.0, fp32, CPU, ...`).
    #[serde(default)]
    pub about: String,
}

pub struct Peer {
    pub info: PeerInfo,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts `command` (run by `sh -c`) with the model arguments appended, and waits for it
    /// to name itself (its models loaded).
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
        let mut stdout = BufReader::new(stdout);
        let mut hello = String::new();
        let n = stdout
            .read_line(&mut hello)
            .map_err(|e| Error::InvalidArgument(format!("--peer `{full}`: {e}")))?;
        if n == 0 {
            return Err(Error::InvalidArgument(format!(
                "--peer `{full}` exited before naming itself (see its output above)"
            )));
        }
        let info = serde_json::from_str(&hello).map_err(|e| {
            Error::InvalidArgument(format!(
                "--peer `{full}`: its first line must be {{\"peer\": NAME, \"about\": TEXT}}, got {hello:?}: {e}"
            ))
        })?;
        Ok(Self {
            info,
            child,
            stdin,
            stdout,
        })
    }

    /// Runs one workload on the peer and returns its own timing.
    pub fn run(&mut self, workload: &Workload) -> Result<Measurement> {
        let line = serde_json::to_string(workload)
            .map_err(|e| Error::InvalidArgument(format!("workload: {e}")))?;
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "--peer {} stopped accepting work: {e}",
                    self.info.name
                ))
            })?;
        let mut answer = String::new();
        let n = self
            .stdout
            .read_line(&mut answer)
            .map_err(|e| Error::InvalidArgument(format!("--peer {}: {e}", self.info.name)))?;
        if n == 0 {
            return Err(Error::InvalidArgument(format!(
                "--peer {} exited before answering (see its output above)",
                self.info.name
            )));
        }
        serde_json::from_str(&answer).map_err(|e| {
            Error::InvalidArgument(format!(
                "--peer {} answered {answer:?}: {e}",
                self.info.name
            ))
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in peer that names itself and answers every workload with the same numbers.
    fn stand_in(hello: &str) -> String {
        format!(
            r#"sh -c 'echo "{hello}"; while read -r line; do echo "{{\"seconds\":0.5,\"tokens\":10,\"padded_tokens\":12,\"sequences\":2,\"latencies_ms\":[500.0]}}"; done' --"#
        )
    }

    #[test]
    fn a_peer_names_itself_then_answers_each_workload() {
        let mut peer = Peer::start(
            &stand_in(r#"{\"peer\":\"stand-in\",\"about\":\"v1\"}"#),
            &["--model".into(), "/dir with space".into()],
        )
        .unwrap();
        assert_eq!(
            peer.info,
            PeerInfo {
                name: "stand-in".into(),
                about: "v1".into()
            }
        );
        let w = super::super::workload::w3(1, 2);
        for _ in 0..2 {
            let m = peer.run(&w).unwrap();
            assert_eq!((m.tokens, m.padded_tokens, m.sequences), (10, 12, 2));
        }
    }

    #[test]
    fn a_peer_that_does_not_name_itself_is_refused_with_what_it_said() {
        let e = Peer::start(&stand_in("loading..."), &[]).err().unwrap();
        assert!(e.to_string().contains("first line must be"), "{e}");
        assert!(e.to_string().contains("loading..."), "{e}");
        let e = Peer::start("true", &[]).err().unwrap();
        assert!(e.to_string().contains("exited before naming itself"), "{e}");
    }
}
