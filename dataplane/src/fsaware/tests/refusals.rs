//! What must be refused, with which error and message — never a panic, never a guess.

use super::oracle::{self, run, sparse_file, tool};
use super::patch::{Work, S_FEATURE_COMPAT, S_FEATURE_INCOMPAT, S_FEATURE_RO_COMPAT, S_STATE};
use crate::fsaware::{ext4_free_space, ext4_free_space_of_bytes, FileSource, FsAwareError};
use rand::{RngCore, SeedableRng};
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

fn parse_file(path: &Path) -> Result<crate::fsaware::FreeSpace, FsAwareError> {
    let mut src = FileSource::new(File::open(path).expect("open image")).expect("measure image");
    ext4_free_space(&mut src)
}

/// A clean 64 MiB ext4 with 1 KiB blocks (8 groups), in memory.
fn base_image(name: &str, args: &[&str]) -> Work {
    let img = oracle::make(name, 64, "mkfs.ext4", args, false, None);
    let bytes = fs::read(&img.path).expect("read image");
    Work::new(bytes)
}

fn err_of(w: &Work) -> FsAwareError {
    match ext4_free_space_of_bytes(&w.img) {
        Ok(fs) => panic!("expected a refusal, got {} free blocks", fs.blocks_free),
        Err(e) => e,
    }
}

#[test]
fn fsaware_refuses_random_bytes() {
    let dir = oracle::scratch("random");
    let mut bytes = vec![0u8; 2 << 20];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut bytes);
    let e = ext4_free_space_of_bytes(&bytes).unwrap_err();
    assert!(matches!(e, FsAwareError::NotExt4 { .. }), "{e}");
    let path = dir.path().join("random.img");
    fs::write(&path, &bytes).expect("write");
    let e = parse_file(&path).unwrap_err();
    assert!(matches!(e, FsAwareError::NotExt4 { .. }), "{e}");
}

#[test]
fn fsaware_refuses_all_zero_file() {
    let dir = oracle::scratch("zero");
    let path = sparse_file(dir.path(), "zero.img", 64 << 20);
    let e = parse_file(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        "source is not ext4 (no ext2/3/4 superblock magic at byte 1080: found 0x0000, not 0xef53)"
    );
}

#[test]
fn fsaware_refuses_sources_too_small() {
    for len in [0usize, 100, 1080, 2047] {
        let e = ext4_free_space_of_bytes(&vec![0u8; len]).unwrap_err();
        assert!(
            e.to_string()
                .contains("too small for an ext2/3/4 superblock"),
            "{len}: {e}"
        );
    }
}

#[test]
fn fsaware_refuses_other_file_systems() {
    let dir = oracle::scratch("other-fs");
    for (mkfs, args) in [
        ("mkfs.vfat", &["-C"][..]),
        ("mkfs.xfs", &["-f", "-q"][..]),
        ("mkfs.minix", &[][..]),
        ("mkfs.bfs", &[][..]),
    ] {
        let Some(bin) = tool(mkfs) else {
            eprintln!("fsaware: {mkfs} is not installed; that refusal case is skipped");
            continue;
        };
        let path = dir.path().join(format!("{mkfs}.img"));
        let _ = fs::remove_file(&path);
        if mkfs == "mkfs.vfat" {
            // `mkfs.vfat -C FILE BLOCKS` creates the file itself (size in KiB).
            run(Command::new(&bin).args(args).arg(&path).arg("65536"));
        } else {
            sparse_file(dir.path(), &format!("{mkfs}.img"), 64 << 20);
            run(Command::new(&bin).args(args).arg(&path));
        }
        let e = parse_file(&path).unwrap_err();
        assert!(matches!(e, FsAwareError::NotExt4 { .. }), "{mkfs}: {e}");
    }
}

#[test]
fn fsaware_refuses_journal_needing_recovery() {
    let mut w = base_image("recover", &["-b", "1024"]);
    assert!(ext4_free_space_of_bytes(&w.img).is_ok());
    let incompat = w.get32(S_FEATURE_INCOMPAT);
    w.set32(S_FEATURE_INCOMPAT, incompat | 0x4);
    // The kernel updates the checksum with the flag; a flag flipped alone is corruption.
    let e = err_of(&w);
    assert!(e.to_string().contains("superblock checksum"), "{e}");
    w.reseal(false);
    let e = err_of(&w);
    assert!(matches!(e, FsAwareError::NeedsRecovery), "{e}");
    assert!(
        e.to_string()
            .contains("mount and unmount the file system (or run e2fsck) on the source first"),
        "{e}"
    );
}

