//! The volume map: 2 bits per chunk (`Untouched`, `Present`, `Dirty`, `Zero`).
//!
//! Two images of the map live in memory on each core:
//! * `live` — what reads and writes obey right now;
//! * `durable` — what the map file is allowed to say.
//!
//! Rules that must never break (DESIGN.md "State", concurrency rule 4):
//! * a chunk's `durable` state changes only after the target data backing the new state is
//!   durable (written and `fdatasync`ed) — so the file never says `Present`/`Dirty` for data that
//!   a crash could lose;
//! * the map file is written only from `durable`, and only the stripes this core owns;
//! * state codes on disk are the stable codes of [`wire_format::state::ChunkState`], never a Rust
//!   enum's order.
//!
//! * `unsynced` counts the owner's chunks whose live state differs from the durable one:
//!   data written (or fetched) and acknowledged-or-not but not yet behind an `fdatasync`
//!   — the lag a crash right now would lose unless a FLUSH/FUA covered it.
//!
//! Encoding: chunk `c` occupies bits `2c..2c+2` of the body (least significant bit first in each
//! byte), so byte `c / 4` holds chunks `4k..4k+4`.

pub mod cells;
pub mod file;
pub mod resident;

use bitvec::prelude::*;
use std::collections::BTreeSet;
use wire_format::state::ChunkState;

use crate::geometry::{Geometry, STRIPE_CHUNKS};

pub struct VolumeMap {
    live: BitVec<u8, Lsb0>,
    durable: BitVec<u8, Lsb0>,
    /// Stripes whose durable image changed since the last persist.
    dirty_stripes: BTreeSet<u64>,
    /// Live counts per state code, for the chunks of one owner core.
    counts: [u64; 4],
    /// Chunks (of this owner) whose live state is not yet the durable one.
    unsynced: u64,
}

fn get(bits: &BitSlice<u8, Lsb0>, chunk: u64) -> ChunkState {
    let i = (chunk * 2) as usize;
    let code: u8 = bits[i..i + 2].load_le();
    // Every 2-bit value is a valid code.
    ChunkState::from_code(code).unwrap_or(ChunkState::Untouched)
}

fn set(bits: &mut BitSlice<u8, Lsb0>, chunk: u64, state: ChunkState) {
    let i = (chunk * 2) as usize;
    bits[i..i + 2].store_le(state.code());
}

impl VolumeMap {
    /// Builds the map of one owner core from the persisted body (`ceil(chunks / 4)` bytes).
    pub fn from_body(geo: &Geometry, owner: usize, body: &[u8]) -> VolumeMap {
        let need = wire_format::state::map_bytes(geo.chunk_count) as usize;
        assert!(body.len() >= need, "map body shorter than the volume");
        let live: BitVec<u8, Lsb0> = BitVec::from_slice(&body[..need]);
        let durable = live.clone();
        let mut counts = [0u64; 4];
        for c in geo.owned_chunks_from(owner, 0) {
            counts[get(&live, c).code() as usize] += 1;
        }
        VolumeMap {
            live,
            durable,
            dirty_stripes: BTreeSet::new(),
            counts,
            unsynced: 0,
        }
    }

    pub fn get(&self, chunk: u64) -> ChunkState {
        get(&self.live, chunk)
    }

    pub fn durable(&self, chunk: u64) -> ChunkState {
        get(&self.durable, chunk)
    }

    /// Changes the live state. The caller must later call [`VolumeMap::promote_to`] once the data
    /// behind `state` is durable.
    pub fn set_live(&mut self, chunk: u64, state: ChunkState) {
        let old = get(&self.live, chunk);
        if old != state {
            self.counts[old.code() as usize] -= 1;
            self.counts[state.code() as usize] += 1;
            set(&mut self.live, chunk, state);
            let durable = get(&self.durable, chunk);
            self.adjust_unsynced(old != durable, state != durable);
        }
    }

    /// Records that the data backing `state` for `chunk` is durable on the target.
    pub fn promote_to(&mut self, chunk: u64, state: ChunkState) {
        let old = get(&self.durable, chunk);
        if old != state {
            set(&mut self.durable, chunk, state);
            self.dirty_stripes.insert(chunk / STRIPE_CHUNKS);
            let live = get(&self.live, chunk);
            self.adjust_unsynced(live != old, live != state);
        }
    }

