//! The `ferry` command line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dataplane::backend::{self, BackendConfig};
use dataplane::frontend::admin::AdminRequest;
use dataplane::frontend::status::{self, Status};
use dataplane::frontend::{self, FrontendConfig, NbdListen, QosMode};
use dataplane::hydrate::HydrateConfig;

use crate::admin_client;
use crate::size::{human, parse_size};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Live block-volume migration over NBD on an io_uring dataplane"
)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (tracing syntax): `error`, `warn`, `info` (default), `debug`,
    /// `trace`, or per module, e.g. `info,dataplane::frontend=debug`. Overrides RUST_LOG.
    #[arg(long = "log-level", visible_alias = "log", global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve source volumes to frontends (runs near the source). Read-only except write-back.
    Backend(BackendArgs),
    /// Export a volume over NBD and migrate it into the target (runs near the target).
    Frontend(FrontendArgs),
    /// Show a migration's progress (from the running frontend, or from its state dir).
    Status(StatusArgs),
    /// Finish the migration: the target becomes a complete, ordinary raw disk.
    Cutover(CutoverArgs),
    /// Send the workload back: every write it made goes back to the source.
    Abort(StateDirArg),
    /// Change a running frontend's background migration rate (0 pauses it).
    SetRate(SetRateArgs),
    /// Run a complete local migration with a workload, and verify the result.
    Demo(crate::demo::DemoArgs),
    /// Run the control daemon: sessions, an HTTP/JSON API, one frontend per session.
    Control(ctl::cli::ControlArgs),
    /// Drive migration sessions through the control daemon.
    Migrate(ctl::cli::MigrateArgs),
    /// Inspect access-pattern recordings (`ferry frontend --record FILE`).
    #[command(subcommand)]
    Recording(crate::recording::RecordingCommand),
    /// Serve a source volume over NBD to its still-local workload and record every request
    /// (before migration). Stop with SIGINT or SIGTERM.
    Record(crate::record::RecordArgs),
}

#[derive(Args, Debug)]
struct BackendArgs {
    /// TOML file setting any of these flags, keyed by long name (`listen = "10.0.0.5:10810"`,
    /// `volume = ["db=/dev/vg0/db"]`, `fs-aware = true`); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; port 0 picks one). No
    /// authentication: keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Address to listen on for frontends. Defaults to loopback; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:10810")]
    listen: String,
    /// A volume to serve: NAME=PATH (regular file, block device or loop device). Repeatable.
    #[arg(long = "volume", required = true, value_parser = parse_volume)]
    volumes: Vec<(String, PathBuf)>,
    /// Cores (io_uring threads) to run; default: all.
    #[arg(long)]
    cores: Option<usize>,
    /// Never read or send blocks that the source's ext4 file system marks free (its block
    /// bitmaps are read at start-up; the target reads zeros there). The source must be a
    /// cleanly unmounted ext2/3/4 file system; anything else is refused with the reason.
    #[arg(long)]
    fs_aware: bool,
}

