//! Recycled chunk-sized buffers for data arriving from the backend.
//!
//! Separate from the runtime's request pool on purpose: an NBD read may hold a pool buffer
//! while it waits for a fetch, so fetched data must never wait for that pool (deadlock).
//! The number of these buffers alive is bounded by the caps on fetches in flight.
//!
//! While background hydration runs, the pool keeps as many free buffers as its window can
//! hold: with fewer, every swing of the window freed buffers that the next batch allocated
//! (and zeroed) again, measured at a fifth of the frontend's allocator and memset time of a
//! loopback hydration. When hydration ends the pool drops back to a small reserve.

use std::cell::{Cell, RefCell};

use crate::runtime::AlignedBuf;

pub struct ChunkBufs {
    capacity_bytes: usize,
    keep_max: Cell<usize>,
    free: RefCell<Vec<AlignedBuf>>,
}

impl ChunkBufs {
    pub fn new(capacity_bytes: usize, keep_max: usize) -> ChunkBufs {
        ChunkBufs {
            capacity_bytes,
            keep_max: Cell::new(keep_max),
            free: RefCell::new(Vec::new()),
        }
    }

    pub fn take(&self) -> AlignedBuf {
        let mut b = self
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(self.capacity_bytes));
        b.set_len(self.capacity_bytes);
        b
    }

    pub fn give(&self, buf: AlignedBuf) {
        let mut free = self.free.borrow_mut();
        if buf.capacity() >= self.capacity_bytes && free.len() < self.keep_max.get() {
            free.push(buf);
        }
    }

    /// Keeps at most `keep_max` free buffers from now on, freeing any over it.
    pub fn keep_at_most(&self, keep_max: usize) {
        self.keep_max.set(keep_max);
        self.free.borrow_mut().truncate(keep_max);
    }

    /// Free buffers held right now.
    pub fn free_count(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_it_may_and_trims_to_the_new_limit() {
        let bufs = ChunkBufs::new(4096, 3);
        let taken: Vec<AlignedBuf> = (0..5).map(|_| bufs.take()).collect();
        for b in taken {
            bufs.give(b);
        }
        assert_eq!(bufs.free_count(), 3);
        bufs.keep_at_most(1);
        assert_eq!(bufs.free_count(), 1);
        bufs.give(AlignedBuf::new(4096));
        assert_eq!(bufs.free_count(), 1);
        // A smaller buffer is never kept: take() promises chunk-sized ones.
        let small = ChunkBufs::new(8192, 4);
        small.give(AlignedBuf::new(4096));
        assert_eq!(small.free_count(), 0);
        assert_eq!(small.take().len(), 8192);
    }
}
