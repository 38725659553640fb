//! The free clusters of a `BLOCK_UNINIT` group, whose bitmap was never written.
//!
//! The kernel fills such a bitmap in on first use (`ext4_init_block_bitmap`): the group's
//! superblock backup and descriptor blocks, plus the group's *own* bitmaps and inode table if
//! they happen to lie in it; everything else is free. We mark more: the bitmaps and inode
//! tables of *every* group that lie in it (with `flex_bg` they live in another group). Anything
//! else an allocator placed in the group would have cleared `BLOCK_UNINIT`.

use super::group_desc::GroupDesc;
use super::superblock::Superblock;

/// Every group's bitmaps and inode table as block ranges `[start, end)`, sorted by start.
pub(crate) struct MetaExtents {
    extents: Vec<(u64, u64)>,
    /// The longest extent, to find those that start before a group but reach into it.
    longest: u64,
}

impl MetaExtents {
    /// `descs` have passed `check_locations`: every extent lies inside the file system.
    pub(crate) fn new(sb: &Superblock, descs: &[GroupDesc]) -> MetaExtents {
        let mut extents = Vec::with_capacity(descs.len().saturating_mul(3));
        for d in descs {
            extents.push((d.block_bitmap, d.block_bitmap + 1));
            extents.push((d.inode_bitmap, d.inode_bitmap + 1));
            extents.push((d.inode_table, d.inode_table + sb.inode_table_blocks));
        }
        extents.sort_unstable();
        MetaExtents {
            extents,
            longest: sb.inode_table_blocks.max(1),
        }
    }

    /// Free cluster runs `[start, end)` of group `g`, in clusters from the group's start,
    /// ascending.
    pub(crate) fn free_runs(&self, sb: &Superblock, g: u64) -> Vec<(u64, u64)> {
        let first = sb.group_first_block(g);
        let end = sb.group_end_block(g);
        let ratio = sb.cluster_ratio;
        let clusters = (end - first).div_ceil(ratio);

        let mut used: Vec<(u64, u64)> = vec![(first, first + sb.base_meta_blocks(g))];
        let from = self
            .extents
            .partition_point(|&(s, _)| s < first.saturating_sub(self.longest));
        for &(s, e) in &self.extents[from..] {
            if s >= end {
                break;
            }
            if e > first {
                used.push((s, e));
            }
        }
        // Blocks → clusters of this group: a cluster is used if any of its blocks is.
        let mut used: Vec<(u64, u64)> = used
            .into_iter()
            .map(|(s, e)| {
                let (s, e) = (s.clamp(first, end), e.clamp(first, end));
                ((s - first) / ratio, (e - first).div_ceil(ratio))
            })
            .filter(|(s, e)| s < e)
            .collect();
        used.sort_unstable();

        let mut free = Vec::new();
        let mut at = 0;
        for (s, e) in used {
            if s > at {
                free.push((at, s));
            }
            at = at.max(e);
        }
        if at < clusters {
            free.push((at, clusters));
        }
        free
    }
}
