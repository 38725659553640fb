//! DSCP classes: which connections a QoS-ready network would serve last.
//!
//! A connection's class comes from the TOS byte its client's handshake carried, read on the
//! accepted socket (IP_RECVTOS on the listener, then IP_PKTOPTIONS: the dataplane's
//! `runtime::received_tos`, which the backend uses to mirror the mark). No byte of the
//! stream is looked at.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// DSCP CS1, "lower effort" in RFC 4594 (Ferry's background connection).
const DSCP_CS1: u8 = 8;
/// DSCP LE, lower effort (RFC 8622).
const DSCP_LE: u8 = 1;

/// The service class of a proxied connection, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Normal,
    /// Served only when no normal piece waits for the link.
    Low,
}

impl Class {
    pub(crate) const ALL: [Class; 2] = [Class::Normal, Class::Low];

    /// Index into per-class arrays; also the priority (0 first).
    pub(crate) fn index(self) -> usize {
        match self {
            Class::Normal => 0,
            Class::Low => 1,
        }
    }

    /// The class of a TOS byte (DSCP in its upper six bits): CS1 and LE are low.
    pub(crate) fn of_tos(tos: u8) -> Class {
        match tos >> 2 {
            DSCP_CS1 | DSCP_LE => Class::Low,
            _ => Class::Normal,
        }
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Makes connections accepted on `listener` keep the TOS of their client's handshake.
pub(crate) fn set_recv_tos(listener: &TcpListener) -> io::Result<()> {
    dataplane::runtime::set_recv_tos(listener.as_fd())
}

/// The TOS byte the client's handshake carried; `None` when not recorded (IPv6, or the
/// listener had no [`set_recv_tos`]).
pub(crate) fn received_tos(s: &TcpStream) -> io::Result<Option<u8>> {
    dataplane::runtime::received_tos(s.as_fd())
}

/// Connects to `addr` with IP_TOS `tos` set before the handshake, so the server learns the
/// client's mark as it would without the proxy in the path. `tos` 0 or an IPv6 address:
/// a plain connect.
pub(crate) fn connect_marked(
    addr: SocketAddr,
    tos: u8,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        return TcpStream::connect_timeout(&addr, timeout);
    };
    if tos == 0 {
        return TcpStream::connect_timeout(&addr, timeout);
    }
    // SAFETY: no pointers; the result is checked and owned at once.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_TOS,
        libc::c_int::from(tos),
    )?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: passes a live sockaddr_in and its exact size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live pollfd.
        let ready = cvt(unsafe { libc::poll(&mut pfd, 1, ms) })?;
        if ready == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        let s = TcpStream::from(fd);
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        s.set_nonblocking(false)?;
        return Ok(s);
    }
    let s = TcpStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_marks() {
        assert_eq!(Class::of_tos(0), Class::Normal);
        assert_eq!(Class::of_tos(0x20), Class::Low); // CS1
        assert_eq!(Class::of_tos(0x21), Class::Low); // CS1 with an ECN bit
        assert_eq!(Class::of_tos(0x04), Class::Low); // LE
        assert_eq!(Class::of_tos(0xb8), Class::Normal); // EF
    }

    #[test]
    fn the_server_sees_the_mark_of_a_marked_connect() -> io::Result<()> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        set_recv_tos(&l)?;
        let addr = l.local_addr()?;
        for tos in [0x20u8, 0] {
            let _c = connect_marked(addr, tos, Duration::from_secs(5))?;
            let (s, _) = l.accept()?;
            assert_eq!(received_tos(&s)?, Some(tos));
        }
        Ok(())
    }
}
