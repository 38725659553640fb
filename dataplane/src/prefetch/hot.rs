//! fs-metadata class: where a workload on an ext4 volume reads first, located from chunk 0 of
//! the source alone (no IO of its own).
//!
//! In priority order: the first MiB of the volume (boot sector, partition-less boot loaders,
//! superblock), the superblock, descriptor table and reserved descriptor blocks of group 0
//! (and, with `meta_bg`, every descriptor block), every group's block and inode bitmap, every
//! inode table, then the journal.
//!
//! The superblock and descriptors come from `fsaware`'s checked parsers over a view of chunk
//! 0 that reports the volume's real size; a descriptor table reaching past chunk 0 cannot be
//! read from it (the read fails cleanly), and then only the superblock-derived areas and the
//! journal are used — a second start-up fetch for a hint was not worth it. The journal is
//! found without IO from the superblock's backup of the journal inode's block map
//! (`s_jnl_blocks`, extent tree of depth 0 or the direct blocks of a block map); a deeper
//! extent tree would need a read and is left to in-order.

use std::collections::HashSet;

use crate::fsaware::{read_group_descs, BlockSource, Superblock};
use crate::geometry::Geometry;

/// Bytes at the start of the volume always in the class.
pub const FIRST_BYTES: u64 = 1 << 20;

/// Chunk 0's bytes, seen as a volume of `size` bytes; reads past them fail.
struct Head<'a> {
    bytes: &'a [u8],
    size: u64,
}

impl BlockSource for Head<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut bytes = self.bytes;
        let want = offset.checked_add(buf.len() as u64);
        if want.is_none_or(|end| end > self.size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end of the volume",
            ));
        }
        bytes.read_at(offset, buf).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("byte {offset} is outside chunk 0"),
            )
        })
    }
}

/// The hot chunks (in priority order, each once) and a line saying what was found.
pub fn hot_chunks(head: &[u8], geo: &Geometry) -> (Vec<u64>, String) {
    let mut out = Chunks::new(geo);
    out.bytes(0, FIRST_BYTES);
    let mut src = Head {
        bytes: head,
        size: geo.volume_size_bytes,
    };
    let sb = match Superblock::read(&mut src) {
        Ok(sb) => sb,
        Err(e) => return (out.list, format!("first MiB only: no usable ext4 ({e})")),
    };
    let bs = sb.block_size;
    let blocks = |first: u64, count: u64, out: &mut Chunks| {
        // Every block number below was checked against the file system by fsaware, or is
        // checked here; the file system lies inside the volume.
        let end = first.saturating_add(count).min(sb.blocks_count);
        if first < end {
            out.bytes(first * bs, (end - first) * bs);
        }
    };
    blocks(0, sb.first_data_block + sb.base_meta_blocks(0), &mut out);
    for i in 0..sb.desc_blocks {
        blocks(sb.descriptor_block(i), 1, &mut out);
    }
    let mut note = String::from("ext4: superblock, descriptors");
    match read_group_descs(&mut src, &sb) {
        Ok(descs) => {
            for d in &descs {
                blocks(d.block_bitmap, 1, &mut out);
                blocks(d.inode_bitmap, 1, &mut out);
            }
            for d in &descs {
                blocks(d.inode_table, sb.inode_table_blocks, &mut out);
            }
            note.push_str(&format!(
                ", bitmaps and inode tables of {} groups",
                descs.len()
            ));
        }
        Err(e) => note.push_str(&format!(
            "; bitmaps and inode tables not located (descriptors: {e})"
        )),
    }
    match journal_extents(head) {
        Some(runs) if !runs.is_empty() => {
            let n: u64 = runs.iter().map(|r| r.1).sum();
            for (first, count) in runs {
                blocks(first, count, &mut out);
            }
            note.push_str(&format!(", journal ({n} blocks)"));
        }
        _ => note.push_str(", journal not located without IO"),
    }
    (out.list, note)
}

struct Chunks<'a> {
    geo: &'a Geometry,
    seen: HashSet<u64>,
    list: Vec<u64>,
}

impl<'a> Chunks<'a> {
    fn new(geo: &'a Geometry) -> Self {
        Chunks {
            geo,
            seen: HashSet::new(),
            list: Vec::new(),
        }
    }

    fn bytes(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.geo.volume_size_bytes);
        if offset >= end {
            return;
        }
        let cs = u64::from(self.geo.chunk_size_bytes);
        for c in offset / cs..=(end - 1) / cs {
            if self.seen.insert(c) {
                self.list.push(c);
            }
        }
    }
}

