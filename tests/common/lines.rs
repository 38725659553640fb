//! A `ferry` child whose stdout lines are collected (to wait for "... listening on ADDR" and
//! similar announcements) and whose stderr goes to a file; SIGKILLed on drop.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub struct LineProc {
    pub name: String,
    pub child: Child,
    pub stderr: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl LineProc {
    /// Starts `ferry ARGS` with stderr appended to `DIR/NAME.stderr`.
    pub fn spawn(name: &str, args: &[&str], dir: &Path) -> LineProc {
        let stderr = dir.join(format!("{name}.stderr"));
        let errf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(errf)
            .spawn()
            .expect("spawn ferry");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        LineProc {
            name: name.into(),
            child,
            stderr,
            lines,
        }
    }

    /// The first line starting with `prefix` (earlier lines are skipped); panics with the
    /// child's stderr if it exits or says nothing of the kind within 60 s.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if l.starts_with(prefix) {
                    return l;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}): {}", self.name, self.stderr_text());
            }
        }
        panic!(
            "{} never printed {prefix:?}: {}",
            self.name,
            self.stderr_text()
        );
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
