//! The WAN emulator against real sockets on 127.0.0.1: pass-through, delay, rate, each
//! fault, determinism, counters and bounded memory. Every wait is bounded.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ferry_perf::wan::{Direction, FaultAt, Faults, RandomFaults, WanConfig, WanCounters, WanProxy};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MIB: usize = 1 << 20;
/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Reproducible test data (xorshift64).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn at(direction: Direction, connection: usize, offset: u64) -> FaultAt {
    FaultAt {
        direction,
        connection,
        offset,
    }
}

fn up(connection: usize, offset: u64) -> FaultAt {
    at(Direction::Upstream, connection, offset)
}

/// What a sink connection got before its stream ended.
struct Received {
    data: Vec<u8>,
    /// `None` for EOF, else the error that ended the stream.
    error: Option<io::ErrorKind>,
    done: Instant,
}

fn read_until_end(mut s: TcpStream) -> Received {
    let _ = s.set_read_timeout(Some(WAIT));
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let error = loop {
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e.kind()),
        }
    };
    Received {
        data,
        error,
        done: Instant::now(),
    }
}

/// A server reading each connection to its end; results arrive in completion order.
fn sink() -> io::Result<(SocketAddr, Receiver<Received>)> {
    let listener = TcpListener::bind(any_port())?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        while let Ok((s, _)) = listener.accept() {
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(read_until_end(s));
            });
        }
    });
    Ok((addr, rx))
}

/// A server echoing every connection; it half-closes after the client does.
fn echo() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(any_port())?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        while let Ok((mut s, _)) = listener.accept() {
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(WAIT));
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            let _ = s.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn connect(proxy: &WanProxy) -> io::Result<TcpStream> {
    let s = TcpStream::connect(proxy.local_addr())?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(WAIT))?;
    Ok(s)
}

/// Writes `data` (ignoring a failure: a cut may close the socket) then half-closes, in a
/// thread.
fn send_in_background(s: &TcpStream, data: Arc<Vec<u8>>) -> io::Result<thread::JoinHandle<()>> {
    let mut w = s.try_clone()?;
    Ok(thread::spawn(move || {
        if w.write_all(&data).is_ok() {
            let _ = w.shutdown(Shutdown::Write);
        }
    }))
}

/// Sends `data` through an echo server behind `proxy` and reads back what returns.
fn echo_through(proxy: &WanProxy, data: Vec<u8>) -> Result<Received, Box<dyn std::error::Error>> {
    let s = connect(proxy)?;
    let writer = send_in_background(&s, Arc::new(data))?;
    let got = read_until_end(s);
    writer.join().map_err(|_| "writer panicked")?;
    Ok(got)
}

/// Sends `data` to a sink behind a new proxy with `cfg`; returns what the sink got and the
/// proxy (for its counters).
fn sink_through(
    cfg: WanConfig,
    data: Vec<u8>,
) -> Result<(Received, WanProxy), Box<dyn std::error::Error>> {
    let (addr, rx) = sink()?;
    let proxy = WanProxy::start(addr, any_port(), cfg)?;
    let s = connect(&proxy)?;
    let writer = send_in_background(&s, Arc::new(data))?;
    let got = rx.recv_timeout(WAIT)?;
    writer.join().map_err(|_| "writer panicked")?;
    Ok((got, proxy))
}

/// Offsets where `got` differs from `sent` (over the shorter length).
fn differences(sent: &[u8], got: &[u8]) -> Vec<usize> {
    sent.iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect()
}

