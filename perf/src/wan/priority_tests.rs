//! The QoS mode end to end: marked clients, the proxy, a server that reads marks.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use super::tos;
use super::{WanConfig, WanProxy};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const RATE: u64 = 1_000_000;
const DELAY: Duration = Duration::from_millis(20);
const LOW_BYTES: usize = 1 << 20;
const NORMAL_BYTES: usize = 1000;

/// What the server saw of one connection: the mark it connected with, bytes so far, when.
struct Seen {
    tos: Option<u8>,
    total: usize,
    at: Instant,
}

/// A server that reads every connection to its end and reports each read.
fn marking_sink() -> io::Result<(SocketAddr, Receiver<Seen>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    tos::set_recv_tos(&l)?;
    let addr = l.local_addr()?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let tos = tos::received_tos(&s).ok().flatten();
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    total += n;
                    let seen = Seen {
                        tos,
                        total,
                        at: Instant::now(),
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, rx))
}

struct Run {
    /// From the normal client's write to the server's read of its last byte.
    normal_latency: Duration,
    /// Marks the server saw: (low connection's, normal connection's).
    marks: (Option<u8>, Option<u8>),
    proxy: WanProxy,
}

/// 1 MiB from a CS1 client queued in the proxy, then 1000 bytes from an unmarked client.
fn normal_behind_a_mib_of_low(priority_by_dscp: bool) -> Result<Run, Box<dyn std::error::Error>> {
    let (sink, seen) = marking_sink()?;
    let cfg = WanConfig {
        one_way_delay: DELAY,
        rate_bytes_per_s: Some(RATE),
        priority_by_dscp,
        ..WanConfig::default()
    };
    let proxy = WanProxy::start(sink, SocketAddr::from(([127, 0, 0, 1], 0)), cfg)?;
    let low = tos::connect_marked(proxy.local_addr(), 0x20, Duration::from_secs(5))?;
    let sender = {
        let mut low = low.try_clone()?;
        thread::spawn(move || {
            let _ = low.write_all(&vec![7u8; LOW_BYTES]);
            let _ = low.shutdown(Shutdown::Write);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.queued_bytes() < (LOW_BYTES / 2) as u64 {
        if Instant::now() > deadline {
            return Err("the low connection's bytes never queued up".into());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let mut normal = tos::connect_marked(proxy.local_addr(), 0, Duration::from_secs(5))?;
    // Let the proxy connect upstream first, so only the link is measured.
    thread::sleep(Duration::from_millis(50));
    let sent = Instant::now();
    normal.write_all(&[1u8; NORMAL_BYTES])?;
    let (mut low_mark, mut normal_mark, mut normal_at, mut low_total) = (None, None, None, 0);
    while normal_at.is_none() || low_total < LOW_BYTES {
        let s = seen.recv_timeout(Duration::from_secs(10))?;
        if s.tos == Some(0x20) {
            low_mark = s.tos;
            low_total = s.total;
        } else {
            normal_mark = s.tos;
            if s.total >= NORMAL_BYTES {
                normal_at = Some(s.at);
            }
        }
    }
    let _ = sender.join();
    let normal_at = normal_at.ok_or("normal bytes never arrived")?;
    eprintln!(
        "priority_by_dscp={priority_by_dscp}: normal latency {:?}",
        normal_at.saturating_duration_since(sent)
    );
    Ok(Run {
        normal_latency: normal_at.saturating_duration_since(sent),
        marks: (low_mark, normal_mark),
        proxy,
    })
}

fn serialization(len: usize) -> Duration {
    Duration::from_secs_f64(len as f64 / RATE as f64)
}

#[test]
fn with_priority_a_normal_piece_overtakes_a_queued_mib_of_low_ones() -> TestResult {
    let run = normal_behind_a_mib_of_low(true)?;
    // At most one low piece (the one being serialized) goes first; 100 ms of slack for a
    // busy machine, still far below the ~1 s of the queued MiB.
    let bound = DELAY
        + serialization(NORMAL_BYTES)
        + serialization(super::PIECE_MAX_BYTES)
        + Duration::from_millis(100);
    assert!(
        run.normal_latency <= bound,
        "normal latency {:?}, bound {bound:?}",
        run.normal_latency
    );
    assert!(run.normal_latency >= DELAY);
    assert_eq!(
        run.marks,
        (Some(0x20), Some(0)),
        "the proxy passes marks on"
    );
    let c = run.proxy.class_counters();
    assert_eq!(c.low_upstream_bytes, LOW_BYTES as u64);
    assert_eq!(c.normal_upstream_bytes, NORMAL_BYTES as u64);
    assert_eq!((c.low_downstream_bytes, c.normal_downstream_bytes), (0, 0));
    assert_eq!(c.low_connections, 1);
    Ok(())
}

#[test]
fn without_priority_the_normal_piece_waits_behind_the_queue() -> TestResult {
    let run = normal_behind_a_mib_of_low(false)?;
    // At least half a MiB was queued ahead of it, FIFO.
    let at_least = serialization(LOW_BYTES / 2);
    assert!(
        run.normal_latency >= at_least,
        "normal latency {:?}, expected at least {at_least:?}",
        run.normal_latency
    );
    // Classes are counted even when not scheduled apart.
    assert_eq!(run.proxy.class_counters().low_connections, 1);
    Ok(())
}
