//! One proxied connection: per direction a reader thread (source socket → faults → link
//! → pipe) and a writer thread (pipe → destination socket at arrival time).
//!
//! Closing is one-shot ([`Conn::close`]): both pipes close (queued bytes are never
//! delivered) and both sockets are shut down both ways, which wakes every thread blocked
//! in a read or a write. After a peer reset, the other peer gets a reset too when the
//! sockets are closed (SO_LINGER 0).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use super::config::Direction;
use super::counters::Counters;
use super::link::Link;
use super::pipe::{Next, Piece, Pipe, PIECE_MAX_BYTES};
use super::plan::FaultPlan;
use super::tos::Class;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// A cut fault: the peers see EOF.
    Cut,
    /// A peer reset or an IO error: the other peer is reset as well.
    Reset,
    /// The proxy is stopping.
    Stop,
}

pub(crate) struct Conn {
    index: usize,
    client: TcpStream,
    server: TcpStream,
    /// Indexed by [`Direction::index`]. Shared with the links' schedulers, which hold
    /// tickets of queued pieces.
    pipes: [Arc<Pipe>; 2],
    /// From the client's handshake; applies to both directions.
    class: Class,
    closed: AtomicBool,
}

/// The links and counters of the proxy, shared by its connections.
pub(crate) struct Env<'a> {
    /// Indexed by [`Direction::index`].
    pub links: &'a [Link; 2],
    pub counters: &'a Counters,
}

impl Conn {
    pub(crate) fn new(
        index: usize,
        client: TcpStream,
        server: TcpStream,
        queue_limit_bytes: usize,
        class: Class,
    ) -> Conn {
        Conn {
            index,
            client,
            server,
            pipes: [
                Arc::new(Pipe::new(queue_limit_bytes)),
                Arc::new(Pipe::new(queue_limit_bytes)),
            ],
            class,
            closed: AtomicBool::new(false),
        }
    }

    fn source(&self, dir: Direction) -> &TcpStream {
        match dir {
            Direction::Upstream => &self.client,
            Direction::Downstream => &self.server,
        }
    }

    fn destination(&self, dir: Direction) -> &TcpStream {
        match dir {
            Direction::Upstream => &self.server,
            Direction::Downstream => &self.client,
        }
    }

    /// Closes the connection (once; later calls do nothing).
    pub(crate) fn close(&self, why: Close, counters: &Counters) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for pipe in &self.pipes {
            counters.unqueued(pipe.close());
        }
        for s in [&self.client, &self.server] {
            if why == Close::Reset {
                set_linger_zero(s);
            }
            let _ = s.shutdown(Shutdown::Both);
        }
        if why == Close::Cut {
            counters.cut_connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forwards both directions; returns when all four threads have ended (both
    /// directions done, or the connection closed).
    pub(crate) fn run(&self, env: &Env<'_>, plans: [FaultPlan; 2]) {
        thread::scope(|s| {
            for (dir, plan) in Direction::ALL.into_iter().zip(plans) {
                let name = |side: &str| format!("wan{}{}{side}", self.index, dir.name());
                let reader = thread::Builder::new()
                    .name(name("r"))
                    .spawn_scoped(s, move || self.read_side(dir, plan, env));
                let writer = thread::Builder::new()
                    .name(name("w"))
                    .spawn_scoped(s, move || self.write_side(dir, env));
                if let Err(e) = reader.and(writer) {
                    eprintln!("wan: connection {}: cannot spawn a thread: {e}", self.index);
                    self.close(Close::Reset, env.counters);
                    break;
                }
            }
        });
    }

    fn queue(&self, dir: Direction, piece: Piece, link: &Link, counters: &Counters) -> bool {
        let len = piece.data.len();
        // Counted before the push so that the writer's decrement never comes first.
        counters.queued(len);
        let queued = link.send(&self.pipes[dir.index()], piece, self.class);
        if !queued {
            counters.unqueued(len);
        }
        queued
    }

    fn read_side(&self, dir: Direction, mut plan: FaultPlan, env: &Env<'_>) {
        let pipe = &self.pipes[dir.index()];
        let link = &env.links[dir.index()];
        let counters = env.counters;
        let mut src = self.source(dir);
        if plan.cut_before_reading(0) {
            let cut = Piece {
                data: Vec::new(),
                arrival: None,
                cut_after: true,
            };
            self.queue(dir, cut, link, counters);
            return;
        }
        let mut scratch = vec![0u8; PIECE_MAX_BYTES];
        let mut offset = 0u64;
        loop {
            let Some(room) = pipe.wait_room() else {
                return;
            };
            let n = match src.read(&mut scratch[..room]) {
                Ok(0) => {
                    pipe.finish();
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(Close::Reset, counters);
                    return;
                }
            };
            let applied = plan.apply(offset, &mut scratch[..n]);
            offset += n as u64;
            counters
                .corrupted_bytes
                .fetch_add(applied.corrupted_bytes, Ordering::Relaxed);
            counters
                .dropped_bytes
                .fetch_add(applied.dropped_bytes, Ordering::Relaxed);
            if applied.kept > 0 || applied.cut {
                let piece = Piece {
                    data: scratch[..applied.kept].to_vec(),
                    arrival: None, // the link's to set
                    cut_after: applied.cut,
                };
                if !self.queue(dir, piece, link, counters) {
                    return;
                }
            }
            if applied.cut {
                return;
            }
        }
    }

    fn write_side(&self, dir: Direction, env: &Env<'_>) {
        let pipe = &self.pipes[dir.index()];
        let counters = env.counters;
        let mut dst = self.destination(dir);
        loop {
            let piece = match pipe.next() {
                Next::Closed => return,
                Next::Eof => {
                    // Half-close: the peer reads EOF; the other direction goes on.
                    let _ = dst.shutdown(Shutdown::Write);
                    return;
                }
                Next::Piece(p) => p,
            };
            let mut written = 0;
            let mut failed = false;
            while written < piece.data.len() {
                match dst.write(&piece.data[written..]) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => {
                        written += n;
                        counters.forwarded(dir, self.class, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            // Uncounted before the room is freed, so the reader's next piece never
            // overlaps this one in the counter: it stays within the queue limit.
            counters.unqueued(piece.data.len());
            pipe.delivered(piece.data.len());
            if failed {
                self.close(Close::Reset, counters);
                return;
            }
            if piece.cut_after {
                self.close(Close::Cut, counters);
                return;
            }
        }
    }
}

/// Makes the final close of `s` send a reset instead of a FIN.
pub(crate) fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is an open socket owned by `s`, and the option value points
    // to a `linger` of the length given, as SO_LINGER expects.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
