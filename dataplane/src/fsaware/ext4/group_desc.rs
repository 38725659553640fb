//! Group descriptors: read from the descriptor table, checksums verified, and every block
//! number they hold checked to lie inside the file system.
//!
//! Layout: `struct ext4_group_desc` in the kernel's `fs/ext4/ext4.h`; the `_hi` halves exist
//! only with `64bit` (descriptors of 64 bytes or more).

use super::super::{BlockSource, FsAwareError};
use super::csum::{crc16, crc32c_raw};
use super::superblock::{DescCsum, Superblock};

/// `bg_flags`: the block bitmap was never written; its content is implied by the layout.
const BLOCK_UNINIT: u16 = 0x0002;
/// Offset of `bg_checksum`, which its own checksum skips.
const CSUM_AT: usize = 0x1E;

#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    /// Free clusters (blocks without bigalloc) as recorded in the descriptor.
    pub free_clusters: u64,
    /// `BLOCK_UNINIT` set *and* honoured (descriptors are checksummed, as the kernel requires).
    pub block_uninit: bool,
    /// With `metadata_csum`: crc32c of the block bitmap (low 16 bits only in 32-byte
    /// descriptors).
    pub block_bitmap_csum: u32,
}

fn le16(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 2) {
        Some(s) => u64::from(u16::from_le_bytes([s[0], s[1]])),
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 4) {
        Some(s) => u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        None => 0,
    }
}

fn corrupt(what: String) -> FsAwareError {
    FsAwareError::Corrupt { what }
}

/// Reads all `group_count` descriptors. Allocates one block plus one small struct per group
/// (group_count ≤ source size / 8 KiB).
pub(crate) fn read_all(
    src: &mut dyn BlockSource,
    sb: &Superblock,
) -> Result<Vec<GroupDesc>, FsAwareError> {
    let mut descs = Vec::with_capacity(usize::try_from(sb.group_count).unwrap_or(0));
    let mut buf = vec![0u8; sb.block_size as usize];
    for i in 0..sb.desc_blocks {
        let block = sb.descriptor_block(i);
        super::read_block(src, sb, block, &mut buf, || {
            format!("group descriptor block {i}")
        })?;
        for raw in buf.chunks_exact(sb.desc_size as usize) {
            let g = descs.len() as u64;
            if g >= sb.group_count {
                break;
            }
            verify_csum(sb, g, raw)?;
            let d = parse(sb, raw);
            check_locations(sb, g, &d)?;
            descs.push(d);
        }
    }
    Ok(descs)
}

fn parse(sb: &Superblock, raw: &[u8]) -> GroupDesc {
    let wide = sb.has_64bit && raw.len() >= 64;
    let hi32 = |at| if wide { le32(raw, at) << 32 } else { 0 };
    let hi16 = |at| if wide { le16(raw, at) << 16 } else { 0 };
    GroupDesc {
        block_bitmap: le32(raw, 0x00) | hi32(0x20),
        inode_bitmap: le32(raw, 0x04) | hi32(0x24),
        inode_table: le32(raw, 0x08) | hi32(0x28),
        free_clusters: le16(raw, 0x0C) | hi16(0x2C),
        block_uninit: sb.desc_csum != DescCsum::None
            && le16(raw, 0x12) & u64::from(BLOCK_UNINIT) != 0,
        block_bitmap_csum: (le16(raw, 0x18) | hi16(0x38)) as u32,
    }
}

/// The kernel's `ext4_group_desc_csum`.
pub(crate) fn desc_csum(sb: &Superblock, g: u64, raw: &[u8]) -> Option<u16> {
    let group = (g as u32).to_le_bytes();
    let (head, tail) = (raw.get(..CSUM_AT)?, raw.get(CSUM_AT + 2..)?);
    match sb.desc_csum {
        DescCsum::None => None,
        DescCsum::Crc32c { seed } => {
            let c = crc32c_raw(seed, &group);
            let c = crc32c_raw(c, head);
            let c = crc32c_raw(c, &[0, 0]);
            Some(crc32c_raw(c, tail) as u16)
        }
        DescCsum::Crc16 => {
            let c = crc16(!0, &sb.uuid);
            let c = crc16(c, &group);
            let c = crc16(c, head);
            Some(if sb.has_64bit { crc16(c, tail) } else { c })
        }
    }
}

fn verify_csum(sb: &Superblock, g: u64, raw: &[u8]) -> Result<(), FsAwareError> {
    let Some(computed) = desc_csum(sb, g, raw) else {
        return Ok(());
    };
    let stored = le16(raw, CSUM_AT) as u16;
    if stored != computed {
        return Err(corrupt(format!(
            "group {g} descriptor checksum 0x{stored:04x} does not match its contents \
             (0x{computed:04x})"
        )));
    }
    Ok(())
}

/// Bitmaps and inode tables must lie in the file system, clear of the primary superblock and
/// descriptor table, and — without `flex_bg` — inside their own group (the kernel's
/// `ext4_check_descriptors`). A bitmap read from anywhere else would be noise.
fn check_locations(sb: &Superblock, g: u64, d: &GroupDesc) -> Result<(), FsAwareError> {
    let primary_end = sb.first_data_block + sb.base_meta_blocks(0);
    let (lo, hi) = if sb.flex_bg {
        (primary_end, sb.blocks_count)
    } else {
        (
            sb.group_first_block(g).max(primary_end),
            sb.group_end_block(g),
        )
    };
    let table_end = d.inode_table.checked_add(sb.inode_table_blocks);
    for (what, start, end) in [
        (
            "block bitmap",
            d.block_bitmap,
            d.block_bitmap.checked_add(1),
        ),
        (
            "inode bitmap",
            d.inode_bitmap,
            d.inode_bitmap.checked_add(1),
        ),
        ("inode table", d.inode_table, table_end),
    ] {
        if start < lo || end.is_none_or(|e| e > hi) {
            return Err(corrupt(format!(
                "group {g}'s {what} at block {start} lies outside blocks {lo}..{hi}"
            )));
        }
    }
    Ok(())
}
