//! Setup-time syscalls the runtime makes outside the ring: eventfds, socket options, device
//! geometry, CPU affinity, resource limits.
//!
//! Each wrapper is synchronous: the kernel reads or writes the memory we pass only during the
//! call, so none of these hand the kernel memory it keeps (RUNTIME.md rule 1 is not at stake);
//! the `SAFETY` comments say what the call needs instead. Nothing here runs per IO, except
//! `eventfd_kick` (a cross-core wake) and `shutdown`.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor the kernel just returned to us.
pub(crate) fn owned_fd(raw: RawFd) -> OwnedFd {
    debug_assert!(raw >= 0);
    // SAFETY: callers pass a descriptor freshly returned by a successful syscall or CQE
    // (socket, eventfd, accept), which nothing else owns; rule 2: its lifetime is now tied to
    // the OwnedFd.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// A blocking, close-on-exec eventfd (the ring reads it; remote threads write it).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    Ok(owned_fd(fd))
}

/// Adds 1 to an eventfd counter, waking a ring read armed on it.
pub(crate) fn eventfd_kick(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live stack value during the call only.
    let ret = unsafe {
        libc::write(
            fd.as_raw_fd(),
            (&one as *const u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    if ret < 0 {
        // Only possible if the counter is about to overflow (a wake is pending anyway).
        tracing::debug!(error = %io::Error::last_os_error(), "eventfd write failed");
    }
}

/// `statx(STATX_DIOALIGN)`: (memory alignment, offset alignment) if the kernel and fs report it.
pub(crate) fn statx_dio_align(fd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>> {
    let mut st = MaybeUninit::<libc::statx>::zeroed();
    let empty: &CStr = c"";
    // SAFETY: `st` is a writable statx of the right size, `empty` a valid C string; with
    // AT_EMPTY_PATH the call stats `fd` itself.
    cvt(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            st.as_mut_ptr(),
        )
    })?;
    // SAFETY: zero-initialised and filled by a successful statx; every field is plain data.
    let st = unsafe { st.assume_init() };
    if st.stx_mask & libc::STATX_DIOALIGN != 0 && st.stx_dio_offset_align != 0 {
        Ok(Some((st.stx_dio_mem_align, st.stx_dio_offset_align)))
    } else {
        Ok(None)
    }
}

/// What `fstat` says about an fd: its size and whether it is a block device.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<(u64, bool)> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a writable stat buffer of the right size.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by a successful fstat.
    let st = unsafe { st.assume_init() };
    let is_blk = st.st_mode & libc::S_IFMT == libc::S_IFBLK;
    Ok((st.st_size as u64, is_blk))
}

/// Logical sector size of a block device (`BLKSSZGET`).
pub(crate) fn block_logical_sector(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int into `size`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET as _, &mut size) })?;
    Ok(size as u32)
}

/// `_IOR(0x12, 114, size_t)`; libc does not export it.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Size in bytes of a block device (`BLKGETSIZE64`).
pub(crate) fn block_size_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size) })?;
    Ok(size)
}

/// File status flags (`F_GETFL`).
pub(crate) fn get_fl(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// Sets file status flags (`F_SETFL`), e.g. to turn on O_DIRECT.
pub(crate) fn set_fl(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited).
pub(crate) fn memlock_limit() -> io::Result<Option<u64>> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes one rlimit into `rl`.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) })?;
    Ok(if rl.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(rl.rlim_cur)
    })
}

/// The CPUs this thread may run on, ascending.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: writes at most size_of::<cpu_set_t>() bytes into `set`.
    cvt(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) })?;
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads bit `cpu` < CPU_SETSIZE of a valid set.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: reads size_of::<cpu_set_t>() bytes from `set`.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })
        .map(drop)
}

/// A close-on-exec stream socket.
pub(crate) fn stream_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    Ok(owned_fd(fd))
}

pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

#[cfg(test)]
pub(crate) fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a writable c_int and its exact size.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Makes a TCP listener keep the TOS byte of each connection's handshake, for
/// [`received_tos`] on the accepted sockets (they inherit the option). IPv4 only: an IPv6
/// socket rejects IPPROTO_IP options.
pub fn set_recv_tos(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)
}

/// The TOS byte (DSCP << 2 | ECN) the peer's packets carried when this accepted TCP socket
/// was established, i.e. the mark the client set before `connect`; `None` when the socket
/// did not record it (its listener had no [`set_recv_tos`], or it is not IPv4).
///
/// Why this works without a wire change: with IP_RECVTOS, Linux stores the TOS of the
/// handshake in the new socket (`rcv_tos`) and `getsockopt(IP_PKTOPTIONS)` returns it as an
/// IP_TOS control message, before any data has arrived (checked on loopback, kernel 6.18).
pub fn received_tos(fd: BorrowedFd<'_>) -> io::Result<Option<u8>> {
    // u64s for cmsghdr alignment; 256 bytes hold every option IPv4 can report here.
    let mut buf = [0u64; 32];
    let mut len = std::mem::size_of_val(&buf) as libc::socklen_t;
    // SAFETY: passes a writable buffer and its exact size; the kernel writes at most `len`
    // bytes and updates `len` to what it wrote.
    let rc = cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTOPTIONS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    });
    match rc {
        Ok(_) => {}
        // An IPv6 socket has no IPPROTO_IP options: nothing recorded, not a failure.
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: a zeroed msghdr is valid; only its control fields are set, to the buffer the
    // kernel filled and the length it reported (never more than the buffer). The CMSG
    // macros stay within `msg_controllen`, and each data read is bounded by `cmsg_len`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = (len as usize).min(std::mem::size_of_val(&buf)) as _;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            let data_len = (h.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TOS && data_len >= 1 {
                // TCP reports an int, recvmsg a byte: the TOS is the low byte either way.
                let tos = if data_len >= std::mem::size_of::<libc::c_int>() {
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as u8
                } else {
                    *libc::CMSG_DATA(c)
                };
                return Ok(Some(tos));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(None)
}

/// Re-`listen`s with our backlog (std uses 128); Linux updates the backlog of a listening socket.
pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// `shutdown(2)`; a socket that is not connected is not an error here.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: libc::c_int) -> io::Result<()> {
    // SAFETY: no pointers.
    match cvt(unsafe { libc::shutdown(fd.as_raw_fd(), how) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        other => other.map(drop),
    }
}

/// A socket address laid out for the kernel, boxed by the connect op so it never moves while
/// the kernel may read it (rule 1).
pub(crate) enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
    Unix(libc::sockaddr_un, libc::socklen_t),
}

impl SockAddr {
    pub(crate) fn from_std(addr: &std::net::SocketAddr) -> SockAddr {
        match addr {
            std::net::SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            std::net::SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    pub(crate) fn unix(path: &Path) -> io::Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let mut sun = libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; 108],
        };
        if bytes.is_empty() || bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unix socket path {} is empty, has a NUL or is longer than {} bytes",
                    path.display(),
                    sun.sun_path.len() - 1
                ),
            ));
        }
        for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        Ok(SockAddr::Unix(sun, len as libc::socklen_t))
    }

    pub(crate) fn domain(&self) -> libc::c_int {
        match self {
            SockAddr::V4(_) => libc::AF_INET,
            SockAddr::V6(_) => libc::AF_INET6,
            SockAddr::Unix(..) => libc::AF_UNIX,
        }
    }

    /// Pointer and length for the kernel; valid as long as `self` does not move.
    pub(crate) fn as_raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            SockAddr::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SockAddr::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
            SockAddr::Unix(a, len) => ((a as *const libc::sockaddr_un).cast(), *len),
        }
    }
}
