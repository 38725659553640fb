//! The map as a picture: chunk state counts per cell, for `ferry migrate status --map`.
//!
//! A volume of `chunk_count` chunks is cut into `cells` equal runs (the last ones may hold
//! one chunk less); cell `i` holds chunks `[i * n / cells, (i + 1) * n / cells)`. Each cell
//! counts its chunks per state, in the stable code order of
//! [`wire_format::state::ChunkState`]: `[untouched, present, dirty, zero]`. Counting is a
//! scan of the 2-bit map: O(chunks), no allocation but the answer; cores scan only the
//! chunks they own and the answers add up.

use serde::{Deserialize, Serialize};
use wire_format::state::ChunkState;

use super::VolumeMap;
use crate::geometry::Geometry;

/// More cells than a screen or an SVG can show are not asked for.
pub const CELLS_MAX: u32 = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapCells {
    pub chunks_total: u64,
    pub chunk_size_bytes: u32,
    /// Per cell: chunks `[untouched, present, dirty, zero]`.
    pub cells: Vec<[u64; 4]>,
}

/// The cell count actually used for `asked` cells: 1..=min(CELLS_MAX, chunks).
pub fn clamp(asked: u32, chunk_count: u64) -> usize {
    u64::from(asked.clamp(1, CELLS_MAX)).min(chunk_count.max(1)) as usize
}

impl MapCells {
    pub fn new(geo: &Geometry, cells: usize) -> MapCells {
        MapCells {
            chunks_total: geo.chunk_count,
            chunk_size_bytes: geo.chunk_size_bytes,
            cells: vec![[0; 4]; cells],
        }
    }

    /// The cell of `chunk`.
    pub fn cell_of(&self, chunk: u64) -> usize {
        let n = self.cells.len() as u128;
        ((u128::from(chunk) * n) / u128::from(self.chunks_total.max(1))) as usize
    }

    /// Adds the live states of `chunks` of `map`.
    pub fn add(&mut self, map: &VolumeMap, chunks: impl Iterator<Item = u64>) {
        for c in chunks {
            let cell = self.cell_of(c);
            self.cells[cell][map.get(c).code() as usize] += 1;
        }
    }

    /// Adds another core's counts (same geometry and cell count).
    pub fn merge(&mut self, other: &MapCells) {
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            for k in 0..4 {
                a[k] += b[k];
            }
        }
    }

    /// Chunks per state over the whole volume.
    pub fn totals(&self) -> [u64; 4] {
        let mut t = [0u64; 4];
        for c in &self.cells {
            for k in 0..4 {
                t[k] += c[k];
            }
        }
        t
    }
}

/// The four states in the order of the counts.
pub const STATES: [ChunkState; 4] = [
    ChunkState::Untouched,
    ChunkState::Present,
    ChunkState::Dirty,
    ChunkState::Zero,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_every_chunk_once() {
        let geo = Geometry::new(4096 * 3000, 4096, 2);
        let mut m = VolumeMap::from_body(&geo, 0, &[0u8; 750]);
        m.set_live(0, ChunkState::Present);
        m.set_live(2999, ChunkState::Zero);
        let n = clamp(7, geo.chunk_count);
        let mut a = MapCells::new(&geo, n);
        a.add(&m, geo.owned_chunks_from(0, 0));
        let mut b = MapCells::new(&geo, n);
        let m1 = VolumeMap::from_body(&geo, 1, &[0u8; 750]);
        b.add(&m1, geo.owned_chunks_from(1, 0));
        a.merge(&b);
        assert_eq!(a.totals(), [2998, 1, 0, 1]);
        assert_eq!(a.cells[0][1], 1);
        assert_eq!(a.cells[6][3], 1);
        assert_eq!(
            a.cells.iter().map(|c| c.iter().sum::<u64>()).sum::<u64>(),
            3000
        );
        assert_eq!(clamp(0, 5), 1);
        assert_eq!(clamp(100, 5), 5);
        assert_eq!(clamp(1 << 30, 1 << 40), CELLS_MAX as usize);
    }
}
