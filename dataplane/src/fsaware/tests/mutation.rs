//! Quickcheck-style robustness: random mutations of the superblock, descriptors and bitmaps of
//! real images, mostly with checksums recomputed so the mutation reaches the deeper checks. The
//! parser must never panic, and whatever it accepts must be well formed.

use super::oracle;
use super::patch::{Work, SB};
use crate::fsaware::{ext4_free_space_of_bytes, FreeSpace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};

const ITERATIONS: usize = 2500;

/// Superblock fields worth aiming at: (offset in the superblock, width in bytes).
const SB_FIELDS: &[(usize, usize)] = &[
    (0x00, 4),  // inodes count
    (0x04, 4),  // blocks count
    (0x0C, 4),  // free blocks
    (0x14, 4),  // first data block
    (0x18, 4),  // log block size
    (0x1C, 4),  // log cluster size
    (0x20, 4),  // blocks per group
    (0x24, 4),  // clusters per group
    (0x28, 4),  // inodes per group
    (0x3A, 2),  // state
    (0x4C, 4),  // revision
    (0x58, 2),  // inode size
    (0x5C, 4),  // compat
    (0x60, 4),  // incompat
    (0x64, 4),  // ro_compat
    (0xCE, 2),  // reserved GDT blocks
    (0xFE, 2),  // descriptor size
    (0x104, 4), // first meta_bg
    (0x150, 4), // blocks count hi
    (0x158, 4), // free blocks hi
    (0x175, 1), // checksum type
    (0x24C, 4), // backup group 1
    (0x250, 4), // backup group 2
    (0x270, 4), // checksum seed
];

/// Descriptor fields: bitmaps, inode table, free count, flags, and their high halves.
const DESC_FIELDS: &[(usize, usize)] = &[
    (0x00, 4),
    (0x04, 4),
    (0x08, 4),
    (0x0C, 2),
    (0x12, 2),
    (0x20, 4),
    (0x24, 4),
    (0x28, 4),
    (0x2C, 2),
];

const INTERESTING: &[u32] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    255,
    256,
    1023,
    1024,
    4096,
    8191,
    8192,
    65535,
    65536,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
];

/// Where the metadata of an unmutated image lies, to aim mutations at it.
struct Targets {
    desc_entries: Vec<usize>,
    desc_size: usize,
    bitmaps: Vec<(usize, usize)>,
}

fn targets(w: &Work) -> Targets {
    let sb = w.superblock().expect("base image parses");
    let (bs, ds) = (sb.block_size as usize, sb.desc_size as usize);
    let mut desc_entries = Vec::new();
    let mut bitmaps = Vec::new();
    for g in 0..sb.group_count {
        let at = sb.descriptor_block(g / sb.desc_per_block) as usize * bs
            + (g % sb.desc_per_block) as usize * ds;
        desc_entries.push(at);
        bitmaps.push((
            w.get32(at) as usize * bs,
            (sb.clusters_per_group / 8) as usize,
        ));
    }
    Targets {
        desc_entries,
        desc_size: ds,
        bitmaps,
    }
}

fn value(r: &mut StdRng) -> u32 {
    if r.gen_bool(0.6) {
        INTERESTING[r.gen_range(0..INTERESTING.len())]
    } else {
        r.gen()
    }
}

fn set_field(w: &mut Work, at: usize, width: usize, r: &mut StdRng) {
    let v = if r.gen_bool(0.3) {
        // Flip one bit of the current value: feature words, flags, near-miss counts.
        let mut cur = [0u8; 4];
        let n = width.min(w.img.len().saturating_sub(at));
        cur[..n].copy_from_slice(&w.img[at..at + n]);
        u32::from_le_bytes(cur) ^ (1 << r.gen_range(0..width * 8))
    } else {
        value(r)
    };
    w.set(at, &v.to_le_bytes()[..width]);
}

