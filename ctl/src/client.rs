//! A tiny blocking HTTP/1.1 client for the control API, over the unix socket (or TCP with
//! a bearer token). One request per connection (`Connection: close`), so the answer is
//! everything until EOF; no keep-alive, no TLS, no redirects: the daemon needs none.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Answers larger than this are refused (a session list of thousands fits easily).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: String },
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Endpoint {
    /// `method path` with an optional JSON body; the answer's status and JSON body
    /// (`null` when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: ferry-control\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        let raw = match self {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).with_context(|| {
                    format!(
                        "connecting to the control daemon at {} (is `ferry control` running?)",
                        p.display()
                    )
                })?;
                s.set_read_timeout(Some(timeout))?;
                exchange(s, head, &payload)?
            }
            Endpoint::Tcp { addr, token } => {
                head.push_str(&format!("Authorization: Bearer {token}\r\n"));
                let s =
                    TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
                s.set_read_timeout(Some(timeout))?;
                exchange(s, head, &payload)?
            }
        };
        parse(&raw)
    }
}

fn exchange<S: Read + Write>(mut s: S, mut head: String, payload: &[u8]) -> Result<Vec<u8>> {
    head.push_str("\r\n");
    // One write: the daemon may answer (401, 4xx) and close before reading a body, and a
    // second write would fail with EPIPE instead of letting us read its answer.
    let mut req = head.into_bytes();
    req.extend_from_slice(payload);
    s.write_all(&req)?;
    s.flush()?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER_BYTES)
        .read_to_end(&mut raw)
        .context("reading the answer")?;
    Ok(raw)
}

/// Status line, headers, body (plain or chunked).
pub fn parse(raw: &[u8]) -> Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("the daemon's answer has no header end"))?;
    let head = std::str::from_utf8(&raw[..split]).context("answer header")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        Value::Null
    } else {
        serde_json::from_slice(&body).context("the daemon's answer is not JSON")?
    };
    Ok(Answer { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunked answer"))?;
        let size_text = std::str::from_utf8(&b[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked() -> Result<()> {
        let a = parse(b"HTTP/1.1 409 Conflict\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}")?;
        assert_eq!(a.status, 409);
        assert_eq!(a.body["error"], "x");
        let a = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")?;
        assert_eq!(a.body["a"], 1);
        let a = parse(b"HTTP/1.1 204 No Content\r\n\r\n")?;
        assert!(a.body.is_null());
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        Ok(())
    }
}
