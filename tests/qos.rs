//! QoS on a connection shared by on-demand and background fetches (issue 5, QoS-less WAN):
//! the backend sends on-demand replies ahead of a queued background batch, and background
//! still moves at the configured floor while on-demand reads keep the link full.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_perf::wan::{WanConfig, WanProxy};
use wire_format::frame::{Class, Frame, Header, HEADER_LEN};

const CHUNK: u32 = 64 * 1024;

/// A wire-level client of `ferry backend`, as a frontend would be.
struct RawLink {
    s: TcpStream,
    handle: u32,
}

impl RawLink {
    /// Connects with a small receive buffer: the backend's replies back up in its own
    /// queues (where it can reorder them) instead of in ours.
    fn open(addr: &str, volume: &str) -> RawLink {
        let s = TcpStream::connect(addr).expect("connect to the backend");
        let small: libc::c_int = 64 * 1024;
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUF");
        let mut l = RawLink { s, handle: 0 };
        l.send(
            0,
            &Frame::Hello {
                version_min: 1,
                version_max: 1,
                capabilities: 0,
                agent: "qos-test",
            },
        );
        l.send(
            1,
            &Frame::Open {
                chunk_size: CHUNK,
                name: volume,
            },
        );
        let (_, ack) = l.next();
        assert!(ack.contains("HelloAck"), "{ack}");
        let (_, ok) = l.next();
        let frames = field(&ok, "extent_frames");
        l.handle = field(&ok, "handle") as u32;
        for _ in 0..frames {
            let (_, e) = l.next();
            assert!(e.starts_with("Extents"), "{e}");
        }
        l
    }

    fn send(&mut self, id: u64, f: &Frame<'_>) {
        let mut out = Vec::new();
        f.encode(id, &mut out).expect("encode");
        self.s.write_all(&out).expect("send to the backend");
    }

    /// The next frame: its request id and its `Debug` text (payload bytes left out).
    fn next(&mut self) -> (u64, String) {
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head).expect("frame header");
        let h = Header::decode(&head).expect("valid header");
        let mut payload = vec![0u8; h.payload_len as usize];
        self.s.read_exact(&mut payload).expect("frame payload");
        let f = Frame::decode(&h, &payload).expect("valid frame");
        let text = match f {
            Frame::ChunkData { chunk, .. } => format!("ChunkData {{ chunk: {chunk} }}"),
            other => format!("{other:?}"),
        };
        (h.id, text)
    }
}

/// `name: N` out of a frame's `Debug` text.
fn field(text: &str, name: &str) -> u64 {
    let at = text
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        + name.len()
        + 2;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text} is not a number"))
}

#[test]
fn an_on_demand_reply_overtakes_a_queued_background_batch() {
    let dir = test_dir("qos-overtake");
    let source = dir.path().join("source.img");
    make_source(&source, 64 * MIB, 11);
    let h = Harness::start_backend_only(dir.path(), &source, Opts::default());
    let addr = h.backend_addr.clone().expect("backend address");
    let mut link = RawLink::open(&addr, "vol");
    let handle = link.handle;
    // Both classes on this connection, strict priority (no floor).
    link.send(
        2,
        &Frame::Qos {
            handle,
            background_floor_bytes_per_s: 0,
        },
    );
    // Every chunk of the volume in one background batch; nobody reads for a while, so the
    // backend has read ahead and queued what our small window does not take.
    let all: Vec<u64> = (0..1024).collect();
    link.send(
        3,
        &Frame::Fetch {
            handle,
            class: Class::Background,
            no_refs: true,
            no_zstd: true,
            link_bound: false,
            chunks: all,
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    link.send(
        4,
        &Frame::Fetch {
            handle,
            class: Class::OnDemand,
            no_refs: true,
            no_zstd: true,
            link_bound: false,
            chunks: vec![1000],
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut background_before = 0;
    let mut background_total = 0;
    let mut on_demand_at = None;
    while background_total < 1024 || on_demand_at.is_none() {
        let (id, f) = link.next();
        match id {
            3 => {
                assert!(f.starts_with("Chunk"), "background reply {f}");
                background_total += 1;
                // Holes go out as tiny zero frames the moment the batch is read; what
                // matters is the data queued ahead.
                if on_demand_at.is_none() && f.starts_with("ChunkData") {
                    background_before += 1;
                }
            }
            4 => {
                assert!(
                    f.starts_with("ChunkData") && field(&f, "chunk") == 1000,
                    "{f}"
                );
                on_demand_at = Some(background_total);
            }
            other => panic!("reply to unknown request {other}: {f}"),
        }
    }
    println!("background data chunks ahead of the on-demand reply: {background_before} of 1024");
    // What was already past the backend's queue: our receive window (~128 KiB), the
    // kernel's unsent low-water mark (32 KiB), the chunk being sent: a handful. In arrival
    // order it would have come after ~1000.
    assert!(
        background_before <= 16,
        "{background_before} background chunks arrived before the on-demand reply"
    );
}

#[test]
fn background_keeps_its_floor_under_constant_on_demand_load() {
    require_tools(&["fio"]);
    let dir = test_dir("qos-floor");
    let source = dir.path().join("source.img");
    make_source(&source, 256 * MIB, 12);
    let opts = Opts::default().frontend_args(&["--qos", "shared", "--background-floor", "1M"]);
    let mut h = Harness::start_backend_only(dir.path(), &source, opts);
    let upstream: SocketAddr = h.backend_addr.as_deref().unwrap().parse().unwrap();
    // 32 Mbit/s, 10 ms round trip: random 4 KiB reads at depth 32 ask for 64 KiB chunks far
    // faster than that.
    let cfg = WanConfig {
        one_way_delay: Duration::from_millis(5),
        rate_bytes_per_s: Some(4_000_000),
        ..WanConfig::default()
    };
    let proxy = WanProxy::start(upstream, SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .expect("start the WAN emulator");
    h.backend_addr = Some(proxy.local_addr().to_string());
    h.start_frontend();
    let uri = format!("nbd+unix:///vol?socket={}", h.sock.display());
    let mut fio = Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randread",
            "--bs=4k",
            "--iodepth=32",
            "--time_based",
            "--runtime=40",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fio");
    let get = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    // Let the cap settle under the load, then measure.
    std::thread::sleep(Duration::from_secs(4));
    let a = h.status().expect("status");
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let b = h.status().expect("status");
    let secs = t.elapsed().as_secs_f64();
    let _ = fio.kill();
    let _ = fio.wait();
    let bg = (get(&b, "fetched_bytes_background") - get(&a, "fetched_bytes_background")) as f64;
    let od = (get(&b, "fetched_bytes_on_demand") - get(&a, "fetched_bytes_on_demand")) as f64;
    println!(
        "over {secs:.1} s: background {:.2} MiB/s, on-demand {:.2} MiB/s; qos {} window {} queueing {} us",
        bg / secs / MIB as f64,
        od / secs / MIB as f64,
        b["qos"],
        b["background_window_chunks"],
        b["queue_delay_us"]
    );
    assert_eq!(b["qos"], "shared");
    // The load really filled the link: on-demand took most of it.
    assert!(
        od > 1.5 * bg,
        "on-demand {od} bytes vs background {bg}: not loaded"
    );
    // And background still moved at the floor (1 MiB/s; 80% for timer and chunk rounding).
    assert!(
        bg / secs >= 0.8 * MIB as f64,
        "background {:.2} MiB/s under load, floor 1 MiB/s",
        bg / secs / MIB as f64
    );
    drop(proxy);
}
