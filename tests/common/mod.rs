//! Shared harness for Ferry's integration tests.
//!
//! Every test drives real processes with the clients a user would run (`qemu-img`,
//! `qemu-io`, `nbdinfo`, `nbdcopy`, `nbdfuse` + `losetup` + `mount`, `fio`). The server
//! under test is pluggable ([`ServerKind`]):
//!
//! * [`ServerKind::Ferry`] (the default, and what CI runs): `ferry backend` serves the
//!   source, `ferry frontend` exports it over NBD and migrates it into the target.
//! * [`ServerKind::Reference`] (`FERRY_TEST_SERVER=qemu-nbd`): `qemu-nbd` serves a copy
//!   of the source as the target. It has no migration state, so Ferry-only assertions
//!   (status counters) are skipped — loudly — and cutover/abort are modelled: cutover
//!   stops the server (the target is already complete), abort copies the target back
//!   over the source. This mode exists to prove the client command lines and the
//!   expected-image logic of each test against a server known to be right, so that a
//!   failure with Ferry points at Ferry.
//!
//! Rules the helpers keep:
//! * Files live on a real file system, never tmpfs: the frontend opens the target with
//!   O_DIRECT, which tmpfs refuses ([`test_root`]).
//! * No blind sleeps: every wait is bounded ([`wait_until`]) and its panic message says
//!   what was awaited and includes the server's stderr.
//! * Every child process, loop device, FUSE mount and mount point is released by a Drop
//!   guard, also when the test panics.
//! * A missing tool is a failure with a hint to run `scripts/test.sh`, never a skip.

#![allow(dead_code)] // each test binary uses a different subset of the helpers

pub mod fake_backend;
pub mod lines;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

pub const MIB: u64 = 1024 * 1024;
pub const KIB: u64 = 1024;

/// How long a server gets to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a whole migration of a test-sized volume on a loaded 2-core CI box.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(240);
/// Upper bound for one client command (qemu-img, fio, ...).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

// ---------------------------------------------------------------------------------------
// Environment: tools, privileges, directories
// ---------------------------------------------------------------------------------------

/// Panics unless every tool is on PATH (or in /sbin, /usr/sbin).
pub fn require_tools(tools: &[&str]) {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing test tools {missing:?}: run `sudo ./scripts/test.sh`, which installs them"
    );
}

/// Loop devices, mounts and FUSE need root; tests that need it fail (not skip) without.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (loop devices, mount, FUSE): run `sudo ./scripts/test.sh`"
    );
}

fn is_tmpfs(p: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == TMPFS_MAGIC
    }
}

/// A directory on a real file system for test files: cargo's per-target tmp dir, or
/// /var/tmp if that is tmpfs (O_DIRECT fails on tmpfs).
pub fn test_root() -> PathBuf {
    let candidates = [
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        PathBuf::from("/var/tmp"),
    ];
    for c in candidates {
        if fs::create_dir_all(&c).is_ok() && !is_tmpfs(&c) {
            return c;
        }
    }
    panic!("no non-tmpfs directory for test files (tried CARGO_TARGET_TMPDIR and /var/tmp)");
}

/// A fresh directory for one test, removed on drop.
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("ferry-{name}-"))
        .tempdir_in(test_root())
        .expect("create test dir");
    // unix socket paths are limited to 108 bytes
    assert!(
        d.path().as_os_str().len() < 80,
        "test dir path too long for a unix socket: {}",
        d.path().display()
    );
    d
}

/// Serialises sections that allocate loop devices or mount things across the test
/// threads and test binaries of one `cargo test` run. Held until dropped.
pub struct GlobalLock(File);

