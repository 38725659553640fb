//! The queue between the reader and the writer of one connection-direction: pieces in
//! flight on the emulated link, bounded by the queue limit (back-pressure).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Largest piece read from a source socket at once.
pub const PIECE_MAX_BYTES: usize = 64 * 1024;

/// Charged per queued piece on top of its payload: its allocation and queue slot. Keeps
/// memory bounded even when a sender trickles single bytes.
pub(crate) const PIECE_OVERHEAD_BYTES: usize = 128;

/// Bytes on their way through the link. The payload is copied out of the reader's scratch
/// buffer into a buffer of its exact length: a pooled 64 KiB buffer per piece would make
/// memory depend on how small the reads are, and the copy costs less than the read.
pub(crate) struct Piece {
    pub data: Vec<u8>,
    /// When it reaches the far end; `None` until a priority link has chosen its departure
    /// (the writer waits for it).
    pub arrival: Option<Instant>,
    /// The connection is cut once this piece is delivered.
    pub cut_after: bool,
}

impl Piece {
    fn charge(&self) -> usize {
        self.data.len() + PIECE_OVERHEAD_BYTES
    }
}

struct State {
    pieces: VecDeque<Piece>,
    /// How many pieces at the front have an arrival: a priority link assigns them in
    /// order, and counting spares a scan of a long queue per assignment.
    with_arrival: usize,
    /// Payload plus overhead of the pieces queued and the piece being written.
    charged_bytes: usize,
    /// The source sent EOF; nothing more will be pushed.
    eof: bool,
    /// The connection is closing: deliver nothing more.
    closed: bool,
}

pub(crate) struct Pipe {
    state: Mutex<State>,
    /// Signalled when room is freed or the pipe closes (the reader waits on it).
    room: Condvar,
    /// Signalled when a piece is pushed, EOF is set or the pipe closes (the writer).
    ready: Condvar,
    limit_bytes: usize,
}

pub(crate) enum Next {
    Piece(Piece),
    Eof,
    Closed,
}

