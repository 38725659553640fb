//! The frontend: exports one volume over NBD while migrating it into the target.
//!
//! Start-up (blocking, before any core runs): learn the volume from the backend, create or
//! resume the session in the state dir (target pre-allocated, map with source holes already
//! `Zero`), then start one core per CPU. Each core owns a stripe-shard of the chunks
//! ([`shard`]), runs background hydration for them ([`crate::hydrate`]) and serves the NBD
//! connections handed to it ([`crate::nbd`]), sending each chunk piece to its owner core
//! ([`volume`]). An admin thread ([`admin`]) answers status / cutover / abort.
//!
//! Restart after `kill -9`: the map file says which chunks are durable on the target; those
//! are never fetched again. Writes acknowledged after FLUSH/FUA are in the target and their
//! `Dirty` state in the map (see `sync.rs`).

pub mod admin;
mod coalesce;
pub mod coordinator;
mod dedup;
pub mod error;
mod fetch;
pub mod gate;
pub mod metrics;
pub mod shard;
pub mod state;
pub mod status;
mod sync;
pub mod volume;
mod writeback;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::bufs::ChunkBufs;
use crate::dedup::backfill::Backfill;
use crate::geometry::Geometry;
use crate::hydrate::{self, HydrateConfig};
use crate::link::blocking;
use crate::link::client::{LinkConfig, LinkSlot};
use crate::map::resident::ResidentMap;
use crate::map::{self, VolumeMap};
use crate::notify::Notify;
use crate::runtime::{self, CoreSet, File, Listener, OpenOptions, RuntimeConfig};
use state::{Phase, SessionState};
use wire_format::state::ChunkState;

