//! Content dedup on the frontend: the block map from a chunk's SHA-256 to a place on this
//! machine that holds that content (seed §4.4, DESIGN.md "block map").
//!
//! * The index is persistent ([`store`], SQLite) and shared by every volume migrated on this
//!   machine: a second VM cloned from the same image finds the first one's chunks.
//! * How the two sides learn what the other has: when a link opens, the frontend announces
//!   every digest it holds (`Have` frames); the backend answers a fetch with a 32-byte
//!   `ChunkRef` instead of the data when the chunk's digest was announced or already carried
//!   earlier on the same connection.
//! * **A location is a hint, never a promise.** The file there may have been written since
//!   (the other volume's workload runs on it, or this volume's). A reference is only used
//!   after the bytes read from the location hash to the digest again; otherwise the entry is
//!   forgotten and the chunk is fetched as data ([`crate::frontend`] `fetch.rs`).
//! * Fixed-size chunks for now: an entry records its length, so a lookup with another chunk
//!   size simply misses. Content-defined chunking would add entries of other lengths; the
//!   wire `ChunkRef` already names content by digest, not by position.

pub mod backfill;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use sha2::{Digest as _, Sha256};
use wire_format::frame::DIGEST_LEN;

pub use store::StoreError;

pub type Digest = [u8; DIGEST_LEN];

/// SHA-256 of a chunk's content.
pub fn digest(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// What is known of a fetched chunk's digest when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestHint {
    /// Sent with the data, or checked while resolving a reference: no hashing needed.
    Known(Digest),
    /// Unknown, and the backend may reference this content later: hash it now.
    Compute,
    /// The backend did not hash it and will never reference it
    /// ([`wire_format::frame::CAP_LAZY_INDEX`]): index it later, off the data path
    /// ([`backfill`]).
    Later,
}

/// Where a chunk's content lies: byte `offset` of file number `file` ([`DedupIndex::paths`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
}

/// The in-memory index, written through to the store by a background thread (never the
/// dataplane cores: SQLite blocks).
pub struct DedupIndex {
    map: Mutex<HashMap<Digest, Loc>>,
    paths: Vec<PathBuf>,
    own_file: u32,
    tx: Mutex<Option<mpsc::Sender<store::Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for DedupIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupIndex")
            .field("paths", &self.paths)
            .field("own_file", &self.own_file)
            .finish_non_exhaustive()
    }
}

impl DedupIndex {
    /// Opens (or creates) the index at `db` and registers `own_target` as a place content is
    /// stored. Entries whose file no longer exists are dropped from memory. `new_session`:
    /// the target is about to be overwritten, so entries pointing into it are dropped too.
    pub fn open(db: &Path, own_target: &Path, new_session: bool) -> Result<DedupIndex, StoreError> {
        let own = std::fs::canonicalize(own_target).unwrap_or_else(|_| own_target.to_path_buf());
        let loaded = store::load(db, &own, new_session)?;
        let own_file = loaded.own_file;
        let mut map = HashMap::with_capacity(loaded.entries.len());
        let exists: Vec<bool> = loaded.paths.iter().map(|p| p.exists()).collect();
        for (d, loc) in loaded.entries {
            if exists.get(loc.file as usize).copied().unwrap_or(false) {
                map.insert(d, loc);
            }
        }
        let (tx, writer) = store::spawn_writer(db, loaded.db_ids)?;
        tracing::info!(db = %db.display(), entries = map.len(), files = loaded.paths.len(), "dedup index opened");
        Ok(DedupIndex {
            map: Mutex::new(map),
            paths: loaded.paths,
            own_file,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// File paths by number; fixed for the life of the process.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The number of this volume's target in [`DedupIndex::paths`].
    pub fn own_file(&self) -> u32 {
        self.own_file
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lookup(&self, d: &Digest, len: u32) -> Option<Loc> {
        let m = self.map.lock().ok()?;
        m.get(d).copied().filter(|l| l.len == len)
    }

    /// Records that this volume's target now holds content `d` at `offset`.
    pub fn insert_own(&self, d: Digest, offset: u64, len: u32) {
        let loc = Loc {
            file: self.own_file,
            offset,
            len,
        };
        if let Ok(mut m) = self.map.lock() {
            m.insert(d, loc);
        }
        self.send(store::Op::Put(d, loc));
    }

    /// Calls `f` with the offset of every entry in this volume's target.
    pub fn for_each_own(&self, mut f: impl FnMut(u64)) {
        if let Ok(m) = self.map.lock() {
            m.values()
                .filter(|l| l.file == self.own_file)
                .for_each(|l| f(l.offset));
        }
    }

    /// Drops `d` if it still points at `loc` (its content there no longer matches).
    pub fn forget(&self, d: &Digest, loc: Loc) {
        if let Ok(mut m) = self.map.lock() {
            if m.get(d) == Some(&loc) {
                m.remove(d);
            }
        }
        self.send(store::Op::Delete(*d, loc));
    }

    /// Every digest held, concatenated, at most `max` of them (for `Have` frames).
    pub fn announce(&self, max: usize) -> Vec<u8> {
        let Ok(m) = self.map.lock() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(m.len().min(max) * DIGEST_LEN);
        for d in m.keys().take(max) {
            out.extend_from_slice(d);
        }
        out
    }

    fn send(&self, op: store::Op) {
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                // A dead writer only costs future dedup hits; the data path goes on.
                let _ = tx.send(op);
            }
        }
    }

    /// Commits what is queued and stops the writer thread.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(w) = w.take() {
                let _ = w.join();
            }
        }
    }
}

impl Drop for DedupIndex {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_persist_and_a_new_session_forgets_its_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("index.sqlite");
        let (ta, tb) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&ta, b"a").expect("write");
        std::fs::write(&tb, b"b").expect("write");
        let (d1, d2) = (digest(b"one"), digest(b"two"));
        {
            let a = DedupIndex::open(&db, &ta, true).expect("open a");
            a.insert_own(d1, 0, 4096);
            a.insert_own(d2, 4096, 4096);
            assert_eq!(a.lookup(&d1, 4096).map(|l| l.offset), Some(0));
            assert_eq!(a.lookup(&d1, 8192), None, "another chunk size misses");
            a.close();
        }
        {
            // Another volume's session sees a's entries, pointing into a's target.
            let b = DedupIndex::open(&db, &tb, true).expect("open b");
            let l = b.lookup(&d2, 4096).expect("shared entry");
            assert_eq!(
                b.paths()[l.file as usize],
                std::fs::canonicalize(&ta).unwrap()
            );
            assert_eq!(b.announce(10).len(), 2 * DIGEST_LEN);
            b.forget(&d2, l);
            assert_eq!(b.lookup(&d2, 4096), None);
            b.close();
        }
        {
            let a = DedupIndex::open(&db, &ta, false).expect("resume a");
            assert!(a.lookup(&d1, 4096).is_some(), "resume keeps entries");
            assert!(a.lookup(&d2, 4096).is_none(), "forget was persisted");
            a.close();
        }
        let a = DedupIndex::open(&db, &ta, true).expect("new session on a");
        assert!(
            a.is_empty(),
            "a new session on the same target starts clean"
        );
    }
}
