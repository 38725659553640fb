//! Real `mkfs.ext*` images: the free set must equal `dumpe2fs`'s, block for block, and
//! `free_chunks` must report exactly the chunks the oracle says are free end to end.

use super::oracle::{self, Oracle};
use crate::fsaware::{ext4_free_space, FileSource, FreeSpace};
use std::fs::File;
use std::path::Path;
use std::process::Command;

struct Case<'a> {
    name: &'a str,
    size_mib: u64,
    mkfs: &'a str,
    args: &'a [&'a str],
    /// Fill with `mkfs -d`, then delete `/f` with `debugfs -w`.
    populate: bool,
    /// A file system smaller than the image file.
    fs_size: Option<&'a str>,
}

impl Case<'_> {
    const fn new<'a>(name: &'a str, size_mib: u64, mkfs: &'a str, args: &'a [&'a str]) -> Case<'a> {
        Case {
            name,
            size_mib,
            mkfs,
            args,
            populate: false,
            fs_size: None,
        }
    }
}

/// Builds the image, compares against the oracle, returns both for case-specific checks.
fn check(case: Case) -> (FreeSpace, Oracle) {
    let img = oracle::make(
        case.name,
        case.size_mib,
        case.mkfs,
        case.args,
        case.populate,
        case.fs_size,
    );
    if case.populate {
        oracle::debugfs_rm(&img.path, "/f");
    }
    let want = oracle::dumpe2fs(&img.path);
    let got = parse_file(&img.path).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let name = case.name;

    assert_eq!(oracle::uuid_string(&got.fs_uuid), want.uuid, "{name}: uuid");
    assert_eq!(
        u64::from(got.block_size),
        want.block_size,
        "{name}: block size"
    );
    assert_eq!(got.blocks_total, want.blocks_count, "{name}: block count");
    if got.free != want.free {
        let diff: Vec<_> = got
            .free
            .iter()
            .filter(|r| !want.free.contains(r))
            .chain(want.free.iter().filter(|r| !got.free.contains(r)))
            .take(8)
            .collect();
        panic!(
            "{name}: free set differs from dumpe2fs ({} vs {} ranges); first differing byte \
             ranges: {diff:?}",
            got.free.len(),
            want.free.len()
        );
    }
    let oracle_free_blocks: u64 = want.free.iter().map(|r| r.1).sum::<u64>() / want.block_size;
    assert_eq!(got.blocks_free, oracle_free_blocks, "{name}: free blocks");
    // A freshly made (and debugfs-edited) image is clean: the lazy total agrees too.
    assert_eq!(
        got.blocks_free_superblock, want.free_blocks_superblock,
        "{name}: superblock free count"
    );
    assert_eq!(
        got.blocks_free, got.blocks_free_superblock,
        "{name}: cross-check"
    );
    assert!(
        got.blocks_free > 0,
        "{name}: an empty file system has free blocks"
    );

    let volume = case.size_mib << 20;
    for chunk in [4096, 64 << 10, 1 << 20, 3 * (64 << 10) + 4096, 4 << 20] {
        check_chunks(name, &got, &want, chunk, volume);
    }
    (got, want)
}

fn parse_file(path: &Path) -> Result<FreeSpace, crate::fsaware::FsAwareError> {
    let file = File::open(path).expect("open image");
    let mut src = FileSource::new(file).expect("measure image");
    ext4_free_space(&mut src)
}

/// `free_chunks` must equal a brute-force answer from the oracle: a chunk is free iff it lies
/// inside one oracle free range (they are merged, so no chunk spans two).
fn check_chunks(name: &str, got: &FreeSpace, want: &Oracle, chunk: u64, volume: u64) {
    let inside = |start: u64, end: u64| {
        let i = want.free.partition_point(|&(off, _)| off <= start);
        i > 0 && {
            let (off, len) = want.free[i - 1];
            start >= off && end <= off + len
        }
    };
    let mut expect: Vec<(u64, u64)> = Vec::new();
    for c in 0..volume.div_ceil(chunk) {
        let (start, end) = (c * chunk, ((c + 1) * chunk).min(volume));
        if inside(start, end) {
            match expect.last_mut() {
                Some((f, n)) if *f + *n == c => *n += 1,
                _ => expect.push((c, 1)),
            }
        }
    }
    let runs = got.free_chunks(chunk, volume);
    for &(first, count) in &runs {
        for c in first..first + count {
            let (start, end) = (c * chunk, ((c + 1) * chunk).min(volume));
            assert!(
                inside(start, end),
                "{name}: chunk {c} of {chunk} bytes is reported free but holds used blocks"
            );
        }
    }
    assert_eq!(runs, expect, "{name}: free chunks of {chunk} bytes");
}

#[test]
fn fsaware_default_ext4_populated() {
    let (fs, want) = check(Case {
        populate: true,
        ..Case::new("default", 512, "mkfs.ext4", &[])
    });
    assert_eq!(fs.block_size, 4096);
    assert!(
        want.uninit_groups > 0,
        "default mkfs leaves groups BLOCK_UNINIT"
    );
}

#[test]
fn fsaware_no_flex_bg() {
    check(Case {
        populate: true,
        ..Case::new("no-flex-bg", 512, "mkfs.ext4", &["-O", "^flex_bg"])
    });
}

#[test]
fn fsaware_1k_blocks_populated() {
    let (_, want) = check(Case {
        populate: true,
        ..Case::new("1k", 128, "mkfs.ext4", &["-b", "1024"])
    });
    assert!(want.uninit_groups > 0);
}

