//! Thin wrappers over the few blocking syscalls used at start-up (never on a core's data
//! path). Every `unsafe` outside `runtime/` lives here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes an exclusive `flock` without waiting: the owner marker for a source volume.
pub fn flock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on an fd owned by `file`, which outlives the call.
    check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })
}

/// Size of a block device (BLKGETSIZE64).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for the call.
    check(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) })?;
    Ok(size)
}

/// `lseek(fd, pos, SEEK_DATA | SEEK_HOLE)`; `Ok(None)` for ENXIO (no more data).
pub fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek takes no pointers; the fd is owned by `file`.
    let r = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `fallocate(2)` with the given mode (e.g. pre-allocating a target file).
pub fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: no pointers; the fd is owned by `file`.
    check(unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only on CPU time nothing else wants.
pub fn idle_cpu_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) })
}
