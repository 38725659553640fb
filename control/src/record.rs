//! `ferry record`: serves a source volume over NBD to its still-local workload and records
//! every request, so the recording can later drive prefetch of that volume's migration.
//!
//! It is the real frontend on the real dataplane, in pass-through mode: the "target" is the
//! source itself and the map starts all `Present`, so nothing is ever fetched and the
//! workload's reads and writes go straight to its own disk (O_DIRECT). An in-process backend
//! on loopback serves the source only so the frontend's start-up can learn its size, extents
//! and ext4 UUID the usual way; its `flock` also keeps a `ferry backend` from migrating the
//! volume while it is being recorded. Stopping (SIGINT/SIGTERM) is a cutover: the workload's
//! connections are drained, the source is `fdatasync`ed, and the recording is closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use dataplane::backend::{self, BackendConfig};
use dataplane::frontend::admin::AdminRequest;
use dataplane::frontend::{self, FrontendConfig, NbdListen};
use dataplane::hydrate::HydrateConfig;

use crate::admin_client;

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The source volume: the workload's own disk (regular file or block device), served
    /// read-write and never modified except by the workload's writes.
    #[arg(long)]
    source: PathBuf,
    /// Where to export NBD: unix:PATH or tcp:HOST:PORT.
    #[arg(long, value_parser = crate::cli::parse_nbd)]
    nbd: NbdListen,
    /// The recording to create (a new SQLite file; refused if it exists). Read it with
    /// `ferry recording info FILE`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// NBD export name. Default: the source's file name. Clients may also ask for the empty
    /// (default) export name.
    #[arg(long)]
    name: Option<String>,
    /// Chunk size recorded with the recording (use the one the migration will use), a power
    /// of two from 4K to 1M.
    #[arg(long, default_value = "64K", value_parser = crate::cli::parse_chunk)]
    chunk_size: u32,
    /// Cores (io_uring threads) to run; default: all.
    #[arg(long)]
    cores: Option<usize>,
}

/// How long the in-process backend may take to open the source and listen.
const BACKEND_READY: Duration = Duration::from_secs(30);

pub fn run(a: RecordArgs) -> Result<ExitCode> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .source
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow!(
                    "--source {}: no UTF-8 file name to export it as; pass --name",
                    a.source.display()
                )
            })?,
    };
    if name.is_empty() || name.len() > 255 {
        bail!("export name {name:?}: an NBD export name must be 1 to 255 bytes");
    }
    // Checked again when the file is created; this only refuses before anything starts.
    if a.out.exists() {
        bail!(
            "{} exists; a recording is never overwritten: choose a new file",
            a.out.display()
        );
    }
    // Before any thread exists, so every thread inherits the mask and only `sigwait` below
    // sees these signals (a default handler would kill the process mid-write).
    let signals = block_stop_signals()?;
    let state_dir = new_state_dir()?;
    let result = serve(&a, &name, &state_dir, signals);
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

fn serve(
    a: &RecordArgs,
    name: &str,
    state_dir: &Path,
    signals: libc::sigset_t,
) -> Result<ExitCode> {
    let backend_addr = start_backend(name, &a.source)?;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let dir = state_dir.to_path_buf();
    std::thread::Builder::new()
        .name("ferry-record-signals".into())
        .spawn(move || stop_on_signal(signals, &dir, ready_rx))
        .context("starting the signal thread")?;
    let cores = a.cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let cfg = FrontendConfig {
        backend: backend_addr,
        volume: name.to_string(),
        target: a.source.clone(),
        state_dir: state_dir.to_path_buf(),
        nbd: a.nbd.clone(),
        chunk_size_bytes: a.chunk_size,
        cores,
        // Nothing is ever `Untouched`: there is nothing to hydrate.
        background_rate: Some(0),
        background_tos: None,
        qos: frontend::QosMode::Separate,
        background_floor: 0,
        hydrate: HydrateConfig {
            batch_chunks: 1,
            in_flight: 1,
        },
        compress: false,
        dedup_index: None,
        eager_dedup: false,
        metrics: None,
        record: Some(a.out.clone()),
        passthrough: true,
        prefetch: None,
    };
    let (out, export) = (a.out.clone(), name.to_string());
    let outcome = frontend::run(cfg, move |spec| {
        println!("ferry record serving {export} on {spec}");
        println!(
            "ferry record: recording every request into {}; stop with SIGINT or SIGTERM",
            out.display()
        );
        let _ = ready_tx.send(());
    })?;
    tracing::debug!(message = %outcome.message, "frontend stopped");
    let rec = dataplane::recording::Recording::open(&a.out)
        .with_context(|| format!("reading back {}", a.out.display()))?;
    println!(
        "ferry record stopped: {} events recorded into {} ({} dropped); the source {} is durable",
        rec.events().len(),
        a.out.display(),
        rec.events_dropped(),
        a.source.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs a backend for the source alone on a loopback port; returns its address. It lives as
/// long as the process (the frontend only asks it for the volume's size, extents and first
/// chunk at start-up).
fn start_backend(name: &str, source: &Path) -> Result<SocketAddr> {
    let (tx, rx) = mpsc::channel::<Result<String, String>>();
    let cfg = BackendConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        volumes: vec![(name.to_string(), source.to_path_buf())],
        cores: 1,
        fs_aware: false,
        metrics: None,
    };
    let ready = tx.clone();
    std::thread::Builder::new()
        .name("ferry-record-backend".into())
        .spawn(move || {
            let r = backend::run(cfg, move |addr| {
                let _ = ready.send(Ok(addr));
            });
            if let Err(e) = r {
                let _ = tx.send(Err(e.to_string()));
            }
        })
        .context("starting the source's backend thread")?;
    let addr = match rx.recv_timeout(BACKEND_READY) {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!(
            "the source's backend did not start within {}s",
            BACKEND_READY.as_secs()
        ),
    };
    addr.parse()
        .map_err(|e| anyhow!("the source's backend reported address {addr:?}: {e}"))
}

/// A private state dir for the pass-through session (map, admin socket); removed on exit.
fn new_state_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..8 {
        let d = base.join(format!(
            "ferry-record-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
    bail!("no free state dir name in {}", base.display())
}

fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("blocking SIGINT/SIGTERM");
        }
        Ok(set)
    }
}

/// Waits for SIGINT/SIGTERM, then (once the export is up) cuts over: the export drains and
/// closes, the source is synced, and the frontend's `run` returns. A failed cutover is
/// reported and the next signal tries again.
fn stop_on_signal(set: libc::sigset_t, dir: &Path, ready: mpsc::Receiver<()>) {
    let mut up = false;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid out-pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            tracing::error!(error = %std::io::Error::from_raw_os_error(rc), "sigwait failed; stop with SIGKILL");
            return;
        }
        tracing::info!(
            signal = sig,
            "stopping: draining the export and syncing the source"
        );
        if !up {
            // A signal during start-up stops it as soon as the export is up. If start-up
            // fails, the sender is gone and the process is exiting anyway.
            if ready.recv().is_err() {
                return;
            }
            up = true;
        }
        let req = AdminRequest {
            cmd: "cutover".into(),
            ..Default::default()
        };
        match admin_client::request(dir, &req, None) {
            Ok(Some(r)) if r.ok => return,
            Ok(Some(r)) => {
                eprintln!(
                    "ferry: could not stop: {}; signal again to retry",
                    r.error.unwrap_or_default()
                );
            }
            Ok(None) => return,
            Err(e) => eprintln!("ferry: could not stop: {e:#}; signal again to retry"),
        }
    }
}
