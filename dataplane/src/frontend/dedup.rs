//! This core's side of content dedup: the files the index points into, opened on this ring,
//! and the content being written right now (so a reference to a chunk that arrived a moment
//! ago waits for its fill instead of missing).
//!
//! Rule: a reference is used only if the bytes read back hash to its digest (see
//! [`crate::dedup`]); a mismatch forgets the entry and the caller fetches the data.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::bufs::ChunkBufs;
use crate::dedup::backfill::Backfill;
use crate::dedup::{self, DedupIndex, Digest};
use crate::notify::Notify;
use crate::runtime::{AlignedBuf, File, OpenOptions};

pub struct CoreDedup {
    pub index: Arc<DedupIndex>,
    /// By file number; `None` where the file could not be opened (it is then never used).
    files: Vec<Option<File>>,
    /// Content whose fill into our target is in flight, with a signal for when it lands.
    pending: RefCell<HashMap<Digest, Rc<Notify>>>,
    /// Indexes content that arrived unhashed, once hydration is done.
    backfill: Option<Arc<Backfill>>,
}

impl CoreDedup {
    /// Opens every file of the index on this core (start-up, before any IO is served).
    /// `own` is this core's handle on the target.
    pub fn open(index: Arc<DedupIndex>, own: &File, backfill: Option<Arc<Backfill>>) -> CoreDedup {
        let opts = OpenOptions {
            read: true,
            write: false,
            create: false,
            direct: true,
        };
        let files = index
            .paths()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i as u32 == index.own_file() {
                    return Some(own.clone());
                }
                match File::open(p, &opts) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::debug!(path = %p.display(), error = %e, "dedup source not available");
                        None
                    }
                }
            })
            .collect();
        CoreDedup {
            index,
            files,
            pending: RefCell::new(HashMap::new()),
            backfill,
        }
    }

    /// The indexer's (queued, indexed) chunks, if chunks may arrive unhashed.
    pub fn backfill_numbers(&self) -> Option<(u64, u64)> {
        self.backfill.as_ref().map(|b| (b.queued(), b.indexed()))
    }

    /// `chunk` is on our target and arrived without a digest ([`dedup::DigestHint::Later`]).
    pub fn later(&self, chunk: u64) {
        if let Some(b) = &self.backfill {
            b.later(chunk);
        }
    }

    /// Marks `d` as being written; returns the signal to fire when done.
    pub fn begin(&self, d: Digest) -> Rc<Notify> {
        self.pending
            .borrow_mut()
            .entry(d)
            .or_insert_with(|| Rc::new(Notify::default()))
            .clone()
    }

    /// The fill of `d` finished (stored at `offset` of our target if `stored`).
    pub fn end(&self, d: Digest, stored: Option<(u64, u32)>) {
        if let Some((offset, len)) = stored {
            self.index.insert_own(d, offset, len);
        }
        if let Some(n) = self.pending.borrow_mut().remove(&d) {
            n.notify_all();
        }
    }

    /// The content of digest `d` (`len` bytes), read from wherever this machine holds it and
    /// checked against `d`; `None` if it is nowhere (any more).
    pub async fn resolve(&self, d: &Digest, len: u32, bufs: &ChunkBufs) -> Option<AlignedBuf> {
        loop {
            let pending = self.pending.borrow().get(d).cloned();
            match pending {
                Some(n) => n.wait().await,
                None => break,
            }
        }
        let loc = self.index.lookup(d, len)?;
        let file = self.files.get(loc.file as usize)?.as_ref()?;
        let mut buf = bufs.take();
        buf.set_len(len as usize);
        let (res, buf) = file.read_exact_at(buf, loc.offset).await;
        if res.is_ok() && dedup::digest(&buf) == *d {
            return Some(buf);
        }
        tracing::debug!(
            file = loc.file,
            offset = loc.offset,
            "dedup entry is stale; forgetting it"
        );
        self.index.forget(d, loc);
        bufs.give(buf);
        None
    }
}
