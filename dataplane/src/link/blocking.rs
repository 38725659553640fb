//! Start-up handshake with plain blocking IO: learn a volume's size and provisioned extents
//! before any core starts. Not used on the data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use wire_format::frame::{self, Class, Frame};

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

/// What `Open` answered.
struct Opened {
    handle: u32,
    size_bytes: u64,
    chunk_size_bytes: u32,
    extent_frames: u32,
}

/// Connects, says hello and opens `name` with `chunk_size_bytes`; the extents frames follow.
fn connect_open(
    addr: SocketAddr,
    name: &str,
    chunk_size_bytes: u32,
) -> Result<(Conn, Opened), LinkError> {
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
    let opened = c.recv(|f| match f {
        Frame::OpenOk {
            handle,
            size,
            chunk_size,
            extent_frames,
        } => Ok(Opened {
            handle,
            size_bytes: size,
            chunk_size_bytes: chunk_size,
            extent_frames,
        }),
        other => Err(refusal("OpenOk", &other)),
    })?;
    Ok((c, opened))
}

/// Reads the `Extents` frames that follow `OpenOk`.
fn read_extents(c: &mut Conn, frames: u32) -> Result<Vec<(u64, u64)>, LinkError> {
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
    Ok(extents)
}

/// Connects, says hello, opens `name` with `chunk_size_bytes`, and collects its extents.
pub fn open_volume(
    addr: SocketAddr,
    name: &str,
    chunk_size_bytes: u32,
) -> Result<VolumeInfo, LinkError> {
    let (mut c, o) = connect_open(addr, name, chunk_size_bytes)?;
    let extents = read_extents(&mut c, o.extent_frames)?;
    Ok(VolumeInfo {
        size_bytes: o.size_bytes,
        chunk_size_bytes: o.chunk_size_bytes,
        extents,
    })
}

/// The content of chunk 0 of `name` (chunks of `chunk_size_bytes`, at least 4 KiB, so it
/// holds an ext2/3/4 superblock), fetched raw on a connection of its own; empty for an
/// empty volume. Used at start-up to learn the volume's identity (file-system UUID).
pub fn read_first_chunk(
    addr: SocketAddr,
    name: &str,
    chunk_size_bytes: u32,
) -> Result<Vec<u8>, LinkError> {
    let (mut c, o) = connect_open(addr, name, chunk_size_bytes)?;
    read_extents(&mut c, o.extent_frames)?;
    if o.size_bytes == 0 {
        return Ok(Vec::new());
    }
    let first_len = u64::from(o.chunk_size_bytes).min(o.size_bytes) as usize;
    c.send(
        &Frame::Fetch {
            handle: o.handle,
            class: Class::OnDemand,
            no_refs: true,
            no_zstd: true,
            link_bound: false,
            chunks: vec![0],
        },
        2,
    )?;
    c.recv(|f| match f {
        Frame::ChunkData { chunk: 0, data, .. } => Ok(data.to_vec()),
        Frame::ChunkZero { chunk: 0, .. } => Ok(vec![0; first_len]),
        Frame::ChunkError { code, message, .. } => Err(LinkError::Remote {
            code,
            message: message.to_string(),
        }),
        other => Err(refusal("ChunkData for chunk 0", &other)),
    })
}
