//! Background fills of adjacent chunks go to the target as one write.
//!
//! A target pre-allocated with `fallocate` holds unwritten extents: every O_DIRECT write into
//! them ends with the file system converting its range to written, a journalled metadata
//! update per write request, done by kernel workers that share the cores with us. Measured on
//! this project's 2-core machine: fio wrote 2 GiB into a fallocated file at 1837-1928 MiB/s in
//! 64 KiB writes and 2114-2390 MiB/s in 1 MiB writes, with a third less CPU; Ferry hydrated
//! 1349-1577 MiB/s into a pre-written target against 1105-1174 MiB/s into a fallocated one.
//! With this module (and 64 fills in flight), runs average 5-8 chunks, and 2 GiB hydrations
//! from a RAM disk were faster than one write per chunk in 4 of 6 alternating pairs (median
//! about 3 %); see `FILLS_IN_FLIGHT` for the rest of the gain.
//!
//! So a background fill hands its chunk here instead of writing it. Chunks wait, sorted by
//! offset, until adjacent ones make a run of [`RUN_BYTES_MAX`] (the backend answers in runs of
//! adjacent chunks, which arrive over a few receives), which goes out at once as one
//! `pwritev`, or until [`FLUSH_DELAY`] after the first of them, when whatever waits goes out
//! as runs of adjacent chunks. Every fill still waits for its own chunk's result and does its
//! own bookkeeping (map, dedup, sync), so nothing about when a chunk counts as stored changes.
//! A run whose write fails is written again chunk by chunk, so each chunk gets its own result.
//! On-demand fills never wait here.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;

use crate::bufs::ChunkBufs;
use crate::runtime::{self, AlignedBuf, File};

/// Largest write a run becomes (fio's block size in the hydration benchmark).
pub const RUN_BYTES_MAX: usize = 1 << 20;
/// Longest a chunk waits for neighbours. Far below a target write's own time (about 2 ms for
/// 1 MiB on our disk), and the chunk's fill permit is held meanwhile, so waiting chunks
/// never flood memory.
pub const FLUSH_DELAY: Duration = Duration::from_micros(300);

struct Pending {
    offset: u64,
    buf: AlignedBuf,
    done: oneshot::Sender<io::Result<()>>,
}

pub struct Coalescer {
    target: File,
    bufs: Rc<ChunkBufs>,
    /// By offset.
    pending: RefCell<BTreeMap<u64, Pending>>,
    /// A flush is scheduled for what is pending.
    scheduled: Cell<bool>,
    /// Writes issued and chunks they carried (for the status).
    writes: Cell<u64>,
    chunks: Cell<u64>,
}

impl Coalescer {
    pub fn new(target: File, bufs: Rc<ChunkBufs>) -> Rc<Coalescer> {
        Rc::new(Coalescer {
            target,
            bufs,
            pending: RefCell::new(BTreeMap::new()),
            scheduled: Cell::new(false),
            writes: Cell::new(0),
            chunks: Cell::new(0),
        })
    }

    /// Writes `buf` at `offset`, with adjacent chunks whose fills are ready now; the buffer
    /// goes back to the chunk pool.
    pub async fn write(self: &Rc<Self>, buf: AlignedBuf, offset: u64) -> io::Result<()> {
        let (done, result) = oneshot::channel();
        self.pending
            .borrow_mut()
            .insert(offset, Pending { offset, buf, done });
        if let Some(run) = self.full_run_at(offset) {
            let me = self.clone();
            runtime::spawn(async move { me.write_run(run).await }).detach();
        } else if !self.scheduled.replace(true) {
            let me = self.clone();
            runtime::spawn(async move {
                runtime::sleep(FLUSH_DELAY).await;
                me.flush();
            })
            .detach();
        }
        match result.await {
            Ok(r) => r,
            Err(_) => Err(io::Error::other(
                "target write abandoned (the core is stopping)",
            )),
        }
    }