/// Polls the counters until `done` holds (writers count right after their write returns,
/// which may be after the peer has read the bytes).
fn settled(proxy: &WanProxy, done: impl Fn(&WanCounters) -> bool) -> WanCounters {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let c = proxy.counters();
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bytes_pass_through_unchanged_both_ways() -> TestResult {
    let proxy = WanProxy::start(echo()?, any_port(), WanConfig::default())?;
    let sent = pattern(2 * MIB, 1);
    let got = echo_through(&proxy, sent.clone())?;
    assert_eq!(got.error, None, "clean EOF after the half-close");
    assert_eq!(got.data.len(), sent.len());
    assert!(
        got.data == sent,
        "data changed: {:?}",
        &differences(&sent, &got.data)[..]
    );
    let c = settled(&proxy, |c| c.downstream_bytes == sent.len() as u64);
    assert_eq!(
        (c.upstream_bytes, c.downstream_bytes),
        (2 * MIB as u64, 2 * MIB as u64)
    );
    Ok(())
}

#[test]
fn delay_applies_in_each_direction() -> TestResult {
    let cfg = WanConfig {
        one_way_delay: Duration::from_millis(20),
        ..WanConfig::default()
    };
    let proxy = WanProxy::start(echo()?, any_port(), cfg)?;
    let mut s = connect(&proxy)?;
    let mut rtts = Vec::new();
    for i in 0..5u8 {
        let t0 = Instant::now();
        s.write_all(&[i])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        rtts.push(t0.elapsed());
        assert_eq!(b[0], i);
    }
    let min = rtts.iter().min().copied().unwrap_or_default();
    assert!(
        min >= Duration::from_millis(40),
        "round trip {min:?} < 2 × 20 ms; all {rtts:?}"
    );
    assert!(
        min < Duration::from_millis(100),
        "round trip {min:?} far above 40 ms; all {rtts:?}"
    );
    Ok(())
}

#[test]
fn rate_limits_throughput() -> TestResult {
    let rate = 8_000_000u64;
    let cfg = WanConfig {
        rate_bytes_per_s: Some(rate),
        ..WanConfig::default()
    };
    let sent = pattern(4 * MIB, 2);
    let t0 = Instant::now();
    let (got, _proxy) = sink_through(cfg, sent.clone())?;
    let elapsed = got.done - t0;
    assert!(got.data == sent);
    let throughput = sent.len() as f64 / elapsed.as_secs_f64();
    assert!(
        elapsed >= Duration::from_millis(450),
        "4 MiB at 8 MB/s took only {elapsed:?}"
    );
    assert!(
        throughput <= 1.1 * rate as f64 && throughput >= 0.5 * rate as f64,
        "{throughput:.0} B/s against a rate of {rate}"
    );
    Ok(())
}

#[test]
fn rate_is_shared_by_all_connections() -> TestResult {
    let cfg = WanConfig {
        rate_bytes_per_s: Some(4_000_000),
        ..WanConfig::default()
    };
    let (addr, rx) = sink()?;
    let proxy = WanProxy::start(addr, any_port(), cfg)?;
    let data = Arc::new(pattern(MIB, 3));
    let t0 = Instant::now();
    let a = connect(&proxy)?;
    let b = connect(&proxy)?;
    let writers = [
        send_in_background(&a, Arc::clone(&data))?,
        send_in_background(&b, data)?,
    ];
    let first = rx.recv_timeout(WAIT)?;
    let second = rx.recv_timeout(WAIT)?;
    for w in writers {
        w.join().map_err(|_| "writer panicked")?;
    }
    assert_eq!((first.data.len(), second.data.len()), (MIB, MIB));
    // 2 MiB over one 4 MB/s link: 0.52 s; each alone would have taken 0.26 s.
    let elapsed = second.done.max(first.done) - t0;
    assert!(
        elapsed >= Duration::from_millis(450),
        "2 × 1 MiB at a shared 4 MB/s took {elapsed:?}"
    );
    Ok(())
}

#[test]
fn corrupt_flips_exactly_the_named_bytes() -> TestResult {
    let mut cfg = WanConfig::default();
    cfg.faults.corrupt = vec![
        up(0, 100_000),
        at(Direction::Downstream, 0, 700_000),
        up(1, 5), // another connection: must not touch this one
    ];
    let proxy = WanProxy::start(echo()?, any_port(), cfg)?;
    let sent = pattern(MIB, 4);
    let got = echo_through(&proxy, sent.clone())?;
    assert_eq!(got.data.len(), sent.len());
    assert_eq!(differences(&sent, &got.data), vec![100_000, 700_000]);
    assert_eq!(
        settled(&proxy, |c| c.corrupted_bytes == 2).corrupted_bytes,
        2
    );
    Ok(())
}

#[test]
fn cut_delivers_exactly_the_bytes_before_it() -> TestResult {
    let mut cfg = WanConfig::default();
    cfg.faults.cut = vec![up(0, 300_000), at(Direction::Downstream, 1, 0)];
    let (addr, rx) = sink()?;
    let proxy = WanProxy::start(addr, any_port(), cfg)?;
    let sent = pattern(MIB, 5);
    let mut s = connect(&proxy)?;
    let writer = send_in_background(&s, Arc::new(sent.clone()))?;
    let got = rx.recv_timeout(WAIT)?;
    assert_eq!(got.data.len(), 300_000, "ended by {:?}", got.error);
    assert!(got.data[..] == sent[..300_000]);
    // The client side is closed too: EOF or a reset, not a timeout.
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => return Err("the client got bytes after the cut".into()),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "client not closed: {e}"
        ),
    }
    writer.join().map_err(|_| "writer panicked")?;

    // A cut at 0 closes the connection at once.
    let t0 = Instant::now();
    let mut second = connect(&proxy)?;
    let n = second.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(rx.recv_timeout(WAIT)?.data.len(), 0);
    assert_eq!(
        settled(&proxy, |c| c.cut_connections == 2).cut_connections,
        2
    );
    Ok(())
}