pub fn global_lock() -> GlobalLock {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/var/tmp/ferry-tests.lock")
        .expect("open /var/tmp/ferry-tests.lock");
    // SAFETY: flock on an fd we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    GlobalLock(f)
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// Writes a `size`-byte sparse source volume: seeded random data, with
/// * every 8th MiB (starting at MiB 3) explicitly written as zeros (allocated zeros),
/// * every 8th MiB (starting at MiB 5) punched out as a hole,
/// * a 12 KiB zero run inside the data of every 16th MiB (a sub-chunk zero range),
/// * the last MiB a hole (the end of a volume is often unprovisioned).
pub fn make_source(path: &Path, size: u64, seed: u64) {
    assert!(size & (MIB - 1) == 0 && size >= 8 * MIB);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = File::create(path).expect("create source");
    let mut buf = vec![0u8; MIB as usize];
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in 0..size / MIB {
        if i % 8 == 3 {
            buf.fill(0);
        } else {
            // splitmix64: unique data in every chunk (no accidental dedup between
            // chunks), and much faster than a CSPRNG in the debug builds tests run in.
            for w in buf.chunks_exact_mut(8) {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            if i % 16 == 1 {
                let at = rng.gen_range(0..(MIB - 12 * KIB) as usize / 4096) * 4096;
                buf[at..at + 12 * KIB as usize].fill(0);
            }
        }
        f.write_all(&buf).expect("write source");
    }
    for i in 0..size / MIB {
        if i % 8 == 5 || i == size / MIB - 1 {
            punch_hole(&f, i * MIB, MIB);
        }
    }
    f.sync_all().unwrap();
}

pub fn punch_hole(f: &File, offset: u64, len: u64) {
    // SAFETY: fallocate on an fd we own.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "punch hole: {}", std::io::Error::last_os_error());
}

/// `cp --sparse=always`; works for block-device sources too (copies their contents).
pub fn copy_sparse(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

/// Size in bytes of a regular file or a block device.
pub fn size_of(p: &Path) -> u64 {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.seek(SeekFrom::End(0)).unwrap()
}

/// The first byte offset where `a` and `b` differ (including length), or None.
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let mut fa = File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let mut fb = File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        let n = na.min(nb);
        // Slice equality is a memcmp, fast even in debug builds; find the byte only then.
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap();
            return Some(off + i as u64);
        }
        if na != nb {
            return Some(off + n as u64);
        }
        if na == 0 {
            return None;
        }
        off += n as u64;
    }
}

pub fn files_equal(a: &Path, b: &Path) -> bool {
    first_difference(a, b).is_none()
}

