//! Builds real images (e2fsprogs needed) under /var/tmp and checks them with e2fsprogs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-sample-test-")
        .tempdir_in("/var/tmp")
        .expect("a temporary directory in /var/tmp")
}

fn make(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, SampleSummary) {
    let image = dir.join(name);
    let t = Instant::now();
    let summary = make_ext4_sample(&image, size, seed, &mut |m| {
        eprintln!("  [{:5.1} s] {m}", t.elapsed().as_secs_f64())
    })
    .expect("a sample image");
    eprintln!(
        "{} in {:.1} s: {summary} {:?}",
        human(size),
        t.elapsed().as_secs_f64(),
        summary.notes
    );
    (image, summary)
}

/// `debugfs dump` of one file in the image.
fn dump(image: &Path, path: &str, out: &Path) -> Vec<u8> {
    e2fs::request(image, &format!("dump {path} {}", out.display())).expect("debugfs dump");
    fs::read(out).expect("the dumped file")
}

/// Every regular file under `dir`, by path relative to it.
fn files_under(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in fs::read_dir(dir.join(rel)).expect("a dumped directory") {
        let entry = entry.expect("a directory entry");
        let rel = rel.join(entry.file_name());
        let ft = entry.file_type().expect("a file type");
        if ft.is_dir() {
            files_under(dir, &rel, out);
        } else if ft.is_file() {
            out.insert(rel, fs::read(entry.path()).expect("a dumped file"));
        }
    }
}

