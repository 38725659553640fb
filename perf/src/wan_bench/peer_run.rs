//! One copy of the sample by a peer tool: `qemu-nbd --read-only` serves it on TCP
//! 127.0.0.1, the emulator sits in front, and nbdcopy or `qemu-img convert` copies it
//! from the emulator into a new local file, with default options. Timed from starting
//! the client to its exit; the destination must then equal the source.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_perf::wan::WanProxy;
use serde::Serialize;

use super::link::LinkSpec;
use super::report::Run;
use super::sample::Sample;
use super::verify;
use crate::child::Proc;
use crate::ferry::VOLUME;
use crate::fio::shell_quote;
use crate::qemu_nbd::{self, Listen};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Client {
    /// libnbd's nbdcopy: multi-conn (up to 4 connections when the server advertises it,
    /// as read-only qemu-nbd does), several requests in flight per connection, and
    /// block status to skip holes.
    Nbdcopy,
    /// `qemu-img convert`: one connection, 8 coroutines, block status to skip holes.
    QemuImg,
}

impl Client {
    pub fn program(self) -> &'static str {
        match self {
            Client::Nbdcopy => "nbdcopy",
            Client::QemuImg => "qemu-img",
        }
    }

    fn args(self, uri: &str, dest: &Path) -> Vec<String> {
        let dest = dest.display().to_string();
        match self {
            Client::Nbdcopy => vec![uri.into(), dest],
            Client::QemuImg => ["convert", "-f", "raw", "-O", "raw", uri, &dest]
                .map(String::from)
                .to_vec(),
        }
    }

    /// The command as a user would type it, with placeholders for what changes per run.
    pub fn command_line(self) -> String {
        let a = self.args(
            &format!("nbd://127.0.0.1:EMULATOR_PORT/{VOLUME}"),
            Path::new("DEST.img"),
        );
        std::iter::once(self.program().to_string())
            .chain(a.iter().map(|s| shell_quote(s)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (qemu-nbd binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Copies `sample` once with `client` over `link`; returns the run and qemu-nbd's command.
pub fn copy(
    client: Client,
    sample: &Sample,
    dest: &Path,
    link: &LinkSpec,
    logs: &Path,
    tag: &str,
    timeout: Duration,
) -> Result<(Run, String)> {
    let _ = std::fs::remove_file(dest);
    let port = free_port()?;
    let server_log = logs.join(format!("qemu-nbd-{tag}.log"));
    let mut server = qemu_nbd::start_on(&sample.path, Listen::Tcp(port), true, &server_log)?;
    let proxy = WanProxy::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        link.wan_config(),
    )?;
    let uri = format!("nbd://{}/{VOLUME}", proxy.local_addr());
    crate::system::drop_caches();
    let t0 = Instant::now();
    let mut p = Proc::spawn(
        client.program(),
        Command::new(client.program()).args(client.args(&uri, dest)),
        &logs.join(format!("{}-{tag}.log", client.program())),
        false,
    )?;
    let cpu_client_s = p.finish_with_cpu(timeout)?;
    let elapsed = t0.elapsed();
    let counters = proxy.counters();
    server.proc.check_alive()?;
    let cpu_server_s = server.proc.cpu_seconds()?;
    drop(proxy);
    server.proc.stop();

    let compared = verify::compare(&sample.path, dest, None)?;
    let _ = std::fs::remove_file(dest);
    Ok((
        Run {
            elapsed_s: elapsed.as_secs_f64(),
            logical_bytes: sample.info.size_bytes,
            wire_bytes: Some(counters.downstream_bytes),
            upstream_wire_bytes: Some(counters.upstream_bytes),
            connections: Some(counters.connections),
            cpu_server_s,
            cpu_client_s,
            ferry: None,
            verified: format!("equal to the source ({} bytes compared)", compared.bytes),
        },
        server
            .command_line
            .replace(&format!("-p {port} "), "-p PORT "),
    ))
}
