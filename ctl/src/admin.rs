//! Blocking client of a frontend's admin socket (`STATE_DIR/admin.sock`, one JSON line per
//! request and per answer; see `dataplane::frontend::admin`). Called from the blocking pool.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use dataplane::frontend::admin::{AdminReply, AdminRequest};
use dataplane::frontend::state;

pub fn req(cmd: &str, rate: Option<u64>) -> AdminRequest {
    AdminRequest {
        cmd: cmd.into(),
        background_rate_bytes_per_s: rate,
        ..AdminRequest::default()
    }
}

/// `Ok(None)` when no frontend answers for this state dir (no socket, or nobody listening).
pub fn request(
    dir: &Path,
    req: &AdminRequest,
    timeout: Duration,
) -> io::Result<Option<AdminReply>> {
    let path = state::admin_path(dir);
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(io::Error::other)?;
    line.push('\n');
    (&conn).write_all(line.as_bytes())?;
    let mut answer = String::new();
    // An answer carries one status: 1 MiB is far more than it needs.
    BufReader::new((&conn).take(1 << 20)).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the frontend closed its admin socket without answering",
        ));
    }
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