#[test]
fn ext4_sample_256m_is_a_realistic_disk() {
    let dir = workdir();
    let size = 256 << 20;
    let (image, s) = make(dir.path(), "sample.img", size, 11);
    let t = Instant::now();

    assert_eq!(fs::metadata(&image).expect("the image").len(), size);
    e2fs::fsck(&image).expect("e2fsck -fn passes");
    assert!((0.30..=0.40).contains(&s.free_fraction), "{s}");
    let st = e2fs::stats(&image).expect("dumpe2fs");
    assert_eq!(st.free_blocks * st.block_size_bytes, s.free_bytes);
    assert_eq!(st.uuid, s.fs_uuid);
    assert_eq!(s.block_size_bytes, 4096);
    assert!(s.files_written > 100, "{s}");
    assert!(
        s.real_file_bytes > s.duplicated_bytes && s.duplicated_bytes > 1 << 20,
        "{s}"
    );
    assert!(s.random_bytes > 16 << 20 && s.zero_bytes > 8 << 20, "{s}");
    assert!(s.deleted_bytes > 8 << 20, "{s}");

    // The application tree is there twice, byte for byte.
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("a dump directory");
    for v in ["app-v1", "app-v2"] {
        e2fs::request(&image, &format!("rdump /srv/{v} {}", out.display())).expect("rdump");
    }
    let (mut v1, mut v2) = (BTreeMap::new(), BTreeMap::new());
    files_under(&out.join("app-v1"), Path::new(""), &mut v1);
    files_under(&out.join("app-v2"), Path::new(""), &mut v2);
    assert_eq!(
        v1.remove(Path::new("VERSION")).as_deref(),
        Some(&b"1.0.0\n"[..])
    );
    assert_eq!(
        v2.remove(Path::new("VERSION")).as_deref(),
        Some(&b"2.0.0\n"[..])
    );
    assert!(v1.len() > 10);
    assert!(v1 == v2, "the two application trees differ");
    let dup: u64 = v2.values().map(|b| b.len() as u64).sum();
    assert_eq!(dup, s.duplicated_bytes);

    // Random files hold their seeded bytes; zero files are zeros in allocated blocks.
    let scratch = dir.path().join("file");
    for g in &s.generated {
        match g.kind {
            GeneratedKind::Random => {
                let got = dump(&image, &g.path, &scratch);
                let index: u64 = g
                    .path
                    .trim_start_matches("/var/lib/db/data-")
                    .trim_end_matches(".bin")
                    .parse()
                    .expect("an index");
                let mut want = vec![0u8; got.len()];
                random_fill(11, index)(0, &mut want[..]);
                assert_eq!(got.len() as u64, g.len_bytes);
                assert!(got == want, "{} differs from its seed", g.path);
            }
            GeneratedKind::Zero => {
                let got = dump(&image, &g.path, &scratch);
                assert_eq!(got.len() as u64, g.len_bytes);
                assert!(got.iter().all(|&b| b == 0), "{} is not all zero", g.path);
                let blocks: u64 = e2fs::extents(&image, &g.path)
                    .expect("extents")
                    .iter()
                    .map(|e| e.blocks)
                    .sum();
                assert_eq!(blocks, g.len_bytes.div_ceil(4096), "{} has holes", g.path);
            }
            GeneratedKind::Deleted => {
                assert!(
                    e2fs::request(&image, &format!("stat {}", g.path)).is_err(),
                    "{} still exists",
                    g.path
                );
            }
        }
    }

    // Every block of the deleted files is free and still holds its marker.
    let bytes = fs::read(&image).expect("the image");
    let marked: Vec<u64> = bytes
        .chunks(4096)
        .enumerate()
        .filter(|(_, b)| b.starts_with(STALE_MARKER.as_bytes()))
        .map(|(i, _)| i as u64)
        .collect();
    let stale_blocks: u64 = s
        .generated
        .iter()
        .filter(|g| g.path.starts_with("/var/cache/old/"))
        .map(|g| g.len_bytes.div_ceil(4096))
        .sum();
    assert_eq!(marked.len() as u64, stale_blocks);
    for &b in [marked.first(), marked.get(marked.len() / 2), marked.last()]
        .iter()
        .flatten()
    {
        assert!(
            !e2fs::block_in_use(&image, *b).expect("testb"),
            "block {b} is in use"
        );
    }
    eprintln!("checks in {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn same_seed_same_uuid() {
    let dir = workdir();
    let (_, a) = make(dir.path(), "a.img", 64 << 20, 5);
    let (_, b) = make(dir.path(), "b.img", 64 << 20, 5);
    assert_eq!(a.fs_uuid, b.fs_uuid);
    assert_eq!(a.fs_uuid, uuid_from_seed(5, SEED_UUID));
    assert_ne!(uuid_from_seed(6, SEED_UUID), a.fs_uuid);
    let lens = |s: &SampleSummary| {
        s.generated
            .iter()
            .map(|g| (g.path.clone(), g.len_bytes))
            .collect::<Vec<_>>()
    };
    assert_eq!(lens(&a), lens(&b));
}

#[test]
fn too_small_is_refused_and_leaves_no_staging() {
    let dir = workdir();
    let err = make_ext4_sample(&dir.path().join("x.img"), 1 << 20, 1, &mut |_| {});
    assert!(err.is_err());
    assert_eq!(fs::read_dir(dir.path()).expect("the work dir").count(), 0);
}

/// The larger sizes, for timing and the free-space band; slow, so run by hand:
/// `FERRY_SAMPLE_SIZES=1G,4G cargo test --release -p ferry-control sample_sizes -- --ignored --nocapture`.
#[test]
#[ignore]
fn sample_sizes() {
    let sizes = std::env::var("FERRY_SAMPLE_SIZES").unwrap_or_else(|_| "1G,4G,8G".into());
    let dir = workdir();
    for text in sizes.split(',') {
        let size = crate::size::parse_size(text).expect("a size in FERRY_SAMPLE_SIZES");
        let (image, s) = make(dir.path(), "big.img", size, 3);
        let t = Instant::now();
        e2fs::fsck(&image).expect("e2fsck -fn passes");
        eprintln!("  e2fsck in {:.1} s", t.elapsed().as_secs_f64());
        assert!((0.30..=0.40).contains(&s.free_fraction), "{s}");
        fs::remove_file(&image).expect("removing the image");
    }
}
