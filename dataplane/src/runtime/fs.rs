//! Files and block devices through the ring.
//!
//! Every op may complete short (rule 4): `read_at` returns what one op did, `read_exact_at` and
//! `write_all_at` loop. On an O_DIRECT file the offset, length and buffer address of every
//! request must be aligned to what the device reports at open (rule 5); a misaligned request is
//! a caller bug: `debug_assert!` in debug builds, an `InvalidInput` error otherwise, and in
//! both cases nothing reaches the kernel.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::buf::AlignedBuf;
use super::op::{self, Fd};
use super::sys;

/// How to open a [`File`]. `create` needs `write`.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    /// O_DIRECT: bypass the page cache; requests must be aligned to [`File::dio_align`].
    pub direct: bool,
}

/// O_DIRECT alignment of a file: buffer address (`mem`) and file offset/length (`offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    pub mem: usize,
    pub offset: usize,
}

/// Used when neither statx nor the block device tells us (kernels before 6.1).
const FALLBACK_ALIGN: DioAlign = DioAlign {
    mem: 512,
    offset: 4096,
};

#[derive(Debug)]
struct FileInner {
    fd: Fd,
    direct: bool,
    align: DioAlign,
    block_device: bool,
    path: Option<PathBuf>,
}

impl AsRawFd for FileInner {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An open file or block device. `!Send`; clones share the fd, which is closed only after the
/// last clone and the last op in flight on it are gone (rule 2).
#[derive(Clone, Debug)]
pub struct File {
    inner: Rc<FileInner>,
}

/// Rule 5 as a function: is this O_DIRECT request aligned?
pub(crate) fn check_dio(align: DioAlign, offset: u64, len: usize, addr: usize) -> io::Result<()> {
    let off_align = align.offset.max(1) as u64;
    let mem_align = align.mem.max(1);
    if !offset.is_multiple_of(off_align)
        || !(len as u64).is_multiple_of(off_align)
        || !addr.is_multiple_of(mem_align)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "misaligned O_DIRECT request: offset {offset} len {len} addr {addr:#x} \
                 align offset/len {} mem {}",
                align.offset, align.mem
            ),
        ));
    }
    Ok(())
}

fn open_error(path: &Path, direct: bool, e: io::Error) -> io::Error {
    if direct && e.raw_os_error() == Some(libc::EINVAL) {
        io::Error::new(
            e.kind(),
            format!(
                "cannot open {} with O_DIRECT: its file system refuses direct IO \
                 (e.g. tmpfs on older kernels); use a real disk or open without direct ({e})",
                path.display()
            ),
        )
    } else {
        io::Error::new(e.kind(), format!("open {}: {e}", path.display()))
    }
}

impl File {
    /// Opens `path` with a blocking open(2): for setup, not for the data path.
    pub fn open(path: &Path, opts: &OpenOptions) -> io::Result<File> {
        let mut o = std::fs::OpenOptions::new();
        o.read(opts.read).write(opts.write).create(opts.create);
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let f = o.open(path).map_err(|e| open_error(path, opts.direct, e))?;
        Self::build(f.into(), opts.direct, Some(path.to_path_buf()))
    }

    /// Wraps an open file. With `direct`, O_DIRECT is switched on if it is not already; a file
    /// already opened with O_DIRECT is treated as direct either way.
    pub fn from_std(f: std::fs::File, direct: bool) -> io::Result<File> {
        Self::build(f.into(), direct, None)
    }

