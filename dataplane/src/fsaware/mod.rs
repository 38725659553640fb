//! File-system-aware migration (`--fs-aware`): find the blocks a source's ext2/3/4 file system
//! marks free, so the backend never reads or sends them.
//!
//! # What is read
//! Only allocation metadata, never file data: the superblock at byte 1024, the group descriptor
//! table (including the `meta_bg` layout), and one block bitmap per block group. A group whose
//! descriptor says `BLOCK_UNINIT` has no bitmap on disk; its used blocks are computed the way
//! the kernel does it (`ext4_init_block_bitmap`), but more widely: the superblock backup, the
//! descriptor blocks and reserved descriptor blocks of that group, plus every block bitmap,
//! inode bitmap and inode table of *any* group that lies inside it. The parser does no IO of
//! its own: it reads through a [`BlockSource`] (a file with `pread`, or a `&[u8]` for tests and
//! fuzzing) and checks every size, count and offset taken from the image before using it.
//!
//! # The safety rule: unknown means used
//! Reporting a free block as used only costs a copy; reporting a used block as free loses data.
//! So every doubt goes to "used":
//! * blocks before the first group (the boot block of a 1 KiB-block file system), past the last
//!   group, and everything past the end of the file system on a larger volume are never free;
//! * with `bigalloc` a bitmap bit covers a whole cluster; a cluster is free only if its bit is;
//! * a `BLOCK_UNINIT` group whose computed free count is higher than its descriptor's count is
//!   taken as entirely used (our model of it missed something);
//! * `BLOCK_UNINIT` is honoured only when descriptors are checksummed (`uninit_bg` or
//!   `metadata_csum`), as in the kernel; otherwise the on-disk bitmap is read.
//!
//! # What is refused, and why
//! Refusing is always safe: the caller then migrates every block. We refuse
//! * anything without the ext2/3/4 magic ([`FsAwareError::NotExt4`]);
//! * any feature bit we do not know, in all three feature words — even "compat" ones:
//!   `sparse_super2` shows that a compat feature can move the metadata that `BLOCK_UNINIT`
//!   groups depend on — and the known features that change what a bitmap means or can leave it
//!   uninitialised: `compression`, `journal_dev` (an external journal device, not a file
//!   system), `lazy_bg`, `exclude_inode`, `exclude_bitmap`, `snapshot`, `replica`
//!   ([`FsAwareError::Unsupported`]);
//! * a journal that needs recovery, which is also how a mounted ext3/4 looks on disk
//!   ([`FsAwareError::NeedsRecovery`]): the bitmaps on disk may be stale until it is replayed;
//! * a file system whose state is not exactly "clean" — unclean unmount (a mounted ext2), errors
//!   recorded, orphans or a fast-commit replay in progress ([`FsAwareError::NotClean`]);
//! * any inconsistency in the metadata: a bad superblock, descriptor or bitmap checksum, a
//!   geometry that does not add up, metadata outside the file system, a file system larger than
//!   the source, or a group whose bitmap and descriptor disagree on its free count
//!   ([`FsAwareError::Corrupt`]). Per-group counts are updated with the bitmap in the same
//!   journal transaction, so they agree on any clean file system; the superblock's total is
//!   updated lazily, so it is only reported ([`FreeSpace::blocks_free_superblock`]).
//!
//! Supported on top of plain ext2/ext3/ext4: `64bit`, `flex_bg`, `meta_bg`, `bigalloc`,
//! `sparse_super`, `sparse_super2`, `uninit_bg`, `metadata_csum` (all checksums verified),
//! `resize_inode`, `mmp`, `inline_data`, `encrypt`, `casefold`, `ea_inode`, `large_dir`,
//! `orphan_file`, `fast_commit`, `verity`, `shared_blocks`, `quota`, `project`.
//!
//! # Consistency
//! The answer describes the file system as it was when read. The caller must read it before
//! the source can change (nothing writes the source during a migration except write-back) and
//! must not use it for a source that is mounted elsewhere: a mounted ext3/4 has its journal
//! marked for recovery and is refused, a mounted ext2 is not marked clean and is refused.

mod ext4;
mod free_space;
mod source;

pub use free_space::FreeSpace;
pub use source::{BlockSource, FileSource};
// Prefetch (`crate::prefetch::hot`) locates hot metadata with the same checked parsers; it
// never decides what is free with them.
pub(crate) use ext4::group_desc::read_all as read_group_descs;
pub(crate) use ext4::superblock::Superblock;

/// Why the free space of a source could not be determined. Every variant means "migrate every
/// block"; none is a reason to fail the migration itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsAwareError {
    #[error("source is not ext4 ({found})")]
    NotExt4 { found: String },
    #[error("{what} is not supported by --fs-aware")]
    Unsupported { what: String },
    #[error(
        "the journal needs recovery (the file system is mounted, or was not unmounted \
         cleanly): mount and unmount the file system (or run e2fsck) on the source first"
    )]
    NeedsRecovery,
    #[error(
        "the file system is not marked clean ({what}): unmount it, or run e2fsck -f on the \
         source first"
    )]
    NotClean { what: String },
    #[error("ext4 metadata is inconsistent ({what}): check the source with e2fsck -fn")]
    Corrupt { what: String },
    #[error("reading the source: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the free space of the ext2/3/4 file system on `src`. See the module docs for what is
/// read and refused. Never panics on any content of `src`; allocates at most in proportion to
/// `src.size()`.
pub fn ext4_free_space(src: &mut dyn BlockSource) -> Result<FreeSpace, FsAwareError> {
    ext4::free_space(src)
}

/// [`ext4_free_space`] over an image in memory: the entry point for a fuzz target.
pub fn ext4_free_space_of_bytes(image: &[u8]) -> Result<FreeSpace, FsAwareError> {
    let mut src = image;
    ext4::free_space(&mut src)
}

/// The file-system UUID of an ext2/3/4 volume from its first bytes (`first_4k`: at least
/// 2048), or `None` without the ext2/3/4 magic. Only the magic is checked: this names a
/// volume (access-pattern recordings), it never decides what is free.
pub fn ext4_uuid(first_4k: &[u8]) -> Option<[u8; 16]> {
    ext4::superblock::Superblock::uuid_of(first_4k)
}

#[cfg(test)]
mod tests;
