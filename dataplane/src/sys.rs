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

/// Gives the allocator's free memory back to the kernel (glibc `malloc_trim`): memory freed
/// in the middle of the heap otherwise stays resident. A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments beyond the pad size; glibc documents it as thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `ioprio_set(2)` / `ioprio_get(2)` constants (linux/ioprio.h): not in the libc crate.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_CLASS_IDLE: u32 = 3;

/// Puts the calling thread's disk IO in the idle class: an IO scheduler that knows classes
/// (mq-deadline, BFQ) serves it only when no other IO waits. Devices without such a
/// scheduler (`none`) ignore it.
pub fn idle_io_priority() -> io::Result<()> {
    let value = libc::c_long::from(IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT);
    // SAFETY: no pointers; who 0 with IOPRIO_WHO_PROCESS is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The IO priority class of the calling thread.
#[cfg(test)]
fn io_priority_class() -> io::Result<u32> {
    // SAFETY: no pointers; who 0 with IOPRIO_WHO_PROCESS is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rc as u32) >> IOPRIO_CLASS_SHIFT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_moved_to_idle_io_stays_alone_there() {
        let before = super::io_priority_class().expect("ioprio_get");
        let moved = std::thread::spawn(|| {
            super::idle_io_priority().expect("ioprio_set");
            super::io_priority_class().expect("ioprio_get")
        })
        .join()
        .expect("thread");
        assert_eq!(moved, super::IOPRIO_CLASS_IDLE);
        // Per thread: the caller's class is unchanged.
        assert_eq!(super::io_priority_class().expect("ioprio_get"), before);
        assert_ne!(before, super::IOPRIO_CLASS_IDLE);
    }
}
