//! Indexing, off the data path, content that arrived without a digest
//! ([`super::DigestHint::Later`]).
//!
//! On a link faster than SHA-256 (loopback, LAN) hashing every chunk is what limits a
//! migration on a busy machine: about 0.7 CPU s per GiB, as much as all the rest of the
//! backend's work. So there the backend sends chunks unhashed and never references them, and
//! the frontend indexes them here, later, for the volumes migrated after this one (a second
//! VM from the same image, over a WAN):
//!
//! * a bit per chunk says "written to the target, not indexed";
//! * one thread at `SCHED_IDLE` CPU priority and idle IO priority reads those chunks back from the target and
//!   indexes them, but only once hydration is done: while it runs the target device is busy,
//!   and reading it back then would slow the migration it is meant to help;
//! * it yields to the workload ([`Pace`]): while requests keep arriving at the export it
//!   reads one chunk per [`TRICKLE`], at full speed only once the export is quiet. The idle
//!   IO class alone is not enough: NVMe devices usually run without an IO scheduler
//!   (`none`), which ignores classes, so a whole-volume read-back would compete with the
//!   workload's IO at equal rank;
//! * at cutover the frontend drains what is left before it exits; on abort it stops (the
//!   target is not the volume then);
//! * nothing is persisted: after a restart the bits are rebuilt from the map (`Present`
//!   chunks the index holds nothing at).
//!
//! An entry made here is a hint like any other (DESIGN invariant 11): the workload may have
//! written the chunk since it was filled, and the entry then names what was read.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::DedupIndex;
use crate::geometry::Geometry;
use crate::map::resident::ResidentMap;
use crate::runtime::AlignedBuf;

/// How often the thread looks whether hydration is done or work arrived.
const POLL: Duration = Duration::from_millis(200);
/// While the workload uses the export, the indexer reads at most one chunk per this long
/// (a few MiB/s with 64 KiB chunks): it makes progress under a workload that never pauses,
/// without taking a share of the device worth measuring.
const TRICKLE: Duration = Duration::from_millis(20);

/// When the indexer may read its next chunk, from the export's request count as it finds it
/// at each look: at full speed once no request arrived for a whole [`TRICKLE`], else one
/// read per [`TRICKLE`]. (Sparse requests count as busy too: quiet between two of them is
/// not the workload gone.)
struct Pace {
    /// [`TRICKLE`], longer in a test that must not depend on scheduling delays.
    period: Duration,
    seen: u64,
    /// When a look last found new requests.
    last_busy: Option<Instant>,
    last_read: Instant,
}

impl Pace {
    /// An export that served requests before the pass began counts as busy just now: a
    /// pass must not start at full speed in the middle of a workload.
    fn new(requests: u64, now: Instant, period: Duration) -> Pace {
        Pace {
            period,
            seen: requests,
            last_busy: (requests > 0).then_some(now),
            last_read: now,
        }
    }

    /// `None`: read now (and it counts as a read). `Some(d)`: sleep `d`, then ask again.
    fn wait(&mut self, requests: u64, now: Instant) -> Option<Duration> {
        if requests != self.seen {
            self.seen = requests;
            self.last_busy = Some(now);
        }
        let quiet = self.last_busy.is_none_or(|b| now >= b + self.period);
        let due = self.last_read + self.period;
        if quiet || now >= due {
            self.last_read = now;
            None
        } else {
            Some(due - now)
        }
    }
}

