//! The ext2/3/4 feature bits we understand, and the ones we refuse.
//!
//! Bit values and names follow the kernel's `fs/ext4/ext4.h` and e2fsprogs' `lib/e2p/feature.c`.
//! A bit missing from these tables is unknown and refused, in every word: the safe answer to a
//! feature we cannot reason about is "migrate every block".

use super::super::FsAwareError;

pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x0200;

pub(crate) const INCOMPAT_RECOVER: u32 = 0x0004;
pub(crate) const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
pub(crate) const INCOMPAT_META_BG: u32 = 0x0010;
pub(crate) const INCOMPAT_64BIT: u32 = 0x0080;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x0200;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;

pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
pub(crate) const RO_COMPAT_GDT_CSUM: u32 = 0x0010;
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x0200;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;

/// How we treat a known feature.
#[derive(Clone, Copy)]
enum Support {
    /// Block bitmaps mean what they always mean (or the layout change is handled).
    Yes,
    /// Refused, with the reason shown to the operator.
    Refuse(&'static str),
}

use Support::{Refuse, Yes};

const COMPAT: &[(u32, &str, Support)] = &[
    (0x0001, "dir_prealloc", Yes),
    (0x0002, "imagic_inodes", Yes),
    (0x0004, "has_journal", Yes),
    (0x0008, "ext_attr", Yes),
    (0x0010, "resize_inode", Yes),
    (0x0020, "dir_index", Yes),
    (
        0x0040,
        "lazy_bg",
        Refuse("block bitmaps may be uninitialised without descriptor checksums"),
    ),
    (
        0x0080,
        "exclude_inode",
        Refuse("snapshot exclude bitmaps are not understood"),
    ),
    (
        0x0100,
        "exclude_bitmap",
        Refuse("snapshot exclude bitmaps are not understood"),
    ),
    (COMPAT_SPARSE_SUPER2, "sparse_super2", Yes),
    (0x0400, "fast_commit", Yes),
    (0x0800, "stable_inodes", Yes),
    (0x1000, "orphan_file", Yes),
];

const INCOMPAT: &[(u32, &str, Support)] = &[
    (
        0x0001,
        "compression",
        Refuse("compressed clusters were never part of Linux"),
    ),
    (0x0002, "filetype", Yes),
    // RECOVER and JOURNAL_DEV are accepted here and answered with their own errors.
    (INCOMPAT_RECOVER, "needs_recovery", Yes),
    (INCOMPAT_JOURNAL_DEV, "journal_dev", Yes),
    (INCOMPAT_META_BG, "meta_bg", Yes),
    (0x0040, "extent", Yes),
    (INCOMPAT_64BIT, "64bit", Yes),
    (0x0100, "mmp", Yes),
    (INCOMPAT_FLEX_BG, "flex_bg", Yes),
    (0x0400, "ea_inode", Yes),
    (0x1000, "dirdata", Yes),
    (INCOMPAT_CSUM_SEED, "metadata_csum_seed", Yes),
    (0x4000, "large_dir", Yes),
    (0x8000, "inline_data", Yes),
    (0x10000, "encrypt", Yes),
    (0x20000, "casefold", Yes),
];

const RO_COMPAT: &[(u32, &str, Support)] = &[
    (RO_COMPAT_SPARSE_SUPER, "sparse_super", Yes),
    (0x0002, "large_file", Yes),
    (0x0008, "huge_file", Yes),
    (RO_COMPAT_GDT_CSUM, "uninit_bg", Yes),
    (0x0020, "dir_nlink", Yes),
    (0x0040, "extra_isize", Yes),
    (
        0x0080,
        "snapshot",
        Refuse("snapshot blocks are not understood"),
    ),
    (0x0100, "quota", Yes),
    (RO_COMPAT_BIGALLOC, "bigalloc", Yes),
    (RO_COMPAT_METADATA_CSUM, "metadata_csum", Yes),
    (0x0800, "replica", Refuse("replicas are not understood")),
    (0x1000, "read-only", Yes),
    (0x2000, "project", Yes),
    (0x4000, "shared_blocks", Yes),
    (0x8000, "verity", Yes),
    (0x10000, "orphan_present", Yes),
];

/// Refuses the first unknown or unsupported bit among the three feature words.
pub(crate) fn check(compat: u32, incompat: u32, ro_compat: u32) -> Result<(), FsAwareError> {
    for (word, kind, table) in [
        (incompat, "incompat", INCOMPAT),
        (ro_compat, "ro_compat", RO_COMPAT),
        (compat, "compat", COMPAT),
    ] {
        for shift in 0..32 {
            let bit = 1u32 << shift;
            if word & bit == 0 {
                continue;
            }
            let what = match table.iter().find(|(b, _, _)| *b == bit) {
                Some((_, _, Yes)) => continue,
                Some((_, name, Refuse(why))) => {
                    format!("ext4 feature '{name}' ({kind} 0x{bit:x}: {why})")
                }
                None => format!("unknown ext4 feature ({kind} 0x{bit:x})"),
            };
            return Err(FsAwareError::Unsupported { what });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsaware_features_known_pass_unknown_refused() {
        assert!(check(0x1fff & !0x01c0, 0x3f7de, 0x1f77b).is_ok());
        let e = check(0, 0x4_0000, 0).unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown ext4 feature (incompat 0x40000) is not supported by --fs-aware"
        );
        let e = check(0x40, 0, 0).unwrap_err().to_string();
        assert!(
            e.starts_with("ext4 feature 'lazy_bg' (compat 0x40: "),
            "{e}"
        );
        assert!(check(0, 0, 0x4).is_err(), "btree_dir was never defined");
    }
}