#[derive(Debug, Clone)]
pub enum NbdListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for NbdListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdListen::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdListen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How on-demand and background traffic share the WAN (seed §4.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosMode {
    /// QoS-ready WAN: background on its own connections, marked with a DSCP class the
    /// network can deprioritise.
    Separate,
    /// QoS-less WAN: one connection; the backend sends on-demand replies first, and the
    /// frontend keeps outstanding background just large enough to fill the link
    /// ([`crate::hydrate::cap`]), with a floor.
    Shared,
}

#[derive(Debug, Clone)]
pub struct FrontendConfig {
    pub backend: SocketAddr,
    pub volume: String,
    pub target: PathBuf,
    pub state_dir: PathBuf,
    pub nbd: NbdListen,
    pub chunk_size_bytes: u32,
    pub cores: usize,
    /// Bytes/s for background hydration; `None` unlimited, `Some(0)` paused.
    pub background_rate: Option<u64>,
    /// TOS byte of the background connection (DSCP << 2), e.g. 0x20 for CS1 "scavenger".
    pub background_tos: Option<u8>,
    /// One connection per core for both classes, or a background one of its own.
    pub qos: QosMode,
    /// In the shared mode: background bytes/s kept flowing under on-demand load.
    pub background_floor: u64,
    pub hydrate: HydrateConfig,
    /// Offer zstd-compressed chunks (the backend still sends raw when that is faster).
    pub compress: bool,
    /// The persistent dedup index shared by the volumes of this machine; `None`: no dedup.
    pub dedup_index: Option<PathBuf>,
    /// Have the backend hash every chunk, even on a link faster than the hash (most dedup
    /// hits within a volume, most CPU). Off: on a fast link chunks come unhashed and are
    /// indexed after hydration ([`crate::dedup::backfill`]).
    pub eager_dedup: bool,
    /// Where to serve Prometheus metrics (bound by the caller, who printed its address).
    pub metrics: Option<Arc<std::net::TcpListener>>,
    /// Record every request the export serves into this new file (`crate::recording`).
    pub record: Option<PathBuf>,
    /// The target *is* the source (`ferry record`): every chunk starts `Present`, so nothing
    /// is ever fetched, and set-up never zeroes, allocates or creates the target, because
    /// that would change the workload's own disk.
    pub passthrough: bool,
    /// `--prefetch`: a recording, or a directory of them, ordering background hydration
    /// (`crate::prefetch`).
    pub prefetch: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("backend {addr}: {source}")]
    Backend {
        addr: SocketAddr,
        source: crate::link::LinkError,
    },
    #[error("state dir {dir}: {message}")]
    State { dir: PathBuf, message: String },
    #[error("target {path}: {message}")]
    Target { path: PathBuf, message: String },
    #[error("NBD listener {spec}: {source}")]
    Listen {
        spec: String,
        source: std::io::Error,
    },
    #[error("the session in {dir} is already {phase}; nothing to serve")]
    Finished { dir: PathBuf, phase: &'static str },
    #[error(transparent)]
    Dedup(#[from] crate::dedup::StoreError),
    #[error(transparent)]
    Recording(#[from] crate::recording::RecordingError),
    #[error(transparent)]
    Prefetch(#[from] crate::prefetch::PrefetchError),
}

fn state_err(dir: &Path, message: impl std::fmt::Display) -> FrontendError {
    FrontendError::State {
        dir: dir.into(),
        message: message.to_string(),
    }
}

fn target_err(path: &Path, message: impl std::fmt::Display) -> FrontendError {
    FrontendError::Target {
        path: path.into(),
        message: message.to_string(),
    }
}

/// What `run` leaves behind once the frontend stops by itself.
pub struct Outcome {
    pub message: String,
}

/// Creates or resumes the session, then serves until cutover or abort completes.
/// `ready` is called with the NBD listen spec once the export accepts connections.
pub fn run(
    cfg: FrontendConfig,
    ready: impl FnOnce(String) + Send + 'static,
) -> Result<Outcome, FrontendError> {
    runtime::probe()?;
    let dir = cfg.state_dir.clone();
    fs::create_dir_all(&dir).map_err(|e| state_err(&dir, e))?;
    let existing = state::load(&dir).map_err(|e| state_err(&dir, e))?;
    if let Some(s) = &existing {
        if cfg.passthrough {
            // The source may have changed since that map was written; only a new map is true.
            return Err(state_err(
                &dir,
                "a pass-through export needs a new state dir; this one holds a session",
            ));
        }
        check_resume(&cfg, s)?;
    }
    let info = blocking::open_volume(cfg.backend, &cfg.volume, cfg.chunk_size_bytes).map_err(
        |source| FrontendError::Backend {
            addr: cfg.backend,
            source,
        },
    )?;
    // A recording named by --prefetch is refused before anything is created.
    let prefetch = match &cfg.prefetch {
        Some(path) => Some(choose_prefetch(&cfg, path, info.size_bytes)?),
        // No recording, but the file system's hot areas still go first: locating them costs
        // one read of chunk 0, and a backend that cannot answer it only loses that class.
        None => match blocking::read_first_chunk(cfg.backend, &cfg.volume, cfg.chunk_size_bytes) {
            Ok(head) => Some((None, head)),
            Err(e) => {
                tracing::warn!(error = %e, "chunk 0 not read: no file-system prefetch");
                None
            }
        },
    };
    let new_session = existing.is_none();
    let session = match existing {
        Some(s) => {
            if s.volume_size_bytes != info.size_bytes {
                return Err(state_err(
                    &dir,
                    format!(
                        "the session was for a {} byte volume; the backend now reports {} bytes",
                        s.volume_size_bytes, info.size_bytes
                    ),
                ));
            }
            tracing::info!(dir = %dir.display(), "resuming session");
            s
        }
        None => create_session(&cfg, &info)?,
    };
    let cores = cfg.cores.max(1);
    let geo = Geometry::new(session.volume_size_bytes, session.chunk_size_bytes, cores);
    let prefetch = Arc::new(prefetch_plan(prefetch, &geo));
    let body = map::file::load(&state::map_path(&dir), &geo).map_err(|e| state_err(&dir, e))?;
    let resident = Arc::new(ResidentMap::new(geo.chunk_count));
    let whole = VolumeMap::from_body(&geo, 0, &body);
    for c in 0..geo.chunk_count {
        if whole.get(c) != ChunkState::Untouched {
            resident.set(c);
        }
    }
    drop(whole);
    let min_block = target_alignment(&session.target, geo.volume_size_bytes)?;
    let dedup = match &cfg.dedup_index {
        Some(db) => Some(Arc::new(crate::dedup::DedupIndex::open(
            db,
            &session.target,
            new_session,
        )?)),
        None => None,
    };
    let backfill = match &dedup {
        Some(d) if !cfg.eager_dedup => {
            let b = Backfill::start(d.clone(), &session.target, geo, resident.clone())
                .map_err(|e| state_err(&dir, format!("dedup indexer thread: {e}")))?;
            if !new_session {
                queue_unindexed(&b, d, &geo, &body);
            }
            Some(b)
        }
        _ => None,
    };
    let _stop_indexer = backfill.clone().map(crate::dedup::backfill::StopOnDrop);

    let recorder = match &cfg.record {
        Some(path) => Some(start_recording(&cfg, path, info.size_bytes)?),
        None => None,
    };

    let admin_path = state::admin_path(&dir);
    let _ = fs::remove_file(&admin_path);
    let admin_listener = std::os::unix::net::UnixListener::bind(&admin_path)
        .map_err(|e| state_err(&dir, format!("admin socket {}: {e}", admin_path.display())))?;

    // Bind the NBD listener early so a bad address fails the command, not a core.
    if let NbdListen::Tcp(a) = &cfg.nbd {
        std::net::TcpListener::bind(a).map_err(|source| FrontendError::Listen {
            spec: cfg.nbd.to_string(),
            source,
        })?;
    }
    let rt = RuntimeConfig {
        cores,
        buf_size: geo.chunk_size_bytes as usize,
        bufs_per_core: 128,
        ..RuntimeConfig::default()
    };
    let (err_tx, err_rx) = std::sync::mpsc::channel::<FrontendError>();
    let ready = Mutex::new(Some(ready));
    let setup = Arc::new(CoreSetup {
        geo,
        min_block,
        cfg: cfg.clone(),
        session: session.clone(),
        body,
        resident,
        dedup: dedup.clone(),
        backfill: backfill.clone(),
        recorder: recorder.as_ref().map(|r| r.sink()),
        prefetch,
    });
    let set = CoreSet::start(rt, move |core| {
        let ready = if core == 0 {
            ready.lock().ok().and_then(|mut r| r.take())
        } else {
            None
        };
        let setup = setup.clone();
        let err_tx = err_tx.clone();
        async move {
            if let Err(e) = start_core(core, &setup, ready).await {
                tracing::error!(core, error = %e, "core failed to start");
                let _ = err_tx.send(e);
                runtime::core_handle().shutdown();
            }
        }
    })?;
    let outcome = Arc::new(Mutex::new(None));
    let admin = admin::Admin {
        dir: dir.clone(),
        session: session.clone(),
        handle: set.handle(),
        started: std::time::Instant::now(),
        outcome: outcome.clone(),
    };
    if let Some(l) = &cfg.metrics {
        let source = admin.source();
        let done = outcome.clone();
        crate::metrics::http::serve_on(l.clone(), "ferry-metrics", move || {
            // Once cutover or abort finished the cores are stopping: nothing to ask.
            if done.lock().map(|o| o.is_some()).unwrap_or(true) {
                return String::new();
            }
            let s = source.clone();
            match std::panic::catch_unwind(move || s.status()) {
                Ok(st) => metrics::render(&st),
                Err(_) => String::new(),
            }
        })
        .map_err(|e| state_err(&dir, format!("metrics thread: {e}")))?;
    }
    admin::spawn(admin_listener, admin)
        .map_err(|e| state_err(&dir, format!("admin thread: {e}")))?;
    let joined = set.join();
    if let Some(b) = &backfill {
        // After cutover the target is the volume: what it holds is worth indexing for the
        // next volume. Otherwise (abort, stop) stop now; a restart queues the rest again.
        let cut_over = state::load(&dir)
            .ok()
            .flatten()
            .is_some_and(|s| s.phase == Phase::Completed);
        if cut_over && b.queued() > 0 {
            tracing::info!(
                chunks = b.queued(),
                "indexing the rest of the target for dedup before exiting"
            );
        }
        let left = b.finish(cut_over);
        if left > 0 {
            tracing::info!(chunks = left, "left unindexed for dedup");
        }
    }
    if let Some(d) = &dedup {
        d.close();
    }
    if let Some(r) = recorder {
        // The cores have stopped: everything they recorded is queued.
        let path = r.path().to_path_buf();
        match r.finish() {
            Ok(w) => {
                tracing::info!(recording = %path.display(), events = w.events, dropped = w.dropped, "recording written")
            }
            Err(e) => tracing::warn!(error = %e, "recording not finished"),
        }
    }
    joined?;
    let _ = fs::remove_file(&admin_path);
    if let NbdListen::Unix(p) = &cfg.nbd {
        let _ = fs::remove_file(p);
    }
    if let Ok(e) = err_rx.try_recv() {
        return Err(e);
    }
    let message = outcome
        .lock()
        .ok()
        .and_then(|mut o| o.take())
        .unwrap_or_else(|| "frontend stopped".into());
    Ok(Outcome { message })
}

/// A resumed session: the chunks that arrived unhashed before the restart are not queued any
/// more; `Present` chunks the index holds nothing at are queued again.
fn queue_unindexed(b: &Backfill, index: &crate::dedup::DedupIndex, geo: &Geometry, body: &[u8]) {
    let indexed = ResidentMap::new(geo.chunk_count);
    let cs = u64::from(geo.chunk_size_bytes);
    index.for_each_own(|offset| {
        if offset % cs == 0 && offset / cs < geo.chunk_count {
            indexed.set(offset / cs);
        }
    });
    let whole = VolumeMap::from_body(geo, 0, body);
    for c in 0..geo.chunk_count {
        if whole.get(c) == ChunkState::Present && !indexed.is_set(c) {
            b.later(c);
        }
    }
    if b.queued() > 0 {
        tracing::info!(
            chunks = b.queued(),
            "present chunks not in the dedup index; indexed after hydration"
        );
    }
}

/// Learns the volume's identity (size, ext2/3/4 UUID from chunk 0 of the source) and creates
/// the recording file.
fn start_recording(
    cfg: &FrontendConfig,
    path: &Path,
    size_bytes: u64,
) -> Result<crate::recording::Recorder, FrontendError> {
    let head = blocking::read_first_chunk(cfg.backend, &cfg.volume, cfg.chunk_size_bytes).map_err(
        |source| FrontendError::Backend {
            addr: cfg.backend,
            source,
        },
    )?;
    let uuid = crate::fsaware::ext4_uuid(&head);
    let id = crate::recording::Identity::new(size_bytes, uuid, cfg.chunk_size_bytes);
    let r = crate::recording::Recorder::create(path, &id)?;
    tracing::info!(recording = %path.display(), size_bytes, fs_uuid = id.fs_uuid_hex().as_deref().unwrap_or("none"), "recording requests");
    Ok(r)
}

/// The recording `--prefetch` names (if any matches) and chunk 0 of the source, which also
/// locates the ext4 hot areas.
fn choose_prefetch(
    cfg: &FrontendConfig,
    path: &Path,
    size_bytes: u64,
) -> Result<(Option<crate::recording::Recording>, Vec<u8>), FrontendError> {
    let head = blocking::read_first_chunk(cfg.backend, &cfg.volume, cfg.chunk_size_bytes).map_err(
        |source| FrontendError::Backend {
            addr: cfg.backend,
            source,
        },
    )?;
    let uuid = crate::fsaware::ext4_uuid(&head);
    let rec = crate::prefetch::select::choose(path, size_bytes, uuid)?;
    match &rec {
        Some(r) => {
            tracing::info!(recording = %r.path().display(), events = r.events().len(), "prefetch: using recording")
        }
        None => {
            tracing::info!(dir = %path.display(), "prefetch: no recording matches this volume; prefetching ext4 metadata, neighbours, then in order")
        }
    }
    Ok((rec, head))
}

fn prefetch_plan(
    chosen: Option<(Option<crate::recording::Recording>, Vec<u8>)>,
    geo: &Geometry,
) -> crate::prefetch::Plan {
    let Some((rec, head)) = chosen else {
        return crate::prefetch::Plan::empty(geo);
    };
    let (hot, note) = crate::prefetch::hot::hot_chunks(&head, geo);
    let plan = crate::prefetch::Plan::build(rec.as_ref(), hot, geo);
    tracing::info!(ranked = plan.ranked.len(), sequence = plan.sequence.len(), hot = plan.hot.len(), found = %note, "prefetch plan");
    plan
}

fn check_resume(cfg: &FrontendConfig, s: &SessionState) -> Result<(), FrontendError> {
    let dir = &cfg.state_dir;
    match s.phase {
        Phase::Completed => {
            return Err(FrontendError::Finished {
                dir: dir.clone(),
                phase: "completed",
            })
        }
        Phase::Aborted => {
            return Err(FrontendError::Finished {
                dir: dir.clone(),
                phase: "aborted",
            })
        }
        Phase::Migrating => {}
    }
    if s.volume != cfg.volume
        || s.target != cfg.target
        || s.chunk_size_bytes != cfg.chunk_size_bytes
    {
        return Err(state_err(dir, format!(
            "it holds a session for volume {} into {} with {} byte chunks; this command asks for volume {} into {} with {} byte chunks",
            s.volume, s.target.display(), s.chunk_size_bytes, cfg.volume, cfg.target.display(), cfg.chunk_size_bytes
        )));
    }
    Ok(())
}

/// Prepares the target and the map for a new session and records it.
fn create_session(
    cfg: &FrontendConfig,
    info: &blocking::VolumeInfo,
) -> Result<SessionState, FrontendError> {
    let size = info.size_bytes;
    let path = &cfg.target;
    let geo = Geometry::new(size, cfg.chunk_size_bytes, 1);
    if cfg.passthrough {
        return create_passthrough_session(cfg, &geo);
    }
    let fresh;
    let file = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => {
            fresh = false;
            let meta = f.metadata().map_err(|e| target_err(path, e))?;
            let have = if meta.file_type().is_block_device() {
                crate::sys::block_device_size(&f).map_err(|e| target_err(path, e))?
            } else {
                meta.len()
            };
            if have < size {
                return Err(target_err(
                    path,
                    format!("it holds {have} bytes; the volume needs {size}"),
                ));
            }
            f
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fresh = true;
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| target_err(path, e))?;
            // Pre-allocate so background hydration never fails for space halfway through.
            crate::sys::fallocate(&f, 0, 0, size)
                .map_err(|e| target_err(path, format!("pre-allocating {size} bytes: {e}")))?;
            f
        }
        Err(e) => return Err(target_err(path, e)),
    };
    let holes = geo.hole_chunks(&info.extents);
    if !fresh {
        // `Zero` promises the target reads zeros there: make it so before the map says it.
        zero_runs(&file, &geo, &holes)
            .map_err(|e| target_err(path, format!("zeroing source holes: {e}")))?;
    }
    file.sync_all().map_err(|e| target_err(path, e))?;
    drop(file);
    map::file::create(&state::map_path(&cfg.state_dir), &geo, &holes)
        .map_err(|e| state_err(&cfg.state_dir, e))?;
    let s = SessionState {
        format: state::STATE_FORMAT,
        volume: cfg.volume.clone(),
        volume_size_bytes: size,
        chunk_size_bytes: cfg.chunk_size_bytes,
        target: cfg.target.clone(),
        target_fresh: fresh,
        phase: Phase::Migrating,
    };
    state::store(&cfg.state_dir, &s).map_err(|e| state_err(&cfg.state_dir, e))?;
    tracing::info!(volume = %s.volume, size, chunks = geo.chunk_count, holes = holes.len(), fresh, "new session");
    Ok(s)
}

/// A session whose target is the source itself: checked, never modified; the map says every
/// chunk is `Present` (holes included: the source reads zeros there by itself).
fn create_passthrough_session(
    cfg: &FrontendConfig,
    geo: &Geometry,
) -> Result<SessionState, FrontendError> {
    let path = &cfg.target;
    let size = geo.volume_size_bytes;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| target_err(path, e))?;
    let meta = f.metadata().map_err(|e| target_err(path, e))?;
    let have = if meta.file_type().is_block_device() {
        crate::sys::block_device_size(&f).map_err(|e| target_err(path, e))?
    } else {
        meta.len()
    };
    if have != size {
        return Err(target_err(
            path,
            format!("it holds {have} bytes; the backend serving it reports {size}"),
        ));
    }
    drop(f);
    let map_path = state::map_path(&cfg.state_dir);
    map::file::create(&map_path, geo, &[]).map_err(|e| state_err(&cfg.state_dir, e))?;
    mark_all_present(&map_path, geo).map_err(|e| state_err(&cfg.state_dir, e))?;
    let s = SessionState {
        format: state::STATE_FORMAT,
        volume: cfg.volume.clone(),
        volume_size_bytes: size,
        chunk_size_bytes: cfg.chunk_size_bytes,
        target: cfg.target.clone(),
        target_fresh: false,
        phase: Phase::Migrating,
    };
    state::store(&cfg.state_dir, &s).map_err(|e| state_err(&cfg.state_dir, e))?;
    tracing::info!(volume = %s.volume, size, chunks = geo.chunk_count, "new pass-through session: the target is the source");
    Ok(s)
}

/// Rewrites a new map's body with every chunk `Present`, durably.
fn mark_all_present(path: &Path, geo: &Geometry) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let present = ChunkState::Present.code();
    let mut body = vec![0u8; wire_format::state::map_bytes(geo.chunk_count) as usize];
    for c in 0..geo.chunk_count {
        body[(c / 4) as usize] |= present << ((c % 4) * 2);
    }
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(wire_format::state::MAP_HEADER_LEN as u64))?;
    f.write_all(&body)?;
    f.sync_all()
}