impl Pipe {
    pub(crate) fn new(limit_bytes: usize) -> Pipe {
        assert!(limit_bytes > PIECE_OVERHEAD_BYTES, "queue limit too small");
        Pipe {
            state: Mutex::new(State {
                pieces: VecDeque::new(),
                with_arrival: 0,
                charged_bytes: 0,
                eof: false,
                closed: false,
            }),
            room: Condvar::new(),
            ready: Condvar::new(),
            limit_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a piece of at least one byte fits under the limit; returns how many
    /// bytes the reader may read now, or `None` when the pipe is closed.
    pub(crate) fn wait_room(&self) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            let free = self
                .limit_bytes
                .saturating_sub(st.charged_bytes + PIECE_OVERHEAD_BYTES);
            if free > 0 {
                return Some(free.min(PIECE_MAX_BYTES));
            }
            st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Queues a piece; the reader got room for it from [`Pipe::wait_room`]. Returns false
    /// (and drops the piece) when the pipe is closed.
    pub(crate) fn push(&self, piece: Piece) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.charged_bytes += piece.charge();
        assert!(st.charged_bytes <= self.limit_bytes, "queue over its limit");
        if piece.arrival.is_some() {
            // A FIFO link's pieces come with their arrival; a pipe is fed by one kind.
            debug_assert_eq!(st.with_arrival, st.pieces.len(), "mixed link kinds");
            st.with_arrival += 1;
        }
        st.pieces.push_back(piece);
        self.ready.notify_one();
        true
    }

    /// The source is at EOF: the writer half-closes after the queued pieces.
    pub(crate) fn finish(&self) {
        self.lock().eof = true;
        self.ready.notify_one();
    }

    /// Stops both sides: queued pieces are never delivered. Returns the payload bytes
    /// still charged that will now never be released by [`Pipe::delivered`].
    pub(crate) fn close(&self) -> usize {
        let mut st = self.lock();
        if st.closed {
            return 0;
        }
        st.closed = true;
        let queued: usize = st.pieces.iter().map(|p| p.data.len()).sum();
        let pieces = st.pieces.len();
        st.pieces.clear();
        st.with_arrival = 0;
        st.charged_bytes -= queued + pieces * PIECE_OVERHEAD_BYTES;
        self.room.notify_all();
        self.ready.notify_all();
        queued
    }

    /// The writer's next piece, once its arrival time has come.
    pub(crate) fn next(&self) -> Next {
        let mut st = self.lock();
        loop {
            if st.closed {
                return Next::Closed;
            }
            let Some(front) = st.pieces.front() else {
                if st.eof {
                    return Next::Eof;
                }
                st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let Some(arrival) = front.arrival else {
                st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let now = Instant::now();
            if arrival <= now {
                return match st.pieces.pop_front() {
                    Some(p) => {
                        st.with_arrival = st.with_arrival.saturating_sub(1);
                        Next::Piece(p)
                    }
                    None => continue,
                };
            }
            let wait = arrival - now;
            st = self
                .ready
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Gives the oldest piece still waiting for the link its arrival time. Pieces of one
    /// connection-direction are one class, so the link picks them in the order they were
    /// queued. Returns false when the pipe is closed (the piece is gone).
    pub(crate) fn assign(&self, arrival: Instant) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        let next = st.with_arrival;
        match st.pieces.get_mut(next) {
            Some(p) => {
                p.arrival = Some(arrival);
                st.with_arrival += 1;
            }
            None => debug_assert!(false, "a link ticket without its piece"),
        }
        self.ready.notify_one();
        true
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The writer is done with a piece of `len` payload bytes (written or not): frees its
    /// room. A closed pipe has already released everything but this piece.
    pub(crate) fn delivered(&self, len: usize) {
        let mut st = self.lock();
        st.charged_bytes -= len + PIECE_OVERHEAD_BYTES;
        self.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reader_room_never_exceeds_the_limit() {
        let pipe = Pipe::new(4096);
        let now = Instant::now();
        for _ in 0..3 {
            let room = pipe.wait_room().expect("open pipe");
            assert!(room <= 4096 - PIECE_OVERHEAD_BYTES);
            assert!(pipe.push(Piece {
                data: vec![0; room.min(1000)],
                arrival: Some(now),
                cut_after: false,
            }));
        }
        // 3 × (1000 + overhead) leaves less than 1000 bytes of room.
        assert!(pipe.wait_room().is_some_and(|room| room < 1000));
        assert!(pipe.lock().charged_bytes <= 4096);
        match pipe.next() {
            Next::Piece(p) => pipe.delivered(p.data.len()),
            _ => panic!("a piece is due"),
        }
        assert_eq!(pipe.close(), 2000);
        assert_eq!(pipe.lock().charged_bytes, 0);
        assert!(pipe.wait_room().is_none());
        assert!(matches!(pipe.next(), Next::Closed));
    }

    #[test]
    fn writer_waits_for_arrival_then_sees_eof() {
        let pipe = Pipe::new(1 << 20);
        let t0 = Instant::now();
        pipe.push(Piece {
            data: vec![1; 10],
            arrival: Some(t0 + Duration::from_millis(30)),
            cut_after: false,
        });
        pipe.finish();
        match pipe.next() {
            Next::Piece(p) => {
                assert!(t0.elapsed() >= Duration::from_millis(30));
                pipe.delivered(p.data.len());
            }
            _ => panic!("expected the piece"),
        }
        assert!(matches!(pipe.next(), Next::Eof));
    }

    #[test]
    fn writer_waits_for_the_link_to_assign_an_arrival() {
        let pipe = std::sync::Arc::new(Pipe::new(1 << 20));
        for len in [10, 20] {
            pipe.push(Piece {
                data: vec![0; len],
                arrival: None,
                cut_after: false,
            });
        }
        let t0 = Instant::now();
        let writer = {
            let pipe = std::sync::Arc::clone(&pipe);
            std::thread::spawn(move || match pipe.next() {
                Next::Piece(p) => (p.data.len(), t0.elapsed()),
                _ => (0, t0.elapsed()),
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        // Assigned in queue order: the first piece gets the first arrival.
        assert!(pipe.assign(Instant::now()));
        let (len, waited) = writer.join().expect("writer");
        assert_eq!(len, 10);
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        pipe.close();
        assert!(!pipe.assign(Instant::now()));
        assert!(pipe.is_closed());
    }
}
