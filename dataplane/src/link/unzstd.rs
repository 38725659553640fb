//! A connection's zstd decoding: one frame per chunk, or with
//! [`wire_format::frame::CAP_ZSTD_STREAM`] one stream for the whole connection, in which each
//! chunk is one flush and everything before it is history. Either way a chunk decodes to
//! exactly its announced length or not at all; the caller checks the crc of the result.

use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};

/// The largest history a backend's stream may use (its `STREAM_WINDOW_LOG`); a stream that
/// asks for more is refused, so a backend cannot make us hold more memory than this.
pub const STREAM_WINDOW_LOG_MAX: u32 = 23;

pub struct Unzstd {
    streaming: bool,
    bulk: Option<zstd::bulk::Decompressor<'static>>,
    stream: Option<DCtx<'static>>,
}

impl Unzstd {
    pub fn new(streaming: bool) -> Unzstd {
        Unzstd {
            streaming,
            bulk: None,
            stream: None,
        }
    }

    /// Decodes one chunk's compressed bytes into `out`; the length written. An error leaves a
    /// stream unusable: the caller must drop the connection.
    pub fn decompress(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, String> {
        if !self.streaming {
            let d = match self.bulk.as_mut() {
                Some(d) => d,
                None => self
                    .bulk
                    .insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
            };
            return d.decompress_to_buffer(data, out).map_err(|e| e.to_string());
        }
        let err = |code: usize| zstd::zstd_safe::get_error_name(code).to_string();
        let d = match self.stream.as_mut() {
            Some(d) => d,
            None => {
                let mut d = DCtx::try_create().ok_or("no memory for a zstd stream")?;
                d.set_parameter(DParameter::WindowLogMax(STREAM_WINDOW_LOG_MAX))
                    .map_err(err)?;
                self.stream.insert(d)
            }
        };
        let mut input = InBuffer::around(data);
        let mut output = OutBuffer::around(out);
        loop {
            d.decompress_stream(&mut output, &mut input).map_err(err)?;
            if input.pos() == data.len() {
                break;
            }
            if output.pos() == output.capacity() {
                return Err("a stream chunk decodes to more than its length".into());
            }
        }
        let n = output.pos();
        // The sender flushed after this chunk: nothing of it may be left inside.
        let mut extra = [0u8; 1];
        let mut more = OutBuffer::around(&mut extra[..]);
        d.decompress_stream(&mut more, &mut InBuffer::around(&[]))
            .map_err(err)?;
        if more.pos() > 0 {
            return Err("a stream chunk decodes to more than its length".into());
        }
        Ok(n)
    }
}
