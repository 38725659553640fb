//! TCP and unix stream sockets through the ring.
//!
//! Sends and receives may be short (rule 4): `recv` returns what one op got (0 = the peer
//! closed), `recv_exact`/`send_all` loop. Dropping a `recv` future cancels the op; bytes it had
//! already consumed are lost, so a stream whose recv was dropped mid-frame must be closed.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use super::buf::{IoBuf, IoBufMut};
use super::op::{self, Fd};
use super::sys::{self, SockAddr};

const LISTEN_BACKLOG: libc::c_int = 1024;

/// A listening socket. `Send + Sync`, so it may be bound on one thread and shared by cores
/// that each `accept` on it.
#[derive(Debug)]
pub struct Listener {
    fd: Arc<Fd>,
    local: String,
    unix_path: Option<PathBuf>,
}

impl Listener {
    /// Binds with SO_REUSEADDR and a listen backlog of 1024. On IPv4, accepted streams
    /// also record the TOS their client connected with ([`Stream::received_tos`]).
    pub fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        let local = l.local_addr()?.to_string();
        let fd: OwnedFd = l.into();
        if addr.is_ipv4() {
            // Only a QoS nicety (replies marked like requests): never fail a bind over it.
            if let Err(e) = sys::set_recv_tos(fd.as_fd()) {
                tracing::debug!(error = %e, %addr, "IP_RECVTOS not set: client marks will not be reflected");
            }
        }
        sys::listen(fd.as_fd(), LISTEN_BACKLOG)?;
        Ok(Listener {
            fd: Arc::new(Fd::new(fd)),
            local,
            unix_path: None,
        })
    }

    /// Binds a unix socket, removing a stale socket file first (but not a live one: if
    /// something accepts connections there, this fails with `AddrInUse`).
    pub fn bind_unix(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by a live listener", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
        }
        let l = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        let fd: OwnedFd = l.into();
        sys::listen(fd.as_fd(), LISTEN_BACKLOG)?;
        Ok(Listener {
            fd: Arc::new(Fd::new(fd)),
            local: path.display().to_string(),
            unix_path: Some(path.to_path_buf()),
        })
    }

    /// "127.0.0.1:4567" (the actual port if bound to 0) or the unix socket path.
    pub fn local_addr(&self) -> String {
        self.local.clone()
    }

    /// The unix socket path, if this is a unix listener.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Accepts one connection (close-on-exec).
    pub async fn accept(&self) -> io::Result<Stream> {
        let (res, _) = op::accept(Arc::clone(&self.fd)).await;
        let raw = res? as RawFd;
        Ok(Stream::from_owned_fd(sys::owned_fd(raw)))
    }
}

/// Socket options for [`Stream::connect_tcp`].
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// IP_TOS (IPv4) or IPV6_TCLASS (IPv6), e.g. a DSCP mark `dscp << 2`.
    pub tos: Option<u8>,
    pub nodelay: bool,
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            tos: None,
            nodelay: true,
            sndbuf: None,
            rcvbuf: None,
        }
    }
}

/// A connected stream socket. Clones share the fd, so one clone can recv while another sends;
/// the fd closes after the last clone and the last op on it (rule 2).
#[derive(Clone, Debug)]
pub struct Stream {
    fd: Rc<Fd>,
}

fn int_opt(v: usize, what: &str) -> io::Result<libc::c_int> {
    libc::c_int::try_from(v)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} {v} too large")))
}

