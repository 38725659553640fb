//! Buffered frame reader over a ring-driven stream.
//!
//! One receive buffer per connection, sized for the largest legal frame, so a frame is decoded
//! in place with one crc pass and no allocation; bulk data is copied out by the caller.

use wire_format::frame::{Frame, Header, HEADER_LEN, MAX_PAYLOAD};

use super::LinkError;
use crate::runtime::Stream;

// One largest frame plus room for the next few headers.
const BUF_LEN: usize = HEADER_LEN + MAX_PAYLOAD as usize + 256 * 1024;
/// A receive that brings this much (or all the room there was) found data already queued.
const FULL_RECV: usize = 256 * 1024;

pub struct FrameReader {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    backlog: std::rc::Rc<Backlog>,
}

/// How full our receives come back, averaged: near 1 when data waits in the socket for us
/// (we, the receiver, are the bottleneck), near 0 when we wait for data (the link or the
/// sender is). Shared with the link so its requests can say "compression will not help".
#[derive(Default)]
pub struct Backlog {
    fill: std::cell::Cell<f64>,
}

impl Backlog {
    pub fn receiver_bound(&self) -> bool {
        self.fill.get() > 0.5
    }

    fn record(&self, got: usize, room: usize) {
        let full = (got as f64 / room.clamp(1, FULL_RECV) as f64).min(1.0);
        self.fill.set(self.fill.get() * 0.9 + full * 0.1);
    }
}

impl FrameReader {
    pub fn new(stream: Stream) -> FrameReader {
        FrameReader {
            stream,
            buf: vec![0u8; BUF_LEN],
            start: 0,
            end: 0,
            backlog: Default::default(),
        }
    }

    pub fn backlog(&self) -> std::rc::Rc<Backlog> {
        self.backlog.clone()
    }

    /// The next frame with its request id, or `Ok(None)` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<(u64, Frame<'_>)>, LinkError> {
        let (header, at) = loop {
            let avail = self.end - self.start;
            let mut need = HEADER_LEN;
            if avail >= HEADER_LEN {
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
                let h = Header::decode(&hb)?;
                need = HEADER_LEN + h.payload_len as usize;
                if avail >= need {
                    let at = self.start;
                    self.start += need;
                    break (h, at);
                }
            }
            if self.buf.len() - self.start < need {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let buf = std::mem::take(&mut self.buf);
            let len = buf.len();
            let (res, buf) = self.stream.recv(buf, self.end..len).await;
            self.buf = buf;
            let n = res?;
            self.backlog.record(n, len - self.end);
            if n == 0 {
                return if avail == 0 {
                    Ok(None)
                } else {
                    Err(LinkError::Protocol(format!(
                        "peer closed mid-frame ({avail} bytes of a frame received)"
                    )))
                };
            }
            self.end += n;
        };
        let payload = &self.buf[at + HEADER_LEN..at + HEADER_LEN + header.payload_len as usize];
        Ok(Some((header.id, Frame::decode(&header, payload)?)))
    }
}
