//! One fresh migration of the sample through the emulator: `ferry backend` → WAN
//! emulator (100 Mbit/s, 20 ms each way; strict DSCP priority or plain FIFO) → `ferry
//! frontend` with a fresh target, state dir and dedup index, up to its "serving" line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_perf::wan::{WanConfig, WanProxy};

use super::{LINK_ONE_WAY_MS, LINK_RATE_BYTES_PER_S};
use crate::child::Proc;
use crate::ferry::Ferry;

/// The files of one run under `dir` (removed before it starts and when it ends).
pub struct Files {
    pub target: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub dedup_index: PathBuf,
}

impl Files {
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            target: dir.join("target.img"),
            state_dir: dir.join("state"),
            socket: dir.join("ferry-nbd.sock"),
            dedup_index: dir.join("dedup.sqlite"),
        }
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.target);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut f = self.dedup_index.as_os_str().to_owned();
            f.push(suffix);
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The emulator's configuration: the benchmark link, strict priority by DSCP (a QoS-ready
/// network) or a plain FIFO bottleneck (a QoS-less one).
pub fn wan_config(priority_by_dscp: bool) -> WanConfig {
    WanConfig {
        one_way_delay: Duration::from_millis(LINK_ONE_WAY_MS),
        rate_bytes_per_s: Some(LINK_RATE_BYTES_PER_S),
        priority_by_dscp,
        ..WanConfig::default()
    }
}

/// A running migration. Fields drop in order: frontend, emulator, backend.
pub struct Rig {
    pub frontend: Proc,
    pub proxy: WanProxy,
    pub backend: Proc,
    /// When the frontend printed its "serving" line.
    pub ready_at: Instant,
    /// Starting the frontend → its "serving" line.
    pub start_up: Duration,
}

impl Rig {
    /// Starts everything on fresh `files`; `frontend_flags` come after the usual ones.
    pub fn start(
        ferry: &Ferry,
        sample: &Path,
        files: &Files,
        priority_by_dscp: bool,
        frontend_flags: &[OsString],
        logs: &Path,
        tag: &str,
    ) -> Result<Rig> {
        files.remove();
        std::fs::create_dir_all(&files.state_dir)?;
        let (backend, addr) =
            ferry.start_backend(sample, &logs.join(format!("ferry-backend-{tag}.log")))?;
        let upstream: SocketAddr = addr
            .parse()
            .with_context(|| format!("ferry backend address {addr:?}"))?;
        let proxy = WanProxy::start(
            upstream,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            wan_config(priority_by_dscp),
        )?;
        let mut flags: Vec<OsString> = vec!["--dedup-index".into(), (&files.dedup_index).into()];
        flags.extend(frontend_flags.iter().cloned());
        // Nothing of the source may be in the page cache when the frontend starts.
        crate::system::drop_caches();
        let t0 = Instant::now();
        let mut frontend = ferry.spawn_frontend_with(
            &proxy.local_addr().to_string(),
            &files.target,
            &files.state_dir,
            &files.socket,
            &logs.join(format!("ferry-frontend-{tag}.log")),
            &flags,
        )?;
        Ferry::wait_serving(&mut frontend)?;
        Ok(Rig {
            frontend,
            proxy,
            backend,
            ready_at: Instant::now(),
            start_up: t0.elapsed(),
        })
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.frontend.check_alive()?;
        self.backend.check_alive()
    }
}
