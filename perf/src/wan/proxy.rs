//! The proxy: the listener, the accept thread, the live connections and their shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::config::{Direction, WanConfig};
use super::conn::{set_linger_zero, Close, Conn, Env};
use super::counters::{Counters, WanClassCounters, WanCounters};
use super::faults::Faults;
use super::link::Link;
use super::plan::FaultPlan;
use super::tos::{self, Class};

/// How long a connection waits for the upstream server to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping a proxy waits for its threads before leaving them behind.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after an accept error such as EMFILE, which would otherwise spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A running WAN emulator; see the [module docs](super) for the model.
pub struct WanProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// A second handle on the accept thread's listener, to wake it when stopping.
    listener: TcpListener,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    /// Indexed by [`Direction::index`].
    links: [Link; 2],
    counters: Counters,
    queue_limit_bytes: usize,
    seed: u64,
    /// Faults of connections accepted from now on.
    faults: Mutex<Arc<Faults>>,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    stopping: bool,
    conns: HashMap<usize, Arc<Conn>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WanProxy {
    /// Binds `listen` and starts accepting at once; every accepted connection is forwarded
    /// to `upstream` through the emulated link. Fails on an invalid `cfg` (InvalidInput)
    /// or when the address cannot be bound.
    pub fn start(upstream: SocketAddr, listen: SocketAddr, cfg: WanConfig) -> io::Result<WanProxy> {
        cfg.validate()?;
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        if local_addr.is_ipv4() {
            // Classes come from the clients' handshakes (IPv6 clients are all normal).
            // Without priority they only feed counters: not worth refusing to start.
            if let Err(e) = tos::set_recv_tos(&listener) {
                if cfg.priority_by_dscp {
                    return Err(e);
                }
            }
        }
        let link = |dir: Direction| {
            Link::with_priority(
                cfg.rate_bytes_per_s,
                cfg.one_way_delay,
                cfg.priority_by_dscp,
                &format!("wan-link-{}", dir.name()),
            )
        };
        let shared = Arc::new(Shared {
            links: [link(Direction::Upstream)?, link(Direction::Downstream)?],
            counters: Counters::default(),
            queue_limit_bytes: cfg.effective_queue_limit_bytes(),
            seed: cfg.seed,
            faults: Mutex::new(Arc::new(cfg.faults)),
            live: Mutex::new(Live::default()),
        });
        let accept_listener = listener.try_clone()?;
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("wan-accept".into())
            .spawn(move || accept_loop(&accept_listener, upstream, &accept_shared))?;
        Ok(WanProxy {
            shared,
            local_addr,
            listener,
            accept: Some(accept),
        })
    }

    /// The address clients connect to (the bound port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> WanCounters {
        self.shared.counters.snapshot()
    }

    /// Bytes forwarded per DSCP class.
    pub fn class_counters(&self) -> WanClassCounters {
        self.shared.counters.class_snapshot()
    }

    /// Payload bytes read but not yet written, over all connections and directions.
    pub fn queued_bytes(&self) -> u64 {
        self.counters().queued_bytes
    }

    /// The queue limit of each connection-direction in force.
    pub fn queue_limit_bytes(&self) -> usize {
        self.shared.queue_limit_bytes
    }

    /// Replaces the faults of connections accepted from now on (connection indices still
    /// count from the proxy's start). Fails on invalid faults (InvalidInput).
    pub fn set_faults(&self, faults: Faults) -> io::Result<()> {
        faults.validate()?;
        *lock(&self.shared.faults) = Arc::new(faults);
        Ok(())
    }
}

impl Drop for WanProxy {
    /// Stops accepting, closes every connection and joins the threads, waiting at most
    /// [`STOP_TIMEOUT`] in all (a thread still stuck then is left behind, detached).
    fn drop(&mut self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let conns: Vec<Arc<Conn>> = {
            let mut live = lock(&self.shared.live);
            live.stopping = true;
            live.conns.values().cloned().collect()
        };
        // SAFETY: shuts down a socket we own; no memory is involved. On Linux this makes
        // the accept thread's blocked accept() return (EINVAL).
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        for conn in conns {
            conn.close(Close::Stop, &self.shared.counters);
        }
        if let Some(accept) = self.accept.take() {
            join_until(accept, deadline);
        }
        let threads = std::mem::take(&mut lock(&self.shared.live).threads);
        for t in threads {
            join_until(t, deadline);
        }
        // After the connections: their closed pipes need no more arrivals.
        for link in &self.shared.links {
            if let Some(t) = link.stop() {
                join_until(t, deadline);
            }
        }
    }
}

fn join_until(thread: JoinHandle<()>, deadline: Instant) {
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let _ = thread.join();
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    let mut next_index = 0usize;
    loop {
        let accepted = listener.accept();
        if lock(&shared.live).stopping {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        let index = next_index;
        next_index += 1;
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let faults = Arc::clone(&lock(&shared.faults));
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("wan{index}"))
            .spawn(move || serve(&conn_shared, index, client, upstream, &faults));
        let mut live = lock(&shared.live);
        // Reap finished connections so the list stays as long as the live ones.
        let (done, running): (Vec<_>, Vec<_>) =
            live.threads.drain(..).partition(|t| t.is_finished());
        live.threads = running;
        for t in done {
            let _ = t.join();
        }
        match spawned {
            Ok(t) => live.threads.push(t),
            Err(e) => eprintln!("wan: connection {index}: cannot spawn a thread: {e}"),
        }
    }
}

/// Connects upstream and forwards one accepted connection until it is done.
fn serve(shared: &Shared, index: usize, client: TcpStream, upstream: SocketAddr, faults: &Faults) {
    // Unknown (IPv6, or the kernel would not say) is unmarked: normal, as a network that
    // cannot read a mark would treat it.
    let client_tos = tos::received_tos(&client).ok().flatten().unwrap_or(0);
    let class = Class::of_tos(client_tos);
    if class == Class::Low {
        shared
            .counters
            .low_connections
            .fetch_add(1, Ordering::Relaxed);
    }
    // The mark travels on, as through a real network: the server can answer in kind
    // (`ferry backend` does). The ECN bits are TCP's own.
    let server = match tos::connect_marked(upstream, client_tos & !0b11, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            shared
                .counters
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            // The client sees a reset, as it would from a refused connection.
            set_linger_zero(&client);
            return;
        }
    };
    // Pieces are paced by the link model; Nagle would add its own, unmodelled delay.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn::new(
        index,
        client,
        server,
        shared.queue_limit_bytes,
        class,
    ));
    {
        let mut live = lock(&shared.live);
        if live.stopping {
            return;
        }
        live.conns.insert(index, Arc::clone(&conn));
    }
    let plans = Direction::ALL.map(|dir| FaultPlan::new(faults, shared.seed, index, dir));
    let env = Env {
        links: &shared.links,
        counters: &shared.counters,
    };
    conn.run(&env, plans);
    lock(&shared.live).conns.remove(&index);
}
