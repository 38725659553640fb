//! A minimal HTTP/1.1 responder for `GET /metrics` on a plain thread (std `TcpListener`):
//! one connection at a time, `Connection: close`, nothing but the metrics page. Loopback by
//! default in the CLI; there is no authentication, so expose it only where scrapers live.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head read; a scrape is a few hundred bytes.
const REQUEST_MAX_BYTES: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves `render()` at `/metrics` on a thread named `name` until the
/// process exits. Returns the bound address (port 0 picks one).
pub fn spawn(
    addr: SocketAddr,
    name: &str,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = Arc::new(TcpListener::bind(addr)?);
    let local = listener.local_addr()?;
    serve_on(listener, name, render)?;
    Ok(local)
}

/// Serves on a listener bound by the caller (who printed its address already).
pub fn serve_on(
    listener: Arc<TcpListener>,
    name: &str,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = serve(c, &render) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(())
}

fn serve(mut c: TcpStream, render: &impl Fn() -> String) -> std::io::Result<()> {
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= REQUEST_MAX_BYTES {
            return respond(
                &mut c,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(
            &mut c,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &render(),
        ),
        (_, "/metrics") => respond(&mut c, "405 Method Not Allowed", "text/plain", "GET only\n"),
        _ => respond(&mut c, "404 Not Found", "text/plain", "try /metrics\n"),
    }
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())?;
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(req).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_metrics_only() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), "test-metrics", || {
            "ferry_up 1\n".to_string()
        })
        .expect("spawn");
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nferry_up 1\n"), "{ok}");
        assert!(get(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let big = vec![b'a'; REQUEST_MAX_BYTES];
        assert!(get(addr, &big).starts_with("HTTP/1.1 431"));
    }
}