#[test]
fn fsaware_refuses_unknown_and_unsupported_features() {
    let mut w = base_image("features", &["-b", "1024"]);
    for (at, bit, want) in [
        (
            S_FEATURE_INCOMPAT,
            0x8_0000,
            "unknown ext4 feature (incompat 0x80000) is not supported by --fs-aware",
        ),
        (
            S_FEATURE_RO_COMPAT,
            0x2_0000,
            "unknown ext4 feature (ro_compat 0x20000) is not supported by --fs-aware",
        ),
        (
            S_FEATURE_COMPAT,
            0x4000,
            "unknown ext4 feature (compat 0x4000) is not supported by --fs-aware",
        ),
        (
            S_FEATURE_INCOMPAT,
            0x1,
            "ext4 feature 'compression' (incompat 0x1: ",
        ),
        (
            S_FEATURE_RO_COMPAT,
            0x80,
            "ext4 feature 'snapshot' (ro_compat 0x80: ",
        ),
    ] {
        let v = w.get32(at);
        w.set32(at, v | bit);
        w.reseal(false);
        let e = err_of(&w);
        assert!(matches!(e, FsAwareError::Unsupported { .. }), "{e}");
        assert!(e.to_string().starts_with(want), "{e}");
        w.restore();
    }
}

#[test]
fn fsaware_refuses_external_journal_device() {
    let img = oracle::make(
        "journal-dev",
        64,
        "mke2fs",
        &["-O", "journal_dev"],
        false,
        None,
    );
    let e = parse_file(&img.path).unwrap_err();
    assert!(matches!(e, FsAwareError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string().contains("external ext3/4 journal device"),
        "{e}"
    );
}

#[test]
fn fsaware_refuses_unclean_state() {
    let mut w = base_image("state", &["-b", "1024"]);
    for (state, want) in [
        (0u16, "not cleanly unmounted"),
        (3, "errors recorded"),
        (5, "orphan inodes"),
    ] {
        w.set16(S_STATE, state);
        w.reseal(false);
        let e = err_of(&w);
        assert!(matches!(e, FsAwareError::NotClean { .. }), "{e}");
        assert!(e.to_string().contains(want), "{state}: {e}");
        w.restore();
    }
}

#[test]
fn fsaware_refuses_truncated_image() {
    let img = oracle::make("truncated", 64, "mkfs.ext4", &["-b", "1024"], false, None);
    let whole = fs::read(&img.path).expect("read image");
    File::options()
        .write(true)
        .open(&img.path)
        .and_then(|f| f.set_len(32 << 20))
        .expect("truncate");
    let e = parse_file(&img.path).unwrap_err();
    assert!(matches!(e, FsAwareError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("truncated image"), "{e}");
    // Every shorter prefix is refused too, without a panic.
    for len in (0..whole.len()).step_by(4093).chain([whole.len() - 1]) {
        assert!(ext4_free_space_of_bytes(&whole[..len]).is_err(), "{len}");
    }
}

#[test]
fn fsaware_refuses_bad_checksums() {
    let mut w = base_image("checksums", &["-b", "1024"]);
    let sb = w.superblock().expect("superblock");
    let gdt = sb.descriptor_block(0) as usize * 1024;

    // A superblock byte that no check reads (the volume name).
    w.set(1024 + 0x78, b"x");
    let e = err_of(&w);
    assert!(e.to_string().contains("superblock checksum"), "{e}");
    w.restore();

    // Group 1's descriptor, its free-inode count.
    w.set16(gdt + 64 + 0x0E, 7);
    let e = err_of(&w);
    assert!(e.to_string().contains("group 1 descriptor checksum"), "{e}");
    w.restore();

    // A used block of group 0 marked free.
    let bitmap = w.get32(gdt) as usize * 1024;
    w.set(bitmap, &[w.img[bitmap] & !1]);
    let e = err_of(&w);
    assert!(
        e.to_string().contains("group 0's block bitmap checksum"),
        "{e}"
    );
    // With its checksum updated, the count in the descriptor still gives it away.
    w.reseal(true);
    let recorded = w.get32(gdt + 0x0C) & 0xFFFF;
    let e = err_of(&w);
    let want = format!(
        "group 0's block bitmap has {} free clusters, its descriptor says {recorded}",
        recorded + 1
    );
    assert!(e.to_string().contains(&want), "{e}");
}

#[test]
fn fsaware_refuses_bitmap_disagreeing_with_descriptor_without_checksums() {
    let img = oracle::make("ext2-count", 64, "mkfs.ext2", &["-b", "1024"], false, None);
    let mut w = Work::new(fs::read(&img.path).expect("read image"));
    assert!(ext4_free_space_of_bytes(&w.img).is_ok());
    let bitmap = w.get32(2048) as usize * 1024;
    w.set(bitmap, &[w.img[bitmap] & !1]);
    let e = err_of(&w);
    assert!(matches!(e, FsAwareError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("its descriptor says"), "{e}");
}
