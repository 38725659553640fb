//! The source volume: seeded random data, fully allocated.
//!
//! Ferry never reads or sends holes or all-zero chunks, so a sparse or zero-filled source
//! would inflate its hydration rate against fio, which reads every byte. The source is
//! therefore random data written in 1 MiB pieces and checked to have no hole
//! (`SEEK_HOLE` from 0 must land at the end of the file) before it is used.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

pub const PIECE_BYTES: usize = 1 << 20;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Marker {
    size_bytes: u64,
    seed: u64,
}

/// Where the first hole at or after 0 starts (the file size when there is none).
fn first_hole(f: &File) -> Result<u64> {
    // SAFETY: lseek on an fd we own.
    let at = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    if at < 0 {
        return Err(std::io::Error::last_os_error()).context("lseek SEEK_HOLE");
    }
    Ok(at as u64)
}

/// Makes (or reuses, when a previous run left an identical one) the source at `path`.
/// Returns true when it was reused.
pub fn ensure(path: &Path, size_bytes: u64, seed: u64) -> Result<bool> {
    let marker_path = path.with_extension("json");
    let want = Marker { size_bytes, seed };
    if let (Ok(text), Ok(f)) = (std::fs::read_to_string(&marker_path), File::open(path)) {
        let same = serde_json::from_str::<Marker>(&text).is_ok_and(|m| m == want);
        if same && f.metadata()?.len() == size_bytes && first_hole(&f)? == size_bytes {
            return Ok(true);
        }
    }
    let _ = std::fs::remove_file(&marker_path);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create source {}", path.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; PIECE_BYTES];
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(PIECE_BYTES as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("write source {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()?;
    let hole = first_hole(&f)?;
    if hole != size_bytes {
        bail!("source {} has a hole at byte {hole} right after writing it; the file system does odd things", path.display());
    }
    std::fs::write(&marker_path, serde_json::to_string(&want)?)?;
    Ok(false)
}