#[derive(Args, Debug)]
struct FrontendArgs {
    /// TOML file setting any of these flags, keyed by long name (`background-rate = "100M"`,
    /// `chunk-size = "64K"`, `no-dedup = true`); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; port 0 picks one). No
    /// authentication: keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Backend address (HOST:PORT).
    #[arg(long)]
    backend: String,
    /// Name of the volume on the backend; also the NBD export name.
    #[arg(long)]
    volume: String,
    /// Target: a file (created and pre-allocated if missing) or a block device.
    #[arg(long)]
    target: PathBuf,
    /// Directory holding this migration's state (map, session); reuse it to resume.
    #[arg(long)]
    state_dir: PathBuf,
    /// Where to export NBD: unix:PATH or tcp:HOST:PORT (TCP defaults to loopback use).
    #[arg(long, value_parser = parse_nbd)]
    nbd: NbdListen,
    /// Chunk size, a power of two from 4K to 1M.
    #[arg(long, default_value = "64K", value_parser = parse_chunk)]
    chunk_size: u32,
    /// Cores (io_uring threads) to run; default: all.
    #[arg(long)]
    cores: Option<usize>,
    /// Background migration rate limit in bytes/s (K/M/G suffixes); 0 pauses background
    /// migration (on-demand reads still fetch). Default: unlimited.
    #[arg(long, value_parser = parse_size)]
    background_rate: Option<u64>,
    /// DSCP class for the background connection (0-63), e.g. 8 (CS1) so QoS-aware networks
    /// deprioritise it; on-demand traffic keeps the default class.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(0..64))]
    background_dscp: u8,
    /// How on-demand and background share the WAN: `separate` (a QoS-ready network: the
    /// background has its own connections, marked with --background-dscp) or `shared` (a
    /// QoS-less network: one connection; the backend sends on-demand replies first and the
    /// frontend keeps outstanding background just large enough to fill the link).
    #[arg(long, value_enum, default_value_t = QosArg::Separate)]
    qos: QosArg,
    /// With --qos shared: background bytes/s that keep flowing however busy on-demand
    /// traffic is (K/M/G suffixes).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    background_floor: u64,
    /// Chunks per background fetch request.
    #[arg(long, default_value_t = 64)]
    batch_chunks: usize,
    /// Background fetch depth per core: at most this many full batches (this × --batch-chunks
    /// chunks) outstanding, fetched or waiting for their target write; when a window shrinks
    /// batches, up to 8 × this many smaller requests carry them.
    #[arg(long, default_value_t = 8)]
    background_in_flight: usize,
    /// Chunk compression on the wire: `auto` lets the backend send zstd when the link, not
    /// the CPU, is the bottleneck (it measures both; on a fast link it sends raw), `off`
    /// always sends raw.
    #[arg(long, value_enum, default_value_t = Compress::Auto)]
    compress: Compress,
    /// The dedup index (SQLite), shared by every volume migrated on this machine: content
    /// already here (from this or another volume) crosses the wire as a 32-byte digest.
    /// Default: `ferry-dedup.sqlite` next to the state dir.
    #[arg(long)]
    dedup_index: Option<PathBuf>,
    /// No dedup: every chunk is sent as data.
    #[arg(long, conflicts_with = "dedup_index")]
    no_dedup: bool,
    /// Have the backend hash every chunk for dedup, even when the link is faster than the
    /// hash. Default: chunks are hashed while the link is the bottleneck or this machine
    /// already holds indexed content; on a fast link they come unhashed and are indexed
    /// after hydration, at idle CPU priority, for the volumes migrated later.
    #[arg(long, conflicts_with = "no_dedup")]
    eager_dedup: bool,
    /// Record every request the export serves (time, offset, length, kind) into FILE, a new
    /// SQLite file tied to the volume's size and ext4 UUID (`ferry recording info FILE`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Background migration fetches first what a recording (`--record`) read, most read
    /// first, then follows live reads along the recorded sequence, then ext4 metadata. PATH
    /// is a recording, or a directory whose `*.sqlite` / `*.ferryrec` recordings are
    /// searched for this volume (same size and ext4 UUID, else same size and ext4, newest).
    /// A recording named directly that is corrupt, of another format version or of another
    /// volume size is refused.
    #[arg(long, value_name = "PATH")]
    prefetch: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Compress {
    Auto,
    Off,
}

/// `ferry-dedup.sqlite` in the directory that holds the state dir, so the state dirs of the
/// volumes of one machine (siblings) share it.
fn default_dedup_index(state_dir: &std::path::Path) -> PathBuf {
    let abs = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    abs.parent()
        .map(|p| p.join("ferry-dedup.sqlite"))
        .unwrap_or_else(|| PathBuf::from("ferry-dedup.sqlite"))
}

#[derive(Args, Debug)]
struct StateDirArg {
    /// The frontend's state directory.
    #[arg(long)]
    state_dir: PathBuf,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    dir: StateDirArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SetRateArgs {
    #[command(flatten)]
    dir: StateDirArg,
    /// Bytes/s with K/M/G suffixes, `0` to pause, or `unlimited`.
    #[arg(long, value_parser = parse_rate)]
    background_rate: Rate,
}

#[derive(Clone, Copy, Debug)]
struct Rate(Option<u64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "unlimited" {
        Ok(Rate(None))
    } else {
        parse_size(s).map(|n| Rate(Some(n)))
    }
}

#[derive(Args, Debug)]
struct CutoverArgs {
    #[command(flatten)]
    dir: StateDirArg,
    /// Wait until every chunk is on the target, then cut over.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
}

fn parse_volume(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    if name.is_empty() || name.len() > 255 || path.is_empty() {
        return Err(format!(
            "{s:?}: expected NAME=PATH with a name of 1 to 255 bytes"
        ));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

pub(crate) fn parse_nbd(s: &str) -> Result<NbdListen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(NbdListen::Unix(PathBuf::from(p)));
    }
    if let Some(a) = s.strip_prefix("tcp:") {
        return resolve(a).map(NbdListen::Tcp);
    }
    Err(format!("{s:?}: expected unix:PATH or tcp:HOST:PORT"))
}

pub(crate) fn parse_chunk(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !(4096..=1 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{s:?}: the chunk size must be a power of two from 4K to 1M"
        ));
    }
    Ok(n as u32)
}

