//! One core's share of a volume: the chunks it owns, their states, and every change to them.
//!
//! Rules that must never break (DESIGN.md, concurrency rules):
//! 1. Only the owner core touches a chunk's state; other cores send it messages.
//! 2. Late fetches lose: a whole-chunk write or zeroing of an `Untouched` chunk marks any fetch
//!    in flight `superseded`, and a fill checks that mark (and that the chunk is still
//!    `Untouched`) right before it writes the target. While a fill's target write is in flight
//!    (`filling`), writes to that chunk wait for it.
//! 3. One fetch per chunk: readers and partial writers of a chunk being fetched wait for that
//!    fetch (see `fetch.rs`).
//! 4. Data before metadata: a chunk's live state may change at once, but its durable state only
//!    moves after the data backing it was `fdatasync`ed (see `sync.rs`).
//! 5. `Zero` means the target region reads as zeros (fresh target, or zeroed with fallocate),
//!    so a partial write to a `Zero` chunk needs no fetch and leaves it `Dirty`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use wire_format::state::ChunkState;

use super::error::VolError;
use super::sync::SyncState;
use crate::bufs::ChunkBufs;
use crate::geometry::{Geometry, Piece};
use crate::link::client::LinkSlot;
use crate::map::VolumeMap;
use crate::notify::Notify;
use crate::runtime::{AlignedBuf, File};

/// Transient per-chunk state, kept only while something is in flight for the chunk.
#[derive(Default)]
pub struct ChunkSlot {
    pub fetching: Cell<bool>,
    /// The fetch in flight is a background one (a prefetch), not an on-demand read's.
    pub background: Cell<bool>,
    pub superseded: Cell<bool>,
    pub filling: Cell<bool>,
    pub ops_in_flight: Cell<u32>,
    pub fetch_error: RefCell<Option<String>>,
    pub changed: Notify,
}

impl ChunkSlot {
    fn idle(&self) -> bool {
        !self.fetching.get() && !self.filling.get() && self.ops_in_flight.get() == 0
    }
}

#[derive(Default)]
pub struct ShardStats {
    pub fetched_chunks_on_demand: Cell<u64>,
    pub fetched_chunks_background: Cell<u64>,
    pub fetched_bytes_on_demand: Cell<u64>,
    pub fetched_bytes_background: Cell<u64>,
    pub zero_replies: Cell<u64>,
    pub fetch_failures: Cell<u64>,
    pub written_back_chunks: Cell<u64>,
    /// Chunks filled from content this machine already held, and their bytes.
    pub deduped_chunks: Cell<u64>,
    pub deduped_bytes: Cell<u64>,
    /// References that could not be used (content gone or changed) and were fetched as data.
    pub ref_misses: Cell<u64>,
    /// 4 KiB blocks of `ChunkPieces` copied from the target instead of sent; pieces whose named
    /// blocks were not there (gone, changed, or not arrived in time) and came again as data.
    pub deduped_blocks: Cell<u64>,
    pub block_ref_misses: Cell<u64>,
    /// Fetch attempts after the first (a link broke, a reply was bad, a reference missed).
    pub fetch_retries: Cell<u64>,
}

/// Latency of whole fetch requests (asked → every chunk filled), per class, in µs.
pub struct FetchLatency {
    pub on_demand: hdrhistogram::Histogram<u64>,
    pub background: hdrhistogram::Histogram<u64>,
}

/// 1 µs to 10 min at 3 significant digits: ~40 KiB per histogram, allocated once per shard.
const LATENCY_MAX_US: u64 = 600_000_000;

impl Default for FetchLatency {
    fn default() -> Self {
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("constant histogram bounds are valid")
        };
        FetchLatency {
            on_demand: h(),
            background: h(),
        }
    }
}

impl FetchLatency {
    /// Records one request; values past the range count as the maximum (no allocation).
    pub fn record(&mut self, class: wire_format::frame::Class, us: u64) {
        let h = match class {
            wire_format::frame::Class::OnDemand => &mut self.on_demand,
            wire_format::frame::Class::Background => &mut self.background,
        };
        h.saturating_record(us.clamp(1, LATENCY_MAX_US));
    }

    pub fn merge(&mut self, other: &FetchLatency) {
        // Same bounds on every shard: adding cannot fail.
        let _ = self.on_demand.add(&other.on_demand);
        let _ = self.background.add(&other.background);
    }
}

