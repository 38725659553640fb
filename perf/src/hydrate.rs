//! Benchmark (a): background hydration against what the disk can do.
//!
//! Ferry's number is wall-clock time from starting `ferry frontend` (the backend already
//! listens) until its status (what `ferry status --json` prints, asked on the admin socket
//! from this process, not by starting the command) reports `chunks_untouched == 0`, polled
//! every [`POLL`]; that includes the frontend's start-up, pre-allocating the target and
//! making every chunk durable. The volume size divided by it is the rate. The peers are
//! fio reading the source sequentially with O_DIRECT (what the backend must do) and
//! fio writing a new target-like file sequentially with O_DIRECT (what the frontend must
//! do); Ferry cannot be faster than the slower of the two on one disk, so the goal is a
//! fraction of it. The page cache is dropped before each of the three runs.
//!
//! (a2) repeats the measurement with the source copied onto a second device, a zram RAM
//! disk ([`crate::zram`]), so the source read no longer competes with the target writes:
//! fio reads the device ([`fio_read_device_job`]), the backend serves it, and the target
//! is still a new file on the disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::child::Proc;
use crate::ferry::{Ferry, Status};
use crate::fio::FioJob;

/// Status polling interval (the measurement's resolution). A 2 GiB hydration takes 1-3 s
/// here: 50 ms added 25 ms to Ferry's time on average, about 1.5 %. One status costs a unix
/// socket round trip and a message to each core, a few tens of microseconds.
pub const POLL: Duration = Duration::from_millis(10);

/// A hydration whose progress stands still this long has failed; say so without
/// waiting for the whole timeout.
const STALL: Duration = Duration::from_secs(60);

/// Blocks compared between source and target after a hydration, as a sanity check that
/// the rate belongs to a correct copy (a full compare would double the run time).
const SAMPLE_BLOCKS: usize = 256;
const SAMPLE_BYTES: usize = 4096;

pub fn fio_read_job(source: &Path) -> FioJob {
    FioJob::new(
        "seq-read-source",
        &[
            "--rw=read",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=16",
            &format!("--filename={}", source.display()),
        ],
    )
}

/// [`fio_read_job`] of a block device holding the source (a2): the same job, bounded
/// to the volume size.
pub fn fio_read_device_job(device: &Path, size_bytes: u64) -> FioJob {
    FioJob::new(
        "seq-read-second-device",
        &[
            "--rw=read",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=16",
            &format!("--size={size_bytes}"),
            &format!("--filename={}", device.display()),
        ],
    )
}

pub fn fio_write_job(scratch: &Path, size_bytes: u64) -> FioJob {
    FioJob::new(
        "seq-write-target",
        &[
            "--rw=write",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=16",
            &format!("--size={size_bytes}"),
            &format!("--filename={}", scratch.display()),
        ],
    )
}

/// A frontend that finished hydrating, still serving the target, and its backend.
/// Field order is drop order: the frontend stops before its backend.
pub struct LiveFerry {
    pub frontend: Proc,
    pub backend: Proc,
    pub socket: PathBuf,
    pub target: PathBuf,
    pub state_dir: PathBuf,
}