pub struct Backfill {
    /// Chunks filled but not indexed (the resident map's atomic bitmap, another meaning).
    waiting: ResidentMap,
    queued: AtomicU64,
    indexed: AtomicU64,
    /// Requests the export admitted so far, on every core ([`Backfill::export_request`]).
    requests: AtomicU64,
    pace_period: Duration,
    /// Index what is left now, hydration done or not, then stop.
    drain: AtomicBool,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Backfill {
    /// Starts the indexing thread for `target`. `resident` tells it when hydration is done.
    pub fn start(
        index: Arc<DedupIndex>,
        target: &Path,
        geo: Geometry,
        resident: Arc<ResidentMap>,
    ) -> std::io::Result<Arc<Backfill>> {
        Self::start_paced(index, target, geo, resident, TRICKLE)
    }

    fn start_paced(
        index: Arc<DedupIndex>,
        target: &Path,
        geo: Geometry,
        resident: Arc<ResidentMap>,
        pace_period: Duration,
    ) -> std::io::Result<Arc<Backfill>> {
        let b = Arc::new(Backfill {
            waiting: ResidentMap::new(geo.chunk_count),
            queued: AtomicU64::new(0),
            indexed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            pace_period,
            drain: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            thread: Mutex::new(None),
        });
        let me = b.clone();
        let target = target.to_path_buf();
        let t = std::thread::Builder::new()
            .name("ferry-index".into())
            .spawn(move || me.run(&index, &target, geo, &resident))?;
        if let Ok(mut slot) = b.thread.lock() {
            *slot = Some(t);
        }
        Ok(b)
    }

    /// `chunk` is on the target and its content has not been indexed.
    pub fn later(&self, chunk: u64) {
        if !self.waiting.is_set(chunk) {
            self.waiting.set(chunk);
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The export admitted a request: the workload is using the volume, and the indexer
    /// yields to it.
    pub fn export_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Chunks waiting to be indexed.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Chunks indexed so far.
    pub fn indexed(&self) -> u64 {
        self.indexed.load(Ordering::Relaxed)
    }

    /// Ends the thread: with `drain`, after it indexed everything queued (cutover); without,
    /// at the next chunk. Returns how many chunks were left unindexed.
    pub fn finish(&self, drain: bool) -> u64 {
        if drain {
            self.drain.store(true, Ordering::Release);
        } else {
            self.stop.store(true, Ordering::Release);
        }
        self.wake.1.notify_all();
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
        self.queued()
    }

    fn run(&self, index: &DedupIndex, target: &PathBuf, geo: Geometry, resident: &ResidentMap) {
        if let Err(e) = crate::sys::idle_cpu_priority() {
            tracing::debug!(error = %e, "indexer keeps normal CPU priority");
        }
        // Its reads of the target come after the workload's where the IO scheduler knows
        // classes: right after hydration the workload uses the same device. (Measured under
        // 4 KiB reads at queue depth 32 through the export: the indexer's progress halved;
        // the workload's IOPS moved within noise.)
        if let Err(e) = crate::sys::idle_io_priority() {
            tracing::debug!(error = %e, "indexer keeps normal IO priority");
        }
        // O_DIRECT keeps a large volume's read-back out of the page cache; a file system
        // without it (tmpfs) is read through the cache instead.
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(target);
        let file = match direct.or_else(|_| std::fs::File::open(target)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "dedup indexer cannot read the target; unhashed chunks stay out of the index");
                return;
            }
        };
        let mut buf = AlignedBuf::new(geo.chunk_size_bytes as usize);
        let mut logged = false;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let drain = self.drain.load(Ordering::Acquire);
            if self.queued() > 0 && (drain || resident.is_full(geo.chunk_count)) {
                if !logged {
                    tracing::info!(chunks = self.queued(), "indexing unhashed chunks for dedup");
                    logged = true;
                }
                self.pass(index, &file, geo, &mut buf);
                continue;
            }
            if drain {
                tracing::info!(chunks = self.indexed(), "dedup indexing done");
                return;
            }
            let (lock, cv) = &self.wake;
            if let Ok(g) = lock.lock() {
                let _ = cv.wait_timeout(g, POLL);
            }
        }
    }

