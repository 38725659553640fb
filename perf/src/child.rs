//! Child processes that cannot outlive the benchmark.
//!
//! Rules:
//! * Every server and client the benchmark starts is a [`Proc`]; dropping it stops the
//!   process (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and reaps it, also when the
//!   benchmark fails half-way. Children also get `PR_SET_PDEATHSIG = SIGKILL`, so a
//!   `kill -9` of the benchmark does not leave a server holding the work files.
//! * Nothing waits without a bound: readiness lines, client runs and status queries all
//!   take a timeout, and the error says what was awaited and shows the tail of the
//!   child's log (its stderr and stdout go to a file under the work directory).
//! * Children are spawned from the main thread only: PDEATHSIG fires when the spawning
//!   *thread* exits.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long a stopped child gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Polling interval for waits on a child's exit.
const POLL: Duration = Duration::from_millis(10);

pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: Option<Receiver<String>>,
    exited: Option<ExitStatus>,
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Proc {
    /// Starts `cmd` with stderr (and stdout unless `capture_stdout`) appended to `log`.
    /// With `capture_stdout`, stdout lines are copied to `log` and can be awaited with
    /// [`Proc::wait_line`].
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path, capture_stdout: bool) -> Result<Proc> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        writeln!(&log_file, "### {name}: {cmd:?}")?;
        cmd.stdin(Stdio::null())
            .stderr(Stdio::from(log_file.try_clone()?));
        if capture_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(Stdio::from(log_file.try_clone()?));
        }
        die_with_parent(cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{name}: cannot start {:?}", cmd.get_program()))?;
        let lines = if capture_stdout {
            let out = child.stdout.take().expect("stdout is piped");
            let (tx, rx) = mpsc::channel();
            let mut copy = log_file;
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(copy, "{line}");
                    // Once nobody listens, keep draining anyway so the child never blocks.
                    let _ = tx.send(line);
                }
            });
            Some(rx)
        } else {
            None
        };
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            lines,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of the line.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let rx = self
            .lines
            .as_ref()
            .ok_or_else(|| anyhow!("{}: stdout is not captured", self.name))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no {prefix:?} line on stdout within {timeout:?}\n{}",
                        self.name,
                        self.log_tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(2)).ok();
                    bail!(
                        "{}: exited ({}) before printing {prefix:?}\n{}",
                        self.name,
                        status.map_or("still running, stdout closed".into(), |s| s.to_string()),
                        self.log_tail()
                    )
                }
            }
        }
    }

    /// `Ok` while the child runs; an error with its log tail once it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.try_exit()? {
            bail!(
                "{} exited unexpectedly ({status})\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: still running after {timeout:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the child to finish and requires exit status 0.
    pub fn finish(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait_exit(timeout)?;
        if !status.success() {
            bail!("{} failed ({status})\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn vm_hwm_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: read {path}", self.name))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("{}: no VmHWM in {path}", self.name))
    }

    /// Resets the peak RSS to the current RSS (`echo 5 > /proc/PID/clear_refs`, Linux
    /// 4.0+), so the next [`Proc::vm_hwm_kib`] covers only what happens from now on.
    pub fn reset_hwm(&self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid());
        std::fs::write(&path, "5").with_context(|| format!("{}: write 5 to {path}", self.name))
    }

    /// CPU time the child has used so far, user plus system, all threads, in seconds
    /// (`utime + stime` from `/proc/PID/stat`). For servers, read while they still run.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: read {path}", self.name))?;
        parse_stat_cpu_ticks(&text)
            .map(|ticks| ticks as f64 / clock_ticks_per_s())
            .ok_or_else(|| anyhow!("{}: no utime/stime in {path}: {text:?}", self.name))
    }

    /// Like [`Proc::finish`], and returns the CPU seconds (user plus system) the child and
    /// any children it waited for used, from `wait4`'s rusage: exact for a client that
    /// exits, where `/proc/PID/stat` would miss its last moments.
    pub fn finish_with_cpu(&mut self, timeout: Duration) -> Result<f64> {
        if self.exited.is_some() {
            bail!(
                "{}: already reaped, its CPU time is gone\n{}",
                self.name,
                self.log_tail()
            );
        }
        let deadline = Instant::now() + timeout;
        let pid = self.child.id() as libc::pid_t;
        loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid value; wait4 writes into memory we own.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits only for our own, not yet reaped child.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                use std::os::unix::process::ExitStatusExt;
                let st = ExitStatus::from_raw(status);
                // Recorded so that try_exit (and Drop) never wait on a reaped pid.
                self.exited = Some(st);
                if !st.success() {
                    bail!("{} failed ({st})\n{}", self.name, self.log_tail());
                }
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                return Ok(secs(ru.ru_utime) + secs(ru.ru_stime));
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).with_context(|| format!("wait4 for {}", self.name));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: still running after {timeout:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The last lines of the child's log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit (status 0): for children whose
    /// SIGTERM means "finish your work and write your results" (`ferry record`).
    pub fn terminate(&mut self, timeout: Duration) -> Result<()> {
        if self.try_exit()?.is_none() {
            // SAFETY: kill on the pid of a child we have not reaped yet (so the pid is ours).
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        self.finish(timeout)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the child. Idempotent.
    pub fn stop(&mut self) {
        if matches!(self.try_exit(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill on the pid of a child we have not reaped yet (so the pid is ours).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if self.wait_exit(STOP_GRACE).is_err() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`. The command name
/// (field 2) is in parentheses and may hold spaces or `)`, so fields are counted from
/// the last `)`: the state is field 3, utime field 14, stime field 15.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The last `n` lines of a log file, indented, with its path.
pub fn tail(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return format!("(no log at {})", path.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut out = format!("--- last lines of {} ---", path.display());
    for l in &lines[from..] {
        out.push_str("\n  ");
        out.push_str(l);
    }
    out
}

/// Runs a short command to completion within `timeout` and returns its stdout; a
/// non-zero exit is an error carrying its stderr.
pub fn run_capture(cmd: &mut Command, timeout: Duration) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        thread::sleep(POLL);
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {}", stderr.trim());
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields() {
        let stat =
            "1234 (qemu-nbd (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 17 4 0 0 20 0 3 0 99";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(21));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn rusage_of_an_exited_client() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut p = Proc::spawn(
            "busy",
            Command::new("sh").args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]),
            &dir.path().join("log"),
            false,
        )?;
        let cpu = p.finish_with_cpu(Duration::from_secs(60))?;
        assert!(cpu > 0.0, "a busy loop used {cpu} s of CPU");
        p.stop(); // must not touch the reaped pid
        Ok(())
    }
}
