//! The reference NBD server: `qemu-nbd` serving the migrated target file.
//!
//! Configured to be a fair peer of Ferry's frontend: raw format (no format driver cost),
//! `--cache=none` (O_DIRECT, as Ferry opens the target), native Linux AIO engine of
//! choice (`--aio=io_uring`, falling back to `native` then `threads` if this qemu-nbd
//! was built without io_uring), `--shared=8` so fio and readiness probes can connect,
//! `--persistent` so it survives a client's disconnect. The command actually used is
//! recorded in the report.
//!
//! The WAN benchmark also uses it as the *source* server of nbdcopy and `qemu-img
//! convert`: `--read-only` on TCP 127.0.0.1 behind the emulator. Read-only exports
//! advertise multi-conn, and `--shared=8` lets nbdcopy open its 4 connections.

use std::net::TcpStream;
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

/// Where qemu-nbd listens.
#[derive(Clone, Copy)]
pub enum Listen<'a> {
    Unix(&'a Path),
    /// 127.0.0.1 on this port.
    Tcp(u16),
}

fn args(aio: &str, file: &Path, listen: Listen, read_only: bool) -> Vec<String> {
    let mut a: Vec<String> = vec!["-f".into(), "raw".into()];
    if read_only {
        a.push("--read-only".into());
    }
    match listen {
        Listen::Unix(socket) => a.extend(["-k".into(), socket.display().to_string()]),
        Listen::Tcp(port) => a.extend([
            "-b".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]),
    }
    a.extend([
        "-x".into(),
        VOLUME.into(),
        "--persistent".into(),
        "--shared=8".into(),
        "--cache=none".into(),
        format!("--aio={aio}"),
        file.display().to_string(),
    ]);
    a
}

fn accepts(listen: Listen) -> bool {
    match listen {
        Listen::Unix(socket) => UnixStream::connect(socket).is_ok(),
        Listen::Tcp(port) => TcpStream::connect(("127.0.0.1", port)).is_ok(),
    }
}

/// Starts qemu-nbd on `file` and waits until its socket accepts connections.
pub fn start(file: &Path, socket: &Path, log: &Path) -> Result<QemuNbd> {
    start_on(file, Listen::Unix(socket), false, log)
}

/// Starts qemu-nbd on `file`, listening on `listen` (`--read-only` if asked), and waits
/// until it accepts connections.
pub fn start_on(file: &Path, listen: Listen, read_only: bool, log: &Path) -> Result<QemuNbd> {
    let mut failures = Vec::new();
    for aio in AIO_MODES {
        if let Listen::Unix(socket) = listen {
            let _ = std::fs::remove_file(socket);
        }
        let a = args(aio, file, listen, read_only);
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
            if accepts(listen) {
                break Ok(());
            }
            if Instant::now() >= deadline {
                let at = match listen {
                    Listen::Unix(socket) => socket.display().to_string(),
                    Listen::Tcp(port) => format!("127.0.0.1:{port}"),
                };
                break Err(anyhow::anyhow!(
                    "qemu-nbd at {at} not accepting after {READY_TIMEOUT:?}"
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
