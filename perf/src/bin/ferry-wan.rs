//! `ferry-wan`: the WAN emulator ([`ferry_perf::wan`]) as a standalone TCP proxy.
//!
//! Prints `ferry-wan listening on ADDR` once accepting, runs until SIGINT or SIGTERM,
//! then prints its counters on stderr and exits.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_perf::wan::{
    parse_bytes, parse_drop, parse_rate, FaultAt, Faults, RandomFaults, WanConfig, WanProxy,
};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-wan",
    about = "TCP proxy emulating a slow, long link: one-way delay, a rate shared by all \
             connections, seeded faults",
    after_help = "Model: each direction is one FIFO link shared by all connections; a piece \
of at most 64 KiB read from a sender departs at max(now, previous departure) + len/rate and \
arrives one-way-delay later (RTT = 2 x delay). Beyond the queue limit per connection-direction \
the proxy stops reading, so senders see the slow link.

Faults name positions as DIR:CONN:OFFSET: DIR is up (client->server) or down, CONN the \
connection index in accept order from 0, OFFSET a byte offset (K/M/G suffixes) in the stream \
read from that direction's sender. The same --seed and faults give the same bytes on every run.

With --priority-by-dscp, a connection whose client's SYN carried DSCP CS1 or LE is low in \
both directions, and each link serves a waiting piece of a normal connection before any queued \
low piece (the piece already on the link finishes first). The mark is passed on to the upstream \
connection.

Example:
  ferry-wan --upstream 127.0.0.1:10809 --delay-ms 20 --rate 100mbit --corrupt-at up:0:1M \\
            --cut-at down:1:64K --random-corrupt-per-mib 0.01 --seed 7"
)]
struct Cli {
    /// Address to accept clients on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The server every connection is forwarded to, HOST:PORT.
    #[arg(long)]
    upstream: String,
    /// One-way delay in milliseconds, applied in each direction (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Rate of each direction, shared by all connections: 100mbit, 1gbit, 12.5MB (bytes/s),
    /// 4MiB, or 0 / unlimited.
    #[arg(long, default_value = "unlimited", value_parser = parse_rate_arg)]
    rate: Rate,
    /// Bytes queued per connection-direction before the proxy stops reading (K/M/G).
    /// Default: max(2 x rate x delay, 1M), or 64M when the rate is unlimited.
    #[arg(long, value_parser = parse_bytes)]
    queue_limit: Option<u64>,
    /// Seed of corruption values and random fault positions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Flip the byte at DIR:CONN:OFFSET (repeatable).
    #[arg(long = "corrupt-at", value_name = "DIR:CONN:OFFSET")]
    corrupt_at: Vec<FaultAt>,
    /// Close both sides of connection CONN once OFFSET bytes have passed in DIR (repeatable).
    #[arg(long = "cut-at", value_name = "DIR:CONN:OFFSET")]
    cut_at: Vec<FaultAt>,
    /// Silently drop LEN bytes at DIR:CONN:OFFSET (repeatable).
    #[arg(long = "drop-at", value_name = "DIR:CONN:OFFSET:LEN", value_parser = parse_drop_arg)]
    drop_at: Vec<DropAt>,
    /// Probability that each MiB of each connection-direction holds one corrupted byte.
    #[arg(long, default_value_t = 0.0)]
    random_corrupt_per_mib: f64,
    /// Probability that each connection-direction is cut within each MiB.
    #[arg(long, default_value_t = 0.0)]
    random_cut_per_mib: f64,
    /// Emulate a QoS-ready network: connections whose client marked its handshake DSCP
    /// CS1 or LE (IP_TOS 0x20 / 0x04) yield the link to all others, in both directions
    /// (strict priority, no preemption of the piece on the link). Needs --rate.
    #[arg(long)]
    priority_by_dscp: bool,
}

#[derive(Clone, Copy, Debug)]
struct Rate(Option<u64>);

fn parse_rate_arg(s: &str) -> Result<Rate, String> {
    parse_rate(s).map(Rate)
}

#[derive(Clone, Copy, Debug)]
struct DropAt(FaultAt, usize);

fn parse_drop_arg(s: &str) -> Result<DropAt, String> {
    parse_drop(s).map(|(at, len)| DropAt(at, len))
}

fn config(cli: &Cli) -> Result<WanConfig> {
    if !(cli.delay_ms.is_finite() && cli.delay_ms >= 0.0) {
        bail!("--delay-ms must be a non-negative number of milliseconds");
    }
    let random = (cli.random_corrupt_per_mib > 0.0 || cli.random_cut_per_mib > 0.0).then_some(
        RandomFaults {
            corrupt_per_mib: cli.random_corrupt_per_mib,
            cut_per_mib: cli.random_cut_per_mib,
        },
    );
    if cli.priority_by_dscp && cli.rate.0.is_none() {
        eprintln!("ferry-wan: --priority-by-dscp has no effect without --rate (nothing queues)");
    }
    let queue_limit_bytes = match cli.queue_limit {
        Some(q) => Some(usize::try_from(q).context("--queue-limit is too large")?),
        None => None,
    };
    Ok(WanConfig {
        one_way_delay: Duration::from_secs_f64(cli.delay_ms / 1000.0),
        rate_bytes_per_s: cli.rate.0,
        queue_limit_bytes,
        faults: Faults {
            corrupt: cli.corrupt_at.clone(),
            cut: cli.cut_at.clone(),
            drop: cli.drop_at.iter().map(|d| (d.0, d.1)).collect(),
            random,
        },
        seed: cli.seed,
        priority_by_dscp: cli.priority_by_dscp,
    })
}

/// Blocks SIGINT and SIGTERM in this thread, and so in every thread spawned after, so that
/// [`wait_for_signal`] can take them synchronously.
fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before any other use;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a valid out-parameter.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let cfg = config(&cli)?;
    let upstream = cli
        .upstream
        .to_socket_addrs()
        .with_context(|| format!("resolve --upstream {}", cli.upstream))?
        .next()
        .with_context(|| format!("--upstream {} resolves to no address", cli.upstream))?;
    let signals = block_stop_signals()?;
    let proxy = WanProxy::start(upstream, cli.listen, cfg)
        .with_context(|| format!("start the proxy on {}", cli.listen))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ferry-wan listening on {}", proxy.local_addr())?;
    out.flush()?;
    let sig = wait_for_signal(&signals);
    eprintln!(
        "ferry-wan: signal {sig}, stopping: {} {}",
        proxy.counters(),
        proxy.class_counters()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-wan: {e:#}");
            ExitCode::FAILURE
        }
    }
}
