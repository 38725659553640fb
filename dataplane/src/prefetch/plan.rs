//! A recording turned into what prefetch needs: chunks ranked by how often they were read,
//! and the read sequence (chunk numbers, consecutive repeats collapsed) with an index from
//! chunk to its positions, so live reads can be matched against it cheaply.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize};

use crate::geometry::Geometry;
use crate::recording::{EventKind, Recording};

/// Longest sequence kept (8 bytes an entry): a recording of a long run is mostly repeats of
/// its start, and the start is what a boot replays.
pub const SEQUENCE_MAX: usize = 4 << 20;

/// Positions indexed per chunk: a chunk read all the time (a superblock) says little about
/// where in the sequence a workload is, and must not make each lookup long.
pub const POSITIONS_PER_CHUNK: usize = 32;

/// Shared, read-only after start-up (one `Arc` for every core).
#[derive(Debug)]
pub struct Plan {
    /// The recording used, for status.
    pub recording: Option<PathBuf>,
    /// Chunks read in the recording, most often read first (ties: first read first).
    pub ranked: Vec<u64>,
    pub sequence: Vec<u64>,
    pub positions: HashMap<u64, Vec<u32>>,
    /// ext4 hot areas and the first MiB, in priority order (see `hot`).
    pub hot: Vec<u64>,
    /// Shards whose hydration has not found everything done yet; reads are counted for the
    /// hit rate while it is above 0 (during migration).
    pub shards_hydrating: AtomicUsize,
    /// Per core: the class of its latest background batch (`Class::index`), or `NO_CLASS`
    /// when it has none. The link is shared by all cores, so a core whose next batch is of a
    /// lower class waits while another still fetches a higher one.
    pub classes: Vec<AtomicU8>,
}

/// `Plan::classes` entry of a core with no batch of any class.
pub const NO_CLASS: u8 = u8::MAX;

impl Plan {
    /// A plan with no recording and no hot areas: only neighbours and in-order apply.
    pub fn empty(geo: &Geometry) -> Plan {
        Plan::build(None, Vec::new(), geo)
    }

    pub fn build(recording: Option<&Recording>, hot: Vec<u64>, geo: &Geometry) -> Plan {
        let (ranked, sequence) = match recording {
            Some(r) => rank_and_sequence(
                r.events().iter().filter_map(|e| {
                    (e.kind == EventKind::Read && e.len_bytes > 0)
                        .then_some((e.offset_bytes, e.len_bytes))
                }),
                geo,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let positions = index(&sequence);
        Plan {
            recording: recording.map(|r| r.path().to_path_buf()),
            ranked,
            sequence,
            positions,
            hot,
            shards_hydrating: AtomicUsize::new(geo.cores),
            classes: (0..geo.cores).map(|_| AtomicU8::new(NO_CLASS)).collect(),
        }
    }
}

/// Ranking and sequence of reads given as `(offset, len)` byte ranges, in recording order.
/// Ranges past the volume (a recording of a larger volume cannot get here, but a chunk size
/// change can shift the last chunk) are cut at its end.
pub fn rank_and_sequence(
    reads: impl Iterator<Item = (u64, u64)>,
    geo: &Geometry,
) -> (Vec<u64>, Vec<u64>) {
    let cs = u64::from(geo.chunk_size_bytes);
    // chunk → (reads, first seen)
    let mut counts: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut sequence: Vec<u64> = Vec::new();
    let mut order = 0u64;
    for (offset, len) in reads {
        if geo.chunk_count == 0 || offset >= geo.volume_size_bytes {
            continue;
        }
        let first = offset / cs;
        let last = (offset.saturating_add(len) - 1) / cs;
        for c in first..=last.min(geo.chunk_count - 1) {
            let e = counts.entry(c).or_insert((0, order));
            e.0 += 1;
            order += 1;
            if sequence.last() != Some(&c) && sequence.len() < SEQUENCE_MAX {
                sequence.push(c);
            }
        }
    }
    let mut ranked: Vec<(u64, (u64, u64))> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
    (ranked.into_iter().map(|(c, _)| c).collect(), sequence)
}

fn index(sequence: &[u64]) -> HashMap<u64, Vec<u32>> {
    let mut positions: HashMap<u64, Vec<u32>> = HashMap::new();
    for (i, &c) in sequence.iter().enumerate() {
        let p = positions.entry(c).or_default();
        if p.len() < POSITIONS_PER_CHUNK {
            // SEQUENCE_MAX keeps every index below u32::MAX.
            p.push(i as u32);
        }
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;

    const K64: u64 = 64 << 10;

    #[test]
    fn ranks_by_read_count_then_first_read() {
        let geo = Geometry::new(100 * K64, K64 as u32, 2);
        // chunk 5 twice, 7 three times (one read spanning 7..=8), 2 once, 8 once.
        let reads = [
            (5 * K64, 4096),
            (2 * K64, K64),
            (7 * K64, 100),
            (7 * K64 + 10, K64), // 7 and 8
            (5 * K64 + 8192, 512),
            (7 * K64, 1),
        ];
        let (ranked, seq) = rank_and_sequence(reads.into_iter(), &geo);
        assert_eq!(ranked, [7, 5, 2, 8]);
        // 7 read twice in a row collapses; 7,8 from the spanning read.
        assert_eq!(seq, [5, 2, 7, 8, 5, 7]);
    }

    #[test]
    fn reads_past_the_end_are_cut_and_positions_capped() {
        let geo = Geometry::new(10 * K64, K64 as u32, 1);
        let (ranked, seq) =
            rank_and_sequence([(9 * K64, 5 * K64), (20 * K64, K64)].into_iter(), &geo);
        assert_eq!(ranked, [9]);
        assert_eq!(seq, [9]);
        let long: Vec<u64> = (0..100).map(|i| i % 2).collect();
        let idx = index(&long);
        assert_eq!(idx[&0].len(), POSITIONS_PER_CHUNK);
        assert_eq!(idx[&1][..3], [1, 3, 5]);
    }
}
