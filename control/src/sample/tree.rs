//! The staging directory that `mkfs.ext4 -d` copies into the image: copies of real host
//! files, clones of a staged tree, and generated files.
//!
//! Accounting rule: everything put into staging is charged, as it is put there, with the
//! space it will take in the image (whole blocks per file, a block per directory, a block per
//! long symlink) in `alloc_bytes`, and with an inode in `inodes`. The caller aims the image's
//! free space with these figures before mkfs runs, so they must never be skipped.
//!
//! Host files that cannot be read are skipped, never fatal: a sample is made from whatever
//! the host has. Failing to write into staging is fatal.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Fast symlinks keep targets shorter than this in the inode itself (ext4's `i_block`).
const FAST_SYMLINK_MAX_BYTES: usize = 60;

/// Files in `/etc` that hold this host's secrets; a sample image may be passed around.
fn is_secret(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("shadow")
        || name.starts_with("gshadow")
        || (path.starts_with("/etc/ssh") && name.contains("key"))
        || path.starts_with("/etc/ssl/private")
}

pub(super) struct Staging {
    root: PathBuf,
    block_bytes: u64,
    dirs: HashSet<PathBuf>,
    /// Blocks (in bytes) the staged tree will take in the image.
    pub alloc_bytes: u64,
    /// Inodes it will take: files, symlinks and directories.
    pub inodes: u64,
    /// Regular files and symlinks staged.
    pub files: u64,
    /// Bytes of regular files staged.
    pub file_bytes: u64,
}

/// Limits for one copy of host files.
pub(super) struct CopyLimits<'a> {
    /// Charge at most this much (see the accounting rule).
    pub budget_bytes: u64,
    /// Skip single files bigger than this, so one huge library does not make the whole share.
    pub file_max_bytes: u64,
    /// Stop once `inodes` reaches this.
    pub inodes_max: u64,
    /// Do not descend into these directories (they are copied on their own).
    pub skip: &'a [&'a str],
}

