//! The admin socket (`DIR/admin.sock`): one JSON request per line, one JSON answer per line.
//!
//! Served by a plain thread, not a core: it only forwards requests to core 0 and waits, and it
//! does the blocking file work (recording the phase) that cores must not do.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"cutover"}`, `{"cmd":"abort"}`,
//! `{"cmd":"set-rate","background_rate_bytes_per_s":N|null}`, `{"cmd":"map","cells":N}`
//! (chunk states counted per cell, N clamped to 1..=4096, see `map::cells`).
//! Answers: `{"ok":true,"message":...,"status":{...},"map":{...}}` or
//! `{"ok":false,"error":...}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::coordinator::{self, CutoverError};
use super::state::{self, Phase, SessionState};
use super::status::Status;
use super::volume::local_volume;
use crate::runtime::CoreHandle;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AdminRequest {
    pub cmd: String,
    #[serde(default)]
    pub background_rate_bytes_per_s: Option<u64>,
    /// For `map`: how many cells (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AdminReply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
    /// Set when the refusal was for chunks still untouched.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub untouched: Option<u64>,
    /// The answer to `map`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub map: Option<crate::map::cells::MapCells>,
}

impl AdminReply {
    fn ok(message: String) -> AdminReply {
        AdminReply {
            ok: true,
            message: Some(message),
            ..Default::default()
        }
    }

    fn err(error: String) -> AdminReply {
        AdminReply {
            ok: false,
            error: Some(error),
            ..Default::default()
        }
    }
}

pub struct Admin {
    pub dir: PathBuf,
    pub session: SessionState,
    pub handle: CoreHandle,
    pub started: std::time::Instant,
    /// The final word printed by the frontend when it stops (cutover or abort done).
    pub outcome: Arc<Mutex<Option<String>>>,
}

/// Asks the cores for the live status, from a plain thread (admin or metrics).
#[derive(Clone)]
pub struct StatusSource {
    handle: CoreHandle,
    target: String,
    started: std::time::Instant,
}

impl StatusSource {
    pub fn status(&self) -> Status {
        let mut st = self
            .handle
            .call_blocking(0, || async { coordinator::status(&local_volume()).await });
        st.target = self.target.clone();
        st.uptime_ms = self.started.elapsed().as_millis() as u64;
        st
    }
}

pub fn spawn(listener: UnixListener, admin: Admin) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ferry-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if admin.serve(c) {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "admin accept failed"),
                }
            }
        })?;
    Ok(())
}

impl Admin {
    /// Serves one admin connection; true when the frontend is finished.
    fn serve(&self, conn: UnixStream) -> bool {
        // One connection at a time: a client that connects and says nothing must not hold
        // the admin socket.
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let mut line = Vec::new();
        let mut reader = BufReader::new(&conn);
        // Bounded: an admin request is tiny.
        if let Err(e) = std::io::Read::take(&mut reader, 64 * 1024).read_until(b'\n', &mut line) {
            tracing::warn!(error = %e, "admin read failed");
            return false;
        }
        let (reply, finished) = match serde_json::from_slice::<AdminRequest>(&line) {
            Ok(req) => self.handle(req),
            Err(e) => (AdminReply::err(format!("bad admin request: {e}")), false),
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        let _ = (&conn).write_all(text.as_bytes());
        if finished {
            self.stop();
        }
        finished
    }

    fn status(&self) -> Status {
        self.source().status()
    }

    /// What the metrics thread needs to ask the cores for a status.
    pub fn source(&self) -> StatusSource {
        StatusSource {
            handle: self.handle.clone(),
            target: self.session.target.display().to_string(),
            started: self.started,
        }
    }

    fn handle(&self, req: AdminRequest) -> (AdminReply, bool) {
        match req.cmd.as_str() {
            "status" => (
                AdminReply {
                    ok: true,
                    status: Some(self.status()),
                    ..Default::default()
                },
                false,
            ),
            "map" => {
                let cells = req.cells.unwrap_or(256);
                let map = self.handle.call_blocking(0, move || async move {
                    coordinator::map(&local_volume(), cells).await
                });
                (
                    AdminReply {
                        ok: true,
                        map: Some(map),
                        ..Default::default()
                    },
                    false,
                )
            }
            "set-rate" => {
                let rate = req.background_rate_bytes_per_s;
                self.handle.call_blocking(0, move || async move {
                    local_volume()
                        .on_all(move |s| async move { s.background_rate.set(rate) })
                        .await;
                });
                (AdminReply::ok("background rate set".into()), false)
            }
            "cutover" => match self
                .handle
                .call_blocking(0, || async { coordinator::cutover(&local_volume()).await })
            {
                Ok(_) => {
                    let msg = format!(
                        "cutover complete: target {} is a complete raw disk",
                        self.session.target.display()
                    );
                    self.finish(Phase::Completed, msg)
                }
                Err(e) => {
                    let untouched = match e {
                        CutoverError::Untouched(n) => Some(n),
                        CutoverError::Failed(_) => None,
                    };
                    (
                        AdminReply {
                            untouched,
                            ..AdminReply::err(e.to_string())
                        },
                        false,
                    )
                }
            },
            "abort" => match self
                .handle
                .call_blocking(0, || async { coordinator::abort(&local_volume()).await })
            {
                Ok(n) => {
                    let msg = format!("abort complete: {n} chunks written back to the source, which is current and durable");
                    self.finish(Phase::Aborted, msg)
                }
                Err(e) => (AdminReply::err(e), false),
            },
            other => (
                AdminReply::err(format!("unknown admin command {other:?}")),
                false,
            ),
        }
    }

    /// Records the terminal phase; only then is the operation reported done. If the phase
    /// cannot be recorded the export serves again and the operator is told.
    fn finish(&self, phase: Phase, msg: String) -> (AdminReply, bool) {
        match self.record(phase) {
            Ok(()) => {
                self.set_outcome(&msg);
                (AdminReply::ok(msg), true)
            }
            Err(e) => {
                self.handle
                    .call_blocking(0, || async { coordinator::resume(&local_volume()).await });
                (
                    AdminReply::err(format!(
                        "{msg}, but recording the phase failed: {e}; the export serves again"
                    )),
                    false,
                )
            }
        }
    }

    fn record(&self, phase: Phase) -> std::io::Result<()> {
        let s = SessionState {
            phase,
            ..self.session.clone()
        };
        state::store(&self.dir, &s)
    }

    fn set_outcome(&self, msg: &str) {
        if let Ok(mut o) = self.outcome.lock() {
            *o = Some(msg.to_string());
        }
    }

    fn stop(&self) {
        self.handle.call_blocking(0, || async {
            coordinator::shut_down(&local_volume()).await
        });
        let _ = std::fs::remove_file(state::admin_path(&self.dir));
        self.handle.shutdown();
    }
}