pub struct Shard {
    pub id: usize,
    pub geo: Geometry,
    pub target: File,
    pub map_file: File,
    pub target_fresh: bool,
    pub map: RefCell<VolumeMap>,
    /// Shared by all cores; only this core sets the bits of its chunks.
    pub resident: std::sync::Arc<crate::map::resident::ResidentMap>,
    pub chunks: RefCell<HashMap<u64, Rc<ChunkSlot>>>,
    pub sync: SyncState,
    pub on_demand: Rc<LinkSlot>,
    /// The on-demand slot itself in the shared (QoS-less) mode.
    pub background: Rc<LinkSlot>,
    /// Background chunks allowed outstanding (a delay-based window; see `hydrate::cap`).
    pub background_cap: crate::hydrate::cap::BackgroundCap,
    /// `--qos shared`: `background` is the on-demand link itself.
    pub qos_shared: bool,
    pub bufs: Rc<ChunkBufs>,
    /// Bounds target writes of fetched data in flight, so fills cannot flood the device queue
    /// and starve reads (the backend's, when source and target share a device, and the
    /// workload's).
    pub fill_permits: std::sync::Arc<async_lock::Semaphore>,
    /// Background fills of adjacent chunks write through here as one request.
    pub coalescer: Rc<super::coalesce::Coalescer>,
    pub stats: ShardStats,
    pub latency: RefCell<FetchLatency>,
    /// Chunks with a fetch in flight, and a signal when that count changes.
    pub fetches_in_flight: Cell<usize>,
    pub fetches_changed: Notify,
    /// Set while cutover/abort holds background hydration.
    pub hydration_held: Cell<bool>,
    pub hydration_changed: Notify,
    /// Background rate in bytes/s: `None` unlimited, `Some(0)` paused.
    pub background_rate: Cell<Option<u64>>,
    /// What came over this shard's links (wire bytes, compressed and referenced chunks).
    pub link_counters: Rc<crate::link::client::LinkCounters>,
    /// Content dedup, when the frontend keeps an index.
    pub dedup: Option<super::dedup::CoreDedup>,
    /// Which chunks background hydration takes next, and the reads served on this core.
    pub prefetch: crate::prefetch::ShardPrefetch,
}

impl Shard {
    pub fn state(&self, chunk: u64) -> ChunkState {
        self.map.borrow().get(chunk)
    }

    pub fn slot(&self, chunk: u64) -> Rc<ChunkSlot> {
        self.chunks.borrow_mut().entry(chunk).or_default().clone()
    }

    pub fn existing_slot(&self, chunk: u64) -> Option<Rc<ChunkSlot>> {
        self.chunks.borrow().get(&chunk).cloned()
    }

    /// Forgets the slot once nothing is in flight for the chunk.
    pub fn release(&self, chunk: u64) {
        let mut chunks = self.chunks.borrow_mut();
        if chunks.get(&chunk).is_some_and(|s| s.idle()) {
            chunks.remove(&chunk);
        }
    }

    fn byte_offset(&self, p: &Piece) -> u64 {
        self.geo.chunk_offset(p.chunk) + u64::from(p.offset_in_chunk)
    }

    /// Reads `[offset, offset + len)` — chunks all owned by this core — into `buf` (resized),
    /// fetching any `Untouched` chunk first (one on-demand request for all of them). Once no
    /// chunk is `Untouched` the whole range is one target read: `Zero` chunks read zeros there
    /// by invariant 5.
    pub async fn read_range(
        self: &Rc<Self>,
        offset: u64,
        len: u32,
        mut buf: AlignedBuf,
    ) -> Result<AlignedBuf, VolError> {
        buf.set_len(len as usize);
        let chunks = || self.geo.pieces(offset, u64::from(len)).map(|p| p.chunk);
        debug_assert!(chunks().all(|c| self.geo.owner(c) == self.id));
        let missing: Vec<u64> = chunks()
            .filter(|&c| self.state(c) == ChunkState::Untouched)
            .collect();
        if !missing.is_empty() {
            let late = missing.iter().all(|&c| {
                self.existing_slot(c)
                    .is_some_and(|s| s.fetching.get() && s.background.get())
            });
            if late {
                self.prefetch.note_late();
            }
            self.start_fetch(&missing, wire_format::frame::Class::OnDemand, None);
            for c in missing {
                self.ensure_fetched(c).await?;
            }
        }
        if chunks().all(|c| self.state(c) == ChunkState::Zero) {
            buf.fill(0);
            return Ok(buf);
        }
        let (res, buf) = self.target.read_exact_at(buf, offset).await;
        res.map_err(|e| VolError::target("read", offset, &e))?;
        Ok(buf)
    }

    /// Waits until no fill is writing the chunk; a whole-chunk change must not race it.
    async fn wait_fill(&self, chunk: u64) {
        while let Some(s) = self.existing_slot(chunk).filter(|s| s.filling.get()) {
            s.changed.wait().await;
        }
    }

    /// Claims `chunk` for a change to `next`: any fetch in flight for it loses. Returns the
    /// slot (with the op counted) and the state before.
    fn claim(&self, chunk: u64, next: ChunkState) -> (Rc<ChunkSlot>, ChunkState) {
        let slot = self.slot(chunk);
        let prior = self.state(chunk);
        if prior == ChunkState::Untouched {
            slot.superseded.set(true);
        }
        self.map.borrow_mut().set_live(chunk, next);
        slot.ops_in_flight.set(slot.ops_in_flight.get() + 1);
        (slot, prior)
    }

