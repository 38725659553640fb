//! The ext2/3/4 walk: superblock → group descriptors → one bitmap per group → free runs.
//!
//! Reference: the kernel's `Documentation/filesystems/ext4/` and `fs/ext4/`, cross-checked in
//! tests against `dumpe2fs` of real `mkfs.ext4` images.

mod bitmap;
pub(crate) mod csum;
mod features;
pub(crate) mod group_desc;
mod layout;
pub(crate) mod superblock;
mod uninit;

use super::free_space::FreeBlocks;
use super::{BlockSource, FreeSpace, FsAwareError};
use csum::crc32c_raw;
use superblock::{DescCsum, Superblock};

/// Reads `buf.len() <= block_size` bytes at the start of `block`, which must lie in the file
/// system (and so in the source: the superblock checks made sure the file system fits).
fn read_block(
    src: &mut dyn BlockSource,
    sb: &Superblock,
    block: u64,
    buf: &mut [u8],
    what: impl FnOnce() -> String,
) -> Result<(), FsAwareError> {
    debug_assert!(buf.len() as u64 <= sb.block_size);
    if block >= sb.blocks_count {
        return Err(FsAwareError::Corrupt {
            what: format!(
                "{} at block {block} is past the file system's {} blocks",
                what(),
                sb.blocks_count
            ),
        });
    }
    src.read_at(block * sb.block_size, buf)?;
    Ok(())
}

pub(crate) fn free_space(src: &mut dyn BlockSource) -> Result<FreeSpace, FsAwareError> {
    let sb = Superblock::read(src)?;
    let descs = group_desc::read_all(src, &sb)?;
    let meta = uninit::MetaExtents::new(&sb, &descs);
    let ratio = sb.cluster_ratio;

    let mut free = FreeBlocks::default();
    // Only the first clusters_per_group bits of a bitmap block are used (and checksummed).
    let mut bitmap = vec![0u8; (sb.clusters_per_group / 8) as usize];
    for (g, d) in (0u64..).zip(&descs) {
        let first = sb.group_first_block(g);
        let end = sb.group_end_block(g);
        let clusters = (end - first).div_ceil(ratio);
        // Cluster run → block run, the last cluster cut at the file system's end.
        let mut push = |c0: u64, c1: u64| {
            let b0 = first + c0 * ratio;
            free.push(b0, (first + c1 * ratio).min(end) - b0);
        };

        if d.block_uninit {
            let runs = meta.free_runs(&sb, g);
            let computed: u64 = runs.iter().map(|(s, e)| e - s).sum();
            if computed > d.free_clusters {
                // Our model of the group found less in use than the file system records:
                // something we do not know about lives there. Take the whole group as used.
                tracing::warn!(
                    group = g,
                    computed,
                    recorded = d.free_clusters,
                    "fs-aware: uninitialised block group has fewer used blocks than recorded; \
                     treating the whole group as used"
                );
                continue;
            }
            for (s, e) in runs {
                push(s, e);
            }
            continue;
        }

        read_block(src, &sb, d.block_bitmap, &mut bitmap, || {
            format!("group {g}'s block bitmap")
        })?;
        if let DescCsum::Crc32c { seed } = sb.desc_csum {
            let mut computed = crc32c_raw(seed, &bitmap);
            if sb.desc_size < 64 {
                computed &= 0xFFFF;
            }
            if computed != d.block_bitmap_csum {
                return Err(FsAwareError::Corrupt {
                    what: format!(
                        "group {g}'s block bitmap checksum 0x{:08x} does not match its \
                         contents (0x{computed:08x})",
                        d.block_bitmap_csum
                    ),
                });
            }
        }
        let mut counted = 0;
        bitmap::clear_runs(&bitmap, clusters, |s, e| {
            counted += e - s;
            push(s, e);
        });
        // Descriptor counts change in the same transaction as the bitmap; on a clean file
        // system they agree, and a bitmap that disagrees is not to be trusted.
        if counted != d.free_clusters {
            return Err(FsAwareError::Corrupt {
                what: format!(
                    "group {g}'s block bitmap has {counted} free clusters, its descriptor says {}",
                    d.free_clusters
                ),
            });
        }
    }

    Ok(FreeSpace {
        fs_uuid: sb.uuid,
        block_size: sb.block_size as u32,
        blocks_total: sb.blocks_count,
        blocks_free: free.blocks(),
        blocks_free_superblock: sb.free_blocks_count,
        free: free.into_bytes(sb.block_size),
    })
}
