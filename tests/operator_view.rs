//! What an operator sees, with the real binaries: Prometheus metrics of the backend, the
//! frontend and the control daemon scraped during a migration; `ferry migrate status --map
//! --svg` checked against the session's chunk counts (no screenshots: the SVG is parsed);
//! `status --watch` followed to `ready`; and TOML config files with flags overriding them.
//!
//! Self-contained on purpose (small helpers copied, not shared with `tests/common`).

mod common;
use common::lines::LineProc as Proc;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use control::nbd_client::NbdClient;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 64 * 1024;

fn ferry() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// A directory on a real file system (O_DIRECT fails on tmpfs), short enough for sockets.
fn test_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let root = if fs::create_dir_all(&root).is_ok() && root.as_os_str().len() < 50 {
        root
    } else {
        PathBuf::from("/var/tmp")
    };
    tempfile::Builder::new()
        .prefix(&format!("ov-{name}-"))
        .tempdir_in(root)
        .expect("test dir")
}

/// Random data, with the first `zero_mib` MiB all zeros (the backend answers those as zero).
fn source_file(path: &Path, size: u64, zero_mib: u64, seed: u64) {
    let mut f = File::create(path).expect("create source");
    let mut x = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..size / MIB {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if i < zero_mib { 0 } else { x };
            w.copy_from_slice(&v.to_le_bytes());
        }
        f.write_all(&buf).expect("write source");
    }
    f.sync_all().expect("sync source");
}

/// The `HOST:PORT` of a "... on http://HOST:PORT/metrics" line.
fn metrics_addr(line: &str) -> String {
    line.rsplit("http://")
        .next()
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string()
}

fn http_get<S: Read + Write>(mut s: S, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// Samples by `name{labels}` (labels as printed), checking the text format on the way:
/// every sample belongs to a family announced by `# TYPE` (and `# HELP`), counters end in
/// `_total`, and every value is a number.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = 0;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "summary", "histogram"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            }
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            helps += 1;
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample");
        let name = key.split('{').next().unwrap_or(key);
        let family = [
            name,
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
        ]
        .into_iter()
        .find(|n| types.contains_key(*n))
        .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        assert!(!family.is_empty());
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(key.to_string(), v);
    }
    assert_eq!(helps, types.len(), "one # HELP per family");
    out
}

fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = http_get(
        TcpStream::connect(addr).expect("connect metrics"),
        "/metrics",
    );
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_of_backend_and_frontend_move_during_a_migration() {
    let dir = test_dir("metrics");
    let d = dir.path();
    let src = d.join("v.src");
    source_file(&src, 16 * MIB, 1, 3);
    let vol = format!("v={}", src.display());
    let mut backend = Proc::spawn(
        "backend",
        &[
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--volume",
            &vol,
            "--metrics",
            "127.0.0.1:0",
        ],
        d,
    );
    let bm = metrics_addr(&backend.wait_line("ferry backend metrics on "));
    let baddr = backend.wait_line("ferry backend listening on ");
    let baddr = baddr.rsplit(' ').next().expect("addr").to_string();
    let tgt = d.join("v.tgt").display().to_string();
    let state = d.join("state").display().to_string();
    let nbd = d.join("nbd.sock");
    let nbd_spec = format!("unix:{}", nbd.display());
    let mut frontend = Proc::spawn(
        "frontend",
        &[
            "frontend",
            "--backend",
            &baddr,
            "--volume",
            "v",
            "--target",
            &tgt,
            "--state-dir",
            &state,
            "--nbd",
            &nbd_spec,
            "--cores",
            "1",
            "--background-rate",
            "4M",
            "--batch-chunks",
            "8",
            "--no-dedup",
            "--metrics",
            "127.0.0.1:0",
        ],
        d,
    );
    let fm = metrics_addr(&frontend.wait_line("ferry frontend metrics on "));
    frontend.wait_line("ferry frontend serving ");

    let f1 = scrape(&fm);
    let b1 = scrape(&bm);
    let present = r#"ferry_frontend_chunks{volume="v",state="present"}"#;
    let od_chunks = r#"ferry_frontend_fetched_chunks_total{volume="v",class="on-demand"}"#;
    let bg_bytes = r#"ferry_frontend_fetched_bytes_total{volume="v",class="background"}"#;
    let total: f64 = ["untouched", "present", "dirty", "zero"]
        .iter()
        .map(|s| {
            get(
                &f1,
                &format!(r#"ferry_frontend_chunks{{volume="v",state="{s}"}}"#),
            )
        })
        .sum();
    assert_eq!(total, (16 * MIB / CHUNK) as f64);

    // On-demand reads of the last 4 MiB, which background migration (from the start, at
    // 4 MiB/s in requests of 512 KiB) has not reached.
    let mut c = NbdClient::connect_unix(&nbd, "v").expect("nbd connect");
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..32u64 {
        c.read(12 * MIB + i * 2 * CHUNK, &mut buf)
            .expect("nbd read");
    }
    let _ = c.disconnect();
    thread::sleep(Duration::from_millis(1500));
    let f2 = scrape(&fm);
    let b2 = scrape(&bm);

    assert!(
        get(&f2, present) >= get(&f1, present) + 32.0,
        "present did not grow"
    );
    assert!(get(&f2, od_chunks) >= 32.0);
    assert!(
        get(&f2, bg_bytes) > get(&f1, bg_bytes),
        "no background progress"
    );
    for (k, v1) in &f1 {
        if k.contains("_total") {
            assert!(get(&f2, k) >= *v1, "counter {k} went down");
        }
    }
    // Latency percentiles of on-demand fetches, from the histogram.
    let q = |q: &str| {
        get(
            &f2,
            &format!(
                r#"ferry_frontend_fetch_latency_seconds{{volume="v",class="on-demand",quantile="{q}"}}"#
            ),
        )
    };
    assert!(q("0.5") > 0.0 && q("0.5") <= q("0.99") && q("0.99") <= q("1"));
    assert!(
        get(
            &f2,
            r#"ferry_frontend_fetch_latency_seconds_count{volume="v",class="on-demand"}"#
        ) >= 1.0
    );
    assert_eq!(
        get(&f2, r#"ferry_frontend_background_rate_bytes_per_second"#),
        4.0 * MIB as f64
    );
    get(&f2, r#"ferry_frontend_fetches_in_flight{volume="v"}"#);
    get(&f2, r#"ferry_frontend_unsynced_bytes{volume="v"}"#);
    get(&f2, r#"ferry_frontend_fetch_retries_total{volume="v"}"#);

    // The backend saw the same traffic from its side.
    let b_od = r#"ferry_backend_chunks_sent_total{class="on-demand",form="raw"}"#;
    let b_bg: f64 = ["raw", "zero"]
        .iter()
        .map(|f| {
            get(
                &b2,
                &format!(r#"ferry_backend_chunks_sent_total{{class="background",form="{f}"}}"#),
            )
        })
        .sum();
    assert!(get(&b2, b_od) >= get(&b1, b_od) + 32.0);
    assert!(b_bg > 0.0);
    // The first MiB is zeros: sent as zero chunks (a header each).
    assert!(
        get(
            &b2,
            r#"ferry_backend_chunks_sent_total{class="background",form="zero"}"#
        ) >= 1.0
    );
    assert!(
        get(&b2, "ferry_backend_connections") >= 2.0,
        "on-demand + background links"
    );
    assert!(
        get(&b2, r#"ferry_backend_wire_bytes_total{class="on-demand"}"#) >= 32.0 * CHUNK as f64
    );
    get(&b2, r#"ferry_backend_volume_info{volume="v"}"#);

    // Only GET /metrics is served.
    let (status, _) = http_get(TcpStream::connect(&fm).expect("connect"), "/");
    assert_eq!(status, 404);
}

/// Frontends started by the control daemon outlive it by design: killed here.
struct Frontends(Vec<u64>);

impl Drop for Frontends {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill(2) on a pid this test's daemon started and reported.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }
}

fn api(sock: &Path, method: &str, path: &str) -> (u16, Value) {
    let s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut s = s;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, v)
}

fn migrate(sock: &Path, args: &[&str]) -> std::process::Output {
    Command::new(ferry())
        .args(["migrate", "--socket"])
        .arg(sock)
        .args(args)
        .output()
        .expect("ferry migrate")
}

/// Chunk counts `[untouched, present, dirty, zero]` of a session's progress.
fn counts(s: &Value) -> [u64; 4] {
    let p = &s["progress"];
    [
        "chunks_untouched",
        "chunks_present",
        "chunks_dirty",
        "chunks_zero",
    ]
    .map(|k| p[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}")))
}

#[test]
fn map_svg_matches_status_and_watch_follows_to_ready() {
    let dir = test_dir("view");
    let d = dir.path();
    let src = d.join("v.src");
    source_file(&src, 16 * MIB, 2, 5);
    let vol = format!("v={}", src.display());
    let mut backend = Proc::spawn(
        "backend",
        &[
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--volume",
            &vol,
        ],
        d,
    );
    let baddr = backend.wait_line("ferry backend listening on ");
    let baddr = baddr.rsplit(' ').next().expect("addr").to_string();
    let sock = d.join("ctl.sock");
    let data = d.join("data");
    let (sock_s, data_s) = (sock.display().to_string(), data.display().to_string());
    let mut daemon = Proc::spawn(
        "control",
        &[
            "control",
            "--socket",
            &sock_s,
            "--data-dir",
            &data_s,
            "--poll-ms",
            "200",
        ],
        d,
    );
    daemon.wait_line("ferry control listening on ");
    let tgt = d.join("v.tgt").display().to_string();
    let out = migrate(
        &sock,
        &[
            "create",
            "--json",
            "--backend",
            &baddr,
            "--volume",
            "v",
            "--target",
            &tgt,
            "--background-rate",
            "1M",
            "--cores",
            "1",
            "--no-dedup",
            "--start",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("create json");
    let id = s["id"].as_str().expect("id").to_string();
    let _frontends = Frontends(s["frontend_pid"].as_u64().into_iter().collect());
    let nbd = PathBuf::from(s["nbd_socket"].as_str().expect("nbd socket"));

    // Some of every state: dirty (writes), zero (WRITE_ZEROES), present (background and
    // reads), the rest untouched.
    let mut c = NbdClient::connect_unix(&nbd, "v").expect("nbd connect");
    for i in 0..6u64 {
        c.write(8 * MIB + i * 3 * CHUNK, &vec![0xA5; CHUNK as usize], false)
            .expect("write");
    }
    c.write_zeroes(12 * MIB, (4 * CHUNK) as u32)
        .expect("write zeroes");
    let mut buf = vec![0u8; CHUNK as usize];
    c.read(14 * MIB, &mut buf).expect("read");
    c.flush().expect("flush");
    let _ = c.disconnect();
    thread::sleep(Duration::from_millis(1200));
    let (st, _) = api(&sock, "POST", &format!("/v1/sessions/{id}/pause"));
    assert_eq!(st, 200);
    // Paused and idle: the counts stand still.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, a) = api(&sock, "GET", &format!("/v1/sessions/{id}"));
        thread::sleep(Duration::from_millis(300));
        let (_, b) = api(&sock, "GET", &format!("/v1/sessions/{id}"));
        if counts(&a) == counts(&b) && b["progress"]["fetches_in_flight"] == 0 {
            break b;
        }
        assert!(Instant::now() < deadline, "counts never settled: {b}");
    };
    let want = counts(&status);
    assert!(want.iter().all(|&n| n > 0), "every state present: {want:?}");
    assert_eq!(status["progress"]["background_rate_bytes_per_s"], 0);

    // The daemon's own metrics.
    let (st, m) = api(&sock, "GET", "/metrics");
    assert_eq!(st, 200);
    let m = parse_metrics(m.as_str().expect("text"));
    assert_eq!(get(&m, r#"ferry_control_sessions{state="paused"}"#), 1.0);
    assert_eq!(get(&m, r#"ferry_control_sessions{state="migrating"}"#), 0.0);

    // The map: a terminal strip with a legend, and an SVG.
    let svg_path = d.join("map.svg");
    let out = migrate(
        &sock,
        &[
            "status",
            &id,
            "--map",
            "--cells",
            "64",
            "--svg",
            svg_path.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("untouched {}", want[0])), "{text}");
    assert!(text.contains(&format!("dirty {}", want[2])), "{text}");
    assert_eq!(
        text.lines().next().map(|l| l.chars().count()),
        Some(64),
        "{text}"
    );

    let svg = fs::read_to_string(&svg_path).expect("svg");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG parses");
    let mut width_by_fill: BTreeMap<String, f64> = BTreeMap::new();
    let mut fill_of_state: BTreeMap<String, String> = BTreeMap::new();
    for r in doc.descendants().filter(|n| n.has_tag_name("rect")) {
        if r.attribute("class") != Some("cell") {
            continue;
        }
        let fill = r.attribute("fill").expect("fill").to_string();
        let state = r.attribute("data-state").expect("data-state").to_string();
        let w: f64 = r
            .attribute("width")
            .and_then(|w| w.parse().ok())
            .expect("width");
        *width_by_fill.entry(fill.clone()).or_default() += w;
        let prev = fill_of_state.insert(state.clone(), fill.clone());
        assert!(
            prev.is_none_or(|p| p == fill),
            "{state} drawn in two colours"
        );
    }
    // One distinct colour per state, and only the states present.
    assert_eq!(fill_of_state.len(), 4, "{fill_of_state:?}");
    assert_eq!(
        width_by_fill.len(),
        4,
        "colours shared between states: {fill_of_state:?}"
    );
    let total_w: f64 = width_by_fill.values().sum();
    let total_c: u64 = want.iter().sum();
    for (k, state) in ["untouched", "present", "dirty", "zero"].iter().enumerate() {
        let w = width_by_fill[&fill_of_state[*state]] / total_w;
        let c = want[k] as f64 / total_c as f64;
        assert!(
            (w - c).abs() < 1e-3,
            "{state}: width share {w}, chunk share {c}"
        );
    }

    // Resume and follow it to `ready` (not a terminal: one line per poll).
    let (st, _) = api(&sock, "POST", &format!("/v1/sessions/{id}/resume"));
    assert_eq!(st, 200);
    let t0 = Instant::now();
    let out = migrate(&sock, &["status", &id, "--watch", "--interval-ms", "300"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    assert!(
        !text.contains('\r') && !text.contains('\x1b'),
        "no redraw when piped"
    );
    let last = lines.last().expect("a line");
    assert!(
        last.starts_with("ready") && last.contains("100.0%") && last.contains("ETA done"),
        "{last}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("migrating") && l.contains("ETA") && !l.contains("ETA -")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("saved") && l.contains("unsynced")),
        "{text}"
    );
    // Background bytes at about the session's 1 MiB/s rate on some line.
    assert!(
        lines.iter().skip(1).any(|l| {
            let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
            l.starts_with("migrating") && !l.contains("background -")
        }),
        "{text}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[test]
fn config_file_sets_flags_and_the_command_line_wins() {
    let dir = test_dir("config");
    let d = dir.path();
    let src = d.join("v.src");
    source_file(&src, 4 * MIB, 0, 9);
    let bcfg = d.join("backend.toml");
    fs::write(
        &bcfg,
        format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\nvolume = [\"v={}\"]\nlog-level = \"warn\"\n",
            src.display()
        ),
    )
    .expect("write");
    let mut backend = Proc::spawn(
        "backend",
        &["backend", "--config", bcfg.to_str().expect("utf-8")],
        d,
    );
    let baddr = backend.wait_line("ferry backend listening on ");
    let baddr = baddr.rsplit(' ').next().expect("addr").to_string();

    let state = d.join("state");
    let fcfg = d.join("frontend.toml");
    fs::write(
        &fcfg,
        format!(
            "# a frontend\nbackend = \"{baddr}\"\nvolume = \"v\"\ntarget = \"{}\"\nstate_dir = \"{}\"\nnbd = \"unix:{}\"\ncores = 1\nchunk-size = \"16K\"\nbackground-rate = \"1M\"\nno-dedup = true\nlog-format = \"json\"\n",
            d.join("v.tgt").display(),
            state.display(),
            d.join("nbd.sock").display()
        ),
    )
    .expect("write");
    let mut frontend = Proc::spawn(
        "frontend",
        &[
            "frontend",
            "--config",
            fcfg.to_str().expect("utf-8"),
            "--background-rate",
            "2M",
        ],
        d,
    );
    frontend.wait_line("ferry frontend serving ");
    let out = Command::new(ferry())
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .expect("ferry status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(st["chunk_size_bytes"], 16384, "from the file");
    assert_eq!(st["background_rate_bytes_per_s"], 2 * MIB, "the flag wins");
    // log-format = "json" from the file: every log line is a JSON object.
    let log = frontend.stderr_text();
    let first = log.lines().next().unwrap_or_else(|| panic!("no log lines"));
    let v: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(v["level"].is_string(), "{first}");

    // A typo is refused, naming the key, the file and the keys that exist.
    let bad = d.join("bad.toml");
    fs::write(&bad, "backgroud-rate = \"1M\"\n").expect("write");
    let out = Command::new(ferry())
        .args(["frontend", "--config"])
        .arg(&bad)
        .output()
        .expect("ferry frontend");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key `backgroud-rate`")
            && err.contains("bad.toml")
            && err.contains("background-rate"),
        "{err}"
    );
    // So is a file for the wrong role: the backend has no chunk size.
    fs::write(&bad, "chunk-size = \"64K\"\n").expect("write");
    let out = Command::new(ferry())
        .args(["backend", "--config"])
        .arg(&bad)
        .output()
        .expect("ferry backend");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `chunk-size`"));
}
