//! What `ferry status` reports, live (from the cores) or offline (from the state dir).

use std::path::Path;

use serde::{Deserialize, Serialize};
use wire_format::state::ChunkState;

use super::state::{self, Phase};
use crate::geometry::Geometry;
use crate::map::VolumeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    pub running: bool,
    pub volume: String,
    pub target: String,
    pub volume_size_bytes: u64,
    pub chunk_size_bytes: u32,
    pub chunks_total: u64,
    pub chunks_untouched: u64,
    pub chunks_present: u64,
    pub chunks_dirty: u64,
    pub chunks_zero: u64,
    pub fetched_chunks_on_demand: u64,
    pub fetched_chunks_background: u64,
    pub fetched_bytes_on_demand: u64,
    pub fetched_bytes_background: u64,
    pub fetch_failures: u64,
    /// Chunk payload bytes that crossed the wire (compressed size; 32 per reference).
    #[serde(default)]
    pub wire_bytes: u64,
    /// Chunks that came zstd-compressed, and their size once decompressed.
    #[serde(default)]
    pub zstd_chunks: u64,
    #[serde(default)]
    pub zstd_raw_bytes: u64,
    /// Chunks answered by a reference and filled from content this machine held.
    #[serde(default)]
    pub deduped_chunks: u64,
    #[serde(default)]
    pub deduped_bytes: u64,
    /// References whose content was gone or changed, fetched again as data.
    #[serde(default)]
    pub ref_misses: u64,
    /// 4 KiB blocks that came named by where the volume already sent them (`ChunkPieces`,
    /// file copies off chunk boundaries) and were copied from the target.
    #[serde(default)]
    pub deduped_blocks: u64,
    /// Chunks whose named blocks could not be used (changed, or not arrived in time) and
    /// that were fetched again as data.
    #[serde(default)]
    pub block_ref_misses: u64,
    /// Size on the wire of the zstd chunks (`zstd_raw_bytes - zstd_wire_bytes` is what
    /// compression saved).
    #[serde(default)]
    pub zstd_wire_bytes: u64,
    /// Chunks the backend answered as zero (holes, all-zero data, free ext4 blocks): nothing
    /// but a header crossed the wire for them.
    #[serde(default)]
    pub zero_replies: u64,
    /// Fetch attempts after the first (broken link, bad reply, missed reference).
    #[serde(default)]
    pub fetch_retries: u64,
    /// Chunks with a fetch in flight right now (on-demand and background).
    #[serde(default)]
    pub fetches_in_flight: u64,
    /// Chunks whose live state is not durable yet (written or filled since the last sync),
    /// and their bytes: what a crash now would lose unless a FLUSH/FUA covered it.
    #[serde(default)]
    pub unsynced_chunks: u64,
    #[serde(default)]
    pub unsynced_bytes: u64,
    /// Latency of fetch requests (asked → every chunk filled), per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_latency_us: Option<FetchLatencies>,
    pub uptime_ms: u64,
    pub background_rate_bytes_per_s: Option<u64>,
    /// How on-demand and background share the WAN: `separate` or `shared` (`--qos`).
    #[serde(default)]
    pub qos: String,
    /// Background chunks allowed outstanding now (the delay-based window, all cores) and
    /// outstanding; the base round trip and the queueing delay the window steers by (the
    /// largest over cores).
    #[serde(default)]
    pub background_window_chunks: u64,
    #[serde(default)]
    pub background_outstanding_chunks: u64,
    #[serde(default)]
    pub base_rtt_us: u64,
    #[serde(default)]
    pub queue_delay_us: u64,
    /// The lowest round trip of the links' connects, handshake and pings (the largest over
    /// cores): the path with no disk in it, which decides LAN or WAN together with the base
    /// round trip.
    #[serde(default)]
    pub handshake_rtt_us: u64,
    /// Chunks that arrived unhashed (fast link) and wait for the dedup indexer, which runs
    /// once hydration is done (`crate::dedup::backfill`); and those it has indexed so far.
    #[serde(default)]
    pub dedup_unindexed_chunks: u64,
    #[serde(default)]
    pub dedup_backfilled_chunks: u64,
    /// Prefetch (`crate::prefetch`): the class the background's last batch came from
    /// (`recording`, `sequence`, `fs-metadata`, `neighbours`, `in-order`; `starting` before
    /// the first batch, `done` once nothing is untouched; empty when not running).
    #[serde(default)]
    pub prefetch_class: String,
    /// The recording prefetch follows, if any.
    #[serde(default)]
    pub prefetch_recording: Option<String>,
    /// Reads served during migration (per piece of a request inside one stripe), and those
    /// whose chunks were all on the target already: the prefetch hit rate is hits / reads.
    #[serde(default)]
    pub prefetch_reads: u64,
    #[serde(default)]
    pub prefetch_hits: u64,
    /// Misses (reads - hits) whose chunks a background batch was already carrying: prefetched
    /// in time to be asked for, not in time to be there.
    #[serde(default)]
    pub prefetch_late: u64,
    /// Background batches per class, keyed by class name.
    #[serde(default)]
    pub prefetch_batches: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FetchLatencies {
    pub on_demand: LatencySummary,
    pub background: LatencySummary,
}