pub fn assert_files_equal(a: &Path, b: &Path) {
    if let Some(off) = first_difference(a, b) {
        panic!(
            "{} and {} differ at byte {off} (chunk of 64K #{})",
            a.display(),
            b.display(),
            off / (64 * KIB)
        );
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

pub fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

pub fn write_at(p: &Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// `sha256sum FILE` → hex digest.
pub fn sha256_file(p: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Seeded random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

// ---------------------------------------------------------------------------------------
// Waiting and running commands
// ---------------------------------------------------------------------------------------

/// Polls `cond` every 50 ms until it holds; panics with `desc` after `timeout`.
pub fn wait_until(desc: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {desc}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion with a timeout, capturing stdout and stderr.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e} (run scripts/test.sh to install tools)"));
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = te.join().unwrap_or_default();
            panic!(
                "command timed out after {timeout:?}: {desc}\nstderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: to.join().unwrap_or_default(),
        stderr: te.join().unwrap_or_default(),
    }
}

pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, CLIENT_TIMEOUT)
}

/// Runs a command and panics (with its output) unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed ({}): {desc}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------
// Long-running processes
// ---------------------------------------------------------------------------------------

/// A child process with stdout lines collected by a thread and stderr in a file.
/// Killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    /// The command line, for failure messages.
    pub cmdline: String,
    child: Child,
    stderr_path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    line_rx: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns `cmd` with stdout piped and stderr to `<log_dir>/<name>.stderr` (appended,
    /// so restarts keep the history).
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let errf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(errf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {desc}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, line_rx) = mpsc::channel();
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc {
            name: name.to_string(),
            cmdline: desc,
            child,
            stderr_path,
            lines,
            line_rx,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns it. Panics (with stderr)
    /// if the process exits first or the timeout passes.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            match self.line_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    panic!(
                        "{} closed stdout ({st:?}) before printing `{prefix}…`\ncommand: {}\nstderr:\n{}",
                        self.name,
                        self.cmdline,
                        self.stderr()
                    );
                }
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({st}) before printing `{prefix}…`\ncommand: {}\nstdout: {:?}\nstderr:\n{}",
                    self.name,
                    self.cmdline,
                    self.stdout_lines(),
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not print `{prefix}…` within {timeout:?}\ncommand: {}\nstderr:\n{}",
                    self.name,
                    self.cmdline,
                    self.stderr()
                );
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last 8 KiB of stderr.
    pub fn stderr(&self) -> String {
        let s = fs::read(&self.stderr_path).unwrap_or_default();
        let from = s.len().saturating_sub(8192);
        String::from_utf8_lossy(&s[from..]).into_owned()
    }

    pub fn stderr_full(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid (not yet reaped while we hold `child`).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit up to `timeout`; None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the `ferry` binary with a timeout.
pub fn ferry(args: &[&str]) -> Output {
    run(Command::new(FERRY).args(args))
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Ferry,
    /// qemu-nbd serving a copy of the source: the known-good reference.
    Reference,
}

impl ServerKind {
    pub fn from_env() -> ServerKind {
        match std::env::var("FERRY_TEST_SERVER").as_deref() {
            Err(_) | Ok("") | Ok("ferry") => ServerKind::Ferry,
            Ok("qemu-nbd") => ServerKind::Reference,
            Ok(o) => panic!("FERRY_TEST_SERVER={o}: expected `ferry` or `qemu-nbd`"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub volume: String,
    pub chunk_size: Option<String>,
    pub cores: Option<u32>,
    /// `--background-rate`; None = unlimited, Some("0") = paused.
    pub background_rate: Option<String>,
    /// More `ferry frontend` flags (e.g. `--compress off`, `--dedup-index PATH`).
    pub frontend_args: Vec<String>,
    /// More `ferry backend` flags (e.g. `--fs-aware`).
    pub backend_args: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            volume: "vol".into(),
            chunk_size: Some("64K".into()),
            cores: Some(2),
            background_rate: None,
            frontend_args: Vec::new(),
            backend_args: Vec::new(),
        }
    }
}

impl Opts {
    pub fn rate(mut self, r: &str) -> Self {
        self.background_rate = Some(r.into());
        self
    }

    pub fn chunk(mut self, size: &str) -> Self {
        self.chunk_size = Some(size.into());
        self
    }

    pub fn frontend_args(mut self, args: &[&str]) -> Self {
        self.frontend_args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn backend_args(mut self, args: &[&str]) -> Self {
        self.backend_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// One migration: a backend serving `source`, a frontend exporting it on `sock` and
/// migrating it into `target`, with its state in `state_dir`.
pub struct Harness {
    pub kind: ServerKind,
    pub dir: PathBuf,
    pub source: PathBuf,
    pub target: PathBuf,
    pub state_dir: PathBuf,
    pub sock: PathBuf,
    pub opts: Opts,
    /// Address of the backend the frontend talks to (ours or a fake one).
    pub backend_addr: Option<String>,
    backend: Option<Proc>,
    frontend: Option<Proc>,
}

impl Harness {
    /// Starts backend + frontend for `source` (a file or block device) in `dir`,
    /// with the kind from `FERRY_TEST_SERVER`.
    pub fn start(dir: &Path, source: &Path, opts: Opts) -> Harness {
        Self::start_kind(ServerKind::from_env(), dir, source, opts)
    }

    pub fn start_kind(kind: ServerKind, dir: &Path, source: &Path, opts: Opts) -> Harness {
        let mut h = Harness {
            kind,
            dir: dir.to_path_buf(),
            source: source.to_path_buf(),
            target: dir.join("target.img"),
            state_dir: dir.join("state"),
            sock: dir.join("nbd.sock"),
            opts,
            backend_addr: None,
            backend: None,
            frontend: None,
        };
        match kind {
            ServerKind::Ferry => {
                h.start_backend();
            }
            ServerKind::Reference => {
                eprintln!("NOTE: FERRY_TEST_SERVER=qemu-nbd: Ferry-only assertions are skipped");
                copy_sparse(source, &h.target);
            }
        }
        h.start_frontend();
        h
    }

    /// Starts only a frontend, talking to a backend at `backend_addr` (e.g. a fake).
    pub fn start_frontend_only(dir: &Path, backend_addr: &str, opts: Opts) -> Harness {
        let mut h = Harness {
            kind: ServerKind::Ferry,
            dir: dir.to_path_buf(),
            source: PathBuf::new(),
            target: dir.join("target.img"),
            state_dir: dir.join("state"),
            sock: dir.join("nbd.sock"),
            opts,
            backend_addr: Some(backend_addr.to_string()),
            backend: None,
            frontend: None,
        };
        h.start_frontend();
        h
    }

    /// Starts only `ferry backend` for `source`: the caller may point `backend_addr`
    /// elsewhere (e.g. a WAN emulator in front of it), then calls `start_frontend`.
    pub fn start_backend_only(dir: &Path, source: &Path, opts: Opts) -> Harness {
        let mut h = Harness {
            kind: ServerKind::Ferry,
            dir: dir.to_path_buf(),
            source: source.to_path_buf(),
            target: dir.join("target.img"),
            state_dir: dir.join("state"),
            sock: dir.join("nbd.sock"),
            opts,
            backend_addr: None,
            backend: None,
            frontend: None,
        };
        h.start_backend();
        h
    }

    pub fn is_ferry(&self) -> bool {
        self.kind == ServerKind::Ferry
    }

    fn start_backend(&mut self) {
        let vol = format!("{}={}", self.opts.volume, self.source.display());
        let mut cmd = Command::new(FERRY);
        cmd.args(["backend", "--listen", "127.0.0.1:0", "--volume", &vol])
            .args(&self.opts.backend_args);
        let mut p = Proc::spawn("backend", &mut cmd, &self.dir);
        let line = p.wait_line("ferry backend listening on ", READY_TIMEOUT);
        let addr = line
            .trim_start_matches("ferry backend listening on ")
            .trim()
            .to_string();
        assert!(
            addr.parse::<std::net::SocketAddr>().is_ok(),
            "backend printed an unparsable address: {line:?}"
        );
        self.backend_addr = Some(addr);
        self.backend = Some(p);
    }

    /// (Re)starts the frontend with the harness's options and waits until it serves.
    pub fn start_frontend(&mut self) {
        assert!(self.frontend.is_none(), "frontend already running");
        let _ = fs::remove_file(&self.sock);
        match self.kind {
            ServerKind::Ferry => {
                let nbd = format!("unix:{}", self.sock.display());
                let mut cmd = Command::new(FERRY);
                cmd.arg("frontend")
                    .args(["--backend", self.backend_addr.as_deref().unwrap()])
                    .args(["--volume", &self.opts.volume])
                    .arg("--target")
                    .arg(&self.target)
                    .arg("--state-dir")
                    .arg(&self.state_dir)
                    .args(["--nbd", &nbd]);
                if let Some(c) = &self.opts.chunk_size {
                    cmd.args(["--chunk-size", c]);
                }
                if let Some(c) = self.opts.cores {
                    cmd.args(["--cores", &c.to_string()]);
                }
                if let Some(r) = &self.opts.background_rate {
                    cmd.args(["--background-rate", r]);
                }
                cmd.args(&self.opts.frontend_args);
                let mut p = Proc::spawn("frontend", &mut cmd, &self.dir);
                let want = format!("ferry frontend serving {} on ", self.opts.volume);
                let line = p.wait_line("ferry frontend serving ", READY_TIMEOUT);
                // The contract prints the --nbd spec; accept any spelling naming our socket.
                assert!(
                    line.starts_with(&want) && line.contains(self.sock.to_str().unwrap()),
                    "frontend readiness line {line:?}, expected `{want}{nbd}`"
                );
                self.frontend = Some(p);
            }
            ServerKind::Reference => {
                let mut cmd = Command::new("qemu-nbd");
                cmd.args(["-f", "raw", "-k"])
                    .arg(&self.sock)
                    .args(["-x", &self.opts.volume])
                    // -e 4: qemu-nbd only advertises multi-conn when it allows >1 client
                    .args(["--persistent", "--cache=none", "-e", "4"])
                    .arg(&self.target);
                let mut p = Proc::spawn("qemu-nbd", &mut cmd, &self.dir);
                let sock = self.sock.clone();
                let start = Instant::now();
                while UnixStream::connect(&sock).is_err() {
                    if !p.is_running() || start.elapsed() > READY_TIMEOUT {
                        panic!("qemu-nbd did not come up\nstderr:\n{}", p.stderr());
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                self.frontend = Some(p);
            }
        }
    }

    pub fn uri(&self) -> String {
        nbd_uri(&self.sock, &self.opts.volume)
    }

    pub fn frontend(&mut self) -> &mut Proc {
        self.frontend.as_mut().expect("frontend not running")
    }

    pub fn frontend_stderr(&self) -> String {
        self.frontend
            .as_ref()
            .map(|p| p.stderr())
            .unwrap_or_else(|| {
                let s = fs::read(self.dir.join("frontend.stderr")).unwrap_or_default();
                let from = s.len().saturating_sub(8192);
                String::from_utf8_lossy(&s[from..]).into_owned()
            })
    }

    /// Everything the frontend (all its incarnations) wrote to stderr.
    pub fn frontend_stderr_full(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("frontend.stderr")).unwrap_or_default())
            .into_owned()
    }

    /// `kill -9` the frontend (simulated crash).
    pub fn kill9_frontend(&mut self) {
        let mut p = self.frontend.take().expect("frontend not running");
        p.kill9();
    }

    /// The running frontend's resident memory (`VmRSS`), in KiB.
    pub fn frontend_rss_kib(&self) -> u64 {
        let p = self.frontend.as_ref().expect("frontend not running");
        let status = fs::read_to_string(format!("/proc/{}/status", p.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn frontend_running(&mut self) -> bool {
        self.frontend.as_mut().is_some_and(|p| p.is_running())
    }

    /// Waits for the frontend to exit on its own (after cutover/abort).
    pub fn wait_frontend_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut p = self.frontend.take().expect("frontend not running");
        match p.wait_exit(timeout) {
            Some(s) => s,
            None => panic!(
                "frontend still running {timeout:?} after cutover/abort\nstderr:\n{}",
                p.stderr()
            ),
        }
    }

    /// `ferry status --json` (Ferry) or None (reference server: no migration state).
    pub fn status(&self) -> Option<serde_json::Value> {
        match self.kind {
            ServerKind::Ferry => Some(status(&self.state_dir)),
            ServerKind::Reference => None,
        }
    }

    /// Ferry only: a status counter as u64.
    pub fn counter(&self, key: &str) -> u64 {
        let st = status(&self.state_dir);
        get_u64(&st, key)
    }

    /// Ferry only: waits until `cond(status)` holds; panics with the last status and the
    /// frontend's stderr.
    pub fn wait_status(
        &self,
        desc: &str,
        timeout: Duration,
        mut cond: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        assert!(self.is_ferry());
        let start = Instant::now();
        loop {
            let st = status(&self.state_dir);
            if cond(&st) {
                return st;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for: {desc}\nlast status: {st}\nfrontend stderr:\n{}",
                    self.frontend_stderr()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts the migration is still in progress (some chunk untouched), so the checks
    /// that follow exercise the on-demand path. No-op on the reference server.
    pub fn assert_mid_migration(&self) {
        if let Some(st) = self.status() {
            assert_eq!(st["state"], "migrating", "status: {st}");
            assert!(
                get_u64(&st, "chunks_untouched") > 0,
                "migration already finished; lower --background-rate. status: {st}"
            );
        }
    }

    /// `ferry cutover --wait`, then the frontend exits 0. Reference: stop qemu-nbd.
    pub fn cutover_wait(&mut self) {
        match self.kind {
            ServerKind::Ferry => {
                let sd = self.state_dir.to_str().unwrap().to_string();
                // Tests may have paused background migration; let it finish now.
                let out = run_timeout(
                    Command::new(FERRY).args([
                        "set-rate",
                        "--state-dir",
                        &sd,
                        "--background-rate",
                        "unlimited",
                    ]),
                    Duration::from_secs(60),
                );
                assert!(out.status.success(), "set-rate failed: {}", stderr_of(&out));
                let out = run_timeout(
                    Command::new(FERRY).args(["cutover", "--state-dir", &sd, "--wait"]),
                    MIGRATION_TIMEOUT,
                );
                assert!(
                    out.status.success()
                        && stdout_of(&out)
                            .lines()
                            .any(|l| l.starts_with("cutover complete")),
                    "cutover --wait failed ({}):\nstdout:\n{}\nstderr:\n{}\nfrontend stderr:\n{}",
                    out.status,
                    stdout_of(&out),
                    stderr_of(&out),
                    self.frontend_stderr()
                );
                let st = self.wait_frontend_exit(Duration::from_secs(30));
                assert!(st.success(), "frontend exit after cutover: {st}");
                let s = status(&self.state_dir);
                assert_eq!(s["state"], "completed", "status after cutover: {s}");
                assert_eq!(s["running"], false, "status after cutover: {s}");
            }
            ServerKind::Reference => self.stop_reference(),
        }
    }

    /// `ferry abort`, then the frontend exits. Reference: stop qemu-nbd and copy the
    /// target over the source (what a correct abort amounts to).
    pub fn abort(&mut self) {
        match self.kind {
            ServerKind::Ferry => {
                let sd = self.state_dir.to_str().unwrap().to_string();
                let out = run_timeout(
                    Command::new(FERRY).args(["abort", "--state-dir", &sd]),
                    MIGRATION_TIMEOUT,
                );
                assert!(
                    out.status.success()
                        && stdout_of(&out)
                            .lines()
                            .any(|l| l.starts_with("abort complete")),
                    "abort failed ({}):\nstdout:\n{}\nstderr:\n{}\nfrontend stderr:\n{}",
                    out.status,
                    stdout_of(&out),
                    stderr_of(&out),
                    self.frontend_stderr()
                );
                let _ = self.wait_frontend_exit(Duration::from_secs(30));
                let s = status(&self.state_dir);
                assert_eq!(s["state"], "aborted", "status after abort: {s}");
            }
            ServerKind::Reference => {
                self.stop_reference();
                run_ok(
                    Command::new("dd")
                        .arg(format!("if={}", self.target.display()))
                        .arg(format!("of={}", self.source.display()))
                        .args(["bs=1M", "conv=notrunc,fsync,sparse", "status=none"]),
                );
            }
        }
    }

    fn stop_reference(&mut self) {
        let mut p = self.frontend.take().expect("qemu-nbd not running");
        p.signal(libc::SIGTERM);
        if p.wait_exit(Duration::from_secs(30)).is_none() {
            panic!("qemu-nbd did not stop on SIGTERM");
        }
    }

    /// Stops (SIGKILL) our backend, releasing its lock on the source.
    pub fn stop_backend(&mut self) {
        if let Some(mut p) = self.backend.take() {
            p.kill9();
        }
    }

    pub fn backend_stderr(&self) -> String {
        self.backend
            .as_ref()
            .map(|p| p.stderr())
            .unwrap_or_default()
    }
}

pub fn nbd_uri(sock: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", sock.display())
}

/// `ferry status --state-dir DIR --json`, parsed.
pub fn status(state_dir: &Path) -> serde_json::Value {
    let sd = state_dir.to_str().unwrap();
    let out = ferry(&["status", "--state-dir", sd, "--json"]);
    assert!(
        out.status.success(),
        "ferry status failed ({}): {}",
        out.status,
        stderr_of(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry status --json printed invalid JSON ({e}): {}",
            stdout_of(&out)
        )
    })
}

pub fn get_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status field `{key}` missing or not a u64: {v}"))
}

// ---------------------------------------------------------------------------------------
// NBD clients
// ---------------------------------------------------------------------------------------

/// `qemu-io -f raw -c CMD... URI`; returns the output (not checked).
pub fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    run(&mut c)
}

/// qemu-io exits 0 even when some commands fail in older versions; 10.0 exits 1 on a
/// failed command, and prints "failed"/"verification failed" too. Check both.
pub fn qemu_io_ok(uri: &str, cmds: &[&str]) -> Output {
    let out = qemu_io(uri, cmds);
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?} on {uri} failed ({}):\n{text}",
        out.status
    );
    out
}

/// `nbdinfo --json --no-content URI` → the (single) export object.
pub fn nbdinfo_export(uri: &str) -> serde_json::Value {
    let out = run_ok(Command::new("nbdinfo").args(["--json", "--no-content", uri]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo JSON: {e}: {}", stdout_of(&out)));
    v["exports"][0].clone()
}

/// Runs fio with JSON output to a file (fio's nbd engine prints a banner on stdout) and
/// returns the first job's object; panics unless fio exits 0 with job error 0.
/// Longest a fio run may take in a test; every job here is done in seconds.
const FIO_TIMEOUT_SECS: &str = "300";

pub fn fio(dir: &Path, tag: &str, args: &[&str]) -> serde_json::Value {
    let out_path = dir.join(format!("fio-{tag}.json"));
    // A server that never answers a request would hang fio for good: a hung job fails here.
    let out = run(Command::new("timeout")
        .args(["--kill-after=10", FIO_TIMEOUT_SECS, "fio"])
        .current_dir(dir) // fio may drop state files into its working directory
        .args(args)
        .arg("--output-format=json")
        .arg(format!("--output={}", out_path.display())));
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        out.status.success(),
        "fio {tag} failed ({}):\nstdout:\n{}\nstderr:\n{}\njson:\n{text}",
        out.status,
        stdout_of(&out),
        stderr_of(&out)
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("fio {tag} JSON ({e}):\n{text}"));
    let job = v["jobs"][0].clone();
    assert_eq!(job["error"], 0, "fio {tag} job error: {job}");
    job
}

/// An NBD export turned into a file by nbdfuse: `<mnt>/disk`. Unmounted on drop.
pub struct NbdFuse {
    pub mountpoint: PathBuf,
    pub file: PathBuf,
    proc_: Option<Proc>,
}

impl NbdFuse {
    pub fn mount(uri: &str, mountpoint: &Path, log_dir: &Path) -> NbdFuse {
        fs::create_dir_all(mountpoint).unwrap();
        let pidfile = log_dir.join("nbdfuse.pid");
        let _ = fs::remove_file(&pidfile);
        let file = mountpoint.join("disk");
        // nbdfuse stays in the foreground; -P writes the pid file once it serves.
        let p = Proc::spawn(
            "nbdfuse",
            Command::new("nbdfuse")
                .arg("-P")
                .arg(&pidfile)
                .arg(&file)
                .arg(uri),
            log_dir,
        );
        let mut m = NbdFuse {
            mountpoint: mountpoint.to_path_buf(),
            file,
            proc_: Some(p),
        };
        let start = Instant::now();
        loop {
            if pidfile.exists() && m.file.exists() {
                break;
            }
            let p = m.proc_.as_mut().unwrap();
            if !p.is_running() {
                panic!("nbdfuse exited early\nstderr:\n{}", p.stderr());
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!("nbdfuse did not come up\nstderr:\n{}", p.stderr());
            }
            thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn unmount(&mut self) {
        let Some(mut p) = self.proc_.take() else {
            return;
        };
        let out = run(Command::new("fusermount3").arg("-u").arg(&self.mountpoint));
        if !out.status.success() {
            eprintln!("fusermount3 -u failed: {}", stderr_of(&out));
            let _ = run(Command::new("fusermount3").arg("-uz").arg(&self.mountpoint));
        }
        if p.wait_exit(Duration::from_secs(30)).is_none() {
            eprintln!("nbdfuse did not exit after unmount; killing it");
        }
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A loop device; detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
    attached: bool,
}

impl LoopDev {
    pub fn attach(file: &Path, read_only: bool) -> LoopDev {
        let _g = global_lock();
        let mut c = Command::new("losetup");
        c.args(["--find", "--show"]);
        if read_only {
            c.arg("--read-only");
        }
        let out = run_ok(c.arg(file));
        let dev = PathBuf::from(stdout_of(&out).trim());
        assert!(
            fs::metadata(&dev)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false),
            "losetup printed {dev:?}"
        );
        LoopDev {
            dev,
            attached: true,
        }
    }

    pub fn detach(&mut self) {
        if std::mem::take(&mut self.attached) {
            let out = run(Command::new("losetup").arg("-d").arg(&self.dev));
            if !out.status.success() {
                eprintln!("losetup -d {}: {}", self.dev.display(), stderr_of(&out));
            }
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A mounted file system; unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    mounted: bool,
}

impl Mount {
    pub fn new(dev: &Path, dir: &Path, opts: Option<&str>) -> Mount {
        fs::create_dir_all(dir).unwrap();
        let mut c = Command::new("mount");
        if let Some(o) = opts {
            c.args(["-o", o]);
        }
        run_ok(c.arg(dev).arg(dir));
        Mount {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    pub fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let out = run(Command::new("umount").arg(&self.dir));
            if !out.status.success() {
                eprintln!("umount {}: {}; lazy", self.dir.display(), stderr_of(&out));
                let _ = run(Command::new("umount").arg("-l").arg(&self.dir));
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

// ---------------------------------------------------------------------------------------
// A minimal hand-written NBD client (fixed newstyle, NBD_OPT_GO, simple replies only),
// for requests the real clients refuse to send (past the end, garbage).
// Spec: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
// ---------------------------------------------------------------------------------------

pub mod nbd {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::Duration;

    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
    pub const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
    pub const FLAG_NO_ZEROES: u16 = 2;
    pub const OPT_GO: u32 = 7;
    pub const REP_ACK: u32 = 1;
    pub const REP_INFO: u32 = 3;
    pub const INFO_EXPORT: u16 = 0;
    pub const CMD_READ: u16 = 0;
    pub const CMD_WRITE: u16 = 1;
    pub const CMD_DISC: u16 = 2;
    pub const CMD_FLUSH: u16 = 3;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EIO: u32 = 5;

    pub struct Client {
        pub s: UnixStream,
        pub size: u64,
        pub transmission_flags: u16,
        cookie: u64,
    }

    /// Reads the server greeting; returns the handshake flags.
    pub fn read_greeting(s: &mut UnixStream) -> std::io::Result<u16> {
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        assert_eq!(u64::from_be_bytes(g[0..8].try_into().unwrap()), NBDMAGIC);
        assert_eq!(u64::from_be_bytes(g[8..16].try_into().unwrap()), IHAVEOPT);
        Ok(u16::from_be_bytes([g[16], g[17]]))
    }

    /// The 28 bytes of a request header (a WRITE's payload follows it).
    pub fn encode_request(cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
        let mut r = [0u8; 28];
        r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        // r[4..6]: flags, none.
        r[6..8].copy_from_slice(&cmd.to_be_bytes());
        r[8..16].copy_from_slice(&cookie.to_be_bytes());
        r[16..24].copy_from_slice(&offset.to_be_bytes());
        r[24..28].copy_from_slice(&len.to_be_bytes());
        r
    }

    impl Client {
        pub fn connect(sock: &Path, export: &str) -> Client {
            let mut s = UnixStream::connect(sock).expect("connect NBD socket");
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let hflags = read_greeting(&mut s).expect("greeting");
            assert!(
                hflags & FLAG_FIXED_NEWSTYLE != 0,
                "server not fixed newstyle"
            );
            let cflags = (FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)) as u32;
            s.write_all(&cflags.to_be_bytes()).unwrap();
            // NBD_OPT_GO: name length, name, zero information requests.
            let mut data = Vec::new();
            data.extend_from_slice(&(export.len() as u32).to_be_bytes());
            data.extend_from_slice(export.as_bytes());
            data.extend_from_slice(&0u16.to_be_bytes());
            let mut opt = Vec::new();
            opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
            opt.extend_from_slice(&OPT_GO.to_be_bytes());
            opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
            opt.extend_from_slice(&data);
            s.write_all(&opt).unwrap();
            let (mut size, mut tflags) = (None, 0u16);
            loop {
                let mut h = [0u8; 20];
                s.read_exact(&mut h).expect("option reply header");
                assert_eq!(
                    u64::from_be_bytes(h[0..8].try_into().unwrap()),
                    REPLY_MAGIC_OPT
                );
                let rtype = u32::from_be_bytes(h[12..16].try_into().unwrap());
                let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
                let mut d = vec![0u8; len];
                s.read_exact(&mut d).unwrap();
                match rtype {
                    REP_ACK => break,
                    REP_INFO if len >= 12 && u16::from_be_bytes([d[0], d[1]]) == INFO_EXPORT => {
                        size = Some(u64::from_be_bytes(d[2..10].try_into().unwrap()));
                        tflags = u16::from_be_bytes([d[10], d[11]]);
                    }
                    REP_INFO => {}
                    t if t & 0x8000_0000 != 0 => {
                        panic!(
                            "NBD_OPT_GO error reply {t:#x}: {}",
                            String::from_utf8_lossy(&d)
                        )
                    }
                    t => panic!("unexpected option reply type {t:#x}"),
                }
            }
            Client {
                s,
                size: size.expect("NBD_OPT_GO gave no NBD_INFO_EXPORT"),
                transmission_flags: tflags,
                cookie: 1,
            }
        }

        fn request(&mut self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
            self.cookie += 1;
            let mut r = Vec::with_capacity(28 + payload.len());
            r.extend_from_slice(&encode_request(cmd, self.cookie, offset, len));
            r.extend_from_slice(payload);
            self.s.write_all(&r).expect("send NBD request");
            self.cookie
        }

        /// Reads a simple reply header; returns the error code.
        fn reply(&mut self, cookie: u64) -> u32 {
            let mut h = [0u8; 16];
            self.s.read_exact(&mut h).expect("NBD reply");
            assert_eq!(
                u32::from_be_bytes(h[0..4].try_into().unwrap()),
                SIMPLE_REPLY_MAGIC,
                "not a simple reply"
            );
            assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
            u32::from_be_bytes(h[4..8].try_into().unwrap())
        }

        /// READ; Err(errno) on an error reply (no payload follows an error).
        pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
            let c = self.request(CMD_READ, offset, len, &[]);
            match self.reply(c) {
                0 => {
                    let mut v = vec![0u8; len as usize];
                    self.s.read_exact(&mut v).expect("read payload");
                    Ok(v)
                }
                e => Err(e),
            }
        }

        pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), u32> {
            let c = self.request(CMD_WRITE, offset, data.len() as u32, data);
            match self.reply(c) {
                0 => Ok(()),
                e => Err(e),
            }
        }

        /// Sends a WRITE and does not wait for its reply (to leave it in flight).
        pub fn write_nowait(&mut self, offset: u64, data: &[u8]) {
            self.request(CMD_WRITE, offset, data.len() as u32, data);
        }

        pub fn flush(&mut self) -> Result<(), u32> {
            let c = self.request(CMD_FLUSH, 0, 0, &[]);
            match self.reply(c) {
                0 => Ok(()),
                e => Err(e),
            }
        }

        pub fn disconnect(mut self) {
            self.request(CMD_DISC, 0, 0, &[]);
        }
    }
}

/// A seeded RNG for tests.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The requests of a recording's events (`ferry recording info --json --events`) as
/// `(kind, offset, len)`, flushes left out (clients may add them, e.g. on close).
pub fn requests_of(events: &[serde_json::Value]) -> Vec<(String, u64, u64)> {
    events
        .iter()
        .filter(|e| e["kind"] != "flush")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["offset"].as_u64().unwrap(),
                e["len"].as_u64().unwrap(),
            )
        })
        .collect()
}
