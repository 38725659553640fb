//! A live ext4 file system through the export: the backend serves a loop device holding
//! ext4; the workload mounts the export (nbdfuse → loop → mount), reads and verifies old
//! files, writes new ones; after cutover the target is a clean ext4 with all files.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

const SIZE: u64 = 256 * MIB;

/// Writes `n` random files under `root/sub`, returns name → sha256.
fn write_files(root: &Path, sub: &str, n: usize, seed: u64) -> BTreeMap<String, String> {
    let d = root.join(sub);
    fs::create_dir_all(&d).unwrap();
    let mut sums = BTreeMap::new();
    let mut r = rng(seed);
    for i in 0..n {
        use rand::Rng;
        // Sizes from a few bytes to a few MiB: inline data, extents, multiple chunks.
        let len = match i % 4 {
            0 => r.gen_range(1..4096),
            1 => r.gen_range(4096..200_000),
            2 => r.gen_range(1..4) * MIB as usize,
            _ => r.gen_range(100_000..1_500_000),
        };
        let data = random_bytes(len, seed * 1000 + i as u64);
        let name = format!("{sub}/f{i:03}.bin");
        fs::write(root.join(&name), &data).unwrap();
        sums.insert(name, String::new());
    }
    for (name, sum) in sums.iter_mut() {
        *sum = sha256_file(&root.join(name));
    }
    sums
}

fn verify_files(root: &Path, sums: &BTreeMap<String, String>) {
    for (name, want) in sums {
        let got = sha256_file(&root.join(name));
        assert_eq!(
            &got,
            want,
            "checksum mismatch for {name} under {}",
            root.display()
        );
    }
}

#[test]
fn ext4_on_loop_device_survives_live_migration() {
    require_root();
    require_tools(&[
        "mkfs.ext4",
        "e2fsck",
        "losetup",
        "mount",
        "umount",
        "nbdfuse",
        "fusermount3",
        "sha256sum",
    ]);
    let dir = test_dir("ext4-live");
    let image = dir.path().join("source-ext4.img");

    // 1. Build the source file system and fill it.
    run_ok(
        Command::new("truncate")
            .args(["-s", &SIZE.to_string()])
            .arg(&image),
    );
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-E", "nodiscard"])
            .arg(&image),
    );
    let old = {
        let mut lo = LoopDev::attach(&image, false);
        let mut m = Mount::new(&lo.dev, &dir.path().join("mnt-src"), None);
        let sums = write_files(&m.dir, "old", 24, 7);
        run_ok(&mut Command::new("sync"));
        m.unmount();
        lo.detach();
        sums
    };
    run_ok(Command::new("e2fsck").arg("-fn").arg(&image));

    // 2. The backend serves the image as a block device.
    let src_lo = LoopDev::attach(&image, false);
    let mut h = Harness::start(dir.path(), &src_lo.dev, Opts::default().rate("8M"));
    h.assert_mid_migration();

    // 3. The workload: export → file (nbdfuse) → loop device → mount.
    let new = {
        let mut fuse = NbdFuse::mount(&h.uri(), &dir.path().join("fuse"), dir.path());
        assert_eq!(size_of(&fuse.file), SIZE);
        let mut lo = LoopDev::attach(&fuse.file, false);
        let mut m = Mount::new(&lo.dev, &dir.path().join("mnt-live"), None);
        verify_files(&m.dir, &old);
        let new = write_files(&m.dir, "new", 16, 8);
        // Overwrite one old file in place too.
        let (name0, _) = old.iter().next().unwrap();
        fs::write(m.dir.join(name0), b"rewritten during migration").unwrap();
        run_ok(&mut Command::new("sync"));
        verify_files(&m.dir, &new);
        m.unmount();
        lo.detach();
        fuse.unmount();
        new
    };
    if let Some(st) = h.status() {
        assert!(
            get_u64(&st, "chunks_dirty") > 0,
            "writes must leave dirty chunks: {st}"
        );
    }

    // 4. Cutover; the target is a complete, clean ext4.
    h.cutover_wait();
    drop(src_lo);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&h.target));
    let lo = LoopDev::attach(&h.target, true);
    let m = Mount::new(&lo.dev, &dir.path().join("mnt-target"), Some("ro,noload"));
    let mut old_expected = old.clone();
    let (name0, _) = old.iter().next().unwrap();
    let rewritten = dir.path().join("rewritten");
    fs::write(&rewritten, b"rewritten during migration").unwrap();
    old_expected.insert(name0.clone(), sha256_file(&rewritten));
    verify_files(&m.dir, &old_expected);
    verify_files(&m.dir, &new);
    drop(m);
    drop(lo);
}
