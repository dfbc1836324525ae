//! A scripted OpenAI-compatible chat-completions server on 127.0.0.1:0 for synthesis tests.
//! It speaks plain HTTP/1.1 over TCP (one request per connection) so faults can be injected
//! below the HTTP layer too. A document asks for faults with markers in its text:
//! `[fault:KIND xN]` makes the first N requests about it fail that way (N = 99: always):
//! - `429` (Retry-After: 1), `500`, `slow` (sleeps past any short client timeout),
//!   `drop` (closes the connection without answering), `truncated` (200 with a cut body);
//! - `badjson`, `cutjson`, `missing`, `empty`, `copy`, `long`: a 200 reply whose content is malformed.
//!
//! Replies: the configuration stage picks the first offered persona; the query stage answers
//! `{"query": "about <first five words>"}`. `plain_text` mode rejects `response_format` with
//! 400, as servers without structured output do, and wraps replies in prose and fences.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub document: String,
    pub stage: &'static str,
    pub structured: bool,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Shared {
    seen: Vec<Seen>,
    /// Faults served so far per (document, kind).
    served: HashMap<(String, String), u32>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    tls: bool,
    shared: Arc<Mutex<Shared>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    pub plain_text: bool,
    /// Added to every reply.
    pub delay: Duration,
}

impl FakeLlm {
    pub async fn start(mode: Mode) -> Self {
        Self::serve(mode, None).await
    }

    /// The same server over TLS with `tls`'s certificate (for localhost).
    pub async fn start_tls(mode: Mode, tls: semflow::tls::ServerTls) -> Self {
        Self::serve(mode, Some(tls.acceptor(&[b"http/1.1"]))).await
    }

    async fn serve(mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let secure = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    let _ = match tls {
                        Some(tls) => match tls.accept(sock).await {
                            Ok(sock) => handle(sock, s, mode).await,
                            Err(_) => Ok(()),
                        },
                        None => handle(sock, s, mode).await,
                    };
                });
            }
        });
        Self {
            addr,
            tls: secure,
            shared,
            _task: task,
        }
    }

    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}/v1", self.addr.port())
        } else {
            format!("http://{}/v1", self.addr)
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }
}

fn document_of(prompt: &str) -> String {
    let start = prompt
        .find("<document>\n")
        .map(|i| i + "<document>\n".len());
    let end = prompt.find("\n</document>");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => prompt[s..e].to_string(),
        _ => String::new(),
    }
}

/// The fault to serve now for `doc`, if any.
fn fault(shared: &Mutex<Shared>, doc: &str) -> Option<String> {
    let mut rest = doc;
    while let Some(i) = rest.find("[fault:") {
        let spec = &rest[i + 7..];
        let end = spec.find(']')?;
        let (kind, times) = match spec[..end].split_once(" x") {
            Some((k, n)) => (k.to_string(), n.parse::<u32>().unwrap_or(1)),
            None => (spec[..end].to_string(), 1),
        };
        let mut s = shared.lock().unwrap();
        let served = s.served.entry((doc.to_string(), kind.clone())).or_default();
        if *served < times {
            *served += 1;
            return Some(kind);
        }
        rest = &spec[end..];
    }
    None
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    shared: Arc<Mutex<Shared>>,
    mode: Mode,
) -> std::io::Result<()> {
    let Some(request) = super::raw_http::read_request(&mut sock).await? else {
        return Ok(());
    };
    let header = |name: &str| request.header(name);
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let prompt = body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let structured = body.get("response_format").is_some();
    let configure = prompt.contains("Choose:");
    let document = document_of(&prompt);
    shared.lock().unwrap().seen.push(Seen {
        at: Instant::now(),
        document: document.clone(),
        stage: if configure { "configure" } else { "query" },
        structured,
        authorization: header("authorization"),
    });
    if !mode.delay.is_zero() {
        tokio::time::sleep(mode.delay).await;
    }
    if mode.plain_text && structured {
        let msg = json!({"error": {"message": "response_format is not supported by this server", "type": "invalid_request_error"}});
        return respond(&mut sock, 400, &[], &msg.to_string()).await;
    }
    let fault = fault(&shared, &document);
    let content = match fault.as_deref() {
        Some("429") => {
            let msg = json!({"error": {"message": "rate limited"}}).to_string();
            return respond(&mut sock, 429, &[("Retry-After", "1")], &msg).await;
        }
        Some("500") => return respond(&mut sock, 500, &[], "{\"error\":\"boom\"}").await,
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return respond(&mut sock, 200, &[], "{}").await;
        }
        Some("drop") => return Ok(()),
        Some("truncated") => {
            let body = r#"{"choices":[{"message":{"role":"assistant","content":"{\"query\": \"cut"#;
            return respond(&mut sock, 200, &[], body).await;
        }
        Some("badjson") => "I think a good query would be about the document.".to_string(),
        Some("cutjson") => r#"{"query": "about the doc"#.to_string(),
        Some("missing") => json!({"question": "where"}).to_string(),
        Some("empty") => json!({"query": "   "}).to_string(),
        Some("copy") => json!({"query": document}).to_string(),
        Some("long") => json!({"query": "word ".repeat(400)}).to_string(),
        _ if configure => {
            let persona = prompt
                .lines()
                .find_map(|l| l.strip_prefix("  - "))
                .unwrap_or("someone")
                .to_string();
            json!({"persona": persona, "query_type": "factual", "difficulty": "university"})
                .to_string()
        }
        _ => {
            let words: Vec<&str> = document
                .split_whitespace()
                .filter(|w| !w.starts_with("[fault"))
                .take(5)
                .collect();
            json!({"query": format!("about {}", words.join(" "))}).to_string()
        }
    };
    let content = if mode.plain_text {
        format!("Sure, here you go:\n```json\n{content}\n```")
    } else {
        content
    };
    let reply = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": 12, "total_tokens": prompt.len() / 4 + 12},
    });
    respond(&mut sock, 200, &[], &reply.to_string()).await
}

async fn respond<S: AsyncWrite + Unpin>(
    sock: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\n");
    // A truncated body still declares its full length, so the client sees it cut short.
    let declared = if body.ends_with("cut") {
        body.len() + 40
    } else {
        body.len()
    };
    head.push_str(&format!("Content-Length: {declared}\r\n"));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
