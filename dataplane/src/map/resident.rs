//! The resident bitmap: one bit per chunk, set when the chunk is no longer `Untouched` (its
//! data is on the target, or it is `Zero`, which reads zeros there).
//!
//! It lets any core serve a read of resident chunks from its own ring, without a message to
//! the owner. Rules:
//! * only the owner core of a chunk writes its bit (rule 1 still holds for every change);
//! * a bit is set only after the data is on the target (fill or write completed), with
//!   `Release`; readers load with `Acquire`, so the target read sees that data;
//! * it is cleared only when a failed write sends an `Untouched` chunk back to `Untouched`.
//!
//! It says nothing about durability: that is the map's job.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct ResidentMap {
    words: Vec<AtomicU64>,
}

impl ResidentMap {
    pub fn new(chunk_count: u64) -> ResidentMap {
        ResidentMap {
            words: (0..chunk_count.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn set(&self, chunk: u64) {
        self.words[(chunk / 64) as usize].fetch_or(1 << (chunk % 64), Ordering::Release);
    }

    pub fn clear(&self, chunk: u64) {
        self.words[(chunk / 64) as usize].fetch_and(!(1 << (chunk % 64)), Ordering::Release);
    }

    pub fn is_set(&self, chunk: u64) -> bool {
        self.words[(chunk / 64) as usize].load(Ordering::Acquire) & (1 << (chunk % 64)) != 0
    }

    /// Whether every chunk in `first..=last` is resident.
    pub fn all_set(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|c| self.is_set(c))
    }

    /// Whether all of the first `chunk_count` bits are set (word by word).
    pub fn is_full(&self, chunk_count: u64) -> bool {
        let whole = (chunk_count / 64) as usize;
        let words_full = self.words[..whole]
            .iter()
            .all(|w| w.load(Ordering::Acquire) == u64::MAX);
        let tail = chunk_count % 64;
        words_full
            && (tail == 0 || {
                let mask = (1u64 << tail) - 1;
                self.words[whole].load(Ordering::Acquire) & mask == mask
            })
    }

    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut i = (from / 64) as usize;
        let mut w = self.words.get(i)?.load(Ordering::Acquire) & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                return Some(i as u64 * 64 + u64::from(w.trailing_zeros()));
            }
            i += 1;
            w = self.words.get(i)?.load(Ordering::Acquire);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_clear_ranges() {
        let m = super::ResidentMap::new(130);
        m.set(0);
        m.set(64);
        m.set(129);
        assert!(m.is_set(64) && !m.is_set(63));
        assert!(!m.all_set(0, 1));
        m.set(1);
        assert!(m.all_set(0, 1));
        m.clear(0);
        assert!(!m.is_set(0) && m.is_set(129));
        assert_eq!(m.next_set(0), Some(1));
        assert_eq!(m.next_set(2), Some(64));
        assert_eq!(m.next_set(65), Some(129));
        assert_eq!(m.next_set(130), None);
        assert!(!m.is_full(130));
        let f = super::ResidentMap::new(130);
        (0..130).for_each(|c| f.set(c));
        assert!(f.is_full(130) && f.is_full(64));
        f.clear(128);
        assert!(!f.is_full(130) && f.is_full(128));
    }
}