#[test]
fn drop_removes_the_named_ranges() -> TestResult {
    let mut cfg = WanConfig::default();
    // The second range straddles the 64 KiB read size.
    cfg.faults.drop = vec![(up(0, 1000), 500), (up(0, 65_530), 100)];
    let sent = pattern(MIB, 6);
    let (got, proxy) = sink_through(cfg, sent.clone())?;
    let mut expected = sent[..1000].to_vec();
    expected.extend_from_slice(&sent[1500..65_530]);
    expected.extend_from_slice(&sent[65_630..]);
    assert_eq!(got.data.len(), expected.len());
    assert!(
        got.data == expected,
        "first difference at {:?}",
        differences(&expected, &got.data).first()
    );
    assert_eq!(proxy.counters().dropped_bytes, 600);
    Ok(())
}

/// Offsets of corrupted bytes and the length delivered, for 4 MiB through random faults.
fn random_run(seed: u64) -> Result<(Vec<usize>, usize), Box<dyn std::error::Error>> {
    let cfg = WanConfig {
        seed,
        faults: Faults {
            random: Some(RandomFaults {
                corrupt_per_mib: 0.6,
                cut_per_mib: 0.2,
            }),
            ..Faults::default()
        },
        ..WanConfig::default()
    };
    let sent = pattern(4 * MIB, 7);
    let (got, _proxy) = sink_through(cfg, sent.clone())?;
    Ok((differences(&sent, &got.data), got.data.len()))
}

#[test]
fn random_faults_repeat_with_the_seed() -> TestResult {
    let first = random_run(7)?;
    assert!(!first.0.is_empty(), "seed 7 is known to corrupt a byte");
    assert!(first.1 < 4 * MIB, "seed 7 is known to cut the stream");
    assert_eq!(random_run(7)?, first, "same seed, same faults");
    assert_ne!(random_run(8)?, first, "another seed, other faults");
    Ok(())
}

#[test]
fn a_peer_reset_closes_the_other_side() -> TestResult {
    // The server reads one byte and closes with unread data queued: the kernel resets.
    let listener = TcpListener::bind(any_port())?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        thread::sleep(Duration::from_millis(50));
        Ok(())
    });
    let proxy = WanProxy::start(addr, any_port(), WanConfig::default())?;
    let mut s = connect(&proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(&[7u8; 100])?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => return Err("bytes from a server that sent none".into()),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "the client was not closed after the server's reset: {e}"
        ),
    }
    server.join().map_err(|_| "server panicked")??;
    Ok(())
}

