//! Recycled chunk-sized buffers for data arriving from the backend.
//!
//! Separate from the runtime's request pool on purpose: an NBD read may hold a pool buffer
//! while it waits for a fetch, so fetched data must never wait for that pool (deadlock).
//! The number of these buffers alive is bounded by the caps on fetches in flight.

use std::cell::RefCell;

use crate::runtime::AlignedBuf;

pub struct ChunkBufs {
    capacity_bytes: usize,
    keep_max: usize,
    free: RefCell<Vec<AlignedBuf>>,
}

impl ChunkBufs {
    pub fn new(capacity_bytes: usize, keep_max: usize) -> ChunkBufs {
        ChunkBufs {
            capacity_bytes,
            keep_max,
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
        if buf.capacity() >= self.capacity_bytes && free.len() < self.keep_max {
            free.push(buf);
        }
    }
}