    fn build(fd: OwnedFd, direct: bool, path: Option<PathBuf>) -> io::Result<File> {
        let mut flags = sys::get_fl(fd.as_fd())?;
        if direct && flags & libc::O_DIRECT == 0 {
            let name = path.as_ref().map_or_else(
                || format!("fd {}", fd.as_raw_fd()),
                |p| p.display().to_string(),
            );
            sys::set_fl(fd.as_fd(), flags | libc::O_DIRECT).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot set O_DIRECT on {name}: {e}"))
            })?;
            flags |= libc::O_DIRECT;
        }
        let (_, block_device) = sys::fstat(fd.as_fd())?;
        let align = query_align(&fd, block_device);
        Ok(File {
            inner: Rc::new(FileInner {
                fd: Fd::new(fd),
                direct: flags & libc::O_DIRECT != 0,
                align,
                block_device,
                path,
            }),
        })
    }

    /// O_DIRECT alignment (enforced only if the file is direct).
    pub fn dio_align(&self) -> DioAlign {
        self.inner.align
    }

    /// Whether IO bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.inner.direct
    }

    /// Length of a regular file, or size of a block device.
    pub fn size(&self) -> io::Result<u64> {
        if self.inner.block_device {
            sys::block_size_bytes(self.inner.fd.as_fd())
        } else {
            sys::fstat(self.inner.fd.as_fd()).map(|(len, _)| len)
        }
    }

    pub fn is_block_device(&self) -> bool {
        self.inner.block_device
    }

    pub fn raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// The path it was opened with, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn check(&self, offset: u64, len: usize, buf: &AlignedBuf, start: usize) -> io::Result<()> {
        if !self.inner.direct {
            return Ok(());
        }
        let res = check_dio(self.inner.align, offset, len, buf.as_ptr() as usize + start);
        if let Err(e) = &res {
            // Rule 5: a bug we assert on. Unit tests of this crate observe the error instead.
            #[cfg(not(test))]
            debug_assert!(false, "{e}");
            #[cfg(test)]
            let _ = e;
        }
        res
    }

    async fn read_range(
        &self,
        buf: AlignedBuf,
        range: Range<usize>,
        offset: u64,
    ) -> (io::Result<usize>, AlignedBuf) {
        if let Err(e) = self.check(offset, range.len(), &buf, range.start) {
            return (Err(e), buf);
        }
        if range.is_empty() {
            return (Ok(0), buf);
        }
        let (res, (_, buf)) = op::read_at(Rc::clone(&self.inner), buf, range, offset).await;
        (res.map(|n| n as usize), buf)
    }

    async fn write_range(
        &self,
        buf: AlignedBuf,
        range: Range<usize>,
        offset: u64,
    ) -> (io::Result<usize>, AlignedBuf) {
        if let Err(e) = self.check(offset, range.len(), &buf, range.start) {
            return (Err(e), buf);
        }
        if range.is_empty() {
            return (Ok(0), buf);
        }
        let (res, (_, buf)) = op::write_at(Rc::clone(&self.inner), buf, range, offset).await;
        (res.map(|n| n as usize), buf)
    }

    /// One read into `buf[..len]` at `offset`; may be short (0 at EOF).
    pub async fn read_at(&self, buf: AlignedBuf, offset: u64) -> (io::Result<usize>, AlignedBuf) {
        let len = buf.len();
        self.read_range(buf, 0..len, offset).await
    }

    /// Fills `buf[..len]` from `offset`; EOF first is `UnexpectedEof`.
    pub async fn read_exact_at(
        &self,
        mut buf: AlignedBuf,
        offset: u64,
    ) -> (io::Result<()>, AlignedBuf) {
        let len = buf.len();
        let mut done = 0;
        while done < len {
            let (res, b) = self.read_range(buf, done..len, offset + done as u64).await;
            buf = b;
            match res {
                Ok(0) => return (Err(eof(offset, done, len)), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
            // A short O_DIRECT read that leaves the rest misaligned only happens at EOF.
            if done < len
                && self.inner.direct
                && !done.is_multiple_of(self.inner.align.offset.max(1))
            {
                return (Err(eof(offset, done, len)), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Writes all of `buf[..len]` at `offset`.
    pub async fn write_all_at(
        &self,
        mut buf: AlignedBuf,
        offset: u64,
    ) -> (io::Result<()>, AlignedBuf) {
        let len = buf.len();
        let mut done = 0;
        while done < len {
            let (res, b) = self.write_range(buf, done..len, offset + done as u64).await;
            buf = b;
            match res {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("write at offset {} wrote 0 bytes", offset + done as u64),
                        )),
                        buf,
                    )
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
            if done < len
                && self.inner.direct
                && !done.is_multiple_of(self.inner.align.offset.max(1))
            {
                return (
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!(
                            "short O_DIRECT write at offset {}: {done} of {len} bytes (device full?)",
                            offset
                        ),
                    )),
                    buf,
                );
            }
        }
        (Ok(()), buf)
    }

    /// Writes `bufs` back to back from `offset` with one `pwritev`: a run of adjacent chunks
    /// costs the file system and the device one request instead of one per chunk. Anything
    /// but the whole run written (an error, a short write) is an error; the caller may then
    /// write the buffers one by one, which rewrites the same bytes.
    pub async fn write_vectored_at(
        &self,
        bufs: Vec<AlignedBuf>,
        offset: u64,
    ) -> (io::Result<()>, Vec<AlignedBuf>) {
        if bufs.len() > op::IOV_MAX
            || bufs.iter().map(|b| b.len()).sum::<usize>() > op::MAX_RW_BYTES
        {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} buffers: more than one vectored write takes", bufs.len()),
            );
            return (Err(e), bufs);
        }
        let mut at = offset;
        for b in &bufs {
            if let Err(e) = self.check(at, b.len(), b, 0) {
                return (Err(e), bufs);
            }
            at += b.len() as u64;
        }
        let w = op::WriteV::new(bufs);
        let total = w.total();
        let (res, (_, w)) = op::write_vectored_at(Rc::clone(&self.inner), w, offset).await;
        let res = match res {
            Ok(n) if n as usize == total => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write at offset {offset}: {n} of {total} bytes"),
            )),
            Err(e) => Err(e),
        };
        (res, w.bufs)
    }

    /// `fdatasync` through the ring.
    pub async fn fdatasync(&self) -> io::Result<()> {
        op::fsync(Rc::clone(&self.inner), true).await.0.map(drop)
    }

    /// `fsync` through the ring.
    pub async fn fsync(&self) -> io::Result<()> {
        op::fsync(Rc::clone(&self.inner), false).await.0.map(drop)
    }

    /// `fallocate(mode, offset, len)` through the ring (`mode` as in fallocate(2)).
    pub async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        op::fallocate(Rc::clone(&self.inner), mode, offset, len)
            .await
            .0
            .map(drop)
    }
}