/// Longest wait for the frontend's post-hydration dedup indexing before (b).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits until the frontend has indexed for dedup every chunk that arrived unhashed
/// (`dedup_unindexed_chunks == 0`): that indexing reads the whole target once, at idle CPU
/// priority, right after hydration, and (b) measures a migration that is over, not that
/// read competing with both servers' reads of the same disk. Returns the time waited.
pub fn wait_settled(ferry: &Ferry, live: &mut LiveFerry) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        live.frontend.check_alive()?;
        let s = ferry.status(&live.state_dir)?;
        if s.dedup_unindexed_chunks == 0 {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > SETTLE_TIMEOUT {
            bail!(
                "the frontend still had {} chunks to index for dedup after {:?}",
                s.dedup_unindexed_chunks,
                SETTLE_TIMEOUT
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FerryHydration {
    pub elapsed_s: f64,
    pub bytes_per_s: f64,
    pub status: Status,
    pub frontend_peak_rss_kib: u64,
    pub backend_peak_rss_kib: u64,
    /// CPU time (user + system, every thread, io_uring workers included) each server had
    /// used when hydration was seen complete: from its start, so the backend's includes its
    /// start-up (a few ms) and the frontend's up to one status poll of what follows.
    pub frontend_cpu_s: f64,
    pub backend_cpu_s: f64,
    pub blocks_verified: usize,
}

pub struct Paths<'a> {
    pub source: &'a Path,
    pub target: &'a Path,
    pub state_dir: &'a Path,
    pub socket: &'a Path,
    pub log_dir: &'a Path,
}

/// One timed migration of the whole source into a fresh target.
pub fn ferry_round(
    ferry: &Ferry,
    p: &Paths,
    size_bytes: u64,
    round: usize,
    timeout: Duration,
) -> Result<(FerryHydration, LiveFerry)> {
    for f in [p.target, p.socket] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(p.state_dir);
    std::fs::create_dir_all(p.state_dir)?;

    let (backend, addr) = ferry.start_backend(
        p.source,
        &p.log_dir.join(format!("ferry-backend-{round}.log")),
    )?;
    // The page cache is dropped after the backend is up: its start-up must not warm it.
    crate::system::drop_caches();
    let t0 = Instant::now();
    let mut frontend = ferry.spawn_frontend(
        &addr,
        p.target,
        p.state_dir,
        p.socket,
        &p.log_dir.join(format!("ferry-frontend-{round}.log")),
    )?;
    let (elapsed, status) = wait_hydrated(ferry, &mut frontend, p.state_dir, t0, timeout)?;
    let frontend_cpu_s = frontend.cpu_seconds()?;
    let frontend_peak_rss_kib = frontend.vm_hwm_kib()?;
    let mut backend = backend;
    backend.check_alive()?;
    let backend_cpu_s = backend.cpu_seconds()?;
    let backend_peak_rss_kib = backend.vm_hwm_kib()?;
    Ferry::wait_serving(&mut frontend)?;

    if status.chunks_zero > 0 {
        crate::warn(&format!(
            "{} chunks reported zero in a random source: the volume is not what this benchmark meant",
            status.chunks_zero
        ));
    }
    let blocks_verified = verify_sample(p.source, p.target, size_bytes, round as u64)?;
    let secs = elapsed.as_secs_f64();
    Ok((
        FerryHydration {
            elapsed_s: secs,
            bytes_per_s: size_bytes as f64 / secs,
            status,
            frontend_peak_rss_kib,
            backend_peak_rss_kib,
            frontend_cpu_s,
            backend_cpu_s,
            blocks_verified,
        },
        LiveFerry {
            frontend,
            backend,
            socket: p.socket.to_path_buf(),
            target: p.target.to_path_buf(),
            state_dir: p.state_dir.to_path_buf(),
        },
    ))
}

/// Polls the frontend's status every [`POLL`] until `chunks_untouched == 0`; returns the time
/// since `t0` and that status. Fails when the frontend exits, progress stalls for
/// [`STALL`], or `timeout` passes.
pub fn wait_hydrated(
    ferry: &Ferry,
    frontend: &mut Proc,
    state_dir: &Path,
    t0: Instant,
    timeout: Duration,
) -> Result<(Duration, Status)> {
    let mut last_err = None;
    let mut last: Option<Status> = None;
    let mut next = t0;
    let mut progress_at = t0;
    loop {
        frontend.check_alive()?;
        // Before the frontend has written its state, `status` fails; that is expected.
        match ferry.status(state_dir) {
            Ok(st) => {
                if st.chunks_total > 0 && st.chunks_untouched == 0 {
                    return Ok((t0.elapsed(), st));
                }
                if last.as_ref().map(|l| l.chunks_untouched) != Some(st.chunks_untouched) {
                    progress_at = Instant::now();
                }
                last = Some(st);
            }
            Err(e) => last_err = Some(e),
        }
        if progress_at.elapsed() > STALL {
            let untouched = last.as_ref().map_or(0, |l| l.chunks_untouched);
            bail!(
                "hydration stalled: chunks_untouched stayed at {untouched} for {STALL:?}; see the logs in {}\n{}",
                state_dir.parent().unwrap_or(state_dir).join("logs").display(),
                frontend.log_tail()
            );
        }
        if t0.elapsed() > timeout {
            let progress = match (&last, &last_err) {
                (Some(st), _) => format!(
                    "last status: {} of {} chunks untouched",
                    st.chunks_untouched, st.chunks_total
                ),
                (None, Some(e)) => format!("ferry status never answered: {e:#}"),
                (None, None) => String::new(),
            };
            bail!(
                "hydration did not finish within {timeout:?} ({progress}); raise --timeout-secs or check the logs\n{}",
                frontend.log_tail()
            );
        }
        next += POLL;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        } else {
            next = Instant::now();
        }
    }
}

/// Compares the first, last and [`SAMPLE_BLOCKS`] random 4 KiB blocks of source and target.
fn verify_sample(source: &Path, target: &Path, size_bytes: u64, seed: u64) -> Result<usize> {
    let s = File::open(source).with_context(|| format!("open {}", source.display()))?;
    let t = File::open(target).with_context(|| format!("open {}", target.display()))?;
    if t.metadata()?.len() != size_bytes {
        bail!(
            "target {} is {} bytes, the source {size_bytes}",
            target.display(),
            t.metadata()?.len()
        );
    }
    let blocks = size_bytes / SAMPLE_BYTES as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut offsets = vec![0, (blocks - 1) * SAMPLE_BYTES as u64];
    offsets.extend((0..SAMPLE_BLOCKS).map(|_| rng.gen_range(0..blocks) * SAMPLE_BYTES as u64));
    let (mut a, mut b) = (vec![0u8; SAMPLE_BYTES], vec![0u8; SAMPLE_BYTES]);
    for &off in &offsets {
        s.read_exact_at(&mut a, off)?;
        t.read_exact_at(&mut b, off)?;
        if a != b {
            bail!("after hydration the target differs from the source at byte {off}: the result would be meaningless");
        }
    }
    Ok(offsets.len())
}
