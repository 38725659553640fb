//! Client of a frontend's admin socket (`DIR/admin.sock`), used by `ferry status|cutover|abort`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use dataplane::frontend::admin::{AdminReply, AdminRequest};
use dataplane::frontend::state;

/// `Ok(None)` when no frontend is running for this state dir.
pub fn request(
    dir: &Path,
    req: &AdminRequest,
    timeout: Option<Duration>,
) -> Result<Option<AdminReply>> {
    let path = state::admin_path(dir);
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    conn.set_read_timeout(timeout)?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&conn)
        .write_all(line.as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .with_context(|| format!("reading from {}", path.display()))?;
    if answer.is_empty() {
        return Err(anyhow!(
            "the frontend closed the admin socket without answering"
        ));
    }
    Ok(Some(
        serde_json::from_str(&answer).context("parsing the frontend's answer")?,
    ))
}
