//! The map file: a 4 KiB header ([`wire_format::state::MapHeader`]) and the 2-bit body.
//!
//! Created and loaded with ordinary blocking IO at start-up (not the data path); updated at
//! run time through the ring, one owner core writing only its own stripes.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use wire_format::state::{map_bytes, MapHeader, MAP_HEADER_LEN};

use crate::geometry::{Geometry, STRIPE_MAP_BYTES};
use crate::runtime::{AlignedBuf, File};

/// Writes a new map file with every chunk `Untouched` except `zero_chunks`, durably
/// (file and directory fsynced), through a temporary name so a crash leaves no half file.
pub fn create(path: &Path, geo: &Geometry, zero_chunks: &[u64]) -> io::Result<()> {
    let header = MapHeader {
        chunk_size: geo.chunk_size_bytes,
        volume_size: geo.volume_size_bytes,
        chunk_count: geo.chunk_count,
    };
    let mut body = vec![0u8; map_bytes(geo.chunk_count) as usize];
    let zero = wire_format::state::ChunkState::Zero.code();
    for &c in zero_chunks {
        body[(c / 4) as usize] |= zero << ((c % 4) * 2);
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&header.encode())?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Reads the map body, checking the header against the expected geometry.
pub fn load(path: &Path, geo: &Geometry) -> io::Result<Vec<u8>> {
    let mut f = fs::File::open(path)?;
    let mut header = vec![0u8; MAP_HEADER_LEN];
    f.read_exact(&mut header)?;
    let h = MapHeader::decode(&header).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if h.chunk_size != geo.chunk_size_bytes || h.volume_size != geo.volume_size_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: map is for a {} byte volume in {} byte chunks, but the volume is {} bytes in {} byte chunks",
                path.display(),
                h.volume_size,
                h.chunk_size,
                geo.volume_size_bytes,
                geo.chunk_size_bytes
            ),
        ));
    }
    let mut body = vec![0u8; map_bytes(geo.chunk_count) as usize];
    f.read_exact(&mut body).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: map body truncated: {e}", path.display()),
        )
    })?;
    Ok(body)
}

pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

/// Writes the given stripes' durable bytes and makes them durable.
pub async fn persist(file: &File, stripes: &[(u64, Vec<u8>)]) -> io::Result<()> {
    if stripes.is_empty() {
        return Ok(());
    }
    let mut buf = AlignedBuf::new(STRIPE_MAP_BYTES as usize);
    for (stripe, bytes) in stripes {
        buf.set_len(bytes.len());
        buf.copy_from_slice(bytes);
        let offset = MAP_HEADER_LEN as u64 + stripe * STRIPE_MAP_BYTES;
        let (res, b) = file.write_all_at(buf, offset).await;
        buf = b;
        res?;
    }
    file.fdatasync().await
}