#[test]
fn fsaware_no_metadata_csum_no_64bit() {
    check(Case::new(
        "no-csum-32bit",
        512,
        "mkfs.ext4",
        &["-O", "^metadata_csum,^64bit"],
    ));
}

#[test]
fn fsaware_uninit_bg_crc16() {
    let (_, want) = check(Case {
        populate: true,
        ..Case::new(
            "uninit-bg",
            256,
            "mkfs.ext4",
            &["-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        )
    });
    assert!(
        want.uninit_groups > 0,
        "uninit_bg must leave groups BLOCK_UNINIT"
    );
}

#[test]
fn fsaware_meta_bg() {
    let (_, want) = check(Case {
        populate: true,
        ..Case::new(
            "meta-bg",
            256,
            "mkfs.ext4",
            &["-b", "1024", "-O", "meta_bg,^resize_inode"],
        )
    });
    assert!(want.groups > 16, "more than one descriptor block");
    assert!(want.uninit_groups > 0);
}

#[test]
fn fsaware_lazy_itable_init_uninit_groups() {
    let (_, want) = check(Case::new(
        "lazy-itable",
        256,
        "mkfs.ext4",
        &["-b", "4096", "-g", "8192", "-E", "lazy_itable_init=1"],
    ));
    assert!(want.uninit_groups >= 4, "{want:?}");
}

#[test]
fn fsaware_ext2() {
    check(Case {
        populate: true,
        ..Case::new("ext2", 128, "mkfs.ext2", &[])
    });
}

#[test]
fn fsaware_ext2_revision_0() {
    check(Case::new("ext2-rev0", 64, "mkfs.ext2", &["-r", "0"]));
}

#[test]
fn fsaware_ext3() {
    check(Case {
        populate: true,
        ..Case::new("ext3", 256, "mkfs.ext3", &[])
    });
}

#[test]
fn fsaware_bigalloc_1k_blocks() {
    let (_, want) = check(Case {
        populate: true,
        ..Case::new(
            "bigalloc-1k",
            512,
            "mkfs.ext4",
            &["-b", "1024", "-O", "bigalloc", "-C", "16384"],
        )
    });
    assert!(want.uninit_groups > 0);
}

#[test]
fn fsaware_bigalloc_4k_blocks() {
    check(Case {
        populate: true,
        ..Case::new("bigalloc-4k", 512, "mkfs.ext4", &["-O", "bigalloc"])
    });
}

#[test]
fn fsaware_sparse_super2() {
    let (_, want) = check(Case::new(
        "sparse-super2",
        256,
        "mkfs.ext4",
        &["-b", "1024", "-O", "sparse_super2", "-E", "num_backup_sb=1"],
    ));
    assert!(want.uninit_groups > 0);
}

#[test]
fn fsaware_64k_blocks() {
    check(Case::new("64k", 256, "mkfs.ext4", &["-b", "65536"]));
}

#[test]
fn fsaware_mmp_inline_data_quota_no_journal() {
    check(Case {
        populate: true,
        ..Case::new(
            "misc-features",
            128,
            "mkfs.ext4",
            &[
                "-I",
                "256",
                "-O",
                "mmp,inline_data,quota,project,^has_journal",
            ],
        )
    });
}

#[test]
fn fsaware_volume_larger_than_fs_tail_is_used() {
    let (fs, want) = check(Case {
        populate: true,
        fs_size: Some("100M"),
        ..Case::new("short-fs", 128, "mkfs.ext4", &[])
    });
    let fs_end = want.blocks_count * want.block_size;
    assert_eq!(fs_end, 100 << 20);
    assert!(fs.free.iter().all(|&(off, len)| off + len <= fs_end));
    // The last 28 MiB of the volume are not the file system's: never free.
    let runs = fs.free_chunks(1 << 20, 128 << 20);
    assert!(
        runs.iter().all(|&(first, count)| first + count <= 100),
        "{runs:?}"
    );
}

/// Blocks allocated and freed by the kernel rather than e2fsprogs; and a mounted file system
/// is refused (ext4: the journal is marked for recovery; ext2: the state is not clean).
#[test]
fn fsaware_kernel_written_and_mounted() {
    use crate::fsaware::FsAwareError;
    for (mkfs, name) in [("mkfs.ext4", "kernel-ext4"), ("mkfs.ext2", "kernel-ext2")] {
        let img = oracle::make(name, 256, mkfs, &["-b", "4096"], false, None);
        let Some(mut m) = oracle::Mounted::new(&img.path, &img.path.with_extension("mnt")) else {
            return;
        };
        for i in 0..12u8 {
            let dir = m.dir.join(format!("d{}", i % 3));
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(
                dir.join(format!("f{i}")),
                vec![i; 700_000 * (usize::from(i) + 1)],
            )
            .expect("write");
        }
        std::fs::remove_file(m.dir.join("d1/f4")).expect("rm");
        std::fs::remove_file(m.dir.join("d2/f11")).expect("rm");
        oracle::run(&mut Command::new("sync"));
        match parse_file(&img.path) {
            Err(FsAwareError::NeedsRecovery) if mkfs == "mkfs.ext4" => {}
            Err(FsAwareError::NotClean { .. }) if mkfs == "mkfs.ext2" => {}
            other => panic!("{name}: mounted file system not refused: {other:?}"),
        }
        m.unmount();
        let want = oracle::dumpe2fs(&img.path);
        let got = parse_file(&img.path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.free, want.free, "{name}: free set");
        assert_eq!(got.blocks_free, got.blocks_free_superblock, "{name}");
        check_chunks(name, &got, &want, 1 << 20, 256 << 20);
    }
}
