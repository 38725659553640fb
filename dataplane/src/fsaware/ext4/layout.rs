//! Where the fixed metadata sits: block groups, superblock backups, and the group descriptor
//! table in both its classic and its `meta_bg` layout.
//!
//! Mirrors the kernel's `ext4_bg_has_super`, `ext4_num_base_meta_clusters` and
//! `descriptor_loc` (`fs/ext4/balloc.c`, `fs/ext4/super.c`). All arithmetic stays below
//! `blocks_count`, which the superblock checks have bounded by the source size.

use super::superblock::{Backups, Superblock, OFFSET};

/// `n` is a power of `base` (including `base^0 = 1`).
fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// `sparse_super`: backups in groups 0, 1 and the powers of 3, 5 and 7.
fn sparse_backup(g: u64) -> bool {
    g <= 1 || (g % 2 == 1 && (is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)))
}

impl Superblock {
    /// The first block of group `g < group_count`.
    pub(crate) fn group_first_block(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    /// One past the last block of group `g`; the last group may be short.
    pub(crate) fn group_end_block(&self, g: u64) -> u64 {
        (self.group_first_block(g) + self.blocks_per_group).min(self.blocks_count)
    }

    /// Group `g` starts with a superblock (primary or backup).
    pub(crate) fn has_super(&self, g: u64) -> bool {
        match self.backups {
            _ if g == 0 => true,
            Backups::All => true,
            Backups::Two(groups) => groups.contains(&g),
            Backups::Sparse => sparse_backup(g),
        }
    }

    /// Blocks at the start of group `g` taken by its superblock copy, descriptor blocks and
    /// reserved descriptor blocks (`ext4_num_base_meta_clusters`, in blocks).
    pub(crate) fn base_meta_blocks(&self, g: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        let classic = match self.first_meta_bg {
            None => true,
            Some(first) => g < first * self.desc_per_block,
        };
        let n = if !classic {
            // meta_bg: the first, second and last group of each meta group hold its one
            // descriptor block.
            let r = g % self.desc_per_block;
            sup + u64::from(r == 0 || r == 1 || r == self.desc_per_block - 1)
        } else if sup == 1 {
            let gdt = self.first_meta_bg.unwrap_or(self.desc_blocks);
            1 + gdt + self.reserved_gdt_blocks
        } else {
            0
        };
        // 1 KiB blocks with bigalloc: group 0 starts at block 0, the boot block, and the
        // superblock is block 1. The kernel does not count it; being wider is safe.
        n + u64::from(g == 0 && self.block_size == 1024 && self.first_data_block == 0)
    }

    /// The block holding descriptor block `i < desc_blocks`.
    pub(crate) fn descriptor_block(&self, i: u64) -> u64 {
        let sb_block = OFFSET / self.block_size;
        match self.first_meta_bg {
            Some(first) if i >= first => {
                let bg = i * self.desc_per_block;
                let mut skip = u64::from(self.has_super(bg));
                if self.block_size == 1024 && i == 0 && self.first_data_block == 0 {
                    skip += 1;
                }
                self.group_first_block(bg) + skip
            }
            _ => sb_block + 1 + i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsaware_sparse_super_groups() {
        let sparse: Vec<u64> = (0..400).filter(|&g| sparse_backup(g)).collect();
        assert_eq!(sparse, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]);
    }
}
