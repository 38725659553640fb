//! The primary superblock (1024 bytes at byte 1024): read, checked, and reduced to the geometry
//! the rest of the parser needs.
//!
//! Field offsets follow the kernel's `struct ext4_super_block` (`fs/ext4/ext4.h`). The geometry
//! checks are the kernel's mount-time checks (`ext4_fill_super` and friends): anything the
//! kernel would refuse to mount we refuse to interpret.

use super::super::{BlockSource, FsAwareError};
use super::csum::crc32c_raw;
use super::features::{self, *};

/// Byte offset of the primary superblock.
pub(crate) const OFFSET: u64 = 1024;
const SIZE: usize = 1024;
const MAGIC: u16 = 0xEF53;

// `s_state` bits.
const STATE_VALID: u16 = 0x0001;
const STATE_ERROR: u16 = 0x0002;
const STATE_ORPHAN: u16 = 0x0004;
const STATE_FC_REPLAY: u16 = 0x0020;

/// How group descriptors (and their `BLOCK_UNINIT` flags) are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DescCsum {
    /// No checksum: `BLOCK_UNINIT` is not honoured, every bitmap is read.
    None,
    /// `uninit_bg`: crc16 over the UUID, group number and descriptor.
    Crc16,
    /// `metadata_csum`: crc32c seeded with `seed`; block bitmaps are checksummed too.
    Crc32c { seed: u32 },
}

/// The geometry of one file system, every value checked against the others and the source.
#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    pub uuid: [u8; 16],
    /// 1 KiB ..= 64 KiB.
    pub block_size: u64,
    /// Blocks per bitmap bit: 1, or the cluster size in blocks with `bigalloc`.
    pub cluster_ratio: u64,
    /// The file system ends at `blocks_count * block_size <= source size`.
    pub blocks_count: u64,
    pub free_blocks_count: u64,
    /// The first block of group 0; the blocks before it belong to no group.
    pub first_data_block: u64,
    /// `clusters_per_group * cluster_ratio`.
    pub blocks_per_group: u64,
    /// Bits of a block bitmap that are used: a multiple of 8, at most 8 × block size.
    pub clusters_per_group: u64,
    pub group_count: u64,
    /// Bytes per group descriptor: 32, or 64..=1024 with `64bit`.
    pub desc_size: u64,
    pub desc_per_block: u64,
    /// Blocks of the group descriptor table, `ceil(group_count / desc_per_block)`.
    pub desc_blocks: u64,
    pub reserved_gdt_blocks: u64,
    /// With `meta_bg`: descriptor blocks before this one are laid out the old way.
    pub first_meta_bg: Option<u64>,
    pub inode_table_blocks: u64,
    /// Which groups hold a superblock backup.
    pub backups: Backups,
    pub flex_bg: bool,
    pub has_64bit: bool,
    pub desc_csum: DescCsum,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Backups {
    All,
    /// Groups 0, 1 and powers of 3, 5 and 7.
    Sparse,
    /// `sparse_super2`: group 0 and up to two named groups (0 means none).
    Two([u64; 2]),
}

