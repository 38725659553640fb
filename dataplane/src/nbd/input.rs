//! Buffered input from an NBD client: one `recv` fills many small request headers.

use super::NbdConnError;
use crate::runtime::Stream;

const BUF_LEN: usize = 256 * 1024;

pub struct Input {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    pub fn new(stream: Stream) -> Input {
        Input {
            stream,
            buf: vec![0u8; BUF_LEN],
            start: 0,
            end: 0,
        }
    }

    async fn fill(&mut self) -> Result<(), NbdConnError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = self.stream.recv(buf, self.end..BUF_LEN).await;
        self.buf = buf;
        match res? {
            0 => Err(NbdConnError::Closed),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    /// Fills `out` completely. `Closed` if the peer closed first.
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), NbdConnError> {
        let mut done = 0;
        while done < out.len() {
            if self.start == self.end {
                self.fill().await?;
            }
            let n = (self.end - self.start).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        Ok(())
    }

    /// Reads and throws away `len` bytes (the payload of a rejected write).
    pub async fn skip(&mut self, mut len: u64) -> Result<(), NbdConnError> {
        while len > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let n = ((self.end - self.start) as u64).min(len) as usize;
            self.start += n;
            len -= n as u64;
        }
        Ok(())
    }
}