    /// Indexes every chunk queued when it passes, until told to stop, at the workload's
    /// [`Pace`] (a drain, for cutover, goes at full speed: the operator waits for it).
    fn pass(&self, index: &DedupIndex, file: &std::fs::File, geo: Geometry, buf: &mut AlignedBuf) {
        let mut next = 0;
        let mut pace = Pace::new(
            self.requests.load(Ordering::Relaxed),
            Instant::now(),
            self.pace_period,
        );
        while let Some(chunk) = self.waiting.next_set(next) {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if !self.drain.load(Ordering::Acquire) {
                let requests = self.requests.load(Ordering::Relaxed);
                if let Some(d) = pace.wait(requests, Instant::now()) {
                    // Woken early by finish(): the loop looks at stop and drain again.
                    if let Ok(g) = self.wake.0.lock() {
                        let _ = self.wake.1.wait_timeout(g, d);
                    }
                    continue;
                }
            }
            next = chunk + 1;
            self.waiting.clear(chunk);
            self.queued.fetch_sub(1, Ordering::Relaxed);
            let offset = geo.chunk_offset(chunk);
            let len = geo.chunk_len(chunk) as usize;
            // O_DIRECT reads whole blocks; a short last chunk reads up to the end of file.
            let want = len.next_multiple_of(4096).min(buf.capacity());
            buf.set_len(want);
            match file.read_at(&mut buf[..], offset) {
                Ok(n) if n >= len => {
                    index.insert_own(super::digest(&buf[..len]), offset, len as u32);
                    self.indexed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(n) => tracing::debug!(chunk, n, "short read of the target; not indexed"),
                Err(e) => tracing::debug!(chunk, error = %e, "target read failed; not indexed"),
            }
        }
    }
}

/// Stops the indexer when dropped: a frontend that fails after starting it must not leave
/// the thread behind (its own `Arc` keeps it alive otherwise). After [`Backfill::finish`] it
/// does nothing.
pub struct StopOnDrop(pub Arc<Backfill>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index in `dir`, an empty resident map and an indexer on `target`.
    fn start_on(
        dir: &Path,
        target: &Path,
        geo: Geometry,
    ) -> (Arc<DedupIndex>, Arc<ResidentMap>, Arc<Backfill>) {
        let index = Arc::new(DedupIndex::open(&dir.join("i.sqlite"), target, true).expect("index"));
        let resident = Arc::new(ResidentMap::new(geo.chunk_count));
        let b = Backfill::start(index.clone(), target, geo, resident.clone()).expect("start");
        (index, resident, b)
    }

    #[test]
    fn waits_for_hydration_then_indexes_what_the_target_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.img");
        let cs = 65536u32;
        // Three chunks, the last one short; chunk 1 never queued.
        let size = 2 * u64::from(cs) + 12288;
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&target, &content).expect("write target");
        let geo = Geometry::new(size, cs, 1);
        let (index, resident, b) = start_on(dir.path(), &target, geo);
        b.later(0);
        b.later(2);
        b.later(2);
        assert_eq!(b.queued(), 2);
        std::thread::sleep(POLL * 2);
        assert_eq!(b.indexed(), 0, "indexed while hydration was still running");
        (0..geo.chunk_count).for_each(|c| resident.set(c));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while b.indexed() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(b.finish(true), 0);
        let chunk = |c: u64| {
            let s = geo.chunk_offset(c) as usize;
            &content[s..s + geo.chunk_len(c) as usize]
        };
        let at = |c: u64| index.lookup(&super::super::digest(chunk(c)), geo.chunk_len(c));
        assert_eq!(at(0).map(|l| l.offset), Some(0));
        assert_eq!(at(2).map(|l| l.offset), Some(2 * u64::from(cs)));
        assert_eq!(at(1), None, "a chunk never queued was indexed");
    }

    #[test]
    fn pace_reads_at_once_when_quiet_and_one_chunk_per_trickle_when_busy() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // An export nobody used yet: read, again and again.
        let mut p = Pace::new(0, t0, TRICKLE);
        assert_eq!(p.wait(0, ms(1)), None);
        assert_eq!(p.wait(0, ms(2)), None);
        // Requests arrived: wait out the trickle period from the last read (at 2 ms).
        assert_eq!(p.wait(4, ms(3)), Some(Duration::from_millis(19)));
        // Still busy when it comes back: the period is over, so one read.
        assert_eq!(p.wait(7, ms(22)), None);
        assert_eq!(p.wait(8, ms(23)), Some(Duration::from_millis(19)));
        // No new request, but the last came less than a period ago: still busy.
        assert_eq!(p.wait(8, ms(30)), Some(Duration::from_millis(12)));
        // Quiet for a whole period: read at once, again and again.
        assert_eq!(p.wait(8, ms(43)), None);
        assert_eq!(p.wait(8, ms(44)), None);
        // A pass that starts after the export served requests waits a period first.
        let mut p = Pace::new(5, t0, TRICKLE);
        assert_eq!(p.wait(5, ms(1)), Some(Duration::from_millis(19)));
        assert_eq!(p.wait(5, ms(20)), None);
        // 200 ms of requests, looked at every millisecond: one read per 20 ms, whether
        // requests come every millisecond or every 10.
        for every in [1, 10] {
            let mut pace = Pace::new(0, t0, TRICKLE);
            let reads = (1..=200u64)
                .filter(|&i| pace.wait(1 + i / every, ms(i)).is_none())
                .count();
            assert_eq!(reads, 10, "requests every {every} ms");
        }
    }

    #[test]
    fn a_busy_export_holds_the_indexer_back_and_a_drain_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.img");
        let cs = 4096u32;
        let chunks = 64u64;
        let content: Vec<u8> = (0..chunks * u64::from(cs))
            .map(|i| (i / 4096) as u8)
            .collect();
        std::fs::write(&target, &content).expect("write target");
        let geo = Geometry::new(chunks * u64::from(cs), cs, 1);
        let index =
            Arc::new(DedupIndex::open(&dir.path().join("i.sqlite"), &target, true).expect("index"));
        let resident = Arc::new(ResidentMap::new(geo.chunk_count));
        // A long period: only a workload thread stalled for a whole second, not a busy test
        // machine's scheduling delays, could look like a quiet export here.
        let period = Duration::from_secs(1);
        let b =
            Backfill::start_paced(index, &target, geo, resident.clone(), period).expect("start");
        (0..chunks).for_each(|c| b.later(c));
        // A workload that never pauses, from before hydration is done.
        let busy = Arc::new(AtomicBool::new(true));
        let workload = {
            let (b, busy) = (b.clone(), busy.clone());
            std::thread::spawn(move || {
                while busy.load(Ordering::Relaxed) {
                    b.export_request();
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        (0..chunks).for_each(|c| resident.set(c));
        let deadline = t0 + Duration::from_secs(20);
        while b.indexed() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(b.indexed() > 0, "no progress under a busy workload");
        // One read per period while busy: the first a period after the pass began.
        assert!(
            t0.elapsed() >= period / 2,
            "read at once under a busy workload"
        );
        std::thread::sleep(period / 2);
        assert!(
            b.indexed() <= 2,
            "the indexer did not yield: {} of {chunks} indexed",
            b.indexed()
        );
        // Cutover's drain does not wait for the workload.
        assert_eq!(b.finish(true), 0);
        busy.store(false, Ordering::Relaxed);
        workload.join().expect("workload thread");
        assert_eq!(b.indexed(), chunks);
    }

    #[test]
    fn drain_indexes_before_hydration_is_done_and_stop_leaves_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.img");
        let cs = 4096u32;
        std::fs::write(&target, vec![5u8; 8 * cs as usize]).expect("write target");
        let geo = Geometry::new(8 * u64::from(cs), cs, 1);
        let (index, resident, b) = start_on(dir.path(), &target, geo);
        b.later(3);
        assert_eq!(b.finish(true), 0, "drain left work");
        assert!(index
            .lookup(&super::super::digest(&[5u8; 4096]), cs)
            .is_some());

        let b = Backfill::start(index.clone(), &target, geo, resident.clone()).expect("start");
        b.later(4);
        assert_eq!(
            b.finish(false),
            1,
            "stop must not wait for hydration or index"
        );

        // A frontend that fails after starting the indexer drops the guard: the thread ends.
        let b = Backfill::start(index, &target, geo, resident).expect("start");
        b.later(5);
        drop(StopOnDrop(b.clone()));
        assert!(
            b.thread.lock().expect("lock").is_none(),
            "the indexer thread outlived its guard"
        );
        assert_eq!(b.queued(), 1);
    }
}
