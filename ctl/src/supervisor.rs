//! Frontend processes: one `ferry frontend` child per active session, started from this
//! same binary, in its own process group so that a signal to the daemon's group (or the
//! daemon's death) leaves it running; a restarted daemon re-adopts a frontend whose admin
//! socket still answers instead of starting a second one on the same state dir.
//!
//! All calls block (process start, socket IO): run them on the blocking pool.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::frontend::admin::AdminReply;
use dataplane::frontend::status::Status;

use crate::admin;
use crate::session::{log_path, session_dir, Compress, Session};

/// How long a starting frontend may take to answer on its admin socket (it pre-allocates
/// the target and connects to the backend first).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// A status answer; longer while the frontend is busy with a cutover or an abort.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Supervisor {
    exe: PathBuf,
    data_dir: PathBuf,
    /// Frontends this daemon started (adopted ones are not our children).
    children: Mutex<HashMap<String, Child>>,
}

/// What the frontend of a session is doing.
pub enum Liveness {
    Answering(Box<Status>),
    /// Running, but its admin socket did not answer in time (busy with cutover or abort).
    Busy,
    /// Not running; the reason says how it ended and where its log is.
    Gone(String),
}

impl Supervisor {
    pub fn new(exe: PathBuf, data_dir: PathBuf) -> Supervisor {
        Supervisor {
            exe,
            data_dir,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// The frontend's status if one answers for `s`; `Ok(None)` if none runs.
    pub fn status(&self, s: &Session) -> std::io::Result<Option<Status>> {
        let r = admin::request(s.state_dir(), &admin::req("status", None), STATUS_TIMEOUT)?;
        Ok(r.and_then(|r| r.status))
    }

    /// The frontend's live map if one answers for `s`; `Ok(None)` if none runs.
    pub fn map(
        &self,
        s: &Session,
        cells: u32,
    ) -> std::io::Result<Option<dataplane::map::cells::MapCells>> {
        let req = dataplane::frontend::admin::AdminRequest {
            cmd: "map".into(),
            cells: Some(cells),
            ..Default::default()
        };
        let r = admin::request(s.state_dir(), &req, STATUS_TIMEOUT)?;
        Ok(r.and_then(|r| r.map))
    }

    pub fn liveness(&self, s: &Session) -> Liveness {
        match self.status(s) {
            Ok(Some(st)) => Liveness::Answering(Box::new(st)),
            Ok(None) => Liveness::Gone(self.ended(&s.id)),
            Err(_) => Liveness::Busy,
        }
    }

    /// Starts a frontend for `s` unless one already answers (re-adoption); returns its pid
    /// (the recorded one when adopted). `paused` starts it with background migration off.
    pub fn ensure(&self, s: &Session, paused: bool) -> Result<Option<u32>, String> {
        if let Ok(Some(_)) = self.status(s) {
            tracing::info!(session = %s.id, pid = ?s.frontend_pid, "adopted a running frontend");
            return Ok(s.frontend_pid);
        }
        self.spawn(s, paused).map(Some)
    }

    fn spawn(&self, s: &Session, paused: bool) -> Result<u32, String> {
        let dir = session_dir(&self.data_dir, &s.id);
        fs::create_dir_all(s.state_dir()).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log_file = log_path(&self.data_dir, &s.id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|e| format!("{}: {e}", log_file.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_file.display()))?;
        let rate = if paused {
            Some(0)
        } else {
            s.options.background_rate_bytes_per_s
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("frontend")
            .args(["--backend", &s.source.backend])
            .args(["--volume", &s.source.volume])
            .args(["--target", &s.target])
            .args(["--state-dir", &s.state_dir])
            .args(["--nbd", &format!("unix:{}", s.nbd_socket)])
            .args(["--chunk-size", &s.chunk_size_bytes.to_string()])
            .args(["--compress", s.options.compress.name()]);
        if let Some(r) = rate {
            cmd.args(["--background-rate", &r.to_string()]);
        }
        if let Some(c) = s.options.cores {
            cmd.args(["--cores", &c.to_string()]);
        }
        if s.options.dedup {
            // One index for every session of this daemon: content one volume brought is
            // not sent again for the next (the index is safe across processes).
            let idx = self.data_dir.join("ferry-dedup.sqlite");
            cmd.arg("--dedup-index").arg(idx);
        } else {
            cmd.arg("--no-dedup");
        }
        debug_assert!(s.options.compress == Compress::Auto || s.options.compress == Compress::Off);
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: Ctrl-C or a kill of the daemon's group leaves it running.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        let pid = child.id();
        tracing::info!(session = %s.id, pid, "started a frontend");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = self.status(s) {
                break;
            }
            if let Ok(Some(code)) = child.try_wait() {
                return Err(format!(
                    "the frontend exited at start ({code}): {}",
                    log_tail(&log_file)
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the frontend did not answer within {}s: {}",
                    START_TIMEOUT.as_secs(),
                    log_tail(&log_file)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(mut c) = self.children.lock() {
            c.insert(s.id.clone(), child);
        }
        Ok(pid)
    }

    /// Sends one admin command; `Err` when no frontend answers.
    pub fn command(
        &self,
        s: &Session,
        cmd: &str,
        rate: Option<u64>,
        timeout: Duration,
    ) -> Result<AdminReply, String> {
        match admin::request(s.state_dir(), &admin::req(cmd, rate), timeout) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(format!("no frontend runs for session {}", s.id)),
            Err(e) => Err(format!("the frontend's admin socket: {e}")),
        }
    }

    /// Waits until the frontend of `s` has exited by itself (after cutover or abort) and
    /// says how; our own child is reaped.
    pub fn wait_exit(&self, s: &Session, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let child_done = match self.children.lock() {
                Ok(mut c) => match c.get_mut(&s.id) {
                    Some(ch) => match ch.try_wait() {
                        Ok(Some(code)) => {
                            c.remove(&s.id);
                            Some(format!("exited ({code})"))
                        }
                        Ok(None) => None,
                        Err(e) => Some(format!("wait failed: {e}")),
                    },
                    None => adopted_gone(s).then(|| "exited".to_string()),
                },
                Err(_) => adopted_gone(s).then(|| "exited".to_string()),
            };
            if let Some(how) = child_done {
                return Ok(how);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the frontend of session {} did not exit within {}s",
                    s.id,
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How a frontend that no longer answers ended, for the failure reason.
    fn ended(&self, id: &str) -> String {
        let how = match self.children.lock() {
            Ok(mut c) => match c.get_mut(id).map(|ch| ch.try_wait()) {
                Some(Ok(Some(code))) => {
                    c.remove(id);
                    format!("the frontend exited ({code})")
                }
                Some(_) => "the frontend stopped answering".to_string(),
                None => "the frontend is not running".to_string(),
            },
            Err(_) => "the frontend is not running".to_string(),
        };
        format!("{how}: {}", log_tail(&log_path(&self.data_dir, id)))
    }
}

/// An adopted frontend (not our child) is gone when its admin socket no longer answers.
fn adopted_gone(s: &Session) -> bool {
    let alive_pid = s
        .frontend_pid
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p));
    !alive_pid
        && matches!(
            admin::request(s.state_dir(), &admin::req("status", None), STATUS_TIMEOUT),
            Ok(None)
        )
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// The last line of a frontend's log, for error messages.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = f.read_to_string(&mut text);
    }
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    format!("{} (log {})", last.trim(), path.display())
}
