//! A source volume the backend owns: opened, locked against a second owner, measured, and
//! mapped into provisioned extents with SEEK_DATA/SEEK_HOLE so holes are never read or sent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct SourceVolume {
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub is_block_device: bool,
    /// Sorted, non-overlapping `(offset, len)` ranges that hold data.
    pub extents: Vec<(u64, u64)>,
    /// Whether write-back (abort) can be applied: the source opened read-write.
    pub writable: bool,
    /// `--fs-aware`: byte ranges the file system marks free (sorted). Chunks entirely inside
    /// are holes (cut out of `extents`); in chunks only partly free, these bytes are sent as
    /// zeros, so stale data of deleted files never crosses the wire.
    pub free: Vec<(u64, u64)>,
    /// Blocks sent of this volume and where (`CAP_BLOCK_REFS`), for every connection.
    pub sent: super::blocks::SentBlocks,
    /// Held for the life of the process: the `flock` that makes this backend the owner.
    _lock: File,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name}: cannot open {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "volume {name}: {path} is in use by another process (flock); stop the other owner first"
    )]
    Locked { name: String, path: PathBuf },
    #[error("volume {name}: {path}: {what}: {source}")]
    Probe {
        name: String,
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("volume {name}: --fs-aware: {source}")]
    FsAware {
        name: String,
        path: PathBuf,
        source: crate::fsaware::FsAwareError,
    },
    #[error(
        "volume {name}: {path} is {size} bytes; a volume must be a non-zero multiple of 512 bytes"
    )]
    BadSize {
        name: String,
        path: PathBuf,
        size: u64,
    },
}