fn le16(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

/// The journal's block runs `(first, count)` from the superblock's backup of the journal
/// inode's `i_block` (kernel `ext4_super_block.s_jnl_blocks`, backup type 1), or `None` when
/// there is no internal journal or locating it would need a read. Block numbers are not
/// trusted here: the caller cuts them at the file system's end.
pub fn journal_extents(head: &[u8]) -> Option<Vec<(u64, u64)>> {
    const SB: usize = 1024;
    const COMPAT_HAS_JOURNAL: u64 = 0x4;
    let sb = head.get(SB..SB + 1024)?;
    if le16(sb, 0x38)? != 0xEF53 || le32(sb, 0x5C)? & COMPAT_HAS_JOURNAL == 0 {
        return None;
    }
    // An external journal device (s_journal_inum 0) or no backup of the block map.
    if le32(sb, 0xE0)? == 0 || *sb.get(0xFD)? != 1 {
        return None;
    }
    let i_block = sb.get(0x10C..0x10C + 60)?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    if le16(i_block, 0)? == 0xF30A {
        let entries = le16(i_block, 2)?;
        if le16(i_block, 6)? != 0 {
            return None;
        }
        for k in 0..entries.min(4) as usize {
            let e = 12 + 12 * k;
            let mut len = le16(i_block, e + 4)?;
            if len > 32768 {
                len -= 32768; // unwritten extent
            }
            let start = (le16(i_block, e + 6)? << 32) | le32(i_block, e + 8)?;
            runs.push((start, len));
        }
    } else {
        // Block map: the twelve direct blocks, merged into runs.
        for k in 0..12 {
            let b = le32(i_block, 4 * k)?;
            if b == 0 {
                break;
            }
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == b => r.1 += 1,
                _ => runs.push((b, 1)),
            }
        }
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("-V").output().is_ok()
    }

    /// `dumpe2fs` lines "Block bitmap at N", "Inode bitmap at N", "Inode table at A-B".
    fn dumpe2fs_meta(img: &std::path::Path) -> (u64, Vec<(u64, u64)>) {
        let out = Command::new("dumpe2fs")
            .arg(img)
            .output()
            .expect("dumpe2fs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut bs = 0;
        let mut runs = Vec::new();
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("Block size:") {
                bs = v.trim().parse().expect("block size");
            }
            for part in l.split(',') {
                let p = part.trim();
                for key in ["Block bitmap at ", "Inode bitmap at ", "Inode table at "] {
                    if let Some(rest) = p.strip_prefix(key) {
                        let nums = rest.split_whitespace().next().unwrap_or("");
                        let mut it = nums.split('-').map(|n| n.parse::<u64>().expect("block"));
                        let a = it.next().expect("start");
                        let b = it.next().unwrap_or(a);
                        runs.push((a, b - a + 1));
                    }
                }
            }
        }
        (bs, runs)
    }

    fn journal_first_block(img: &std::path::Path) -> u64 {
        let out = Command::new("debugfs")
            .args(["-R", "bmap <8> 0"])
            .arg(img)
            .output()
            .expect("debugfs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("journal block")
    }

    #[test]
    fn hot_areas_of_a_real_mkfs_image() {
        if !["mkfs.ext4", "dumpe2fs", "debugfs"].iter().all(|t| have(t)) {
            eprintln!("SKIP: mkfs.ext4/dumpe2fs/debugfs not installed");
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        for (name, size_mib, extra) in [
            ("small-1k", 64u64, &[][..]),
            ("4k", 256, &["-b", "4096"][..]),
        ] {
            let img = dir.path().join(format!("{name}.img"));
            std::fs::File::create(&img)
                .and_then(|f| f.set_len(size_mib << 20))
                .expect("image");
            let st = Command::new("mkfs.ext4")
                .args(["-F", "-q", "-E", "nodiscard"])
                .args(extra)
                .arg(&img)
                .status()
                .expect("mkfs");
            assert!(st.success());
            let cs = 64u32 << 10;
            let geo = Geometry::new(size_mib << 20, cs, 2);
            let bytes = std::fs::read(&img).expect("read image");
            let head = &bytes[..cs as usize];
            let (hot, note) = hot_chunks(head, &geo);
            assert!(note.contains("inode tables of"), "{name}: {note}");
            assert!(note.contains("journal ("), "{name}: {note}");
            let set: HashSet<u64> = hot.iter().copied().collect();
            assert_eq!(set.len(), hot.len(), "{name}: duplicates");
            // The first MiB, first.
            assert_eq!(&hot[..16], &(0..16).collect::<Vec<_>>()[..], "{name}");
            let (bs, runs) = dumpe2fs_meta(&img);
            assert!(!runs.is_empty());
            for (first, count) in runs {
                for b in [first, first + count - 1] {
                    let c = b * bs / u64::from(cs);
                    assert!(set.contains(&c), "{name}: block {b} (chunk {c}) missing");
                }
            }
            let j = journal_first_block(&img) * bs / u64::from(cs);
            assert!(set.contains(&j), "{name}: journal chunk {j} missing");
            // Hot, not everything: most of the volume is left to other classes.
            assert!(
                (hot.len() as u64) < geo.chunk_count / 2,
                "{name}: {} hot",
                hot.len()
            );
        }
    }

    #[test]
    fn not_ext4_is_first_mib_only() {
        let geo = Geometry::new(8 << 20, 1 << 16, 1);
        let head = vec![0u8; 1 << 16];
        let (hot, note) = hot_chunks(&head, &geo);
        assert_eq!(hot, (0..16).collect::<Vec<_>>());
        assert!(note.contains("first MiB only"), "{note}");
        // A tiny volume: the first MiB is cut at its end.
        let geo = Geometry::new(3 << 16, 1 << 16, 1);
        assert_eq!(hot_chunks(&head, &geo).0, [0, 1, 2]);
        assert_eq!(journal_extents(&head), None);
        assert_eq!(journal_extents(&[]), None);
    }
}