/// Percentiles of one hdrhistogram, in µs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One shard's share of the numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardNumbers {
    pub zstd_wire_bytes: u64,
    pub zero_replies: u64,
    pub fetch_retries: u64,
    pub fetches_in_flight: u64,
    pub unsynced_chunks: u64,
    pub counts: [u64; 4],
    pub fetched_chunks_on_demand: u64,
    pub fetched_chunks_background: u64,
    pub fetched_bytes_on_demand: u64,
    pub fetched_bytes_background: u64,
    pub fetch_failures: u64,
    pub wire_bytes: u64,
    pub zstd_chunks: u64,
    pub zstd_raw_bytes: u64,
    pub deduped_chunks: u64,
    pub deduped_bytes: u64,
    pub ref_misses: u64,
    pub deduped_blocks: u64,
    pub block_ref_misses: u64,
    /// A running shard's background window: (window, outstanding, base RTT µs, queue delay
    /// µs, handshake RTT µs).
    pub cap: Option<(u64, u64, u64, u64, u64)>,
    /// The frontend's dedup indexer (one for all cores): (queued, indexed).
    pub backfill: Option<(u64, u64)>,
    pub qos_shared: bool,
}

impl Status {
    pub fn add(&mut self, n: &ShardNumbers) {
        self.chunks_untouched += n.counts[ChunkState::Untouched.code() as usize];
        self.chunks_present += n.counts[ChunkState::Present.code() as usize];
        self.chunks_dirty += n.counts[ChunkState::Dirty.code() as usize];
        self.chunks_zero += n.counts[ChunkState::Zero.code() as usize];
        self.fetched_chunks_on_demand += n.fetched_chunks_on_demand;
        self.fetched_chunks_background += n.fetched_chunks_background;
        self.fetched_bytes_on_demand += n.fetched_bytes_on_demand;
        self.fetched_bytes_background += n.fetched_bytes_background;
        self.fetch_failures += n.fetch_failures;
        self.wire_bytes += n.wire_bytes;
        self.zstd_chunks += n.zstd_chunks;
        self.zstd_raw_bytes += n.zstd_raw_bytes;
        self.deduped_chunks += n.deduped_chunks;
        self.deduped_bytes += n.deduped_bytes;
        self.ref_misses += n.ref_misses;
        self.deduped_blocks += n.deduped_blocks;
        self.block_ref_misses += n.block_ref_misses;
        self.zstd_wire_bytes += n.zstd_wire_bytes;
        self.zero_replies += n.zero_replies;
        self.fetch_retries += n.fetch_retries;
        self.fetches_in_flight += n.fetches_in_flight;
        self.unsynced_chunks += n.unsynced_chunks;
        self.unsynced_bytes = self.unsynced_chunks * u64::from(self.chunk_size_bytes);
        // One indexer for all shards: every shard reports the same numbers.
        if let Some((queued, indexed)) = n.backfill {
            self.dedup_unindexed_chunks = queued;
            self.dedup_backfilled_chunks = indexed;
        }
        // Only a running frontend knows its mode and window.
        if let Some((window, outstanding, rtt, delay, handshake)) = n.cap {
            self.qos = if n.qos_shared { "shared" } else { "separate" }.into();
            self.background_window_chunks += window;
            self.background_outstanding_chunks += outstanding;
            self.base_rtt_us = self.base_rtt_us.max(rtt);
            self.queue_delay_us = self.queue_delay_us.max(delay);
            self.handshake_rtt_us = self.handshake_rtt_us.max(handshake);
        }
    }
}

pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Migrating => "migrating",
        Phase::Completed => "completed",
        Phase::Aborted => "aborted",
    }
}

/// Status from the files alone, for a frontend that is not running.
pub fn offline(dir: &Path) -> std::io::Result<Status> {
    let s = state::load(dir)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} holds no ferry session (no state.json)", dir.display()),
        )
    })?;
    let geo = Geometry::new(s.volume_size_bytes, s.chunk_size_bytes, 1);
    let body = crate::map::file::load(&state::map_path(dir), &geo)?;
    let map = VolumeMap::from_body(&geo, 0, &body);
    let mut st = Status {
        state: phase_name(s.phase).into(),
        running: false,
        volume: s.volume,
        target: s.target.display().to_string(),
        volume_size_bytes: s.volume_size_bytes,
        chunk_size_bytes: s.chunk_size_bytes,
        chunks_total: geo.chunk_count,
        ..Status::default()
    };
    st.add(&ShardNumbers {
        counts: [
            map.count(ChunkState::Untouched),
            map.count(ChunkState::Present),
            map.count(ChunkState::Dirty),
            map.count(ChunkState::Zero),
        ],
        ..ShardNumbers::default()
    });
    if s.phase == Phase::Migrating && st.chunks_untouched == 0 {
        st.state = "ready".into();
    }
    Ok(st)
}

/// The map from the files alone (see `map::cells`), for a frontend that is not running.
pub fn offline_map(dir: &Path, cells: u32) -> std::io::Result<crate::map::cells::MapCells> {
    let s = state::load(dir)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} holds no ferry session (no state.json)", dir.display()),
        )
    })?;
    let geo = Geometry::new(s.volume_size_bytes, s.chunk_size_bytes, 1);
    let body = crate::map::file::load(&state::map_path(dir), &geo)?;
    let map = VolumeMap::from_body(&geo, 0, &body);
    let n = crate::map::cells::clamp(cells, geo.chunk_count);
    let mut out = crate::map::cells::MapCells::new(&geo, n);
    out.add(&map, 0..geo.chunk_count);
    Ok(out)
}
