//! Reading one HTTP/1.1 request off a raw socket, for test servers that answer below the
//! HTTP layer (scripted faults, probes).

use tokio::io::{AsyncRead, AsyncReadExt};

/// One request: its head (request line and headers) and its body (by Content-Length).
pub struct Request {
    pub head: String,
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l[name.len() + 1..].trim().to_string())
    }
}

/// Reads a request; `None` when the client closed the connection first.
pub async fn read_request<S: AsyncRead + Unpin>(sock: &mut S) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut request = Request {
        head,
        body: Vec::new(),
    };
    let len: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    request.body = buf[header_end..header_end + len].to_vec();
    Ok(Some(request))
}
