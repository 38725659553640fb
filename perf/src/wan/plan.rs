//! The faults of one connection-direction, applied to the pieces read from its sender.
//!
//! A plan depends only on the [`Faults`], the seed, the connection index and the
//! direction; applying it to a stream gives the same result however reads split that
//! stream (random faults are drawn per whole MiB block, keyed by the block number, and
//! corruption values are keyed by the offset).

use std::collections::BTreeSet;

use super::config::Direction;
use super::faults::{Faults, RandomFaults};
use super::rng::{mix, SplitMix64};

const BLOCK_BYTES: u64 = 1 << 20;
/// Salts keep the random streams of different uses apart.
const SALT_XOR: u64 = 0x786f72; // "xor"
const SALT_BLOCK: u64 = 0x626c6b; // "blk"

/// What [`FaultPlan::apply`] did to one piece.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Bytes kept, moved to the front of the piece.
    pub kept: usize,
    pub corrupted_bytes: u64,
    pub dropped_bytes: u64,
    /// The connection is cut after the kept bytes.
    pub cut: bool,
}

pub(crate) struct FaultPlan {
    key: u64,
    corrupt: BTreeSet<u64>,
    /// Sorted, disjoint `[start, end)` ranges.
    drops: Vec<(u64, u64)>,
    cut: Option<u64>,
    random: Option<RandomFaults>,
    /// Random faults of blocks `0..blocks_drawn` are in `corrupt` and `cut`.
    blocks_drawn: u64,
}