fn resolve(a: &str) -> Result<SocketAddr, String> {
    a.to_socket_addrs()
        .map_err(|e| format!("{a:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{a:?}: no address"))
}

fn init_logging(format: LogFormat, filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

pub fn main() -> ExitCode {
    use clap::CommandFactory;
    let argv = match crate::config::expand(&Cli::command(), std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    if matches!(
        cli.command,
        Command::Status(_) | Command::Recording(_) | Command::Migrate(_)
    ) {
        // Commands that only print: `ferry status | head -1` should end quietly as other
        // tools do, not panic on EPIPE. Servers keep SIGPIPE ignored (a peer that goes away
        // is an error to handle, not a reason to die).
        // SAFETY: sets a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging(cli.log_format, cli.log.as_deref());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already contains (our
/// typed errors print their source inline).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn cores(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

fn note_config(file: Option<&std::path::Path>) {
    if let Some(f) = file {
        tracing::info!(file = %f.display(), "flags read from the config file (command line wins)");
    }
}

/// Binds the metrics listener (so a bad address fails at once) and says where it is.
fn metrics_listener(
    role: &str,
    addr: Option<&str>,
) -> Result<Option<std::sync::Arc<std::net::TcpListener>>> {
    let Some(a) = addr else { return Ok(None) };
    let addr = resolve(a).map_err(|e| anyhow!("--metrics {e}"))?;
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("--metrics {addr}"))?;
    println!("ferry {role} metrics on http://{}/metrics", l.local_addr()?);
    Ok(Some(std::sync::Arc::new(l)))
}

fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Backend(a) => {
            note_config(a.config.as_deref());
            let listen = resolve(&a.listen).map_err(|e| anyhow!(e))?;
            let metrics = metrics_listener("backend", a.metrics.as_deref())?;
            backend::run(
                BackendConfig {
                    listen,
                    volumes: a.volumes,
                    cores: cores(a.cores),
                    fs_aware: a.fs_aware,
                    metrics,
                },
                |addr| {
                    println!("ferry backend listening on {addr}");
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Frontend(a) => {
            note_config(a.config.as_deref());
            let backend = resolve(&a.backend).map_err(|e| anyhow!(e))?;
            let metrics = metrics_listener("frontend", a.metrics.as_deref())?;
            let dedup_index = if a.no_dedup {
                None
            } else {
                Some(
                    a.dedup_index
                        .clone()
                        .unwrap_or_else(|| default_dedup_index(&a.state_dir)),
                )
            };
            let cfg = FrontendConfig {
                backend,
                volume: a.volume.clone(),
                target: a.target,
                state_dir: a.state_dir,
                nbd: a.nbd,
                chunk_size_bytes: a.chunk_size,
                cores: cores(a.cores),
                background_rate: a.background_rate,
                background_tos: Some(a.background_dscp << 2),
                qos: match a.qos {
                    QosArg::Separate => QosMode::Separate,
                    QosArg::Shared => QosMode::Shared,
                },
                background_floor: a.background_floor,
                hydrate: HydrateConfig {
                    batch_chunks: a.batch_chunks.clamp(1, 1024),
                    in_flight: a.background_in_flight.max(1),
                },
                compress: a.compress == Compress::Auto,
                dedup_index,
                eager_dedup: a.eager_dedup,
                metrics,
                record: a.record,
                passthrough: false,
                prefetch: a.prefetch,
            };
            let name = a.volume;
            let outcome = frontend::run(cfg, move |spec| {
                println!("ferry frontend serving {name} on {spec}");
            })?;
            println!("{}", outcome.message);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(a) => {
            let st = current_status(&a.dir.state_dir)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cutover(a) => cutover(&a),
        Command::Abort(a) => {
            let req = AdminRequest {
                cmd: "abort".into(),
                background_rate_bytes_per_s: None,
                ..Default::default()
            };
            match admin_client::request(&a.state_dir, &req, None)? {
                Some(r) if r.ok => {
                    println!("{}", r.message.unwrap_or_default());
                    Ok(ExitCode::SUCCESS)
                }
                Some(r) => bail!("{}", r.error.unwrap_or_else(|| "abort failed".into())),
                None => {
                    let st = status::offline(&a.state_dir)?;
                    if st.state == "aborted" {
                        println!("abort complete (already): the source is current");
                        return Ok(ExitCode::SUCCESS);
                    }
                    bail!("no frontend is running for {}; start it with the same --state-dir, then abort", a.state_dir.display())
                }
            }
        }
        Command::SetRate(a) => {
            let req = AdminRequest {
                cmd: "set-rate".into(),
                background_rate_bytes_per_s: a.background_rate.0,
                ..Default::default()
            };
            match admin_client::request(&a.dir.state_dir, &req, Some(Duration::from_secs(30)))? {
                Some(r) if r.ok => {
                    println!("{}", r.message.unwrap_or_default());
                    Ok(ExitCode::SUCCESS)
                }
                Some(r) => bail!("{}", r.error.unwrap_or_default()),
                None => bail!("no frontend is running for {}", a.dir.state_dir.display()),
            }
        }
        Command::Demo(a) => crate::demo::run(a),
        Command::Control(a) => ctl::cli::run_control(a),
        Command::Migrate(a) => ctl::cli::run_migrate(a),
        Command::Recording(c) => crate::recording::run(c),
        Command::Record(a) => crate::record::run(a),
    }
}

pub fn current_status(dir: &std::path::Path) -> Result<Status> {
    let req = AdminRequest {
        cmd: "status".into(),
        background_rate_bytes_per_s: None,
        ..Default::default()
    };
    match admin_client::request(dir, &req, Some(Duration::from_secs(30)))? {
        Some(r) if r.ok => r
            .status
            .ok_or_else(|| anyhow!("the frontend answered without a status")),
        Some(r) => bail!("{}", r.error.unwrap_or_default()),
        None => status::offline(dir).with_context(|| format!("reading {}", dir.display())),
    }
}

fn cutover(a: &CutoverArgs) -> Result<ExitCode> {
    let dir = &a.dir.state_dir;
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let mut warned = false;
    loop {
        let req = AdminRequest {
            cmd: "cutover".into(),
            background_rate_bytes_per_s: None,
            ..Default::default()
        };
        match admin_client::request(dir, &req, None)? {
            Some(r) if r.ok => {
                println!("{}", r.message.unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            Some(r) if r.untouched.is_some() && a.wait && Instant::now() < deadline => {
                if !warned
                    && current_status(dir).is_ok_and(|s| s.background_rate_bytes_per_s == Some(0))
                {
                    eprintln!("ferry: background migration is paused; waiting for on-demand reads only (ferry set-rate to resume)");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(r) => {
                eprintln!(
                    "ferry: {}",
                    r.error.unwrap_or_else(|| "cutover failed".into())
                );
                return Ok(ExitCode::FAILURE);
            }
            None => {
                let st = status::offline(dir)?;
                if st.state == "completed" {
                    println!(
                        "cutover complete (already): target {} is a complete raw disk",
                        st.target
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                bail!("no frontend is running for {}", dir.display());
            }
        }
    }
}

fn print_status(st: &Status) {
    let total = st.chunks_total.max(1) as f64;
    let done = (st.chunks_total - st.chunks_untouched) as f64 / total * 100.0;
    println!(
        "volume      {} ({}) -> {}",
        st.volume,
        human(st.volume_size_bytes),
        st.target
    );
    println!(
        "state       {}{}",
        st.state,
        if st.running {
            ""
        } else {
            " (frontend not running)"
        }
    );
    println!(
        "progress    {done:.1}% on target ({} of {} chunks of {})",
        st.chunks_total - st.chunks_untouched,
        st.chunks_total,
        human(u64::from(st.chunk_size_bytes))
    );
    println!(
        "chunks      untouched {}  present {}  dirty {}  zero {}",
        st.chunks_untouched, st.chunks_present, st.chunks_dirty, st.chunks_zero
    );
    if st.running {
        println!(
            "fetched     on-demand {} ({} chunks)  background {} ({} chunks)  failures {}",
            human(st.fetched_bytes_on_demand),
            st.fetched_chunks_on_demand,
            human(st.fetched_bytes_background),
            st.fetched_chunks_background,
            st.fetch_failures
        );
        let rate = match st.background_rate_bytes_per_s {
            None => "unlimited".to_string(),
            Some(0) => "paused".to_string(),
            Some(r) => format!("{}/s", human(r)),
        };
        println!("background  {rate}");
        if !st.qos.is_empty() {
            let mode = if st.qos == "shared" {
                "shared connection (on-demand first)"
            } else {
                "separate background connections (DSCP-marked)"
            };
            println!(
                "qos         {mode}: background window {} chunks ({} outstanding), base RTT {:.1} ms, queueing {:.1} ms",
                st.background_window_chunks,
                st.background_outstanding_chunks,
                st.base_rtt_us as f64 / 1000.0,
                st.queue_delay_us as f64 / 1000.0
            );
        }
        if st.deduped_chunks + st.deduped_blocks > 0 {
            println!(
                "dedup       copied here instead of sent: {} whole chunks, {} 4 KiB blocks of others; {} references missed and refetched",
                st.deduped_chunks,
                st.deduped_blocks,
                st.ref_misses + st.block_ref_misses
            );
        }
        if st.dedup_unindexed_chunks + st.dedup_backfilled_chunks > 0 {
            let when = if st.chunks_untouched > 0 {
                "after hydration"
            } else {
                "now, at idle priority"
            };
            println!(
                "dedup       {} chunks came unhashed: {} indexed, {} to index {when}",
                st.dedup_unindexed_chunks + st.dedup_backfilled_chunks,
                st.dedup_backfilled_chunks,
                st.dedup_unindexed_chunks
            );
        }
        let hit_rate = if st.prefetch_reads == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.1}%",
                st.prefetch_hits as f64 / st.prefetch_reads as f64 * 100.0
            )
        };
        println!(
            "prefetch    class {}  hits {} of {} reads ({hit_rate}), {} late  recording {}",
            st.prefetch_class,
            st.prefetch_hits,
            st.prefetch_reads,
            st.prefetch_late,
            st.prefetch_recording.as_deref().unwrap_or("none")
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QosArg {
    Separate,
    Shared,
}