fn zero_runs(file: &fs::File, geo: &Geometry, chunks: &[u64]) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    let mut i = 0;
    while i < chunks.len() {
        let start = chunks[i];
        let mut end = start + 1;
        while i + 1 < chunks.len() && chunks[i + 1] == end {
            i += 1;
            end += 1;
        }
        i += 1;
        let off = geo.chunk_offset(start);
        let len = geo.chunk_offset(end).min(geo.volume_size_bytes) - off;
        crate::sys::fallocate(file, mode, off, len)?;
    }
    Ok(())
}

/// The target's O_DIRECT granule, which becomes the export's minimum block size.
fn target_alignment(path: &Path, volume_size: u64) -> Result<u32, FrontendError> {
    let opts = OpenOptions {
        read: true,
        write: true,
        create: false,
        direct: true,
    };
    let f = File::open(path, &opts).map_err(|e| target_err(path, e))?;
    let align = f.dio_align().offset.max(512) as u64;
    if !volume_size.is_multiple_of(align) {
        return Err(target_err(path, format!(
            "the volume size {volume_size} is not a multiple of the target's O_DIRECT block size {align}"
        )));
    }
    Ok(align as u32)
}

/// Background target writes in flight per core. Without a bound every arriving chunk was
/// written at once (hundreds of 64 KiB writes queued per core); in paired 1 GiB hydrations
/// from a RAM-disk source that was slower in each pair than 16 in flight (our disk is noisy:
/// 1.49-1.91 s against 1.12-1.79 s), 8 was slower too, 16, 32 and 64 alike. Since background
/// fills of adjacent chunks are written together (`coalesce`), a fill holds its permit while
/// it waits for neighbours too, and 32 left room for only two 1 MiB runs per core: 64 was
/// faster in each of 6 alternating pairs of 2 GiB hydrations from a RAM disk (1027-1124 MiB/s
/// against 913-988), 128 no faster than 64.
const FILLS_IN_FLIGHT: usize = 64;

