//! Start-up handshake with plain blocking IO: learn a volume's size and provisioned extents
//! before any core starts. Not used on the data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use wire_format::frame::{self, Frame};

use super::{refusal, LinkError};

#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub size_bytes: u64,
    pub chunk_size_bytes: u32,
    /// Provisioned (data) extents, sorted; everything else is a hole.
    pub extents: Vec<(u64, u64)>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn send(&mut self, f: &Frame<'_>, id: u64) -> Result<(), LinkError> {
        let mut out = Vec::new();
        f.encode(id, &mut out)?;
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// Calls `take` on the next frame.
    fn recv<T>(
        &mut self,
        take: impl FnOnce(Frame<'_>) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        loop {
            if let Some((f, n)) = frame::decode_from(&self.buf)? {
                let out = take(f);
                self.buf.drain(..n);
                return out;
            }
            let mut tmp = [0u8; 64 * 1024];
            let n = match self.stream.read(&mut tmp) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// Connects, says hello, opens `name` with `chunk_size_bytes`, and collects its extents.
pub fn open_volume(
    addr: SocketAddr,
    name: &str,
    chunk_size_bytes: u32,
) -> Result<VolumeInfo, LinkError> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    c.send(
        &Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: 0,
            agent: "ferry-frontend-setup",
        },
        0,
    )?;
    c.recv(|f| match f {
        Frame::HelloAck { .. } => Ok(()),
        other => Err(refusal("HelloAck", &other)),
    })?;
    c.send(
        &Frame::Open {
            chunk_size: chunk_size_bytes,
            name,
        },
        1,
    )?;
    let (size, chunk, frames) = c.recv(|f| match f {
        Frame::OpenOk {
            size,
            chunk_size,
            extent_frames,
            ..
        } => Ok((size, chunk_size, extent_frames)),
        other => Err(refusal("OpenOk", &other)),
    })?;
    let mut extents = Vec::new();
    for _ in 0..frames {
        c.recv(|f| match f {
            Frame::Extents { extents: e, .. } => {
                extents.extend(e);
                Ok(())
            }
            other => Err(refusal("Extents", &other)),
        })?;
    }
    extents.sort_unstable();
    Ok(VolumeInfo {
        size_bytes: size,
        chunk_size_bytes: chunk,
        extents,
    })
}
