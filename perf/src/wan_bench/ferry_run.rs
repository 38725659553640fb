//! One Ferry migration of the sample: `ferry backend --fs-aware` → emulator (or nothing,
//! on loopback) → `ferry frontend` with a fresh dedup index, timed from starting the
//! frontend to `chunks_untouched == 0`, then checked.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_perf::wan::WanProxy;

use super::link::LinkSpec;
use super::report::{FerryDetails, Run};
use super::sample::Sample;
use super::verify;
use crate::ferry::Ferry;
use crate::hydrate;

/// Files of one Ferry run, all removed before it starts.
pub struct Paths<'a> {
    pub target: &'a Path,
    pub state_dir: &'a Path,
    pub socket: &'a Path,
    /// The run's own dedup index: runs must not find each other's content.
    pub dedup_index: &'a Path,
    pub logs: &'a Path,
}

/// The backend flags of every run.
pub const BACKEND_FLAGS: [&str; 1] = ["--fs-aware"];

pub fn frontend_flags(compress: bool, dedup_index: &Path) -> Vec<OsString> {
    vec![
        "--compress".into(),
        if compress { "auto" } else { "off" }.into(),
        "--dedup-index".into(),
        dedup_index.into(),
    ]
}

fn remove_all(p: &Paths) {
    let _ = std::fs::remove_file(p.target);
    let _ = std::fs::remove_file(p.socket);
    let _ = std::fs::remove_dir_all(p.state_dir);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut f = p.dedup_index.as_os_str().to_owned();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
}

/// Migrates `sample` once over `link` (`None`: straight to the backend on loopback).
pub fn migrate(
    ferry: &Ferry,
    sample: &Sample,
    p: &Paths,
    link: Option<&LinkSpec>,
    compress: bool,
    tag: &str,
    timeout: Duration,
) -> Result<Run> {
    remove_all(p);
    std::fs::create_dir_all(p.state_dir)?;
    let (mut backend, addr) = ferry.start_backend_with(
        &sample.path,
        &p.logs.join(format!("ferry-backend-{tag}.log")),
        &BACKEND_FLAGS,
    )?;
    let proxy = match link {
        Some(l) => {
            let upstream: SocketAddr = addr
                .parse()
                .with_context(|| format!("ferry backend address {addr:?}"))?;
            Some(WanProxy::start(
                upstream,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                l.wan_config(),
            )?)
        }
        None => None,
    };
    let frontend_to = proxy
        .as_ref()
        .map_or(addr.clone(), |w| w.local_addr().to_string());
    // The backend's start-up (reading the bitmaps) must not warm the page cache.
    crate::system::drop_caches();
    let t0 = Instant::now();
    let mut frontend = ferry.spawn_frontend_with(
        &frontend_to,
        p.target,
        p.state_dir,
        p.socket,
        &p.logs.join(format!("ferry-frontend-{tag}.log")),
        &frontend_flags(compress, p.dedup_index),
    )?;
    let (elapsed, status) = hydrate::wait_hydrated(ferry, &mut frontend, p.state_dir, t0, timeout)?;
    let counters = proxy.as_ref().map(|w| w.counters());
    backend.check_alive()?;
    let cpu_frontend_s = frontend.cpu_seconds()?;
    let cpu_backend_s = backend.cpu_seconds()?;
    frontend.stop();
    drop(proxy);
    backend.stop();

    verify::e2fsck(p.target)?;
    let compared = verify::compare(&sample.path, p.target, Some(&sample.free))?;
    let verified = format!(
        "e2fsck -fn clean; equal to the source in every used block ({} free blocks differ, as allowed)",
        compared.free_blocks_differing
    );
    remove_all(p);
    Ok(Run {
        elapsed_s: elapsed.as_secs_f64(),
        logical_bytes: sample.info.size_bytes,
        wire_bytes: counters.map(|c| c.downstream_bytes),
        upstream_wire_bytes: counters.map(|c| c.upstream_bytes),
        connections: counters.map(|c| c.connections),
        cpu_server_s: cpu_backend_s,
        cpu_client_s: cpu_frontend_s,
        ferry: Some(FerryDetails::from(&status)),
        verified,
    })
}
