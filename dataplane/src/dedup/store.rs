//! The dedup index on disk: one SQLite database per frontend machine, shared by every volume
//! (and every frontend process: WAL mode, busy timeout) migrated there.
//!
//! Tables: `files(id, path)` names the places content lies (target files and devices),
//! `chunks(digest, file, offset, len)` maps content to a place. Entries are hints (see the
//! module above), so losing the last writes at a crash costs dedup hits, never data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Digest, Loc};

/// Bumped when the schema changes; an index of another version is refused, not guessed at.
const SCHEMA_VERSION: i64 = 1;
/// Most operations in one transaction, and the longest a queued one waits.
const BATCH_MAX: usize = 4096;
const BATCH_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("dedup index {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("dedup index {path} has schema version {found}; this ferry reads version {SCHEMA_VERSION} (move it away to start a new index)")]
    Version { path: PathBuf, found: i64 },
    #[error("dedup index {path}: {message}")]
    Other { path: PathBuf, message: String },
}

pub(super) enum Op {
    Put(Digest, Loc),
    Delete(Digest, Loc),
}

pub(super) struct Loaded {
    pub paths: Vec<PathBuf>,
    /// Database id of each file, by dense number.
    pub db_ids: Vec<i64>,
    pub own_file: u32,
    pub entries: Vec<(Digest, Loc)>,
}

fn sq(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.into(),
        source,
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Other {
            path: path.into(),
            message: format!("creating {}: {e}", dir.display()),
        })?;
    }
    let c = Connection::open(path).map_err(sq(path))?;
    c.busy_timeout(Duration::from_secs(10)).map_err(sq(path))?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(sq(path))?;
    c.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sq(path))?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS chunks (
             digest BLOB PRIMARY KEY NOT NULL,
             file INTEGER NOT NULL,
             offset INTEGER NOT NULL,
             len INTEGER NOT NULL);
         INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1);",
    )
    .map_err(sq(path))?;
    let found: i64 = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(sq(path))?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::Version {
            path: path.into(),
            found,
        });
    }
    Ok(c)
}

/// Reads the whole index and registers `own` (canonical path of this volume's target). With
/// `forget_own`, entries pointing into `own` are dropped first: a new session is about to
/// overwrite that target, so what an earlier session left there is no longer worth a lookup.
pub(super) fn load(path: &Path, own: &Path, forget_own: bool) -> Result<Loaded, StoreError> {
    let c = connect(path)?;
    let own_str = own.to_string_lossy().into_owned();
    c.execute(
        "INSERT OR IGNORE INTO files (path) VALUES (?1)",
        params![own_str],
    )
    .map_err(sq(path))?;
    if forget_own {
        let n = c
            .execute(
                "DELETE FROM chunks WHERE file = (SELECT id FROM files WHERE path = ?1)",
                params![own_str],
            )
            .map_err(sq(path))?;
        if n > 0 {
            tracing::info!(entries = n, target = %own.display(), "dedup entries of an earlier session on this target forgotten");
        }
    }
    // Database ids may have gaps; number the files densely for the dataplane.
    let mut ids: HashMap<i64, u32> = HashMap::new();
    let mut paths = Vec::new();
    let mut db_ids = Vec::new();
    let mut own_file = None;
    {
        let mut st = c
            .prepare("SELECT id, path FROM files ORDER BY id")
            .map_err(sq(path))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sq(path))?;
        for row in rows {
            let (id, p) = row.map_err(sq(path))?;
            let n = paths.len() as u32;
            if p == own_str {
                own_file = Some(n);
            }
            ids.insert(id, n);
            db_ids.push(id);
            paths.push(PathBuf::from(p));
        }
    }
    let own_file = own_file.ok_or_else(|| StoreError::Other {
        path: path.into(),
        message: "the target was registered but cannot be read back".into(),
    })?;
    let mut entries = Vec::new();
    let mut st = c
        .prepare("SELECT digest, file, offset, len FROM chunks")
        .map_err(sq(path))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sq(path))?;
    for row in rows {
        let (d, file, offset, len) = row.map_err(sq(path))?;
        // Rows that do not make sense are skipped: the index is a hint, not an authority.
        let (Ok(d), Some(&file), Ok(offset), Ok(len)) = (
            Digest::try_from(d.as_slice()),
            ids.get(&file),
            u64::try_from(offset),
            u32::try_from(len),
        ) else {
            continue;
        };
        entries.push((d, Loc { file, offset, len }));
    }
    Ok(Loaded {
        paths,
        db_ids,
        own_file,
        entries,
    })
}

/// Starts the thread that writes index changes in batches.
/// `ids` maps dense file numbers to database ids (from [`load`]).
pub(super) fn spawn_writer(
    path: &Path,
    ids: Vec<i64>,
) -> Result<(mpsc::Sender<Op>, std::thread::JoinHandle<()>), StoreError> {
    let c = connect(path)?;
    let (tx, rx) = mpsc::channel::<Op>();
    let p = path.to_path_buf();
    let h = std::thread::Builder::new()
        .name("ferry-dedup-index".into())
        .spawn(move || writer(c, ids, rx, &p))
        .map_err(|e| StoreError::Other {
            path: path.into(),
            message: format!("starting the index writer: {e}"),
        })?;
    Ok((tx, h))
}

fn writer(mut c: Connection, ids: Vec<i64>, rx: mpsc::Receiver<Op>, path: &Path) {
    let mut batch = Vec::new();
    loop {
        let first = match rx.recv() {
            Ok(op) => op,
            Err(_) => return,
        };
        batch.push(first);
        let deadline = std::time::Instant::now() + BATCH_WAIT;
        let mut closed = false;
        while batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(op) => batch.push(op),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if let Err(e) = commit(&mut c, &ids, &batch) {
            tracing::warn!(db = %path.display(), error = %e, ops = batch.len(), "dedup index write failed; those entries are lost (dedup hits only)");
        }
        batch.clear();
        if closed {
            return;
        }
    }
}

fn commit(c: &mut Connection, ids: &[i64], batch: &[Op]) -> rusqlite::Result<()> {
    let t = c.transaction()?;
    {
        let mut put = t.prepare_cached(
            "INSERT OR REPLACE INTO chunks (digest, file, offset, len) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut del =
            t.prepare_cached("DELETE FROM chunks WHERE digest = ?1 AND file = ?2 AND offset = ?3")?;
        for op in batch {
            match op {
                Op::Put(d, loc) => {
                    if let Some(&id) = ids.get(loc.file as usize) {
                        put.execute(params![&d[..], id, loc.offset as i64, loc.len])?;
                    }
                }
                Op::Delete(d, loc) => {
                    if let Some(&id) = ids.get(loc.file as usize) {
                        del.execute(params![&d[..], id, loc.offset as i64])?;
                    }
                }
            }
        }
    }
    t.commit()
}

/// How many entries the index at `path` holds (for status and tests); `None` if absent.
pub fn count(path: &Path) -> Result<Option<u64>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let c = Connection::open(path).map_err(sq(path))?;
    let n: Option<i64> = c
        .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))
        .optional()
        .map_err(sq(path))?;
    Ok(n.map(|n| n.max(0) as u64))
}
