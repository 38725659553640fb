//! The volume every WAN run migrates: the realistic ext4 sample of `ferry-control`
//! (real host files, a duplicated application tree, random and zero files, deleted data
//! in free blocks), cached in the work directory, and the list of its free blocks.
//!
//! Rules:
//! * The cache is keyed by size and seed (`wan-sample-<MiB>M-seed<S>.img`) and is only
//!   reused when its description file (`.json`, written last) is there and matches:
//!   an image left half-built by a killed run is made again. Which host files are copied
//!   depends on the host, so the description is part of the report.
//! * The free blocks come from `dumpe2fs` (e2fsprogs), not from Ferry's own bitmap reader,
//!   so that the check of a `--fs-aware` migration does not trust the code it checks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::child::run_capture;

/// What the sample holds, as `make_ext4_sample` reported it when it made the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleInfo {
    pub size_bytes: u64,
    pub seed: u64,
    /// `SampleSummary`'s one-line description.
    pub description: String,
    pub block_size_bytes: u64,
    pub files_written: u64,
    pub real_file_bytes: u64,
    pub duplicated_bytes: u64,
    pub random_bytes: u64,
    pub zero_bytes: u64,
    pub deleted_bytes: u64,
    pub free_bytes: u64,
    pub notes: Vec<String>,
}

pub struct Sample {
    pub path: PathBuf,
    pub info: SampleInfo,
    /// Bytes the image file has allocated on disk (it may have holes).
    pub allocated_bytes: u64,
    pub free: FreeBlocks,
    /// Taken from the cache rather than made by this run.
    pub reused: bool,
}

/// Makes the sample, or reuses the cached one of the same size and seed.
pub fn ensure(work: &Path, size_bytes: u64, seed: u64) -> Result<Sample> {
    let path = work.join(format!("wan-sample-{}M-seed{seed}.img", size_bytes >> 20));
    let meta = path.with_extension("json");
    let cached: Option<SampleInfo> = std::fs::read_to_string(&meta)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|i: &SampleInfo| i.size_bytes == size_bytes && i.seed == seed)
        .filter(|_| std::fs::metadata(&path).is_ok_and(|m| m.len() == size_bytes));
    let reused = cached.is_some();
    let info = match cached {
        Some(info) => {
            crate::progress(&format!("reusing the cached sample {}", path.display()));
            info
        }
        None => {
            let _ = std::fs::remove_file(&meta);
            crate::progress(&format!(
                "making a {} MiB ext4 sample (seed {seed}) at {}; about 20 s per GiB",
                size_bytes >> 20,
                path.display()
            ));
            let s = control::sample::make_ext4_sample(&path, size_bytes, seed, &mut |m| {
                crate::progress(&format!("  sample: {m}"))
            })?;
            let info = SampleInfo {
                size_bytes,
                seed,
                description: s.to_string(),
                block_size_bytes: s.block_size_bytes,
                files_written: s.files_written,
                real_file_bytes: s.real_file_bytes,
                duplicated_bytes: s.duplicated_bytes,
                random_bytes: s.random_bytes,
                zero_bytes: s.zero_bytes,
                deleted_bytes: s.deleted_bytes,
                free_bytes: s.free_bytes,
                notes: s.notes.clone(),
            };
            std::fs::write(&meta, serde_json::to_string_pretty(&info)?)
                .with_context(|| format!("write {}", meta.display()))?;
            info
        }
    };
    crate::progress(&format!("sample: {}", info.description));
    let free = FreeBlocks::of_image(&path)?;
    if free.block_bytes != info.block_size_bytes || free.bytes() != info.free_bytes {
        crate::warn(&format!(
            "dumpe2fs lists {} free bytes in {}-byte blocks, the sample's summary said {} in {}-byte blocks",
            free.bytes(),
            free.block_bytes,
            info.free_bytes,
            info.block_size_bytes
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let allocated_bytes = std::fs::metadata(&path)?.blocks() * 512;
    Ok(Sample {
        path,
        info,
        allocated_bytes,
        free,
        reused,
    })
}

/// The blocks an ext2/3/4 file system marks free, as sorted inclusive block ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeBlocks {
    pub block_bytes: u64,
    ranges: Vec<(u64, u64)>,
}

impl FreeBlocks {
    /// Runs `dumpe2fs` on an unmounted image.
    pub fn of_image(image: &Path) -> Result<FreeBlocks> {
        let text = run_capture(
            Command::new("dumpe2fs").arg(image),
            Duration::from_secs(120),
        )
        .with_context(|| format!("dumpe2fs {}", image.display()))?;
        FreeBlocks::parse(&text)
    }

    /// Parses `dumpe2fs` output: `Block size:` from the header and the indented
    /// `  Free blocks: a-b, c` line of every group. (The header's own unindented `Free
    /// blocks:` line is a count, not a list.)
    pub fn parse(text: &str) -> Result<FreeBlocks> {
        let block_bytes = text
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("dumpe2fs: no `Block size:` line")?;
        let mut ranges = Vec::new();
        let mut groups = 0;
        for line in text.lines().filter(|l| l.starts_with(char::is_whitespace)) {
            let Some(list) = line.trim_start().strip_prefix("Free blocks:") else {
                continue;
            };
            groups += 1;
            for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (a, b) = item.split_once('-').unwrap_or((item, item));
                let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
                    bail!("dumpe2fs: cannot read the free block range {item:?}");
                };
                if b < a {
                    bail!("dumpe2fs: backwards free block range {item:?}");
                }
                ranges.push((a, b));
            }
        }
        if groups == 0 {
            bail!("dumpe2fs: no group lists free blocks (was it run with -h?)");
        }
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[1].0 <= w[0].1) {
            bail!("dumpe2fs: overlapping free block ranges");
        }
        Ok(FreeBlocks {
            block_bytes,
            ranges,
        })
    }

    pub fn is_free(&self, block: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < block);
        self.ranges.get(i).is_some_and(|r| r.0 <= block)
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a + 1).sum::<u64>() * self.block_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "Free blocks:              12\nBlock size:               4096\n\
Group 0: (Blocks 0-32767) csum 0x1 [ITABLE_ZEROED]\n  Primary superblock at 0\n  \
4 free blocks, 1 free inodes\n  Free blocks: 100-102, 7\n  Free inodes: 12\n\
Group 1: (Blocks 32768-65535)\n  Free blocks: \n\
Group 2: (Blocks 65536-98303)\n  Free blocks: 70000-70007\n";

    #[test]
    fn free_blocks_from_dumpe2fs() -> Result<()> {
        let f = FreeBlocks::parse(DUMP)?;
        assert_eq!(f.block_bytes, 4096);
        assert_eq!(f.bytes(), 12 * 4096);
        for b in [7, 100, 101, 102, 70000, 70007] {
            assert!(f.is_free(b), "{b}");
        }
        for b in [0, 6, 8, 99, 103, 69999, 70008, u64::MAX] {
            assert!(!f.is_free(b), "{b}");
        }
        assert!(FreeBlocks::parse("Block size: 4096\n").is_err());
        assert!(FreeBlocks::parse("Block size: 4096\n  Free blocks: 5-3\n").is_err());
        Ok(())
    }
}