impl SourceVolume {
    pub fn open(name: &str, path: &Path) -> Result<SourceVolume, VolumeError> {
        let open_err = |source| VolumeError::Open {
            name: name.into(),
            path: path.into(),
            source,
        };
        let (file, writable) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => (f, true),
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    || e.raw_os_error() == Some(libc::EROFS) =>
            {
                tracing::warn!(volume = name, path = %path.display(), "source is read-only: abort (write-back) will be refused");
                (File::open(path).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        if crate::sys::flock_exclusive(&file).is_err() {
            return Err(VolumeError::Locked {
                name: name.into(),
                path: path.into(),
            });
        }
        let probe = |what, source| VolumeError::Probe {
            name: name.into(),
            path: path.into(),
            what,
            source,
        };
        let meta = file.metadata().map_err(|e| probe("stat", e))?;
        let is_block_device = meta.file_type().is_block_device();
        let size_bytes = if is_block_device {
            crate::sys::block_device_size(&file).map_err(|e| probe("BLKGETSIZE64", e))?
        } else {
            meta.len()
        };
        if size_bytes == 0 || size_bytes % 512 != 0 {
            return Err(VolumeError::BadSize {
                name: name.into(),
                path: path.into(),
                size: size_bytes,
            });
        }
        let extents = if is_block_device {
            vec![(0, size_bytes)]
        } else {
            data_extents(&file, size_bytes).map_err(|e| probe("SEEK_DATA/SEEK_HOLE", e))?
        };
        Ok(SourceVolume {
            name: name.into(),
            path: path.into(),
            size_bytes,
            is_block_device,
            extents,
            writable,
            free: Vec::new(),
            sent: Default::default(),
            _lock: file,
        })
    }

    /// `--fs-aware`: reads the source's ext4 block bitmaps and treats free blocks like holes,
    /// so they are never read or sent (the target reads zeros there, which a file system
    /// never looks at). Refuses, with the reason, a source it does not fully understand.
    /// Returns the bytes newly skipped.
    pub fn skip_free_blocks(&mut self) -> Result<u64, VolumeError> {
        let err = |source| VolumeError::FsAware {
            name: self.name.clone(),
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(|e| err(e.into()))?;
        let mut src = crate::fsaware::FileSource::with_size(file, self.size_bytes);
        let free = crate::fsaware::ext4_free_space(&mut src).map_err(err)?;
        let before: u64 = self.extents.iter().map(|e| e.1).sum();
        self.extents = subtract(&self.extents, &free.free);
        let after: u64 = self.extents.iter().map(|e| e.1).sum();
        self.free = free.free;
        Ok(before - after)
    }

    /// Zeroes the free bytes (see [`SourceVolume::free`]) of `buf`, which holds the volume
    /// from `offset`.
    pub fn zero_free(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self.free.partition_point(|&(o, l)| o + l <= offset);
        for &(o, l) in &self.free[first..] {
            if o >= end {
                break;
            }
            let a = o.max(offset) - offset;
            let b = (o + l).min(end) - offset;
            buf[a as usize..b as usize].fill(0);
        }
    }

    /// Whether `[offset, offset + len)` lies entirely in a hole.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        // First extent ending after `offset`.
        let i = self.extents.partition_point(|&(o, l)| o + l <= offset);
        match self.extents.get(i) {
            Some(&(o, _)) => o >= end,
            None => true,
        }
    }
}

/// `extents` minus `free`; both sorted and non-overlapping.
fn subtract(extents: &[(u64, u64)], free: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(extents.len());
    let mut j = 0;
    for &(off, len) in extents {
        let end = off + len;
        let mut pos = off;
        while j < free.len() && free[j].0 + free[j].1 <= pos {
            j += 1;
        }
        let mut k = j;
        while pos < end {
            match free.get(k) {
                Some(&(fo, fl)) if fo < end => {
                    if fo > pos {
                        out.push((pos, fo - pos));
                    }
                    pos = pos.max(fo + fl);
                    k += 1;
                }
                _ => {
                    out.push((pos, end - pos));
                    pos = end;
                }
            }
        }
    }
    out
}

/// Walks the file with SEEK_DATA/SEEK_HOLE. Filesystems without support report one extent.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use crate::sys::seek;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match seek(file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e),
        };
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(size);
        let end = hole.min(size);
        if end > data {
            out.push((data, end - data));
        }
        pos = end.max(data + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bytes_of_a_read_are_zeroed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("v");
        std::fs::write(&p, vec![7u8; 8192]).expect("write");
        let mut v = SourceVolume::open("v", &p).expect("open");
        v.free = vec![(100, 50), (4000, 200), (8000, 500)];
        let mut buf = vec![7u8; 4096];
        v.zero_free(4096, &mut buf);
        assert!(buf[..104].iter().all(|&b| b == 0));
        assert!(buf[104..3904].iter().all(|&b| b == 7));
        assert!(buf[3904..].iter().all(|&b| b == 0));
        let mut buf = vec![7u8; 4096];
        v.zero_free(0, &mut buf);
        assert!(buf[100..150].iter().all(|&b| b == 0));
        assert_eq!(buf.iter().filter(|&&b| b == 0).count(), 50 + 96);
    }

    #[test]
    fn free_ranges_are_cut_out_of_extents() {
        let ext = [(0, 100), (200, 100), (400, 50)];
        assert_eq!(subtract(&ext, &[]), ext.to_vec());
        assert_eq!(
            subtract(&ext, &[(10, 20), (90, 130), (290, 200)]),
            vec![(0, 10), (30, 60), (220, 70)]
        );
        assert_eq!(subtract(&ext, &[(0, 1000)]), vec![]);
        assert_eq!(
            subtract(&[(0, 100)], &[(50, 10), (60, 10)]),
            vec![(0, 50), (70, 30)]
        );
    }

    #[test]
    fn holes_are_found_in_a_sparse_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sparse");
        let f = File::create(&p).expect("create");
        f.set_len(4 << 20).expect("set_len");
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 1 << 20).expect("write");
        drop(f);
        let v = SourceVolume::open("v", &p).expect("open");
        assert_eq!(v.size_bytes, 4 << 20);
        assert!(v.is_hole(0, 65536));
        assert!(!v.is_hole(1 << 20, 65536));
        assert!(v.is_hole(3 << 20, 1 << 20));
        // A second owner is refused.
        assert!(matches!(
            SourceVolume::open("v", &p),
            Err(VolumeError::Locked { .. })
        ));
    }
}
