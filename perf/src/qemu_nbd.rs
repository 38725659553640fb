//! The reference NBD server: `qemu-nbd` serving the migrated target file.
//!
//! Configured to be a fair peer of Ferry's frontend: raw format (no format driver cost),
//! `--cache=none` (O_DIRECT, as Ferry opens the target), native Linux AIO engine of
//! choice (`--aio=io_uring`, falling back to `native` then `threads` if this qemu-nbd
//! was built without io_uring), `--shared=8` so fio and readiness probes can connect,
//! `--persistent` so it survives a client's disconnect. The command actually used is
//! recorded in the report.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::child::Proc;
use crate::ferry::VOLUME;
use crate::fio::shell_quote;

const AIO_MODES: [&str; 3] = ["io_uring", "native", "threads"];
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct QemuNbd {
    pub proc: Proc,
    pub command_line: String,
}

fn args(aio: &str, file: &Path, socket: &Path) -> Vec<String> {
    vec![
        "-f".into(),
        "raw".into(),
        "-k".into(),
        socket.display().to_string(),
        "-x".into(),
        VOLUME.into(),
        "--persistent".into(),
        "--shared=8".into(),
        "--cache=none".into(),
        format!("--aio={aio}"),
        file.display().to_string(),
    ]
}

/// Starts qemu-nbd on `file` and waits until its socket accepts connections.
pub fn start(file: &Path, socket: &Path, log: &Path) -> Result<QemuNbd> {
    let mut failures = Vec::new();
    for aio in AIO_MODES {
        let _ = std::fs::remove_file(socket);
        let a = args(aio, file, socket);
        let mut p = Proc::spawn(
            &format!("qemu-nbd --aio={aio}"),
            Command::new("qemu-nbd").args(&a),
            log,
            false,
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = loop {
            if let Err(e) = p.check_alive() {
                break Err(e);
            }
            if UnixStream::connect(socket).is_ok() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(anyhow::anyhow!(
                    "qemu-nbd socket {} not accepting after {READY_TIMEOUT:?}",
                    socket.display()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        match ready {
            Ok(()) => {
                let command_line = std::iter::once("qemu-nbd".to_string())
                    .chain(a.iter().map(|s| shell_quote(s)))
                    .collect::<Vec<_>>()
                    .join(" ");
                return Ok(QemuNbd {
                    proc: p,
                    command_line,
                });
            }
            Err(e) => failures.push(format!("--aio={aio}: {e:#}")),
        }
    }
    bail!(
        "qemu-nbd did not start with any --aio mode:\n{}",
        failures.join("\n")
    )
}