impl Stream {
    /// Connects over TCP with `opts` applied before the handshake.
    pub async fn connect_tcp(addr: SocketAddr, opts: &ConnectOpts) -> io::Result<Stream> {
        let sa = SockAddr::from_std(&addr);
        let fd = sys::stream_socket(sa.domain())?;
        let b = fd.as_fd();
        if let Some(tos) = opts.tos {
            let (level, name) = match addr {
                SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS),
                SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
            };
            sys::setsockopt_int(b, level, name, libc::c_int::from(tos))?;
        }
        sys::setsockopt_int(
            b,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            libc::c_int::from(opts.nodelay),
        )?;
        if let Some(n) = opts.sndbuf {
            sys::setsockopt_int(b, libc::SOL_SOCKET, libc::SO_SNDBUF, int_opt(n, "sndbuf")?)?;
        }
        if let Some(n) = opts.rcvbuf {
            sys::setsockopt_int(b, libc::SOL_SOCKET, libc::SO_RCVBUF, int_opt(n, "rcvbuf")?)?;
        }
        Self::connect(fd, sa)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connect {addr}: {e}")))
    }

    /// Connects to a unix socket.
    pub async fn connect_unix(path: &Path) -> io::Result<Stream> {
        let sa = SockAddr::unix(path)?;
        let fd = sys::stream_socket(libc::AF_UNIX)?;
        Self::connect(fd, sa)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", path.display())))
    }

    async fn connect(fd: OwnedFd, sa: SockAddr) -> io::Result<Stream> {
        let fd = Rc::new(Fd::new(fd));
        let (res, _) = op::connect(Rc::clone(&fd), Box::new(sa)).await;
        res?;
        Ok(Stream { fd })
    }

    /// Wraps a connected socket, e.g. one accepted on another core.
    pub fn from_owned_fd(fd: OwnedFd) -> Stream {
        Stream {
            fd: Rc::new(Fd::new(fd)),
        }
    }

    /// Takes the fd back, to move the connection to another core. Only works for the last
    /// handle with no op in flight; otherwise returns the stream unchanged.
    pub fn into_owned_fd(self) -> Result<OwnedFd, Stream> {
        match Rc::try_unwrap(self.fd) {
            Ok(fd) => match fd.into_owned() {
                Some(fd) => Ok(fd),
                None => unreachable!("a Stream always holds an fd"),
            },
            Err(fd) => Err(Stream { fd }),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sets TCP_NOTSENT_LOWAT: a send waits (the ring's poll) while the kernel holds more
    /// than `bytes` not yet sent, which keeps a queue that user space can still reorder.
    pub fn set_notsent_lowat(&self, bytes: u32) -> io::Result<()> {
        let n = libc::c_int::try_from(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "low-water mark too large"))?;
        sys::setsockopt_int(
            self.fd.as_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            n,
        )
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        sys::setsockopt_int(
            self.fd.as_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            libc::c_int::from(on),
        )
    }

    /// The TOS byte the client's handshake carried, if its listener recorded it (IPv4
    /// listeners from [`Listener::bind_tcp`] do); `Some(0)` for an unmarked client.
    pub fn received_tos(&self) -> io::Result<Option<u8>> {
        sys::received_tos(self.fd.as_fd())
    }

    /// Sets IP_TOS on an IPv4 socket: the mark of the packets it sends from now on.
    pub fn set_tos(&self, tos: u8) -> io::Result<()> {
        sys::setsockopt_int(
            self.fd.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_TOS,
            libc::c_int::from(tos),
        )
    }

    /// Sets SO_SNDBUF (the kernel doubles it and caps it at `net.core.wmem_max`). Setting it
    /// turns the kernel's send-buffer autotuning off for this socket.
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        let n = libc::c_int::try_from(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "send buffer too large"))?;
        sys::setsockopt_int(self.fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, n)
    }

    /// One recv into `buf[range]`; `Ok(0)` means the peer closed (or `range` is empty).
    /// Panics if `range` is outside `buf`'s initialised bytes.
    pub async fn recv<B: IoBufMut>(&self, buf: B, range: Range<usize>) -> (io::Result<usize>, B) {
        if range.is_empty() {
            assert!(
                range.start <= buf.bytes_init(),
                "recv: range outside the buffer"
            );
            return (Ok(0), buf);
        }
        let (res, (_, buf)) = op::recv(Rc::clone(&self.fd), buf, range).await;
        (res.map(|n| n as usize), buf)
    }

    /// Fills `buf[range]`; the peer closing first is `UnexpectedEof`.
    pub async fn recv_exact<B: IoBufMut>(
        &self,
        mut buf: B,
        range: Range<usize>,
    ) -> (io::Result<()>, B) {
        let mut at = range.start;
        while at < range.end {
            let (res, b) = self.recv(buf, at..range.end).await;
            buf = b;
            match res {
                Ok(0) => {
                    let msg = format!(
                        "peer closed after {} of {} bytes",
                        at - range.start,
                        range.len()
                    );
                    return (Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg)), buf);
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends every part of `g`, in order, with as few `sendmsg` calls as the kernel allows
    /// (one per gather list usually): header and data of many frames in one syscall.
    pub async fn send_gather_all(&self, g: Box<op::Gather>) -> (io::Result<()>, Box<op::Gather>) {
        let total = g.total();
        let mut sent = 0;
        let mut g = g;
        while sent < total {
            let (res, (_, back)) = op::send_gather(Rc::clone(&self.fd), g, sent).await;
            g = back;
            match res {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "sendmsg wrote 0 bytes",
                        )),
                        g,
                    )
                }
                Ok(n) => sent += n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), g),
            }
        }
        (Ok(()), g)
    }

    /// Sends all of `buf[range]` (MSG_NOSIGNAL: a closed peer is `BrokenPipe`, not SIGPIPE).
    pub async fn send_all<B: IoBuf>(&self, mut buf: B, range: Range<usize>) -> (io::Result<()>, B) {
        assert!(
            range.start <= range.end && range.end <= buf.bytes_init(),
            "send_all: range {range:?} outside the buffer's {} bytes",
            buf.bytes_init()
        );
        let mut at = range.start;
        while at < range.end {
            let (res, (_, b)) = op::send(Rc::clone(&self.fd), buf, at..range.end).await;
            buf = b;
            match res {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "send wrote 0 bytes",
                        )),
                        buf,
                    )
                }
                Ok(n) => at += n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// `shutdown(SHUT_RDWR)`: the peer sees EOF and a recv blocked on this socket returns 0.
    pub fn shutdown(&self) {
        if let Err(e) = sys::shutdown(self.fd.as_fd(), libc::SHUT_RDWR) {
            tracing::debug!(error = %e, "socket shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::executor::in_flight_ops;
    use super::super::fs::tests::test_dir;
    use super::super::{block_on, core_handle, sleep, spawn, timeout, AlignedBuf, RuntimeConfig};
    use super::*;
    use std::time::Duration;

    /// The one small test configuration, shared with the executor's tests.
    fn cfg() -> RuntimeConfig {
        crate::runtime::executor::tests::small_cfg()
    }

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    async fn tcp_pair(opts: &ConnectOpts) -> (Stream, Stream) {
        let l = Listener::bind_tcp(localhost()).expect("bind");
        let addr: SocketAddr = l.local_addr().parse().expect("local addr");
        let accept = spawn(async move { l.accept().await });
        let c = Stream::connect_tcp(addr, opts).await.expect("connect");
        let s = accept.await.expect("accept");
        (c, s)
    }

    #[test]
    fn tcp_send_recv_roundtrip_and_options() {
        block_on(cfg(), async {
            let opts = ConnectOpts {
                tos: Some(0x2e << 2), // DSCP EF
                nodelay: true,
                sndbuf: Some(256 << 10),
                rcvbuf: Some(256 << 10),
            };
            let (c, s) = tcp_pair(&opts).await;
            let tos = sys::getsockopt_int(c.fd.as_fd(), libc::IPPROTO_IP, libc::IP_TOS)
                .expect("getsockopt");
            assert_eq!(tos, i32::from(opts.tos.expect("tos")));
            c.set_nodelay(false).expect("nodelay");

            // 4 MiB through a small socket buffer: sends and recvs are short, loops finish.
            let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
            let expect = data.clone();
            let sender = {
                let c = c.clone();
                spawn(async move {
                    let (res, _) = c.send_all(data, 0..4 << 20).await;
                    res.expect("send_all");
                })
            };
            let (res, got) = s.recv_exact(vec![0u8; 4 << 20], 0..4 << 20).await;
            res.expect("recv_exact");
            assert!(got == expect);
            sender.await;

            // An AlignedBuf works as a socket buffer too, with a sub-range.
            let mut a = AlignedBuf::new(4096);
            a[100..104].copy_from_slice(b"ping");
            let (res, _) = s.send_all(a, 100..104).await;
            res.expect("send");
            let (res, got) = c.recv_exact(AlignedBuf::new(4096), 10..14).await;
            res.expect("recv");
            assert_eq!(&got[10..14], b"ping");
        });
    }

    #[test]
    fn accepted_stream_learns_the_clients_tos_from_the_handshake() {
        block_on(cfg(), async {
            for (mark, expect) in [(Some(0x20u8), 0x20u8), (None, 0)] {
                let opts = ConnectOpts {
                    tos: mark,
                    ..ConnectOpts::default()
                };
                let (c, s) = tcp_pair(&opts).await;
                // Before any data: the mark comes from the handshake alone.
                assert_eq!(s.received_tos().expect("received_tos"), Some(expect));
                s.set_tos(expect).expect("set_tos");
                let tos = sys::getsockopt_int(s.fd.as_fd(), libc::IPPROTO_IP, libc::IP_TOS)
                    .expect("getsockopt");
                assert_eq!(tos, i32::from(expect));
                drop(c);
            }
            // A listener that did not ask records nothing.
            let l = std::net::TcpListener::bind(localhost()).expect("bind");
            let addr = l.local_addr().expect("addr");
            let _c = std::net::TcpStream::connect(addr).expect("connect");
            let (s, _) = l.accept().expect("accept");
            let s = Stream::from_owned_fd(s.into());
            assert_eq!(s.received_tos().expect("received_tos"), None);
        });
    }

    #[test]
    fn unix_roundtrip_and_stale_socket() {
        let dir = test_dir();
        let path = dir.path().join("s.sock");
        // A stale socket file left behind by a dead process.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        block_on(cfg(), async move {
            let dir = dir;
            let l = Listener::bind_unix(&path).expect("bind over stale socket");
            assert_eq!(l.local_addr(), path.display().to_string());
            let accept = spawn(async move { l.accept().await });
            let c = Stream::connect_unix(&path).await.expect("connect");
            let s = accept.await.expect("accept");
            let (res, _) = c.send_all(b"hello".to_vec(), 0..5).await;
            res.expect("send");
            let (res, got) = s.recv_exact(vec![0; 5], 0..5).await;
            res.expect("recv");
            assert_eq!(got, b"hello");
            // A live listener is not stolen (the liveness probe connects to it once).
            let live = dir.path().join("live.sock");
            let _l = Listener::bind_unix(&live).expect("bind");
            assert_eq!(
                Listener::bind_unix(&live).expect_err("in use").kind(),
                io::ErrorKind::AddrInUse
            );
        });
    }

    #[test]
    fn dropped_recv_in_flight_is_cancelled_without_ub() {
        block_on(cfg(), async {
            let (c, s) = tcp_pair(&ConnectOpts::default()).await;
            let base = in_flight_ops();
            {
                // A recv on a socket with no data: the op is in the kernel when we drop it.
                let r = timeout(
                    Duration::from_millis(20),
                    s.recv(vec![0u8; 1 << 16], 0..1 << 16),
                )
                .await;
                assert!(r.is_err(), "nothing was sent");
            }
            // Now data arrives and the peer closes; the orphaned buffer must not be touched
            // after free (it is owned by the slot until the CQE).
            let (res, _) = c.send_all(vec![7u8; 1000], 0..1000).await;
            res.expect("send");
            c.shutdown();
            drop(c);
            for _ in 0..200 {
                if in_flight_ops() == base {
                    break;
                }
                sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(in_flight_ops(), base, "the cancelled recv's slot was freed");
            // The stream still delivers what the cancelled recv did not consume, then EOF.
            let mut total = 0;
            loop {
                let (res, _) = s.recv(vec![0u8; 4096], 0..4096).await;
                match res.expect("recv") {
                    0 => break,
                    n => total += n,
                }
            }
            assert!(total <= 1000);
        });
    }

    #[test]
    fn peer_closing_mid_frame_is_unexpected_eof() {
        block_on(cfg(), async {
            let (c, s) = tcp_pair(&ConnectOpts::default()).await;
            let (res, _) = c.send_all(vec![1u8; 10], 0..10).await;
            res.expect("send");
            drop(c);
            let (res, got) = s.recv_exact(vec![0u8; 100], 0..100).await;
            let err = res.expect_err("closed mid-frame");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert!(err.to_string().contains("10 of 100"), "{err}");
            assert_eq!(&got[..10], &[1u8; 10]);
        });
    }

    #[test]
    fn shutdown_wakes_a_blocked_recv() {
        block_on(cfg(), async {
            let (c, _s) = tcp_pair(&ConnectOpts::default()).await;
            let c2 = c.clone();
            let reader = spawn(async move { c2.recv(vec![0u8; 16], 0..16).await.0 });
            sleep(Duration::from_millis(20)).await;
            c.shutdown();
            let n = timeout(Duration::from_secs(5), reader)
                .await
                .expect("recv woke up")
                .expect("recv");
            assert_eq!(n, 0);
        });
    }

    #[test]
    fn send_to_closed_peer_is_an_error_not_sigpipe() {
        block_on(cfg(), async {
            let (c, s) = tcp_pair(&ConnectOpts::default()).await;
            drop(s);
            let mut last = Ok(());
            for _ in 0..100 {
                let (res, _) = c.send_all(vec![0u8; 1 << 16], 0..1 << 16).await;
                last = res;
                if last.is_err() {
                    break;
                }
            }
            let err = last.expect_err("peer is gone");
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ),
                "{err}"
            );
        });
    }

    #[test]
    fn connect_refused_names_the_address() {
        block_on(cfg(), async {
            let l = std::net::TcpListener::bind(localhost()).expect("bind");
            let addr = l.local_addr().expect("addr");
            drop(l);
            let err = Stream::connect_tcp(addr, &ConnectOpts::default())
                .await
                .expect_err("nobody listens");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
            assert!(err.to_string().contains(&addr.to_string()));
        });
    }

    #[test]
    fn move_a_connection_between_threads_by_fd() {
        block_on(cfg(), async {
            let (c, s) = tcp_pair(&ConnectOpts::default()).await;
            let s2 = s.clone();
            let s = s.into_owned_fd().expect_err("another handle exists");
            drop(s2);
            let fd = s.into_owned_fd().expect("last handle, nothing in flight");
            // Another thread (core) takes it over.
            let handle = core_handle();
            let t = std::thread::spawn(move || {
                block_on(cfg(), async move {
                    let s = Stream::from_owned_fd(fd);
                    let (res, got) = s.recv_exact(vec![0u8; 3], 0..3).await;
                    res.expect("recv on the new thread");
                    got
                })
            });
            let (res, _) = c.send_all(b"abc".to_vec(), 0..3).await;
            res.expect("send");
            // Wait without blocking this ring.
            while !t.is_finished() {
                sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(t.join().expect("thread"), b"abc");
            drop(handle);
        });
    }
}
