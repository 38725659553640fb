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
    pub uptime_ms: u64,
    pub background_rate_bytes_per_s: Option<u64>,
}

/// One shard's share of the numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardNumbers {
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
