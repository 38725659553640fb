//! Driving the `ferry` binary through its command line, as a user would.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::child::{run_capture, Proc};

/// The export (and backend volume) name used by every run.
pub const VOLUME: &str = "vol";

/// How long a server gets to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

const BACKEND_READY: &str = "ferry backend listening on ";
const FRONTEND_READY: &str = "ferry frontend serving ";

/// Flags passed through to `ferry backend` / `ferry frontend` (only those given).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tuning {
    pub chunk_size: Option<String>,
    pub frontend_cores: Option<usize>,
    pub backend_cores: Option<usize>,
    pub batch_chunks: Option<usize>,
    pub background_in_flight: Option<usize>,
}

/// `ferry status --json` is the dataplane's own `Status`, read back with the same type.
pub use dataplane::frontend::status::{FetchLatencies, LatencySummary as FetchLatency, Status};

/// Where the `ferry` binary is: `--ferry`, else next to this benchmark when it is a
/// release build (that covers `CARGO_TARGET_DIR`), else `target/release/ferry` in the
/// workspace.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--ferry {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n == "release"))
        {
            let sibling = dir.join("ferry");
            if sibling.is_file() {
                return Ok(sibling);
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let default = workspace.join("target/release/ferry");
    if default.is_file() {
        return Ok(default.canonicalize()?);
    }
    bail!(
        "no ferry binary at {}: run `cargo build --release` in {} first, or pass --ferry PATH",
        default.display(),
        workspace
            .canonicalize()
            .unwrap_or(workspace.clone())
            .display()
    )
}

/// The workspace this benchmark was built from.
pub fn workspace_dir() -> PathBuf {
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    w.canonicalize().unwrap_or(w)
}

fn newest_rs_mtime(dir: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            newest_rs_mtime(&p, newest);
        } else if p.extension().is_some_and(|x| x == "rs") {
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(n, _)| *n < t) {
                    *newest = Some((t, p));
                }
            }
        }
    }
}

/// A source file of the binary newer than the binary itself, if any: benchmarking a
/// stale build is an easy mistake when several target directories are in use.
pub fn newer_source_than(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let w = workspace_dir();
    let mut newest = None;
    for d in ["src", "control/src", "dataplane/src", "wire-format/src"] {
        newest_rs_mtime(&w.join(d), &mut newest);
    }
    newest.filter(|(t, _)| *t > built).map(|(_, p)| p)
}

/// `git describe --always --dirty` of the workspace, for the report.
pub fn source_revision() -> String {
    run_capture(
        Command::new("git")
            .arg("-C")
            .arg(workspace_dir())
            .args(["describe", "--always", "--dirty"]),
        Duration::from_secs(10),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "unknown".into())
}

pub struct Ferry {
    pub bin: PathBuf,
    pub tuning: Tuning,
}

impl Ferry {
    /// Starts `ferry backend` on a free loopback port; returns it with its address.
    pub fn start_backend(&self, source: &Path, log: &Path) -> Result<(Proc, String)> {
        self.start_backend_with(source, log, &[])
    }

    /// [`Ferry::start_backend`] with more flags (e.g. `--fs-aware`).
    pub fn start_backend_with(
        &self,
        source: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<(Proc, String)> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["backend", "--listen", "127.0.0.1:0", "--volume"])
            .arg(format!("{VOLUME}={}", source.display()))
            .args(extra);
        if let Some(n) = self.tuning.backend_cores {
            cmd.arg("--cores").arg(n.to_string());
        }
        let mut p = Proc::spawn("ferry backend", &mut cmd, log, true)?;
        let addr = p.wait_line(BACKEND_READY, READY_TIMEOUT)?;
        if addr.is_empty() {
            bail!("ferry backend printed no address after {BACKEND_READY:?}");
        }
        Ok((p, addr))
    }

    /// Starts `ferry frontend` without waiting: hydration time counts from here.
    pub fn spawn_frontend(
        &self,
        backend: &str,
        target: &Path,
        state_dir: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<Proc> {
        self.spawn_frontend_with(backend, target, state_dir, socket, log, &[])
    }

    /// [`Ferry::spawn_frontend`] with more flags (e.g. `--compress off`).
    pub fn spawn_frontend_with(
        &self,
        backend: &str,
        target: &Path,
        state_dir: &Path,
        socket: &Path,
        log: &Path,
        extra: &[OsString],
    ) -> Result<Proc> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "frontend",
            "--backend",
            backend,
            "--volume",
            VOLUME,
            "--target",
        ])
        .arg(target)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--nbd")
        .arg(format!("unix:{}", socket.display()));
        let t = &self.tuning;
        if let Some(c) = &t.chunk_size {
            cmd.args(["--chunk-size", c]);
        }
        if let Some(n) = t.frontend_cores {
            cmd.arg("--cores").arg(n.to_string());
        }
        if let Some(n) = t.batch_chunks {
            cmd.arg("--batch-chunks").arg(n.to_string());
        }
        if let Some(n) = t.background_in_flight {
            cmd.arg("--background-in-flight").arg(n.to_string());
        }
        cmd.args(extra);
        Proc::spawn("ferry frontend", &mut cmd, log, true)
    }

    /// Waits until the frontend says its export accepts connections.
    pub fn wait_serving(frontend: &mut Proc) -> Result<()> {
        frontend
            .wait_line(FRONTEND_READY, READY_TIMEOUT)
            .map(|_| ())
    }

    /// What `ferry status --state-dir DIR --json` prints, asked on the frontend's admin
    /// socket from this process. The timed runs poll it every 10 ms: starting a `ferry
    /// status` process that often took CPU from the two cores the measured copy runs on.
    pub fn status(&self, state_dir: &Path) -> Result<Status> {
        control::cli::current_status(state_dir)
    }

    /// `ferry set-rate --state-dir DIR --background-rate RATE` (`0` pauses, `unlimited`).
    pub fn set_rate(&self, state_dir: &Path, rate: &str) -> Result<()> {
        run_capture(
            Command::new(&self.bin)
                .args(["set-rate", "--background-rate", rate, "--state-dir"])
                .arg(state_dir),
            Duration::from_secs(30),
        )
        .map(|_| ())
    }

    /// `ferry --version`, for the report.
    pub fn version(&self) -> String {
        run_capture(
            Command::new(&self.bin).arg("--version"),
            Duration::from_secs(10),
        )
        .map(|s| s.trim().to_string())
        .with_context(|| format!("{} --version", self.bin.display()))
        .unwrap_or_else(|e| format!("unknown ({e:#})"))
    }
}
