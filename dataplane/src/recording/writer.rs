//! The recording writer: a plain thread that owns the SQLite connection, fed by cores through
//! an unbounded `mpsc` channel whose length we bound ourselves (see the module above).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::format::{uuid_hex, EventKind, Identity, FORMAT_NAME, SCHEMA};
use super::RecordingError;

/// Events queued for the writer beyond which new ones are dropped (about 32 MiB of queue).
pub const QUEUED_MAX: usize = 1 << 20;
/// Most events in one transaction, and the longest a queued one waits.
const BATCH_MAX: usize = 8192;
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// An event as a core hands it over: fixed size, no allocation of its own.
#[derive(Clone, Copy, Debug)]
struct Raw {
    t_us: u64,
    offset_bytes: u64,
    len_bytes: u32,
    kind: EventKind,
}

enum Msg {
    Event(Raw),
    /// Everything sent before this is written; the writer closes the file and exits.
    Stop,
}

struct Shared {
    start: Instant,
    queued: AtomicUsize,
    dropped: AtomicU64,
}

/// A core's handle for recording requests; clone one per core. `record` never blocks.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl RecordSink {
    /// Queues one event; drops (and counts) it if the writer is [`QUEUED_MAX`] behind.
    pub fn record(&self, kind: EventKind, offset_bytes: u64, len_bytes: u32) {
        let s = &self.shared;
        if s.queued.fetch_add(1, Ordering::Relaxed) >= QUEUED_MAX {
            s.queued.fetch_sub(1, Ordering::Relaxed);
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let raw = Raw {
            t_us: s.start.elapsed().as_micros() as u64,
            offset_bytes,
            len_bytes,
            kind,
        };
        if self.tx.send(Msg::Event(raw)).is_err() {
            // The writer is gone (it failed and said so); nothing is waiting for this.
            s.queued.fetch_sub(1, Ordering::Relaxed);
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RecordSink {
    /// Events dropped so far (the writer fell behind, or is gone).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// What a finished recording holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub events: u64,
    pub dropped: u64,
}

/// Owner of a recording being written: hands out sinks, and closes the file at the end.
pub struct Recorder {
    path: PathBuf,
    sink: RecordSink,
    thread: Option<std::thread::JoinHandle<Result<u64, RecordingError>>>,
}

fn sq(path: &Path) -> impl Fn(rusqlite::Error) -> RecordingError + '_ {
    move |source| RecordingError::Sqlite {
        path: path.into(),
        source,
    }
}

impl Recorder {
    /// Creates the recording at `path` (which must not exist) for the volume `id` and starts
    /// its writer thread. Blocking: call at start-up, never on a core.
    pub fn create(path: &Path, id: &Identity) -> Result<Recorder, RecordingError> {
        if path.exists() {
            return Err(RecordingError::Exists { path: path.into() });
        }
        let c = Connection::open(path).map_err(sq(path))?;
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq(path))?;
        c.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sq(path))?;
        c.execute_batch(SCHEMA).map_err(sq(path))?;
        {
            let mut put = c
                .prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")
                .map_err(sq(path))?;
            put.execute(params!["format", FORMAT_NAME])
                .map_err(sq(path))?;
            put.execute(params!["format_version", id.format_version])
                .map_err(sq(path))?;
            put.execute(params!["volume_size_bytes", id.volume_size_bytes as i64])
                .map_err(sq(path))?;
            put.execute(params!["fs_uuid", id.fs_uuid.as_ref().map(uuid_hex)])
                .map_err(sq(path))?;
            put.execute(params!["chunk_size_bytes", id.chunk_size_bytes])
                .map_err(sq(path))?;
            put.execute(params!["created_at_unix_s", id.created_at_unix_s as i64])
                .map_err(sq(path))?;
            put.execute(params!["ferry_version", id.ferry_version])
                .map_err(sq(path))?;
        }
        let shared = Arc::new(Shared {
            start: Instant::now(),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-recording".into())
            .spawn(move || write_loop(c, rx, &sh, &p))
            .map_err(|source| RecordingError::Io {
                path: path.into(),
                source,
            })?;
        Ok(Recorder {
            path: path.into(),
            sink: RecordSink { tx, shared },
            thread: Some(thread),
        })
    }

    pub fn sink(&self) -> RecordSink {
        self.sink.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes everything recorded so far, closes the file (a single self-contained file:
    /// journal mode back to DELETE) and stops the writer. Call after the cores stopped.
    pub fn finish(mut self) -> Result<Written, RecordingError> {
        let _ = self.sink.tx.send(Msg::Stop);
        let events = match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) | None => {
                return Err(RecordingError::Corrupt {
                    path: self.path.clone(),
                    what: "the recording writer panicked".into(),
                })
            }
        };
        Ok(Written {
            events,
            dropped: self.sink.shared.dropped.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Not finished (an error path): stop the writer, keep what it wrote.
        if let Some(t) = self.thread.take() {
            let _ = self.sink.tx.send(Msg::Stop);
            let _ = t.join();
        }
    }
}

/// Returns how many events were written.
fn write_loop(
    mut c: Connection,
    rx: mpsc::Receiver<Msg>,
    shared: &Shared,
    path: &Path,
) -> Result<u64, RecordingError> {
    let mut batch: Vec<Raw> = Vec::with_capacity(BATCH_MAX);
    let mut seq: u64 = 0;
    let mut dropped_logged = 0;
    let mut failed = false;
    loop {
        let mut stop = false;
        match rx.recv() {
            Ok(Msg::Event(e)) => batch.push(e),
            Ok(Msg::Stop) | Err(_) => stop = true,
        }
        let deadline = Instant::now() + BATCH_WAIT;
        while !stop && batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Msg::Event(e)) => batch.push(e),
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        if !failed {
            match commit(&mut c, seq, &batch) {
                Ok(()) => seq += batch.len() as u64,
                Err(e) => {
                    // Keep draining so cores never see a growing queue; the file says why.
                    tracing::warn!(recording = %path.display(), error = %e, "recording write failed; later events are dropped");
                    failed = true;
                }
            }
        }
        if failed {
            shared
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        batch.clear();
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped != dropped_logged {
            tracing::warn!(recording = %path.display(), dropped, "recording fell behind; events dropped (the recording is incomplete)");
            dropped_logged = dropped;
        }
        if stop {
            break;
        }
    }
    let dropped = shared.dropped.load(Ordering::Relaxed);
    c.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('events_dropped', ?1)",
        params![dropped as i64],
    )
    .map_err(sq(path))?;
    c.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sq(path))?;
    Ok(seq)
}

fn commit(c: &mut Connection, first_seq: u64, batch: &[Raw]) -> rusqlite::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let t = c.transaction()?;
    {
        let mut put = t.prepare_cached(
            "INSERT INTO events (seq, t_us, offset, len, kind) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (i, e) in batch.iter().enumerate() {
            put.execute(params![
                (first_seq + i as u64) as i64,
                e.t_us as i64,
                e.offset_bytes as i64,
                e.len_bytes,
                e.kind.code()
            ])?;
        }
    }
    t.commit()
}