fn mutate(w: &mut Work, t: &Targets, r: &mut StdRng) {
    for _ in 0..r.gen_range(1..=4) {
        match r.gen_range(0..10) {
            0..=3 => {
                let (off, width) = SB_FIELDS[r.gen_range(0..SB_FIELDS.len())];
                set_field(w, SB + off, width, r);
            }
            4..=6 => {
                let entry = t.desc_entries[r.gen_range(0..t.desc_entries.len())];
                let fields: Vec<_> = DESC_FIELDS
                    .iter()
                    .filter(|(o, n)| o + n <= t.desc_size)
                    .collect();
                let &(off, width) = fields[r.gen_range(0..fields.len())];
                set_field(w, entry + off, width, r);
            }
            7..=8 => {
                let (at, len) = t.bitmaps[r.gen_range(0..t.bitmaps.len())];
                let i = at + r.gen_range(0..len);
                let b = w.img.get(i).copied().unwrap_or(0);
                w.set(i, &[b ^ (1 << r.gen_range(0..8))]);
            }
            _ => {
                // Any byte of the superblock, descriptor table or first bitmaps.
                let i = SB + r.gen_range(0..16 * 1024);
                w.set(i, &[r.gen()]);
            }
        }
    }
}

/// What any accepted answer must satisfy.
fn check_well_formed(fs: &FreeSpace, image_len: u64, r: &mut StdRng) {
    let fs_end = fs.blocks_total * u64::from(fs.block_size);
    assert!(fs_end <= image_len, "file system larger than the image");
    let mut prev_end = None;
    for &(off, len) in &fs.free {
        assert!(len > 0 && off % u64::from(fs.block_size) == 0);
        assert!(off + len <= fs_end, "free range past the file system");
        assert!(
            prev_end.is_none_or(|e| e < off),
            "free ranges unsorted or unmerged"
        );
        prev_end = Some(off + len);
    }
    assert_eq!(fs.free_bytes(), fs.blocks_free * u64::from(fs.block_size));
    for chunk in [0, 1, 4096, r.gen_range(1..1 << 22), u64::MAX] {
        let volume = [0, image_len, r.gen(), u64::MAX][r.gen_range(0..4)];
        for (first, count) in fs.free_chunks(chunk, volume) {
            assert!(count > 0 && first.checked_add(count).is_some());
        }
    }
}

fn fuzz_image(name: &str, mkfs: &str, args: &[&str], seed: u64) {
    let img = oracle::make(name, 64, mkfs, args, true, None);
    let mut w = Work::new(fs::read(&img.path).expect("read image"));
    ext4_free_space_of_bytes(&w.img).unwrap_or_else(|e| panic!("{name}: base image: {e}"));
    let t = targets(&w);
    let mut r = StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    for i in 0..ITERATIONS {
        mutate(&mut w, &t, &mut r);
        if r.gen_bool(0.8) {
            w.reseal(r.gen_bool(0.7));
        }
        let len = if r.gen_bool(0.1) {
            r.gen_range(0..w.img.len())
        } else {
            w.img.len()
        };
        let image = &w.img[..len];
        let outcome = catch_unwind(AssertUnwindSafe(|| ext4_free_space_of_bytes(image)));
        match outcome {
            Err(_) => panic!("{name}: parser panicked on iteration {i} (seed {seed})"),
            Ok(Ok(fs)) => {
                accepted += 1;
                check_well_formed(&fs, len as u64, &mut r);
            }
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
        }
        w.restore();
    }
    // Some mutations (free counts, seeds of unused fields) are harmless: the checks are not
    // simply refusing everything.
    assert!(accepted > 0, "{name}: every mutation was refused");
}

#[test]
fn fsaware_mutations_ext4_metadata_csum() {
    fuzz_image("fuzz-csum", "mkfs.ext4", &["-b", "1024", "-g", "2048"], 1);
}

#[test]
fn fsaware_mutations_ext2_meta_bg() {
    fuzz_image(
        "fuzz-meta-bg",
        "mkfs.ext2",
        &["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"],
        2,
    );
}

#[test]
fn fsaware_mutations_bigalloc_uninit_bg() {
    fuzz_image(
        "fuzz-bigalloc",
        "mkfs.ext4",
        &[
            "-b",
            "1024",
            "-O",
            "bigalloc,^metadata_csum,uninit_bg",
            "-C",
            "4096",
        ],
        3,
    );
}