fn le16(b: &[u8; SIZE], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn le32(b: &[u8; SIZE], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn corrupt(what: String) -> FsAwareError {
    FsAwareError::Corrupt { what }
}

impl Superblock {
    pub(crate) fn read(src: &mut dyn BlockSource) -> Result<Superblock, FsAwareError> {
        let size = src.size();
        if size < OFFSET + SIZE as u64 {
            return Err(FsAwareError::NotExt4 {
                found: format!("the source is {size} bytes, too small for an ext2/3/4 superblock"),
            });
        }
        let mut b = [0u8; SIZE];
        src.read_at(OFFSET, &mut b)?;
        Superblock::parse(&b, size)
    }

    /// The UUID of the ext2/3/4 file system whose superblock lies in `head` (the first bytes
    /// of a volume, at least `OFFSET + SIZE` of them), if the magic is there. This identifies a
    /// volume; nothing else is checked, so it must never decide what is free.
    pub(crate) fn uuid_of(head: &[u8]) -> Option<[u8; 16]> {
        let b: &[u8; SIZE] = head
            .get(OFFSET as usize..OFFSET as usize + SIZE)?
            .try_into()
            .ok()?;
        if le16(b, 0x38) != MAGIC {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        Some(uuid)
    }

    /// Checks `b` (the 1024 superblock bytes) of a source of `source_size` bytes.
    pub(crate) fn parse(b: &[u8; SIZE], source_size: u64) -> Result<Superblock, FsAwareError> {
        let magic = le16(b, 0x38);
        if magic != MAGIC {
            return Err(FsAwareError::NotExt4 {
                found: format!(
                    "no ext2/3/4 superblock magic at byte 1080: found 0x{magic:04x}, not 0xef53"
                ),
            });
        }
        let compat = le32(b, 0x5C);
        let incompat = le32(b, 0x60);
        let ro_compat = le32(b, 0x64);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);

        // Verify the checksum before believing any other field.
        let desc_csum = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            if b[0x175] != 1 {
                return Err(corrupt(format!(
                    "superblock checksum type {} is not crc32c (1)",
                    b[0x175]
                )));
            }
            let stored = le32(b, 0x3FC);
            let computed = crc32c_raw(!0, &b[..0x3FC]);
            if stored != computed {
                return Err(corrupt(format!(
                    "superblock checksum 0x{stored:08x} does not match its contents \
                     (0x{computed:08x})"
                )));
            }
            let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(b, 0x270)
            } else {
                crc32c_raw(!0, &uuid)
            };
            DescCsum::Crc32c { seed }
        } else if ro_compat & RO_COMPAT_GDT_CSUM != 0 {
            DescCsum::Crc16
        } else {
            DescCsum::None
        };

        features::check(compat, incompat, ro_compat)?;
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(FsAwareError::Unsupported {
                what: "an external ext3/4 journal device (incompat 0x8 'journal_dev'; it holds \
                       no file system)"
                    .into(),
            });
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(FsAwareError::NeedsRecovery);
        }
        check_state(le16(b, 0x3A))?;

        let has_64bit = incompat & INCOMPAT_64BIT != 0;
        let hi = |at: usize| if has_64bit { u64::from(le32(b, at)) } else { 0 };

        let log_block = le32(b, 0x18);
        if log_block > 6 {
            return Err(corrupt(format!(
                "block size 2^(10+{log_block}) is outside 1 KiB..64 KiB"
            )));
        }
        let block_size = 1024u64 << log_block;

        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let blocks_per_group = u64::from(le32(b, 0x20));
        let (cluster_ratio, clusters_per_group) = if bigalloc {
            let log_cluster = le32(b, 0x1C);
            // The kernel's limit: clusters of at most 2^30 bytes.
            if log_cluster < log_block || log_cluster > 20 {
                return Err(corrupt(format!(
                    "cluster size 2^(10+{log_cluster}) is smaller than a block or over 1 GiB"
                )));
            }
            (1u64 << (log_cluster - log_block), u64::from(le32(b, 0x24)))
        } else {
            // Without bigalloc the kernel ignores s_clusters_per_group.
            (1, blocks_per_group)
        };
        if clusters_per_group == 0
            || clusters_per_group % 8 != 0
            || clusters_per_group > 8 * block_size
        {
            return Err(corrupt(format!(
                "{clusters_per_group} bitmap bits per group (must be a non-zero multiple of 8, \
                 at most {})",
                8 * block_size
            )));
        }
        if clusters_per_group * cluster_ratio != blocks_per_group {
            return Err(corrupt(format!(
                "{blocks_per_group} blocks per group is not {clusters_per_group} clusters of \
                 {cluster_ratio} blocks"
            )));
        }

        let blocks_count = u64::from(le32(b, 0x04)) | (hi(0x150) << 32);
        let free_blocks_count = u64::from(le32(b, 0x0C)) | (hi(0x158) << 32);
        let first_data_block = u64::from(le32(b, 0x14));
        // Group 0 starts right after the superblock's block (block 1 with 1 KiB blocks), except
        // with bigalloc, where it starts at 0.
        let expect_first = u64::from(block_size == 1024 && !bigalloc);
        if first_data_block != expect_first {
            return Err(corrupt(format!(
                "first data block {first_data_block}, expected {expect_first} for {block_size}-byte \
                 blocks"
            )));
        }
        if blocks_count <= first_data_block {
            return Err(corrupt(format!("block count {blocks_count} is too small")));
        }
        let fs_bytes = blocks_count.checked_mul(block_size);
        if fs_bytes.is_none_or(|n| n > source_size) {
            return Err(corrupt(format!(
                "the superblock says {blocks_count} blocks of {block_size} bytes, more than the \
                 {source_size}-byte source holds (truncated image?)"
            )));
        }
        let group_count = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if group_count > u64::from(u32::MAX) {
            return Err(corrupt(format!("{group_count} block groups")));
        }

        let desc_size = if has_64bit {
            let n = u64::from(le16(b, 0xFE));
            if !(64..=1024).contains(&n) || !n.is_power_of_two() {
                return Err(corrupt(format!(
                    "group descriptor size {n} (64bit needs a power of two in 64..=1024)"
                )));
            }
            n
        } else {
            32
        };
        if desc_size > block_size {
            return Err(corrupt(format!(
                "group descriptor size {desc_size} exceeds the block size"
            )));
        }
        let desc_per_block = block_size / desc_size;
        let desc_blocks = group_count.div_ceil(desc_per_block);

        let first_meta_bg = if incompat & INCOMPAT_META_BG != 0 {
            let n = u64::from(le32(b, 0x104));
            if n > desc_blocks {
                return Err(corrupt(format!(
                    "first meta_bg {n} is past the {desc_blocks} descriptor blocks"
                )));
            }
            Some(n)
        } else {
            None
        };

        let reserved_gdt_blocks = u64::from(le16(b, 0xCE));
        if reserved_gdt_blocks > block_size / 4 {
            return Err(corrupt(format!(
                "{reserved_gdt_blocks} reserved descriptor blocks"
            )));
        }

        let rev_level = le32(b, 0x4C);
        let inode_size = if rev_level == 0 {
            128
        } else {
            u64::from(le16(b, 0x58))
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(corrupt(format!("inode size {inode_size}")));
        }
        let inodes_per_group = u64::from(le32(b, 0x28));
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            return Err(corrupt(format!("{inodes_per_group} inodes per group")));
        }
        let inodes_count = u64::from(le32(b, 0x00));
        if group_count * inodes_per_group != inodes_count {
            return Err(corrupt(format!(
                "{inodes_count} inodes is not {group_count} groups of {inodes_per_group}"
            )));
        }
        let inode_table_blocks = (inodes_per_group * inode_size).div_ceil(block_size);

        let backups = if compat & COMPAT_SPARSE_SUPER2 != 0 {
            Backups::Two([u64::from(le32(b, 0x24C)), u64::from(le32(b, 0x250))])
        } else if ro_compat & RO_COMPAT_SPARSE_SUPER != 0 {
            Backups::Sparse
        } else {
            Backups::All
        };

        Ok(Superblock {
            uuid,
            block_size,
            cluster_ratio,
            blocks_count,
            free_blocks_count,
            first_data_block,
            blocks_per_group,
            clusters_per_group,
            group_count,
            desc_size,
            desc_per_block,
            desc_blocks,
            reserved_gdt_blocks,
            first_meta_bg,
            inode_table_blocks,
            backups,
            flex_bg: incompat & INCOMPAT_FLEX_BG != 0,
            has_64bit,
            desc_csum,
        })
    }
}

/// Bitmaps of a file system that is not exactly "clean" may not describe its blocks.
fn check_state(state: u16) -> Result<(), FsAwareError> {
    if state == STATE_VALID {
        return Ok(());
    }
    let mut why = Vec::new();
    if state & STATE_VALID == 0 {
        why.push("not cleanly unmounted, or mounted now");
    }
    if state & STATE_ERROR != 0 {
        why.push("errors recorded");
    }
    if state & STATE_ORPHAN != 0 {
        why.push("orphan inodes being recovered");
    }
    if state & STATE_FC_REPLAY != 0 {
        why.push("fast-commit replay in progress");
    }
    if state & !(STATE_VALID | STATE_ERROR | STATE_ORPHAN | STATE_FC_REPLAY) != 0 {
        why.push("unknown state bits");
    }
    Err(FsAwareError::NotClean {
        what: format!("state 0x{state:04x}: {}", why.join(", ")),
    })
}