    /// (writes issued, chunks written by them) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.writes.get(), self.chunks.get())
    }

    /// The waiting chunks adjacent to the one at `offset`, taken out, if they make a run of
    /// [`RUN_BYTES_MAX`].
    fn full_run_at(&self, offset: u64) -> Option<Vec<Pending>> {
        let mut pending = self.pending.borrow_mut();
        let (from, to) = {
            let here = pending.get(&offset)?;
            let (mut first, mut last) = (here, here);
            let mut bytes = here.buf.len();
            while bytes < RUN_BYTES_MAX {
                match pending.range(..first.offset).next_back() {
                    Some((_, p)) if adjacent(p, first) => {
                        bytes += p.buf.len();
                        first = p;
                    }
                    _ => break,
                }
            }
            while bytes < RUN_BYTES_MAX {
                match pending.range(last.offset + 1..).next() {
                    Some((_, p)) if adjacent(last, p) => {
                        bytes += p.buf.len();
                        last = p;
                    }
                    _ => break,
                }
            }
            if bytes < RUN_BYTES_MAX {
                return None;
            }
            (first.offset, last.offset)
        };
        let keys: Vec<u64> = pending.range(from..=to).map(|(&o, _)| o).collect();
        Some(keys.iter().filter_map(|o| pending.remove(o)).collect())
    }

    fn flush(self: &Rc<Self>) {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        self.scheduled.set(false);
        for run in runs(batch.into_values().collect()) {
            let me = self.clone();
            runtime::spawn(async move { me.write_run(run).await }).detach();
        }
    }

    async fn write_run(&self, run: Vec<Pending>) {
        self.writes.set(self.writes.get() + 1);
        self.chunks.set(self.chunks.get() + run.len() as u64);
        let offset = run[0].offset;
        let (bufs, dones): (Vec<_>, Vec<_>) = run.into_iter().map(|p| (p.buf, p.done)).unzip();
        if bufs.len() > 1 {
            let (res, bufs) = self.target.write_vectored_at(bufs, offset).await;
            match res {
                Ok(()) => {
                    for (buf, done) in bufs.into_iter().zip(dones) {
                        self.bufs.give(buf);
                        let _ = done.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::debug!(offset, error = %e, "run write failed; writing its chunks one by one");
                    self.write_each(offset, bufs, dones).await;
                }
            }
        } else {
            self.write_each(offset, bufs, dones).await;
        }
    }

    async fn write_each(
        &self,
        mut offset: u64,
        bufs: Vec<AlignedBuf>,
        dones: Vec<oneshot::Sender<io::Result<()>>>,
    ) {
        for (buf, done) in bufs.into_iter().zip(dones) {
            let len = buf.len() as u64;
            let (res, buf) = self.target.write_all_at(buf, offset).await;
            self.bufs.give(buf);
            let _ = done.send(res);
            offset += len;
        }
    }
}

/// `next` may follow `prev` in one write: it starts where `prev` ends, and both are whole
/// 4 KiB blocks (every piece of an O_DIRECT write must be).
fn adjacent(prev: &Pending, next: &Pending) -> bool {
    prev.offset + prev.buf.len() as u64 == next.offset
        && prev.buf.len().is_multiple_of(4096)
        && next.buf.len().is_multiple_of(4096)
}