    /// Ends an op started by `claim`: on success the chunk's new state becomes due for the next
    /// sync; on failure a chunk that was `Untouched` goes back to `Untouched` (its target region
    /// may hold a torn write and must not be served).
    fn finish(&self, chunk: u64, slot: &ChunkSlot, prior: ChunkState, ok: bool) {
        slot.ops_in_flight.set(slot.ops_in_flight.get() - 1);
        if ok {
            self.sync.push(chunk, self.state(chunk));
            self.resident.set(chunk);
        } else if prior == ChunkState::Untouched && slot.ops_in_flight.get() == 0 {
            self.map.borrow_mut().set_live(chunk, ChunkState::Untouched);
            self.resident.clear(chunk);
        }
        slot.changed.notify_all();
        self.release(chunk);
    }

    /// Writes one piece. A partial write of an `Untouched` chunk fetches it first.
    pub async fn write_piece(
        self: &Rc<Self>,
        p: Piece,
        buf: AlignedBuf,
    ) -> Result<AlignedBuf, VolError> {
        debug_assert_eq!(self.geo.owner(p.chunk), self.id);
        debug_assert_eq!(buf.len(), p.len as usize);
        let whole = p.offset_in_chunk == 0 && p.len == self.geo.chunk_len(p.chunk);
        loop {
            self.wait_fill(p.chunk).await;
            if !whole && self.state(p.chunk) == ChunkState::Untouched {
                self.ensure_fetched(p.chunk).await?;
                continue;
            }
            break;
        }
        let (slot, prior) = self.claim(p.chunk, ChunkState::Dirty);
        let offset = self.byte_offset(&p);
        let (res, buf) = self.target.write_all_at(buf, offset).await;
        self.finish(p.chunk, &slot, prior, res.is_ok());
        res.map_err(|e| VolError::target("write", offset, &e))?;
        Ok(buf)
    }

    /// Zeroes one piece (NBD WRITE_ZEROES or TRIM). A whole chunk becomes `Zero` with no
    /// transfer; a partial WRITE_ZEROES is a write of zeros; a partial TRIM is a no-op, which
    /// the NBD spec allows.
    pub async fn zero_piece(
        self: &Rc<Self>,
        p: Piece,
        trim: bool,
        scratch: AlignedBuf,
    ) -> Result<AlignedBuf, VolError> {
        let whole = p.offset_in_chunk == 0 && p.len == self.geo.chunk_len(p.chunk);
        if !whole {
            if trim {
                return Ok(scratch);
            }
            let mut buf = scratch;
            buf.set_len(p.len as usize);
            buf.fill(0);
            return self.write_piece(p, buf).await;
        }
        self.wait_fill(p.chunk).await;
        if self.state(p.chunk) == ChunkState::Zero {
            return Ok(scratch);
        }
        let (slot, prior) = self.claim(p.chunk, ChunkState::Zero);
        let already_zero = prior == ChunkState::Untouched && self.target_fresh;
        let offset = self.byte_offset(&p);
        let res = if already_zero {
            Ok(())
        } else {
            self.zero_target(offset, u64::from(p.len), scratch_len(&scratch))
                .await
        };
        self.finish(p.chunk, &slot, prior, res.is_ok());
        res.map_err(|e| VolError::target("zero", offset, &e))?;
        Ok(scratch)
    }

    /// Makes a target range read as zeros: fallocate(ZERO_RANGE), or zero writes where the
    /// file system or device has no ZERO_RANGE.
    pub async fn zero_target(
        &self,
        offset: u64,
        len: u64,
        piece_max: usize,
    ) -> std::io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match self.target.fallocate(mode, offset, len).await {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            other => return other,
        }
        let piece = piece_max.max(4096) as u64;
        let mut buf = AlignedBuf::new(piece as usize);
        let mut pos = offset;
        while pos < offset + len {
            let n = piece.min(offset + len - pos);
            buf.set_len(n as usize);
            buf.fill(0);
            let (res, b) = self.target.write_all_at(buf, pos).await;
            buf = b;
            res?;
            pos += n;
        }
        Ok(())
    }

    /// Chunks whose live state is not durable yet (written or filled, not yet synced).
    pub fn unsynced(&self) -> u64 {
        self.map.borrow().unsynced()
    }

    /// This shard's chunks per state, per cell of `out` (see `map::cells`). Scans only the
    /// chunks this core owns, yielding between stripes so a large volume does not hold the
    /// core.
    pub async fn map_cells(&self, out: &mut crate::map::cells::MapCells) {
        let mut from = 0;
        while from < self.geo.chunk_count {
            let end = (from + crate::geometry::STRIPE_CHUNKS * 64).min(self.geo.chunk_count);
            {
                let m = self.map.borrow();
                out.add(
                    &m,
                    self.geo
                        .owned_chunks_from(self.id, from)
                        .take_while(|&c| c < end),
                );
            }
            from = end;
            crate::runtime::yield_now().await;
        }
    }

    /// Live counts of this shard's chunks per state.
    pub fn counts(&self) -> [u64; 4] {
        let m = self.map.borrow();
        [
            m.count(ChunkState::Untouched),
            m.count(ChunkState::Present),
            m.count(ChunkState::Dirty),
            m.count(ChunkState::Zero),
        ]
    }
}

fn scratch_len(b: &AlignedBuf) -> usize {
    b.capacity()
}
