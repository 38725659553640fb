//! The e2fsprogs tools the sample generator drives: `mkfs.ext4 -d` to build the image from a
//! staging directory, `debugfs` to delete files and find extents, `dumpe2fs -h` for the counts.
//!
//! All of them work on an unmounted image file, so the generator needs no loop device and no
//! mount. `debugfs` exits 0 even when a command fails, so its stderr is checked instead: any
//! line but its version banner is an error.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context, Result};

/// A fixed creation time, so the superblock of two samples with one seed is the same.
/// `E2FSPROGS_FAKE_TIME` is honoured by mke2fs for its own timestamps.
const FAKE_TIME: &str = "1700000000";

/// What `dumpe2fs -h` says about a file system.
#[derive(Debug, Clone)]
pub(super) struct FsStats {
    pub uuid: String,
    pub block_size_bytes: u64,
    pub free_blocks: u64,
    pub free_inodes: u64,
}

/// A run of physical blocks holding file data (an extent-tree leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    pub first_block: u64,
    pub blocks: u64,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("`{name}` not found: the ext4 sample needs e2fsprogs (>= 1.43) installed")
        } else {
            anyhow!("running `{name}`: {e}")
        }
    })?;
    if !out.status.success() {
        bail!(
            "`{name}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Formats `image` (which must already have its final size) as ext4 with 4 KiB blocks, and
/// copies `staging` into it when given. `-T default` keeps the usual inode ratio: below
/// 512 MiB mke2fs would otherwise pick the "small" type with 1 KiB blocks, unlike a VM disk.
pub(super) fn mkfs(
    image: &Path,
    uuid: &str,
    hash_seed: &str,
    staging: Option<&Path>,
) -> Result<()> {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .args([
            "-F",
            "-q",
            "-T",
            "default",
            "-b",
            "4096",
            "-L",
            "ferry-sample",
        ])
        .args(["-U", uuid])
        .arg("-E")
        .arg(format!("hash_seed={hash_seed}"));
    if let Some(dir) = staging {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(image);
    run(&mut cmd).with_context(|| {
        format!(
            "mkfs.ext4 on {} (`-d` needs e2fsprogs >= 1.43)",
            image.display()
        )
    })?;
    Ok(())
}

/// `dumpe2fs -h`: the superblock's counts.
pub(super) fn stats(image: &Path) -> Result<FsStats> {
    let out = run(Command::new("dumpe2fs").arg("-h").arg(image))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .ok_or_else(|| anyhow!("dumpe2fs -h {}: no {name:?} line", image.display()))
    };
    let number = |name: &str| -> Result<u64> {
        let v = field(name)?;
        v.parse()
            .map_err(|_| anyhow!("dumpe2fs -h {}: {name} is {v:?}", image.display()))
    };
    Ok(FsStats {
        uuid: field("Filesystem UUID")?.to_string(),
        block_size_bytes: number("Block size")?,
        free_blocks: number("Free blocks")?,
        free_inodes: number("Free inodes")?,
    })
}

fn debugfs_checked(image: &Path, args: &[&OsStr]) -> Result<String> {
    let out = run(Command::new("debugfs").args(args).arg(image))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !errors.is_empty() {
        bail!("debugfs on {}: {}", image.display(), errors.join("; "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs one read-only debugfs request and returns its output.
pub(super) fn request(image: &Path, req: &str) -> Result<String> {
    debugfs_checked(image, &[OsStr::new("-R"), OsStr::new(req)])
}

/// Runs `commands` (one per line) with debugfs opened for writing. The script goes through
/// `script_path` because debugfs reads batches only from a file.
pub(super) fn write_script(image: &Path, script_path: &Path, commands: &[String]) -> Result<()> {
    fs::write(script_path, commands.join("\n") + "\n")
        .with_context(|| format!("writing {}", script_path.display()))?;
    debugfs_checked(
        image,
        &[OsStr::new("-w"), OsStr::new("-f"), script_path.as_os_str()],
    )?;
    Ok(())
}

/// The data extents of the file at `path` in the image (leaves only: interior extent-tree
/// blocks hold metadata and must not be touched).
pub(super) fn extents(image: &Path, path: &str) -> Result<Vec<Extent>> {
    let text = request(image, &format!("ex -l {path}"))?;
    Ok(text.lines().filter_map(parse_extent_line).collect())
}

/// One line of `ex -l`, e.g. ` 0/ 0   1/  3     0 - 28519   4248 -  32767  28520 `, or for a
/// one-block extent ` 0/ 0   1/  1     0 -     0  1297 -  1297      1 `. The header line does
/// not parse and is skipped.
fn parse_extent_line(line: &str) -> Option<Extent> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let dash = tokens.iter().position(|&t| t == "-")?;
    let first_block = tokens.get(dash + 2)?.parse().ok()?;
    let blocks = tokens
        .iter()
        .rev()
        .find_map(|t| t.parse::<u64>().ok())
        .filter(|_| tokens.len() > dash + 3)?;
    Some(Extent {
        first_block,
        blocks,
    })
}

/// Whether block `block` is marked in use in the block bitmap (`debugfs testb`).
#[cfg(test)]
pub(super) fn block_in_use(image: &Path, block: u64) -> Result<bool> {
    let text = request(image, &format!("testb {block}"))?;
    if text.contains("not in use") {
        Ok(false)
    } else if text.contains("marked in use") {
        Ok(true)
    } else {
        bail!("debugfs testb {block}: unexpected answer {text:?}")
    }
}

/// `e2fsck -fn`: a full, read-only check.
#[cfg(test)]
pub(super) fn fsck(image: &Path) -> Result<()> {
    run(Command::new("e2fsck").arg("-fn").arg(image))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_lines() {
        let e = |first_block, blocks| {
            Some(Extent {
                first_block,
                blocks,
            })
        };
        assert_eq!(
            parse_extent_line(" 0/ 0   1/  3     0 - 28519   4248 -  32767  28520 "),
            e(4248, 28520)
        );
        assert_eq!(
            parse_extent_line(" 1/ 1   4/  9     5 -     5   9000 -   9000      1 Uninit"),
            e(9000, 1)
        );
        assert_eq!(
            parse_extent_line("Level Entries       Logical        Physical Length Flags"),
            None
        );
    }
}