/// Splits `sorted` (by offset) into runs of adjacent buffers of whole 4 KiB blocks, each at
/// most [`RUN_BYTES_MAX`] bytes (a single buffer may be larger: it is its own run).
fn runs(sorted: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut runs: Vec<Vec<Pending>> = Vec::new();
    let mut bytes = 0;
    for p in sorted {
        let len = p.buf.len();
        let joins = runs
            .last()
            .and_then(|r| r.last())
            .is_some_and(|last| adjacent(last, &p) && bytes + len <= RUN_BYTES_MAX);
        if let (true, Some(run)) = (joins, runs.last_mut()) {
            run.push(p);
            bytes += len;
        } else {
            runs.push(vec![p]);
            bytes = len;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(offset: u64, len: usize) -> Pending {
        let mut buf = AlignedBuf::new(len);
        buf.set_len(len);
        Pending {
            offset,
            buf,
            done: oneshot::channel().0,
        }
    }

    fn shape(runs: &[Vec<Pending>]) -> Vec<Vec<u64>> {
        runs.iter()
            .map(|r| r.iter().map(|p| p.offset).collect())
            .collect()
    }

    const CHUNK: usize = 64 << 10;

    /// O_DIRECT needs a real file system: /var/tmp, not a tmpfs /tmp.
    fn test_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("ferry-coalesce-")
            .tempdir_in("/var/tmp")
            .expect("tempdir in /var/tmp")
    }

    fn small_cfg() -> crate::runtime::RuntimeConfig {
        crate::runtime::RuntimeConfig {
            cores: 1,
            pin: false,
            ring_entries: 64,
            buf_size: 4096,
            bufs_per_core: 4,
        }
    }

    fn chunk_data(i: u64) -> AlignedBuf {
        let mut b = AlignedBuf::new(CHUNK);
        for (j, x) in b.iter_mut().enumerate() {
            *x = (i as usize * 7 + j / 4096) as u8;
        }
        b
    }

    fn opts(write: bool) -> crate::runtime::OpenOptions {
        crate::runtime::OpenOptions {
            read: true,
            write,
            create: write,
            direct: true,
        }
    }

    /// Hands chunks `order` to one coalescer at once, each fill its own task; returns (writes,
    /// chunks written) and checks every chunk landed where it belongs.
    fn write_all(order: Vec<u64>) -> (u64, u64) {
        let dir = test_dir();
        let path = dir.path().join("target");
        let p = path.clone();
        let o = order.clone();
        let counts = runtime::block_on(small_cfg(), async move {
            let f = File::open(&p, &opts(true)).expect("open");
            let c = Coalescer::new(f, Rc::new(ChunkBufs::new(CHUNK, 64)));
            let tasks: Vec<_> = o
                .into_iter()
                .map(|i| {
                    let c = c.clone();
                    runtime::spawn(async move { c.write(chunk_data(i), i * CHUNK as u64).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("write");
            }
            c.counts()
        });
        let got = std::fs::read(&path).expect("read back");
        for i in order {
            let at = i as usize * CHUNK;
            assert!(got[at..at + CHUNK] == chunk_data(i)[..], "chunk {i}");
        }
        counts
    }

    #[test]
    fn fills_ready_together_share_writes_and_each_lands_where_it_belongs() {
        // One far chunk, then 40 adjacent ones: 16 + 16 go out as full runs, the last 8 and
        // the far one when the delay ends.
        let (writes, chunks) = write_all([100].into_iter().chain(0..40).collect());
        assert_eq!((writes, chunks), (4, 41));
        // Out of order: how runs split depends on arrival, but far fewer writes than chunks.
        let mut order: Vec<u64> = (0..40).rev().collect();
        order.swap(3, 30);
        let (writes, chunks) = write_all(order);
        assert_eq!(chunks, 40);
        assert!(writes <= 6, "{writes} writes for 40 adjacent chunks");
    }

    #[test]
    fn a_failed_run_gives_every_chunk_its_own_error() {
        let dir = test_dir();
        let path = dir.path().join("read-only");
        std::fs::write(&path, vec![0u8; 4 * CHUNK]).expect("create");
        let cfg = small_cfg();
        runtime::block_on(cfg, async move {
            let f = File::open(&path, &opts(false)).expect("open read-only");
            let c = Coalescer::new(f, Rc::new(ChunkBufs::new(CHUNK, 64)));
            let tasks: Vec<_> = (0..3u64)
                .map(|i| {
                    let c = c.clone();
                    runtime::spawn(async move { c.write(chunk_data(i), i * CHUNK as u64).await })
                })
                .collect();
            for t in tasks {
                let e = t.await.expect_err("a write to a read-only fd must fail");
                assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
            }
        });
    }

    #[test]
    fn adjacent_chunks_join_up_to_the_run_limit_and_gaps_split() {
        const C: usize = 64 << 10;
        let c = C as u64;
        // 20 adjacent chunks, a gap, 2 more; a misaligned tail chunk stays alone.
        let mut v: Vec<Pending> = (0..20).map(|i| pending(i * c, C)).collect();
        v.push(pending(30 * c, C));
        v.push(pending(31 * c, C));
        v.push(pending(32 * c, 1000));
        let got = shape(&runs(v));
        let first: Vec<u64> = (0..16).map(|i| i * c).collect();
        let second: Vec<u64> = (16..20).map(|i| i * c).collect();
        assert_eq!(got, vec![first, second, vec![30 * c, 31 * c], vec![32 * c]]);
    }
}
