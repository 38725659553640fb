//! `ferry control` + `ferry migrate` end to end, with the real binaries: a backend serving a
//! random source file, the control daemon starting one frontend per session, a workload
//! reading and writing through the NBD export, pause measured on the frontend's counters,
//! `kill -9` of the daemon (and of a frontend) mid-migration, cutover, abort, bad input and
//! the TCP token.
//!
//! Self-contained on purpose (small helpers copied, not shared with `tests/common`).

mod common;
use common::lines::LineProc as Proc;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
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
    let d = tempfile::Builder::new()
        .prefix(&format!("fc-{name}-"))
        .tempdir_in(root)
        .expect("test dir");
    assert!(d.path().as_os_str().len() < 70, "{}", d.path().display());
    d
}

fn random_file(path: &Path, size: u64, seed: u64) {
    let mut f = File::create(path).expect("create source");
    let mut x = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write source");
    }
    f.sync_all().expect("sync source");
}

fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    File::open(p)
        .expect("open")
        .read_exact_at(&mut buf, offset)
        .expect("read_at");
    buf
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).expect("read a"), fs::read(b).expect("read b"));
    assert_eq!(
        x.len(),
        y.len(),
        "{} vs {}: sizes",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

fn pid_alive(pid: u64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A backend, a control daemon, and the frontends the daemon started (SIGKILLed on drop:
/// they outlive the daemon by design).
struct Env {
    dir: tempfile::TempDir,
    backend_addr: String,
    /// HOST:PORT of the backend's Prometheus endpoint: what it put on the wire, per class.
    backend_metrics: String,
    socket: PathBuf,
    data: PathBuf,
    daemon: Option<Proc>,
    _backend: Proc,
    frontends: Vec<u64>,
    extra_args: Vec<String>,
    /// The daemon's "listening on" line.
    banner: String,
}

impl Env {
    /// `volumes`: (name, size in MiB); sources are `DIR/NAME.src`.
    fn new(name: &str, volumes: &[(&str, u64)], extra_args: &[&str]) -> Env {
        let dir = test_dir(name);
        let mut args = vec![
            "backend".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cores".into(),
            "1".into(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ];
        for (i, (v, mib)) in volumes.iter().enumerate() {
            let p = dir.path().join(format!("{v}.src"));
            random_file(&p, mib * MIB, 7 + i as u64);
            fs::copy(&p, dir.path().join(format!("{v}.orig"))).expect("copy source");
            args.push("--volume".into());
            args.push(format!("{v}={}", p.display()));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut backend = Proc::spawn("backend", &argv, dir.path());
        let metrics = backend.wait_line("ferry backend metrics on http://");
        let backend_metrics = metrics
            .trim_start_matches("ferry backend metrics on http://")
            .trim_end_matches("/metrics")
            .to_string();
        let line = backend.wait_line("ferry backend listening on ");
        let backend_addr = line.rsplit(' ').next().unwrap_or("").to_string();
        let mut env = Env {
            socket: dir.path().join("ctl.sock"),
            data: dir.path().join("data"),
            dir,
            backend_addr,
            backend_metrics,
            daemon: None,
            _backend: backend,
            frontends: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            banner: String::new(),
        };
        env.start_daemon();
        env
    }

    fn start_daemon(&mut self) {
        let mut args = vec![
            "control".to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--data-dir".into(),
            self.data.display().to_string(),
            "--poll-ms".into(),
            "200".into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Proc::spawn("control", &argv, self.dir.path());
        let line = p.wait_line("ferry control listening on ");
        self.daemon = Some(p);
        self.banner = line;
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn api(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (st, v) = http_unix(
            &self.socket,
            method,
            path,
            body.as_deref(),
            Some("application/json"),
        );
        self.note_pids(&v);
        (st, v)
    }

    fn note_pids(&mut self, v: &Value) {
        let mut note = |s: &Value| {
            if let Some(p) = s["frontend_pid"].as_u64() {
                if !self.frontends.contains(&p) {
                    self.frontends.push(p);
                }
            }
        };
        note(v);
        for s in v["sessions"].as_array().into_iter().flatten() {
            note(s);
        }
    }

    fn ok(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (st, v) = self.api(method, path, body);
        assert!(st < 300, "{method} {path}: {st} {v}");
        v
    }

    fn create(&mut self, volume: &str, rate: &str) -> String {
        // Through the CLI, as an operator would.
        let out = Command::new(ferry())
            .args(["migrate", "--socket"])
            .arg(&self.socket)
            .args([
                "create",
                "--json",
                "--backend",
                &self.backend_addr,
                "--volume",
                volume,
            ])
            .arg("--target")
            .arg(self.path(&format!("{volume}.tgt")))
            .args(["--background-rate", rate, "--cores", "1"])
            .output()
            .expect("ferry migrate create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("create --json");
        assert_eq!(v["state"], "created");
        v["id"].as_str().expect("id").to_string()
    }

    fn session(&mut self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/sessions/{id}"), None)
    }

    fn act(&mut self, id: &str, action: &str) -> (u16, Value) {
        self.api("POST", &format!("/v1/sessions/{id}/{action}"), None)
    }

    fn wait_state(&mut self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.session(id);
            if s["state"] == want {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "session {id} not {want} after {timeout:?}: {s}"
            );
            assert_ne!(s["state"], "failed", "{s}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill9();
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_daemon();
        for &p in &self.frontends {
            if pid_alive(p) {
                // SAFETY: kill(2) on a pid this test's daemon started and reported.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
    }
}

fn http_unix(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: Option<&str>,
) -> (u16, Value) {
    let s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    exchange(s, method, path, body, content_type, None)
}

fn exchange<S: Read + Write>(
    mut s: S,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    // One write, head and body together: the server may answer (401, 400, ...) and close
    // without reading the body, and a second write would then meet a closed socket. A
    // failed write is not the test's business either: the answer is what counts.
    let mut req = head.into_bytes();
    req.extend_from_slice(body.as_bytes());
    if let Err(e) = s.write_all(&req) {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "send request: {e}"
        );
    }
    let mut raw = Vec::new();
    // A reset after the answer (the server closed with our body unread) keeps what arrived.
    if let Err(e) = s.read_to_end(&mut raw) {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty(),
            "read answer: {e}"
        );
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked answer"
    );
    let b = &raw[split + 4..];
    let v = if b.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(b).unwrap_or_else(|e| panic!("answer not JSON ({e}): {head}"))
    };
    (status, v)
}

fn bg_bytes(s: &Value) -> u64 {
    s["progress"]["fetched_bytes_background"]
        .as_u64()
        .expect("progress")
}

fn untouched(s: &Value) -> u64 {
    s["progress"]["chunks_untouched"]
        .as_u64()
        .expect("progress")
}

/// Writes `n` chunk-sized seeded blocks through the export at spread-out offsets, flushes,
/// and applies the same writes to `expected` (a copy of the source).
fn workload_writes(nbd: &Path, export: &str, expected: &Path, n: u64, seed: u8) {
    let mut c = NbdClient::connect_unix(nbd, export).expect("nbd connect");
    let size = c.size;
    let exp = OpenOptions::new()
        .write(true)
        .open(expected)
        .expect("expected");
    for i in 0..n {
        let off = (i * 7919 * CHUNK + u64::from(seed) * CHUNK) % size;
        // Half a chunk, unaligned inside it: a partial write of an untouched chunk.
        let data = vec![seed ^ (i as u8); (CHUNK / 2) as usize];
        let off = off + 512;
        c.write(off, &data, false).expect("nbd write");
        use std::os::unix::fs::FileExt;
        exp.write_all_at(&data, off).expect("expected write");
    }
    c.flush().expect("nbd flush");
    let _ = c.disconnect();
}

#[test]
fn create_start_pause_resume_cutover() {
    let mut env = Env::new("life", &[("v", 128)], &[]);
    let id = env.create("v", "20M");

    // Cutover of a created session: 409, says to start it.
    let (st, v) = env.act(&id, "cutover");
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("start"), "{v}");

    let s = env.ok("POST", &format!("/v1/sessions/{id}/start"), None);
    assert_eq!(s["state"], "migrating");
    assert!(s["frontend_pid"].as_u64().is_some(), "{s}");
    let nbd = PathBuf::from(s["nbd_socket"].as_str().expect("nbd_socket"));
    // Idempotent start.
    let (st, v) = env.act(&id, "start");
    assert_eq!((st, v["state"].as_str()), (200, Some("migrating")), "{v}");

    // Cutover before ready: 409 with the number of untouched chunks.
    let (st, v) = env.act(&id, "cutover");
    assert_eq!(st, 409, "{v}");
    let n = v["untouched"].as_u64().expect("untouched in the 409");
    assert!(n > 0, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains(&n.to_string()),
        "{v}"
    );

    // Pause: no background bytes for 2 s (after the requests already in flight land). Let
    // background traffic start first, or "nothing moved" would prove nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bg_bytes(&env.session(&id)) == 0 {
        assert!(Instant::now() < deadline, "background never started");
        thread::sleep(Duration::from_millis(50));
    }
    let s = env.ok("POST", &format!("/v1/sessions/{id}/pause"), None);
    assert_eq!(s["state"], "paused");
    thread::sleep(Duration::from_millis(1000));
    let before = env.session(&id);
    assert!(
        untouched(&before) > 0,
        "paused too late to measure: {before}"
    );
    let wire_before = backend_wire_bytes(&env.backend_metrics, "background");
    thread::sleep(Duration::from_secs(2));
    let after = env.session(&id);
    let wire_after = backend_wire_bytes(&env.backend_metrics, "background");
    assert_eq!(
        bg_bytes(&before),
        bg_bytes(&after),
        "background moved while paused"
    );
    // Measured on the wire too: the backend sent no background chunk bytes in those 2 s.
    assert!(
        wire_before > 0.0,
        "background sent nothing before the pause: frontend says {} background bytes",
        bg_bytes(&before)
    );
    assert_eq!(
        wire_before, wire_after,
        "the backend sent background bytes while paused"
    );
    assert_eq!(after["state"], "paused");

    // On-demand reads still work while paused, and fetch.
    let src = env.path("v.src");
    let last = 128 * MIB - CHUNK;
    let mut c = NbdClient::connect_unix(&nbd, "v").expect("nbd connect");
    let mut buf = vec![0u8; CHUNK as usize];
    c.read(last, &mut buf).expect("nbd read while paused");
    assert_eq!(buf, read_at(&src, last, CHUNK as usize));
    let _ = c.disconnect();
    let s = env.session(&id);
    assert!(
        s["progress"]["fetched_bytes_on_demand"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{s}"
    );
    assert_eq!(bg_bytes(&s), bg_bytes(&after));

    // Resume: background continues, nothing fetched twice; ready; cutover.
    let (st, v) = env.act(&id, "pause");
    assert_eq!(
        (st, v["state"].as_str()),
        (200, Some("paused")),
        "pause twice: {v}"
    );
    let s = env.ok("POST", &format!("/v1/sessions/{id}/resume"), None);
    assert_eq!(s["state"], "migrating");
    let s = env.wait_state(&id, "ready", Duration::from_secs(180));
    let p = &s["progress"];
    let fetched = p["fetched_chunks_background"].as_u64().unwrap_or(0)
        + p["fetched_chunks_on_demand"].as_u64().unwrap_or(0);
    assert!(
        fetched <= p["chunks_total"].as_u64().unwrap_or(0),
        "refetched: {s}"
    );

    let s = env.ok("POST", &format!("/v1/sessions/{id}/cutover"), None);
    assert_eq!(s["state"], "completed", "{s}");
    let pid = env.frontends[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid_alive(pid), "the frontend did not exit after cutover");
    assert_same(&src, &env.path("v.tgt"));

    // A second cutover is a success that changes nothing.
    let (st, v) = env.act(&id, "cutover");
    assert_eq!((st, v["state"].as_str()), (200, Some("completed")), "{v}");
    let (st, v) = env.act(&id, "abort");
    assert_eq!(st, 409, "abort after cutover: {v}");

    // The CLI's human status.
    let out = Command::new(ferry())
        .args(["migrate", "--socket"])
        .arg(&env.socket)
        .args(["status", &id])
        .output()
        .expect("ferry migrate status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("completed") && text.contains("100.0%"),
        "{text}"
    );
    let v = env.ok("DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(v["deleted"], true);
}

#[test]
fn abort_from_migrating_and_from_paused() {
    let mut env = Env::new("abort", &[("a", 32), ("b", 32)], &[]);
    for (vol, pause) in [("a", false), ("b", true)] {
        let id = env.create(vol, "2M");
        let s = env.ok("POST", &format!("/v1/sessions/{id}/start"), None);
        let nbd = PathBuf::from(s["nbd_socket"].as_str().expect("nbd"));
        if pause {
            env.ok("POST", &format!("/v1/sessions/{id}/pause"), None);
        }
        let expected = env.path(&format!("{vol}.orig"));
        workload_writes(&nbd, vol, &expected, 24, if pause { 0xb0 } else { 0xa0 });
        let s = env.session(&id);
        assert_eq!(s["state"], if pause { "paused" } else { "migrating" });
        assert!(untouched(&s) > 0, "{s}");
        let s = env.ok("POST", &format!("/v1/sessions/{id}/abort"), None);
        assert_eq!(s["state"], "aborted", "{s}");
        // The source now holds exactly what the workload saw: original + its writes.
        assert_same(&env.path(&format!("{vol}.src")), &expected);
        let (st, v) = env.act(&id, "abort");
        assert_eq!((st, v["state"].as_str()), (200, Some("aborted")), "{v}");
        let (st, v) = env.act(&id, "resume");
        assert_eq!(st, 409, "{v}");
    }
}

#[test]
fn daemon_kill9_mid_migration_then_resume() {
    let mut env = Env::new("kill", &[("v", 64)], &[]);
    let id = env.create("v", "8M");
    let s = env.ok("POST", &format!("/v1/sessions/{id}/start"), None);
    let pid = s["frontend_pid"].as_u64().expect("pid");
    env.ok("POST", &format!("/v1/sessions/{id}/pause"), None);
    thread::sleep(Duration::from_millis(1000));

    // 1. kill -9 the daemon: the frontend keeps running; the new daemon adopts it and
    //    keeps it paused.
    env.kill_daemon();
    assert!(pid_alive(pid), "the frontend died with the daemon");
    env.start_daemon();
    let s = env.wait_state(&id, "paused", Duration::from_secs(10));
    assert_eq!(s["frontend_pid"].as_u64(), Some(pid), "not adopted: {s}");
    let b1 = bg_bytes(&s);
    thread::sleep(Duration::from_secs(1));
    let s = env.session(&id);
    assert_eq!(
        bg_bytes(&s),
        b1,
        "background moved while paused after restart"
    );
    assert!(untouched(&s) > 0, "{s}");
    env.ok("POST", &format!("/v1/sessions/{id}/resume"), None);
    thread::sleep(Duration::from_millis(1000));

    // 2. kill -9 the daemon and the frontend: the new daemon starts a frontend on the same
    //    state dir, which resumes where it was.
    env.kill_daemon();
    // SAFETY: kill(2) on the frontend this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    env.start_daemon();
    let s = env.wait_state(&id, "ready", Duration::from_secs(120));
    let new_pid = s["frontend_pid"].as_u64().expect("pid");
    assert_ne!(new_pid, pid, "{s}");
    let s = env.ok("POST", &format!("/v1/sessions/{id}/cutover"), None);
    assert_eq!(s["state"], "completed", "{s}");
    assert_same(&env.path("v.src"), &env.path("v.tgt"));
    // The session survives yet another restart, completed.
    env.kill_daemon();
    env.start_daemon();
    let s = env.session(&id);
    assert_eq!(s["state"], "completed");
    let (st, v) = env.act(&id, "cutover");
    assert_eq!((st, v["state"].as_str()), (200, Some("completed")), "{v}");
}

/// A frontend that dies (kill -9) while the daemon runs is started again on its state dir
/// and the session carries on where its map says, without refetching what is present.
#[test]
fn frontend_kill9_is_restarted_and_the_session_continues() {
    let mut env = Env::new("fekill", &[("v", 64)], &[]);
    let id = env.create("v", "16M");
    let s = env.ok("POST", &format!("/v1/sessions/{id}/start"), None);
    let pid = s["frontend_pid"].as_u64().expect("pid");
    // Several background batches in, so some are durable (group commit follows each batch).
    let deadline = Instant::now() + Duration::from_secs(30);
    while bg_bytes(&env.session(&id)) < 16 * MIB {
        assert!(Instant::now() < deadline, "background never got going");
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the frontend this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = env.session(&id);
        assert_ne!(
            s["state"], "failed",
            "the session failed instead of restarting: {s}"
        );
        if s["frontend_pid"].as_u64().is_some_and(|p| p != pid)
            && pid_alive(s["frontend_pid"].as_u64().unwrap_or(0))
        {
            break s;
        }
        assert!(Instant::now() < deadline, "no new frontend: {s}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(s["state"] == "migrating" || s["state"] == "ready", "{s}");
    let s = env.wait_state(&id, "ready", Duration::from_secs(120));
    let s2 = env.ok("POST", &format!("/v1/sessions/{id}/cutover"), None);
    assert_eq!(s2["state"], "completed", "{s2}");
    assert_same(&env.path("v.src"), &env.path("v.tgt"));
    // The restarted frontend fetched only what the first had not made durable: together
    // they fetched at most every chunk once plus what was in flight at the kill.
    let p = &s["progress"];
    let fetched = p["fetched_chunks_background"].as_u64().unwrap_or(0)
        + p["fetched_chunks_on_demand"].as_u64().unwrap_or(0);
    assert!(
        fetched < 1024,
        "the restarted frontend refetched everything: {s}"
    );
}

#[test]
fn bad_input_is_4xx_and_tcp_needs_the_token() {
    let dir = test_dir("tok");
    let token = "0123456789abcdef-secret";
    let tf = dir.path().join("token");
    fs::write(&tf, format!("{token}\n")).expect("token file");
    let tfs = tf.display().to_string();
    let env = Env::new(
        "api",
        &[("v", 8)],
        &["--listen-tcp", "127.0.0.1:0", "--token-file", &tfs],
    );
    let line = env.banner.clone();
    let tcp = line.rsplit("tcp:").next().expect("tcp address").to_string();

    let cases = [
        (Some("application/json"), "{", 400),
        (Some("application/json"), "{\"backend\": 1}", 422),
        (
            Some("application/json"),
            "{\"backend\":\"h:1\",\"volume\":\"v\",\"target\":\"/t\",\"chunk_size_bytes\":\"big\"}",
            422,
        ),
        (Some("application/json"), "[]", 422),
        (Some("text/plain"), "{}", 415),
        (None, "", 415),
    ];
    for (ct, body, want) in cases {
        let (st, v) = http_unix(&env.socket, "POST", "/v1/sessions", Some(body), ct);
        assert_eq!(st, want, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (st, _) = http_unix(&env.socket, "POST", "/v1/sessions/nope/start", None, None);
    assert_eq!(st, 404);

    let conn = || std::net::TcpStream::connect(&tcp).expect("tcp connect");
    let (st, v) = exchange(conn(), "GET", "/v1/sessions", None, None, None);
    assert_eq!(st, 401, "{v}");
    let (st, _) = exchange(
        conn(),
        "GET",
        "/v1/sessions",
        None,
        None,
        Some("wrong-token-wrong-token"),
    );
    assert_eq!(st, 401);
    let (st, v) = exchange(conn(), "GET", "/v1/sessions", None, None, Some(token));
    assert_eq!(st, 200, "{v}");
    // The CLI over TCP with the token file.
    let out = Command::new(ferry())
        .args(["migrate", "--tcp", &tcp, "--token-file", &tfs, "list"])
        .output()
        .expect("ferry migrate list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no sessions"));
    // A second daemon on the same data dir is refused.
    let out = Command::new(ferry())
        .args(["control", "--socket"])
        .arg(dir.path().join("other.sock"))
        .arg("--data-dir")
        .arg(&env.data)
        .output()
        .expect("second daemon");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ferry control"));
}

/// `ferry_backend_wire_bytes_total{class=...}` scraped from the backend's `/metrics`.
fn backend_wire_bytes(addr: &str, class: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to backend metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .expect("send scrape");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read scrape");
    let key = format!("ferry_backend_wire_bytes_total{{class=\"{class}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{key} not in the scrape:\n{text}"))
}