impl Staging {
    pub fn create(root: &Path, block_bytes: u64) -> Result<Self> {
        fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
        Ok(Staging {
            root: root.to_path_buf(),
            block_bytes,
            dirs: HashSet::new(),
            alloc_bytes: 0,
            inodes: 0,
            files: 0,
            file_bytes: 0,
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn blocks_for(&self, len: u64) -> u64 {
        len.div_ceil(self.block_bytes) * self.block_bytes
    }

    /// Creates `rel` and its parents in staging, charging each new directory.
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() || self.dirs.contains(rel) {
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        let abs = self.root.join(rel);
        if !abs.is_dir() {
            fs::create_dir(&abs).with_context(|| format!("creating {}", abs.display()))?;
        }
        self.dirs.insert(rel.to_path_buf());
        self.alloc_bytes += self.block_bytes;
        self.inodes += 1;
        Ok(())
    }

    fn ensure_parent(&mut self, rel: &Path) -> Result<()> {
        match rel.parent() {
            Some(p) => self.ensure_dir(p),
            None => Ok(()),
        }
    }

    /// Copies regular files and symlinks under the host directory `src` to `dest_rel/<src>`
    /// in staging, in name order, until `limits` says stop. Returns the bytes charged.
    pub fn copy_host_tree(
        &mut self,
        src: &Path,
        dest_rel: &Path,
        limits: &CopyLimits,
    ) -> Result<u64> {
        let before = self.alloc_bytes;
        let mut left = limits.budget_bytes;
        self.copy_dir(src, dest_rel, limits, &mut left)?;
        Ok(self.alloc_bytes - before)
    }

    fn copy_dir(
        &mut self,
        src: &Path,
        dest_rel: &Path,
        limits: &CopyLimits,
        left: &mut u64,
    ) -> Result<()> {
        let Ok(entries) = fs::read_dir(src) else {
            return Ok(()); // unreadable directory: skip it
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if *left < self.block_bytes || self.inodes >= limits.inodes_max {
                return Ok(());
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let rel = dest_rel.join(path.strip_prefix("/").unwrap_or(&path));
            let ft = meta.file_type();
            if ft.is_dir() {
                if !limits.skip.iter().any(|s| path == Path::new(s)) {
                    self.copy_dir(&path, dest_rel, limits, left)?;
                }
            } else if ft.is_symlink() {
                let Ok(target) = fs::read_link(&path) else {
                    continue;
                };
                let cost = self.symlink_cost(&target);
                if cost > *left {
                    continue;
                }
                let before = self.alloc_bytes;
                self.add_symlink(&target, &rel)?;
                *left = left.saturating_sub(self.alloc_bytes - before);
            } else if ft.is_file() && !is_secret(&path) {
                let cost = self.blocks_for(meta.len());
                if meta.len() > limits.file_max_bytes || cost > *left {
                    continue;
                }
                let before = self.alloc_bytes;
                self.copy_file(&path, &rel)?;
                *left = left.saturating_sub(self.alloc_bytes - before);
            }
        }
        Ok(())
    }

    fn symlink_cost(&self, target: &Path) -> u64 {
        if target.as_os_str().len() < FAST_SYMLINK_MAX_BYTES {
            0
        } else {
            self.block_bytes
        }
    }

    fn add_symlink(&mut self, target: &Path, rel: &Path) -> Result<()> {
        self.ensure_parent(rel)?;
        let abs = self.root.join(rel);
        symlink(target, &abs).with_context(|| format!("creating symlink {}", abs.display()))?;
        self.alloc_bytes += self.symlink_cost(target);
        self.inodes += 1;
        self.files += 1;
        Ok(())
    }

    /// Copies one host file (its bytes and mode). A source that cannot be opened is skipped.
    fn copy_file(&mut self, src: &Path, rel: &Path) -> Result<()> {
        let Ok(mut from) = File::open(src) else {
            return Ok(());
        };
        self.ensure_parent(rel)?;
        let abs = self.root.join(rel);
        let mut to = File::create(&abs).with_context(|| format!("creating {}", abs.display()))?;
        // io::copy between files uses copy_file_range: the bytes stay in the kernel.
        let len = match io::copy(&mut from, &mut to) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                return Err(e).with_context(|| format!("writing {}", abs.display()));
            }
            Err(_) => {
                // Read error on the host side (a file that changed or vanished): skip it.
                drop(to);
                fs::remove_file(&abs).with_context(|| format!("removing {}", abs.display()))?;
                return Ok(());
            }
        };
        if let Ok(meta) = from.metadata() {
            fs::set_permissions(&abs, meta.permissions())
                .with_context(|| format!("setting the mode of {}", abs.display()))?;
        }
        self.add_file(len);
        Ok(())
    }

    fn add_file(&mut self, len: u64) {
        self.alloc_bytes += self.blocks_for(len);
        self.inodes += 1;
        self.files += 1;
        self.file_bytes += len;
    }

    /// Copies the staged tree `from_rel` to `to_rel`, byte for byte. Returns the file bytes
    /// copied (not counting symlinks and directories).
    pub fn clone_tree(&mut self, from_rel: &Path, to_rel: &Path) -> Result<u64> {
        let mut copied = 0;
        self.ensure_dir(from_rel)?;
        self.ensure_dir(to_rel)?;
        let from_abs = self.root.join(from_rel);
        let mut paths: Vec<PathBuf> = fs::read_dir(&from_abs)
            .with_context(|| format!("reading {}", from_abs.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", from_abs.display()))?;
        paths.sort();
        for path in paths {
            let Some(name) = path.file_name() else {
                continue;
            };
            let (from, to) = (from_rel.join(name), to_rel.join(name));
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("inspecting {}", path.display()))?;
            if meta.is_dir() {
                copied += self.clone_tree(&from, &to)?;
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)
                    .with_context(|| format!("reading link {}", path.display()))?;
                self.add_symlink(&target, &to)?;
            } else {
                let abs = self.root.join(&to);
                let len = fs::copy(&path, &abs)
                    .with_context(|| format!("copying {} to {}", path.display(), abs.display()))?;
                self.add_file(len);
                copied += len;
            }
        }
        Ok(copied)
    }

    /// Writes a generated file of `len` bytes at `rel`; `fill(offset, buf)` supplies the
    /// content piece by piece.
    pub fn write_file(
        &mut self,
        rel: &str,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Result<()> {
        let rel = Path::new(rel.trim_start_matches('/'));
        self.ensure_parent(rel)?;
        let abs = self.root.join(rel);
        let mut f = File::create(&abs).with_context(|| format!("creating {}", abs.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = (buf.len() as u64).min(len - off) as usize;
            fill(off, &mut buf[..n]);
            f.write_all(&buf[..n])
                .with_context(|| format!("writing {}", abs.display()))?;
            off += n as u64;
        }
        self.add_file(len);
        Ok(())
    }

    /// Writes a small text file (e.g. a VERSION stamp).
    pub fn write_text(&mut self, rel: &str, text: &str) -> Result<()> {
        let bytes = text.as_bytes();
        self.write_file(rel, bytes.len() as u64, &mut |off, buf| {
            let off = off as usize;
            buf.copy_from_slice(&bytes[off..off + buf.len()]);
        })
    }
}
