//! Every destination is checked before its time counts: a fast copy that is wrong is no
//! result.
//!
//! * nbdcopy and `qemu-img convert` copy every block, so their destination must equal the
//!   source byte for byte.
//! * Ferry with `--fs-aware` does not send blocks the source file system marks free (the
//!   target reads zeros there), so its target must equal the source in every block that
//!   is *not* free per `dumpe2fs` of the source, and pass `e2fsck -fn`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::sample::FreeBlocks;
use crate::child::run_capture;

const PIECE_BYTES: usize = 8 << 20;

/// What a comparison covered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compared {
    pub bytes: u64,
    /// Free blocks (skipped by the rule) whose content differs from the source.
    pub free_blocks_differing: u64,
}

/// Compares `dest` with `source` over their whole length (which must match). With
/// `free`, blocks it lists may differ; any other difference is an error naming the offset.
pub fn compare(source: &Path, dest: &Path, free: Option<&FreeBlocks>) -> Result<Compared> {
    let s = File::open(source).with_context(|| format!("open {}", source.display()))?;
    let d = File::open(dest).with_context(|| format!("open {}", dest.display()))?;
    let len = s.metadata()?.len();
    if d.metadata()?.len() != len {
        bail!(
            "{} is {} bytes, the source {len}",
            dest.display(),
            d.metadata()?.len()
        );
    }
    let (mut a, mut b) = (vec![0u8; PIECE_BYTES], vec![0u8; PIECE_BYTES]);
    let mut out = Compared::default();
    let mut off = 0u64;
    while off < len {
        let n = PIECE_BYTES.min((len - off) as usize);
        s.read_exact_at(&mut a[..n], off)?;
        d.read_exact_at(&mut b[..n], off)?;
        if a[..n] != b[..n] {
            let Some(free) = free else {
                let at = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y);
                bail!(
                    "{} differs from the source at byte {}",
                    dest.display(),
                    off + at.unwrap_or(0) as u64
                );
            };
            let bs = free.block_bytes as usize;
            for (i, (x, y)) in a[..n].chunks(bs).zip(b[..n].chunks(bs)).enumerate() {
                if x == y {
                    continue;
                }
                let at = off + (i * bs) as u64;
                let block = at / free.block_bytes;
                if !free.is_free(block) {
                    bail!(
                        "{} differs from the source in block {block} (byte {at}), which the file system uses",
                        dest.display()
                    );
                }
                out.free_blocks_differing += 1;
            }
        }
        off += n as u64;
        out.bytes += n as u64;
    }
    Ok(out)
}

/// `e2fsck -fn`: a forced, read-only check; any finding (exit code != 0) fails.
pub fn e2fsck(image: &Path) -> Result<()> {
    run_capture(
        Command::new("e2fsck").arg("-fn").arg(image),
        Duration::from_secs(600),
    )
    .map(|_| ())
    .with_context(|| format!("e2fsck -fn {} found problems", image.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_free_blocks_may_differ() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (src, dst) = (dir.path().join("s"), dir.path().join("d"));
        let mut data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data)?;
        std::fs::write(&dst, &data)?;
        assert_eq!(compare(&src, &dst, None)?.bytes, 65536);
        // Block 3 (of 4 KiB) is free: zeros there are fine with the free list only.
        data[3 * 4096..4 * 4096].fill(0);
        std::fs::write(&dst, &data)?;
        assert!(compare(&src, &dst, None).is_err());
        let free = FreeBlocks::parse("Block size: 4096\n  Free blocks: 3-4\n")?;
        assert_eq!(compare(&src, &dst, Some(&free))?.free_blocks_differing, 1);
        data[5 * 4096] ^= 1;
        std::fs::write(&dst, &data)?;
        assert!(compare(&src, &dst, Some(&free)).is_err());
        std::fs::write(&dst, &data[..4096])?;
        assert!(compare(&src, &dst, Some(&free)).is_err());
        Ok(())
    }
}