impl FaultPlan {
    pub(crate) fn new(faults: &Faults, seed: u64, connection: usize, dir: Direction) -> Self {
        let key = mix(mix(seed, connection as u64), dir.seed_code());
        let mine = |at: &super::faults::FaultAt| at.connection == connection && at.direction == dir;
        let corrupt = faults
            .corrupt
            .iter()
            .filter(|a| mine(a))
            .map(|a| a.offset)
            .collect();
        let cut = faults
            .cut
            .iter()
            .filter(|a| mine(a))
            .map(|a| a.offset)
            .min();
        let mut ranges: Vec<(u64, u64)> = faults
            .drop
            .iter()
            .filter(|(a, len)| mine(a) && *len > 0)
            .map(|(a, len)| (a.offset, a.offset.saturating_add(*len as u64)))
            .collect();
        ranges.sort_unstable();
        let mut drops: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match drops.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => drops.push((s, e)),
            }
        }
        FaultPlan {
            key,
            corrupt,
            drops,
            cut,
            random: faults
                .random
                .filter(|r| r.corrupt_per_mib > 0.0 || r.cut_per_mib > 0.0),
            blocks_drawn: 0,
        }
    }

    /// Draws the random faults of every block up to the one holding `offset`.
    fn draw_through(&mut self, offset: u64) {
        let Some(r) = self.random else { return };
        let last = offset / BLOCK_BYTES;
        while self.blocks_drawn <= last {
            let block = self.blocks_drawn;
            let mut rng = SplitMix64::new(mix(mix(self.key, SALT_BLOCK), block));
            // Always draw all four values, so one kind of fault never shifts another.
            let (p_corrupt, at_corrupt) = (rng.next_f64(), rng.below(BLOCK_BYTES));
            let (p_cut, at_cut) = (rng.next_f64(), rng.below(BLOCK_BYTES));
            let base = block * BLOCK_BYTES;
            if p_corrupt < r.corrupt_per_mib {
                self.corrupt.insert(base + at_corrupt);
            }
            if p_cut < r.cut_per_mib {
                let at = base + at_cut;
                self.cut = Some(self.cut.map_or(at, |c| c.min(at)));
            }
            self.blocks_drawn += 1;
        }
    }

    /// True when the stream is cut at or before `offset`: checked before the first read,
    /// so a cut at 0 closes the connection without waiting for data.
    pub(crate) fn cut_before_reading(&mut self, offset: u64) -> bool {
        self.draw_through(offset);
        self.cut.is_some_and(|c| c <= offset)
    }

    /// The non-zero value XORed into the byte at `offset`.
    fn xor_at(&self, offset: u64) -> u8 {
        (mix(mix(self.key, SALT_XOR), offset) % 255) as u8 + 1
    }

    fn dropped(&self, offset: u64) -> bool {
        let i = self.drops.partition_point(|&(_, e)| e <= offset);
        self.drops.get(i).is_some_and(|&(s, _)| s <= offset)
    }

    /// Applies the faults to `piece`, the bytes of the stream at `offset..`. Kept bytes
    /// are moved to the front of `piece`.
    pub(crate) fn apply(&mut self, offset: u64, piece: &mut [u8]) -> Applied {
        let mut out = Applied::default();
        if piece.is_empty() {
            return out;
        }
        self.draw_through(offset + piece.len() as u64 - 1);
        let mut len = piece.len();
        // A cut at the end of this piece is taken now: the next read may never come.
        if let Some(c) = self.cut {
            if c <= offset + len as u64 {
                len = c.saturating_sub(offset) as usize;
                out.cut = true;
            }
        }
        let end = offset + len as u64;
        for &at in self.corrupt.range(offset..end) {
            if !self.dropped(at) {
                piece[(at - offset) as usize] ^= self.xor_at(at);
                out.corrupted_bytes += 1;
            }
        }
        // Compact the kept bytes to the front.
        let mut write = 0usize;
        let mut pos = 0usize;
        for &(s, e) in &self.drops {
            if e <= offset || s >= end {
                continue;
            }
            let ds = (s.max(offset) - offset) as usize;
            let de = (e.min(end) - offset) as usize;
            piece.copy_within(pos..ds, write);
            write += ds - pos;
            out.dropped_bytes += (de - ds) as u64;
            pos = de;
        }
        piece.copy_within(pos..len, write);
        out.kept = write + (len - pos);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::faults::FaultAt;
    use super::*;

    fn at(offset: u64) -> FaultAt {
        FaultAt {
            direction: Direction::Upstream,
            connection: 0,
            offset,
        }
    }

    /// Runs `data` through a plan in reads of `chunk` bytes; returns the delivered
    /// stream and whether it was cut.
    fn run(faults: &Faults, seed: u64, data: &[u8], chunk: usize) -> (Vec<u8>, bool) {
        let mut plan = FaultPlan::new(faults, seed, 0, Direction::Upstream);
        let mut out = Vec::new();
        let mut offset = 0u64;
        if plan.cut_before_reading(0) {
            return (out, true);
        }
        let mut p = Vec::with_capacity(chunk);
        for piece in data.chunks(chunk) {
            p.clear();
            p.extend_from_slice(piece);
            let a = plan.apply(offset, &mut p);
            out.extend_from_slice(&p[..a.kept]);
            offset += piece.len() as u64;
            if a.cut {
                return (out, true);
            }
        }
        (out, false)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn same_result_whatever_the_read_sizes() {
        let faults = Faults {
            corrupt: vec![at(10), at(70_000)],
            cut: vec![],
            drop: vec![(at(100), 50), (at(120), 100), (at(65_530), 20)],
            random: Some(RandomFaults {
                corrupt_per_mib: 0.7,
                cut_per_mib: 0.2,
            }),
        };
        let d = data(3 << 20);
        let reference = run(&faults, 9, &d, d.len());
        for chunk in [3usize, 4096, 65_536, 100_000] {
            assert_eq!(
                run(&faults, 9, &d, chunk),
                reference,
                "reads of {chunk} bytes"
            );
        }
        assert_ne!(
            run(&faults, 10, &d, 65_536),
            reference,
            "another seed, other faults"
        );
    }

    #[test]
    fn drop_corrupt_and_cut_land_exactly() {
        let d = data(10_000);
        let faults = Faults {
            corrupt: vec![at(5), at(150)],
            cut: vec![at(9000)],
            drop: vec![(at(100), 100)],
            random: None,
        };
        let (out, cut) = run(&faults, 1, &d, 333);
        assert!(cut);
        assert_eq!(out.len(), 9000 - 100);
        assert_ne!(out[5], d[5], "corrupted");
        assert_eq!(out[..5], d[..5]);
        assert_eq!(out[6..100], d[6..100]);
        assert_eq!(
            out[100..],
            d[200..9000],
            "dropped range gone, corrupt inside it ignored"
        );
    }

    #[test]
    fn cut_at_zero_and_at_a_piece_end() {
        let d = data(1000);
        let cut0 = Faults {
            cut: vec![at(0)],
            ..Faults::default()
        };
        assert_eq!(run(&cut0, 1, &d, 100), (vec![], true));
        let cut_end = Faults {
            cut: vec![at(200)],
            ..Faults::default()
        };
        assert_eq!(run(&cut_end, 1, &d, 100), (d[..200].to_vec(), true));
    }
}