fn eof(offset: u64, done: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "end of file at offset {} after {done} of {len} bytes",
            offset + done as u64
        ),
    )
}

fn query_align(fd: &OwnedFd, block_device: bool) -> DioAlign {
    match sys::statx_dio_align(fd.as_fd()) {
        Ok(Some((mem, offset))) => {
            return DioAlign {
                mem: mem.max(1) as usize,
                offset: offset as usize,
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "statx(STATX_DIOALIGN) failed"),
    }
    if block_device {
        match sys::block_logical_sector(fd.as_fd()) {
            Ok(sector) if sector > 0 => {
                return DioAlign {
                    mem: sector as usize,
                    offset: sector as usize,
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "BLKSSZGET failed"),
        }
    }
    FALLBACK_ALIGN
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::executor::{in_flight_ops, ops_submitted};
    use super::super::{block_on, buf_pool, spawn, RuntimeConfig};
    use super::*;

    /// A directory on a real disk (not tmpfs) for test files.
    pub(crate) fn test_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("ferry-rt-")
            .tempdir_in("/var/tmp")
            .expect("tempdir in /var/tmp")
    }

    /// The one small test configuration, shared with the executor's tests.
    fn cfg() -> RuntimeConfig {
        crate::runtime::executor::tests::small_cfg()
    }

    fn rw(direct: bool) -> OpenOptions {
        OpenOptions {
            read: true,
            write: true,
            create: true,
            direct,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn buffered_roundtrip_sync_fallocate_size() {
        let dir = test_dir();
        let path = dir.path().join("f");
        block_on(cfg(), async move {
            let f = File::open(&path, &rw(false)).expect("open");
            assert!(!f.is_block_device());
            assert!(!f.is_direct());
            f.fallocate(0, 0, 1 << 20).await.expect("fallocate");
            assert_eq!(f.size().expect("size"), 1 << 20);
            let mut buf = AlignedBuf::new(10_000);
            buf.copy_from_slice(&pattern(10_000, 1));
            let (res, buf) = f.write_all_at(buf, 12_345).await;
            res.expect("write");
            f.fdatasync().await.expect("fdatasync");
            f.fsync().await.expect("fsync");
            let (res, back) = f.read_exact_at(AlignedBuf::new(10_000), 12_345).await;
            res.expect("read");
            assert_eq!(&back[..], &buf[..]);
        });
    }

    #[test]
    fn short_read_at_eof() {
        let dir = test_dir();
        let path = dir.path().join("short");
        std::fs::write(&path, pattern(6000, 2)).expect("write file");
        block_on(cfg(), async move {
            let f = File::open(&path, &rw(false)).expect("open");
            let (res, buf) = f.read_at(AlignedBuf::new(8192), 4096).await;
            assert_eq!(res.expect("read"), 6000 - 4096);
            assert_eq!(&buf[..6000 - 4096], &pattern(6000, 2)[4096..]);
            let (res, _) = f.read_at(AlignedBuf::new(8192), 6000).await;
            assert_eq!(res.expect("read at EOF"), 0);
            let (res, _) = f.read_exact_at(AlignedBuf::new(8192), 0).await;
            let err = res.expect_err("EOF first");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert!(err.to_string().contains("6000 of 8192"), "{err}");
        });
    }

    #[test]
    fn direct_roundtrip_with_pool_and_plain_buffers() {
        let dir = test_dir();
        let path = dir.path().join("direct");
        block_on(cfg(), async move {
            let f = File::open(&path, &rw(true)).expect("open O_DIRECT on ext4");
            assert!(f.is_direct());
            let align = f.dio_align();
            assert!(align.offset >= 512 && align.offset <= 4096, "{align:?}");
            let pool = buf_pool();
            assert!(pool.registered() <= 4);
            let mut a = pool.take().await;
            let n = a.len();
            a.copy_from_slice(&pattern(n, 3));
            let expect = a.to_vec();
            let (res, _a) = f.write_all_at(a, 0).await;
            res.expect("direct write");
            let (res, b) = f.read_exact_at(AlignedBuf::new(64 << 10), 0).await;
            res.expect("direct read");
            assert_eq!(&b[..], &expect[..]);
            let (res, c) = f.read_exact_at(pool.take().await, 0).await;
            res.expect("direct read into pool buffer");
            assert_eq!(&c[..], &expect[..]);
            // Short O_DIRECT read at EOF.
            let (res, _) = f.read_exact_at(AlignedBuf::new(128 << 10), 0).await;
            assert_eq!(res.expect_err("EOF").kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    #[test]
    fn misaligned_direct_request_is_rejected_before_submission() {
        let dir = test_dir();
        let path = dir.path().join("mis");
        block_on(cfg(), async move {
            let f = File::open(&path, &rw(true)).expect("open");
            let (res, buf) = f.write_all_at(AlignedBuf::new(8192), 0).await;
            res.expect("aligned write");
            let before = ops_submitted();
            // Misaligned offset.
            let (res, buf) = f.read_at(buf, 100).await;
            let err = res.expect_err("misaligned offset");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(
                err.to_string().contains("misaligned O_DIRECT request"),
                "{err}"
            );
            // Misaligned length.
            let mut buf = buf;
            buf.set_len(1000);
            let (res, mut buf) = f.write_all_at(buf, 0).await;
            assert_eq!(res.expect_err("len").kind(), io::ErrorKind::InvalidInput);
            buf.set_len(8192);
            // Nothing reached the ring.
            assert_eq!(ops_submitted(), before);
            let (res, _) = f.read_exact_at(buf, 0).await;
            res.expect("aligned read still works");
            assert_eq!(ops_submitted(), before + 1);
        });
    }

    #[test]
    fn dio_check_covers_offset_len_and_address() {
        let a = DioAlign {
            mem: 512,
            offset: 4096,
        };
        assert!(check_dio(a, 8192, 4096, 0x1000).is_ok());
        assert!(check_dio(a, 8192, 0, 0x200).is_ok());
        assert!(check_dio(a, 512, 4096, 0x1000).is_err());
        assert!(check_dio(a, 4096, 512, 0x1000).is_err());
        assert!(check_dio(a, 4096, 4096, 0x1100).is_err());
        let msg = check_dio(a, 1, 2, 0).expect_err("bad").to_string();
        assert!(
            msg.contains("misaligned O_DIRECT request: offset 1 len 2"),
            "{msg}"
        );
    }

    #[test]
    fn refused_o_direct_names_the_flag_and_path() {
        let e = open_error(
            Path::new("/dev/shm/x"),
            true,
            io::Error::from_raw_os_error(libc::EINVAL),
        );
        let msg = e.to_string();
        assert!(
            msg.contains("O_DIRECT") && msg.contains("/dev/shm/x"),
            "{msg}"
        );
        let e = open_error(
            Path::new("/nope/x"),
            true,
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("/nope/x"));
    }

    #[test]
    fn sq_full_pressure_5000_concurrent_reads() {
        let dir = test_dir();
        let path = dir.path().join("pressure");
        let data = pattern(4096 * 64, 5);
        std::fs::write(&path, &data).expect("write file");
        let mut cfg = cfg();
        cfg.ring_entries = 64;
        block_on(cfg, async move {
            let f = File::open(&path, &rw(false)).expect("open");
            let tasks: Vec<_> = (0..5000u64)
                .map(|i| {
                    let f = f.clone();
                    spawn(async move {
                        let off = (i % 64) * 4096;
                        let (res, buf) = f.read_exact_at(AlignedBuf::new(4096), off).await;
                        res.expect("read");
                        (off, buf)
                    })
                })
                .collect();
            for t in tasks {
                let (off, buf) = t.await;
                assert_eq!(&buf[..], &data[off as usize..off as usize + 4096]);
            }
            assert_eq!(in_flight_ops(), 0);
        });
    }

    #[test]
    fn memlock_fallback_with_a_pool_bigger_than_the_limit() {
        let dir = test_dir();
        let path = dir.path().join("memlock");
        let cfg = RuntimeConfig {
            cores: 1,
            pin: false,
            ring_entries: 64,
            buf_size: 1 << 20,
            bufs_per_core: 64,
        };
        block_on(cfg, async move {
            let pool = buf_pool();
            assert!(
                pool.registered() < 64,
                "64 MiB cannot fit in an 8 MiB memlock limit"
            );
            let ring_id = super::super::op::current_ring_id().expect("on a core");
            let taken: Vec<_> = (0..64).filter_map(|_| pool.try_take()).collect();
            let fixed = taken
                .iter()
                .filter(|b| b.fixed_index(ring_id).is_some())
                .count();
            assert_eq!(fixed, pool.registered());
            drop(taken);
            let f = File::open(&path, &rw(true)).expect("open");
            // Registered (if any fit) and unregistered buffers both work.
            let mut bufs = Vec::new();
            for _ in 0..64 {
                bufs.push(pool.take().await);
            }
            for (i, mut b) in bufs.into_iter().enumerate().step_by(9) {
                b[0] = i as u8;
                let (res, _) = f.write_all_at(b, (i as u64) << 20).await;
                res.expect("write");
            }
            let (res, b) = f.read_exact_at(pool.take().await, 9 << 20).await;
            res.expect("read");
            assert_eq!(b[0], 9);
        });
    }

    #[test]
    fn fd_closed_after_last_clone_and_op() {
        let dir = test_dir();
        let path = dir.path().join("close");
        std::fs::write(&path, b"x").expect("write");
        block_on(cfg(), async move {
            let f = File::open(&path, &rw(false)).expect("open");
            let raw = f.raw_fd();
            let g = f.clone();
            drop(f);
            let (res, _) = g.read_at(AlignedBuf::new(1), 0).await;
            assert_eq!(res.expect("read"), 1);
            drop(g);
            // The close went through the ring; let it run.
            super::super::sleep(std::time::Duration::from_millis(5)).await;
            // The fd number may already be reused by another test thread, but not for our file.
            assert!(!fd_names_file(raw, "close"), "fd {raw} should be closed");
        });
    }

    fn fd_names_file(raw: RawFd, name: &str) -> bool {
        std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .map(|p| p.file_name().is_some_and(|n| n == name))
            .unwrap_or(false)
    }
}
