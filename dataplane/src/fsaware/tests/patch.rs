//! Editing an image in memory the way the kernel would — changing a field, then updating the
//! checksums that cover it — and undoing the edits.

use crate::fsaware::ext4::csum::crc32c_raw;
use crate::fsaware::ext4::group_desc::desc_csum;
use crate::fsaware::ext4::superblock::{DescCsum, Superblock};

/// Superblock field offsets (from the image start) used by the tests.
pub(super) const SB: usize = 1024;
pub(super) const S_STATE: usize = SB + 0x3A;
pub(super) const S_FEATURE_COMPAT: usize = SB + 0x5C;
pub(super) const S_FEATURE_INCOMPAT: usize = SB + 0x60;
pub(super) const S_FEATURE_RO_COMPAT: usize = SB + 0x64;

/// An image in memory with an undo log.
pub(super) struct Work {
    pub img: Vec<u8>,
    undo: Vec<(usize, Vec<u8>)>,
}

impl Work {
    pub(super) fn new(img: Vec<u8>) -> Work {
        Work {
            img,
            undo: Vec::new(),
        }
    }

    /// Writes `bytes` at `at`, cut at the image's end.
    pub(super) fn set(&mut self, at: usize, bytes: &[u8]) {
        let Some(room) = self.img.len().checked_sub(at) else {
            return;
        };
        let n = bytes.len().min(room);
        self.undo.push((at, self.img[at..at + n].to_vec()));
        self.img[at..at + n].copy_from_slice(&bytes[..n]);
    }

    pub(super) fn get32(&self, at: usize) -> u32 {
        let b = &self.img[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub(super) fn set32(&mut self, at: usize, v: u32) {
        self.set(at, &v.to_le_bytes());
    }

    pub(super) fn set16(&mut self, at: usize, v: u16) {
        self.set(at, &v.to_le_bytes());
    }

    /// Undoes every edit since the last restore, newest first.
    pub(super) fn restore(&mut self) {
        while let Some((at, old)) = self.undo.pop() {
            self.img[at..at + old.len()].copy_from_slice(&old);
        }
    }

    /// The parsed superblock, if it parses.
    pub(super) fn superblock(&self) -> Option<Superblock> {
        let raw: &[u8; 1024] = self.img.get(SB..SB + 1024)?.try_into().ok()?;
        Superblock::parse(raw, self.img.len() as u64).ok()
    }

    /// Recomputes the superblock checksum (if `metadata_csum`), then — if the superblock now
    /// parses — every descriptor checksum and, with `bitmaps`, every block bitmap checksum.
    pub(super) fn reseal(&mut self, bitmaps: bool) {
        if self.img.len() < SB + 1024 {
            return;
        }
        if self.get32(S_FEATURE_RO_COMPAT) & 0x400 != 0 {
            let c = crc32c_raw(!0, &self.img[SB..SB + 0x3FC]);
            self.set32(SB + 0x3FC, c);
        }
        let Some(sb) = self.superblock() else {
            return;
        };
        let (bs, ds) = (sb.block_size as usize, sb.desc_size as usize);
        for g in 0..sb.group_count {
            let block = sb.descriptor_block(g / sb.desc_per_block) as usize;
            let at = block * bs + (g % sb.desc_per_block) as usize * ds;
            let Some(raw) = self.img.get(at..at + ds) else {
                continue;
            };
            if bitmaps {
                if let DescCsum::Crc32c { seed } = sb.desc_csum {
                    let lo = |o: usize| {
                        u64::from(u32::from_le_bytes([
                            raw[o],
                            raw[o + 1],
                            raw[o + 2],
                            raw[o + 3],
                        ]))
                    };
                    let bitmap = lo(0) | if ds >= 64 { lo(0x20) << 32 } else { 0 };
                    let len = (sb.clusters_per_group / 8) as usize;
                    let start = (bitmap as usize).saturating_mul(bs);
                    if let Some(b) = self.img.get(start..start.saturating_add(len)) {
                        let c = crc32c_raw(seed, b);
                        self.set16(at + 0x18, c as u16);
                        if ds >= 64 {
                            self.set16(at + 0x38, (c >> 16) as u16);
                        }
                    }
                }
            }
            let raw = &self.img[at..at + ds];
            if let Some(c) = desc_csum(&sb, g, raw) {
                self.set16(at + 0x1E, c);
            }
        }
    }
}