/// Free chunk buffers a core keeps when no hydration runs (on-demand fetches, writes).
pub(crate) const CHUNK_BUFS_RESERVE: usize = 64;

/// What every core starts from (shared, read-only).
struct CoreSetup {
    geo: Geometry,
    min_block: u32,
    cfg: FrontendConfig,
    session: SessionState,
    /// The map body as loaded at start-up.
    body: Vec<u8>,
    resident: Arc<ResidentMap>,
    dedup: Option<Arc<crate::dedup::DedupIndex>>,
    backfill: Option<Arc<Backfill>>,
    recorder: Option<crate::recording::RecordSink>,
    prefetch: Arc<crate::prefetch::Plan>,
}

async fn start_core(
    core: usize,
    setup: &CoreSetup,
    ready: Option<impl FnOnce(String)>,
) -> Result<(), FrontendError> {
    let CoreSetup {
        geo,
        min_block,
        cfg,
        session,
        body,
        resident,
        dedup,
        backfill,
        recorder,
        prefetch,
    } = setup;
    let (geo, min_block) = (*geo, *min_block);
    let direct = OpenOptions {
        read: true,
        write: true,
        create: false,
        direct: true,
    };
    let target =
        File::open(&session.target, &direct).map_err(|e| target_err(&session.target, e))?;
    let map_path = state::map_path(&cfg.state_dir);
    let buffered = OpenOptions {
        read: true,
        write: true,
        create: false,
        direct: false,
    };
    let map_file = File::open(&map_path, &buffered).map_err(|e| state_err(&cfg.state_dir, e))?;
    // While hydration runs, keep what its window can hold (`bufs`); it trims at the end.
    let window = cfg.hydrate.batch_chunks * cfg.hydrate.in_flight;
    let bufs = Rc::new(ChunkBufs::new(
        geo.chunk_size_bytes as usize,
        CHUNK_BUFS_RESERVE + window,
    ));
    // Pings measure the path's round trip, which tells a LAN from a WAN (`hydrate::cap`).
    let mut capabilities = wire_format::frame::CAP_PING;
    if cfg.compress {
        // One stream per connection: chunks refer to what came before them.
        capabilities |= wire_format::frame::CAP_ZSTD | wire_format::frame::CAP_ZSTD_STREAM;
    }
    if dedup.is_some() {
        // A chunk the backend hashed for references comes with its digest, sparing ours (a
        // SHA-256 pass per chunk, half the CPU of a loopback hydration).
        capabilities |= wire_format::frame::CAP_REFS | wire_format::frame::CAP_DIGESTS;
        // Blocks repeated off chunk boundaries (file copies) are copied from the target.
        capabilities |= wire_format::frame::CAP_BLOCK_REFS;
    }
    if backfill.is_some() {
        // On a link faster than the hash, chunks come unhashed and are indexed later.
        capabilities |= wire_format::frame::CAP_LAZY_INDEX;
    }
    let shared = cfg.qos == QosMode::Shared;
    let link = |tos| LinkConfig {
        addr: cfg.backend,
        volume: cfg.volume.clone(),
        chunk_size_bytes: geo.chunk_size_bytes,
        tos,
        capabilities,
        dedup: dedup.clone(),
        // The backend shares out the one connection; its floor is per connection, and
        // every core has one.
        background_floor: shared.then(|| cfg.background_floor / geo.cores.max(1) as u64),
    };
    let counters = Rc::new(crate::link::client::LinkCounters::default());
    let core_dedup = dedup
        .as_ref()
        .map(|d| dedup::CoreDedup::open(d.clone(), &target, backfill.clone()));
    let on_demand = Rc::new(LinkSlot::new(link(None), bufs.clone(), counters.clone()));
    let coalescer = coalesce::Coalescer::new(target.clone(), bufs.clone());
    let shard = Rc::new(shard::Shard {
        id: core,
        geo,
        target,
        map_file,
        target_fresh: session.target_fresh,
        map: std::cell::RefCell::new(VolumeMap::from_body(&geo, core, body)),
        resident: resident.clone(),
        chunks: Default::default(),
        sync: Default::default(),
        on_demand: on_demand.clone(),
        background: if shared {
            on_demand
        } else {
            Rc::new(LinkSlot::new(
                link(cfg.background_tos),
                bufs.clone(),
                counters.clone(),
            ))
        },
        background_cap: crate::hydrate::cap::BackgroundCap::new(
            shared,
            geo.chunk_size_bytes,
            cfg.hydrate.batch_chunks * cfg.hydrate.in_flight,
            if shared {
                cfg.background_floor / geo.cores.max(1) as u64
            } else {
                0
            },
        ),
        qos_shared: shared,
        bufs,
        fill_permits: Arc::new(async_lock::Semaphore::new(FILLS_IN_FLIGHT)),
        coalescer,
        stats: Default::default(),
        latency: Default::default(),
        fetches_in_flight: Default::default(),
        fetches_changed: Notify::default(),
        hydration_held: Default::default(),
        hydration_changed: Notify::default(),
        background_rate: std::cell::Cell::new(cfg.background_rate),
        link_counters: counters,
        dedup: core_dedup,
        prefetch: crate::prefetch::ShardPrefetch::new(prefetch.clone(), &geo, core),
    });
    volume::install_shard(shard.clone());
    let vol = Rc::new(volume::Volume {
        name: cfg.volume.clone(),
        geo,
        min_block,
        handle: runtime::core_handle(),
        resident: resident.clone(),
        recorder: recorder.clone(),
        indexer: backfill.clone(),
    });
    volume::install_volume(vol.clone());
    runtime::spawn(hydrate::run(shard, cfg.hydrate)).detach();
    if core != 0 {
        return Ok(());
    }
    let listener = match &cfg.nbd {
        NbdListen::Unix(p) => Listener::bind_unix(p),
        NbdListen::Tcp(a) => Listener::bind_tcp(*a),
    }
    .map_err(|source| FrontendError::Listen {
        spec: cfg.nbd.to_string(),
        source,
    })?;
    if let Some(ready) = ready {
        ready(match &cfg.nbd {
            NbdListen::Unix(p) => format!("unix:{}", p.display()),
            NbdListen::Tcp(_) => format!("tcp:{}", listener.local_addr()),
        });
    }
    runtime::spawn(crate::accept::round_robin(
        listener,
        |stream| crate::nbd::serve(stream, volume::local_volume()),
        || volume::local_gate().is_shut_down(),
    ))
    .detach();
    Ok(())
}