#[test]
fn counters_add_up() -> TestResult {
    let mut cfg = WanConfig::default();
    cfg.faults.drop = vec![(up(1, 0), 1000)];
    let proxy = WanProxy::start(echo()?, any_port(), cfg)?;
    let a = echo_through(&proxy, pattern(300_000, 8))?;
    let b = echo_through(&proxy, pattern(500_000, 9))?;
    assert_eq!((a.data.len(), b.data.len()), (300_000, 499_000));
    let expected = WanCounters {
        upstream_bytes: 799_000,
        downstream_bytes: 799_000,
        connections: 2,
        connect_failures: 0,
        corrupted_bytes: 0,
        dropped_bytes: 1000,
        cut_connections: 0,
        queued_bytes: 0,
        queued_bytes_max: 0, // compared apart
    };
    let c = settled(&proxy, |c| {
        c.downstream_bytes == 799_000 && c.queued_bytes == 0
    });
    assert_eq!(
        WanCounters {
            queued_bytes_max: 0,
            ..c
        },
        expected
    );
    assert!(c.queued_bytes_max > 0 && c.queued_bytes_max <= proxy.queue_limit_bytes() as u64);

    // An upstream that refuses: the client is closed and the failure counted.
    let refused = TcpListener::bind(any_port())?.local_addr()?;
    let proxy = WanProxy::start(refused, any_port(), WanConfig::default())?;
    let mut s = connect(&proxy)?;
    let mut b = [0u8; 1];
    assert!(!matches!(s.read(&mut b), Ok(n) if n > 0));
    let c = settled(&proxy, |c| c.connect_failures == 1);
    assert_eq!((c.connections, c.connect_failures), (1, 1));
    Ok(())
}

#[test]
fn memory_stays_bounded_on_a_slow_link() -> TestResult {
    let cfg = WanConfig {
        rate_bytes_per_s: Some(1_000_000),
        one_way_delay: Duration::from_millis(10),
        ..WanConfig::default()
    };
    let (addr, _rx) = sink()?;
    let proxy = WanProxy::start(addr, any_port(), cfg)?;
    let limit = proxy.queue_limit_bytes() as u64;
    assert_eq!(limit, MIB as u64, "default: max(2 × rate × delay, 1 MiB)");
    let mut s = connect(&proxy)?;
    let written = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&written);
    let writer = thread::spawn(move || {
        let chunk = pattern(64 * 1024, 10);
        for _ in 0..(64 * MIB / chunk.len()) {
            if s.write_all(&chunk).is_err() {
                return;
            }
            count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    thread::sleep(Duration::from_secs(1));
    let c = proxy.counters();
    assert!(
        c.queued_bytes <= limit,
        "{} bytes queued, limit {limit}",
        c.queued_bytes
    );
    assert!(
        c.queued_bytes_max <= limit,
        "{} bytes queued at most, limit {limit}",
        c.queued_bytes_max
    );
    assert!(
        c.upstream_bytes <= 1_200_000,
        "{} bytes forwarded in 1 s at 1 MB/s",
        c.upstream_bytes
    );
    let pushed = written.load(Ordering::Relaxed);
    assert!(
        pushed < 32 * MIB as u64,
        "the sender pushed {pushed} bytes: no back-pressure"
    );

    // Dropping the proxy closes the connection; the blocked sender fails.
    let t0 = Instant::now();
    drop(proxy);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + WAIT;
    while !writer.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        writer.is_finished(),
        "the sender is still blocked after the proxy stopped"
    );
    writer.join().map_err(|_| "writer panicked")?;
    Ok(())
}

#[test]
fn invalid_configs_are_refused() {
    let bad_rate = WanConfig {
        rate_bytes_per_s: Some(0),
        ..WanConfig::default()
    };
    let bad_random = WanConfig {
        faults: Faults {
            random: Some(RandomFaults {
                corrupt_per_mib: 1.5,
                cut_per_mib: 0.0,
            }),
            ..Faults::default()
        },
        ..WanConfig::default()
    };
    for cfg in [bad_rate, bad_random] {
        let err = WanProxy::start(any_port(), any_port(), cfg).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}