    fn adjust_unsynced(&mut self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => self.unsynced += 1,
            (true, false) => self.unsynced -= 1,
            _ => {}
        }
    }

    /// Chunks whose live state is not durable yet (see the module header).
    pub fn unsynced(&self) -> u64 {
        self.unsynced
    }

    /// Takes the stripes to persist, with the bytes of each stripe's durable image.
    pub fn take_dirty_stripes(&mut self) -> Vec<(u64, Vec<u8>)> {
        let stripes = std::mem::take(&mut self.dirty_stripes);
        let raw = self.durable.as_raw_slice();
        stripes
            .into_iter()
            .map(|s| {
                let start = (s * STRIPE_CHUNKS / 4) as usize;
                let end = (start + (STRIPE_CHUNKS / 4) as usize).min(raw.len());
                (s, raw[start..end].to_vec())
            })
            .collect()
    }

    /// Puts stripes back after a failed persist so the next sync retries them.
    pub fn restore_dirty_stripes(&mut self, stripes: impl IntoIterator<Item = u64>) {
        self.dirty_stripes.extend(stripes);
    }

    pub fn count(&self, state: ChunkState) -> u64 {
        self.counts[state.code() as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_image_lags_live_until_promoted() {
        let geo = Geometry::new(4096 * 3000, 4096, 2);
        let body = vec![0u8; wire_format::state::map_bytes(geo.chunk_count) as usize];
        let mut m = VolumeMap::from_body(&geo, 0, &body);
        assert_eq!(m.count(ChunkState::Untouched), 1024 + (3000 - 2048));
        m.set_live(5, ChunkState::Present);
        assert_eq!(m.get(5), ChunkState::Present);
        assert_eq!(m.durable(5), ChunkState::Untouched);
        assert!(m.take_dirty_stripes().is_empty());
        m.promote_to(5, ChunkState::Present);
        let stripes = m.take_dirty_stripes();
        assert_eq!(stripes.len(), 1);
        assert_eq!(stripes[0].0, 0);
        // chunk 5 = byte 1, bits 2..4 => code 1 << 2
        assert_eq!(stripes[0].1[1], 1 << 2);
        assert_eq!(m.count(ChunkState::Present), 1);
    }

    #[test]
    fn unsynced_counts_live_ahead_of_durable() {
        let geo = Geometry::new(4096 * 16, 4096, 1);
        let mut m = VolumeMap::from_body(&geo, 0, &[0u8; 4]);
        assert_eq!(m.unsynced(), 0);
        m.set_live(1, ChunkState::Present);
        m.set_live(2, ChunkState::Dirty);
        assert_eq!(m.unsynced(), 2);
        m.set_live(2, ChunkState::Zero);
        assert_eq!(m.unsynced(), 2);
        m.promote_to(1, ChunkState::Present);
        assert_eq!(m.unsynced(), 1);
        // A failed write puts an Untouched chunk back: nothing left to sync for it.
        m.set_live(2, ChunkState::Untouched);
        assert_eq!(m.unsynced(), 0);
        // Promoted to an older state while live moved on: still unsynced.
        m.set_live(1, ChunkState::Dirty);
        m.promote_to(1, ChunkState::Present);
        assert_eq!(m.unsynced(), 1);
        m.promote_to(1, ChunkState::Dirty);
        assert_eq!(m.unsynced(), 0);
    }

    #[test]
    fn every_state_round_trips_through_the_body() {
        let geo = Geometry::new(4096 * 8, 4096, 1);
        let body = vec![0u8; 2];
        let mut m = VolumeMap::from_body(&geo, 0, &body);
        let states = [
            ChunkState::Untouched,
            ChunkState::Present,
            ChunkState::Dirty,
            ChunkState::Zero,
        ];
        for c in 0..8u64 {
            m.set_live(c, states[(c % 4) as usize]);
            m.promote_to(c, states[(c % 4) as usize]);
        }
        let stripes = m.take_dirty_stripes();
        let m2 = VolumeMap::from_body(&geo, 0, &stripes[0].1);
        for c in 0..8u64 {
            assert_eq!(m2.get(c), states[(c % 4) as usize]);
        }
    }
}
