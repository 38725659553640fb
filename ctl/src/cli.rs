//! The `ferry control` and `ferry migrate` subcommands (wired into the `ferry` binary by
//! `control::cli`). `migrate` prints for people by default and one JSON document with
//! `--json`; on an API error it prints the error and exits 1 (with `--json`, the error body
//! plus `http_status` on stdout).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::Endpoint;
use crate::daemon::{self, ControlConfig};
use crate::session::Session;

const DEFAULT_SOCKET: &str = "/run/ferry/control.sock";

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// TOML file setting any of these flags, keyed by long name (`data-dir = "/var/lib/..."`,
    /// `poll-ms = 500`); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Unix socket to serve the API on (mode 0600).
    #[arg(long, env = "FERRY_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also serve the API on TCP (HOST:PORT); needs --token-file: every request must carry
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, requires = "token_file")]
    listen_tcp: Option<SocketAddr>,
    /// File holding the bearer token (at least 16 characters) for --listen-tcp.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where sessions live: the store (control.sqlite), and per session its frontend's
    /// state dir, NBD socket and log (sessions/ID/).
    #[arg(long, default_value = "/var/lib/ferry/control")]
    data_dir: PathBuf,
    /// How often each running frontend is asked for its progress, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
}

pub fn run_control(a: ControlArgs) -> Result<ExitCode> {
    if let Some(f) = &a.config {
        tracing::info!(file = %f.display(), "flags read from the config file (command line wins)");
    }
    let data_dir = std::path::absolute(&a.data_dir).unwrap_or(a.data_dir);
    daemon::run(ControlConfig {
        socket: a.socket,
        listen_tcp: a.listen_tcp,
        token_file: a.token_file,
        data_dir,
        poll_interval: Duration::from_millis(a.poll_ms.max(50)),
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The control daemon's unix socket.
    #[arg(long, global = true, env = "FERRY_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Talk to the daemon over TCP (HOST:PORT) instead; needs --token-file.
    #[arg(long, global = true, requires = "token_file")]
    tcp: Option<String>,
    /// File holding the daemon's bearer token (for --tcp).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: MigrateCommand,
}

#[derive(Subcommand, Debug)]
enum MigrateCommand {
    /// Create a session (state `created`; nothing runs until `start`, or use --start).
    Create(CreateArgs),
    /// Start migrating: the daemon starts the session's frontend and its NBD export.
    Start(IdArg),
    /// Stop background migration (on-demand reads still fetch).
    Pause(IdArg),
    /// Continue background migration at the session's rate.
    Resume(IdArg),
    /// Finish: the target becomes a complete raw disk (refused until nothing is untouched).
    Cutover(IdArg),
    /// Send every write back to the source; the source is the disk again.
    Abort(IdArg),
    /// One session's state and progress; `--watch` follows it live, `--map` draws its map.
    Status(StatusArgs),
    /// Every session.
    List,
    /// Forget a finished (or never started) session; the target is left alone.
    Delete(IdArg),
}

#[derive(Args, Debug)]
struct IdArg {
    /// Session id (from `create` or `list`).
    id: String,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Session id (from `create` or `list`).
    id: String,
    /// Follow the session: a progress line (% done, ETA, on-demand and background rates,
    /// bytes saved by zero chunks, dedup and compression, data not yet durable) every
    /// interval, redrawn in place on a terminal; ends when the session is ready, completed,
    /// aborted or failed.
    #[arg(long, conflicts_with = "map")]
    watch: bool,
    /// Poll interval for --watch, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    interval_ms: u64,
    /// Draw the volume map: a terminal strip, one coloured block per group of chunks
    /// (untouched, present, dirty, zero), and a legend.
    #[arg(long)]
    map: bool,
    /// With --map: also write the map as an SVG picture to FILE.
    #[arg(long, value_name = "FILE", requires = "map")]
    svg: Option<PathBuf>,
    /// With --map: how many groups of chunks (1 to 4096; the strip shows 64 per row).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    cells: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompressArg {
    Auto,
    Off,
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Backend address, HOST:PORT.
    #[arg(long)]
    backend: String,
    /// Volume name on the backend.
    #[arg(long)]
    volume: String,
    /// Target file or block device (made absolute here).
    #[arg(long)]
    target: PathBuf,
    /// A name for people (default: the volume name).
    #[arg(long)]
    name: Option<String>,
    /// Chunk size, a power of two from 4K to 1M.
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    chunk_size: u64,
    /// Background rate in bytes/s (K/M/G suffixes); default unlimited.
    #[arg(long, value_parser = parse_size)]
    background_rate: Option<u64>,
    /// Chunk compression on the wire (see `ferry frontend --help`).
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    compress: CompressArg,
    /// Send every chunk as data (no dedup index).
    #[arg(long)]
    no_dedup: bool,
    /// io_uring cores for the frontend; default all.
    #[arg(long)]
    cores: Option<u32>,
    /// Start the session right away.
    #[arg(long)]
    start: bool,
}

/// `64K`, `20M`, `1G`, or bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown suffix (K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?}: expected a size such as 64K or 20M"))
}

const TIMEOUT: Duration = Duration::from_secs(3600);

pub fn run_migrate(a: MigrateArgs) -> Result<ExitCode> {
    let ep = match a.tcp {
        Some(addr) => {
            let tf = a
                .token_file
                .ok_or_else(|| anyhow!("--tcp needs --token-file"))?;
            let token = std::fs::read_to_string(&tf)
                .with_context(|| format!("reading {}", tf.display()))?
                .trim()
                .to_string();
            Endpoint::Tcp { addr, token }
        }
        None => Endpoint::Unix(a.socket),
    };
    let json = a.json;
    let (method, path, body) = match &a.cmd {
        MigrateCommand::Create(c) => {
            let target = std::path::absolute(&c.target).unwrap_or_else(|_| c.target.clone());
            let body = json!({
                "name": c.name,
                "backend": c.backend,
                "volume": c.volume,
                "target": target.display().to_string(),
                "chunk_size_bytes": c.chunk_size,
                "background_rate_bytes_per_s": c.background_rate,
                "compress": match c.compress { CompressArg::Auto => "auto", CompressArg::Off => "off" },
                "dedup": !c.no_dedup,
                "cores": c.cores,
            });
            ("POST", "/v1/sessions".to_string(), Some(body))
        }
        MigrateCommand::Start(i) => ("POST", format!("/v1/sessions/{}/start", i.id), None),
        MigrateCommand::Pause(i) => ("POST", format!("/v1/sessions/{}/pause", i.id), None),
        MigrateCommand::Resume(i) => ("POST", format!("/v1/sessions/{}/resume", i.id), None),
        MigrateCommand::Cutover(i) => ("POST", format!("/v1/sessions/{}/cutover", i.id), None),
        MigrateCommand::Abort(i) => ("POST", format!("/v1/sessions/{}/abort", i.id), None),
        MigrateCommand::Status(st) if st.watch => return watch(&ep, st, json),
        MigrateCommand::Status(st) if st.map => return draw_map(&ep, st, json),
        MigrateCommand::Status(i) => ("GET", format!("/v1/sessions/{}", i.id), None),
        MigrateCommand::List => ("GET", "/v1/sessions".to_string(), None),
        MigrateCommand::Delete(i) => ("DELETE", format!("/v1/sessions/{}", i.id), None),
    };
    let mut ans = ep.call(method, &path, body.as_ref(), TIMEOUT)?;
    if ans.status < 300 {
        if let MigrateCommand::Create(c) = &a.cmd {
            if c.start {
                let id = ans.body["id"].as_str().unwrap_or("").to_string();
                ans = ep.call("POST", &format!("/v1/sessions/{id}/start"), None, TIMEOUT)?;
            }
        }
    }
    if ans.status >= 300 {
        if json {
            let mut b = ans.body;
            if let Some(o) = b.as_object_mut() {
                o.insert("http_status".into(), json!(ans.status));
            }
            println!("{}", serde_json::to_string_pretty(&b)?);
        } else {
            let msg = ans.body["error"].as_str().unwrap_or("request failed");
            eprintln!("ferry: {msg} (HTTP {})", ans.status);
        }
        return Ok(ExitCode::FAILURE);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&ans.body)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &a.cmd {
        MigrateCommand::List => print_list(&ans.body),
        MigrateCommand::Delete(i) => println!("session {} deleted", i.id),
        _ => {
            let s: Session = serde_json::from_value(ans.body).context("the daemon's session")?;
            print_session(&s);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn api_error(ans: crate::client::Answer, json: bool) -> Result<ExitCode> {
    if json {
        let mut b = ans.body;
        if let Some(o) = b.as_object_mut() {
            o.insert("http_status".into(), json!(ans.status));
        }
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        let msg = ans.body["error"].as_str().unwrap_or("request failed");
        eprintln!("ferry: {msg} (HTTP {})", ans.status);
    }
    Ok(ExitCode::FAILURE)
}

/// `status --watch`: polls the session until it reaches an end state.
fn watch(ep: &Endpoint, a: &StatusArgs, json: bool) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal() && !json;
    let start = std::time::Instant::now();
    let mut w = crate::watch::Watch::default();
    let path = format!("/v1/sessions/{}", a.id);
    let mut out = std::io::stdout();
    loop {
        let ans = ep.call("GET", &path, None, Duration::from_secs(60))?;
        if ans.status >= 300 {
            if tty {
                println!();
            }
            return api_error(ans, json);
        }
        let s: Session =
            serde_json::from_value(ans.body.clone()).context("the daemon's session")?;
        let state = s.state.name().to_string();
        if json {
            println!("{}", serde_json::to_string(&ans.body)?);
        } else {
            let line = w.line(crate::watch::Sample {
                at_ms: start.elapsed().as_millis() as u64,
                state: state.clone(),
                status: s.progress.clone(),
            });
            let shown = if tty {
                // Return to the line start and clear it: the line is redrawn in place.
                write!(out, "\r\x1b[2K{line}")
            } else {
                writeln!(out, "{line}")
            };
            match shown.and_then(|_| out.flush()) {
                // The reader went away (`| head`): nothing left to show.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS)
                }
                r => r?,
            }
        }
        if crate::watch::is_end(&state) {
            if tty {
                println!();
            }
            if let Some(r) = s.failure_reason.filter(|_| state == "failed") {
                eprintln!("ferry: session failed: {r}");
                return Ok(ExitCode::FAILURE);
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(a.interval_ms));
    }
}

/// `status --map [--svg FILE]`.
fn draw_map(ep: &Endpoint, a: &StatusArgs, json: bool) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let path = format!("/v1/sessions/{}/map?cells={}", a.id, a.cells);
    let ans = ep.call("GET", &path, None, Duration::from_secs(60))?;
    if ans.status >= 300 {
        return api_error(ans, json);
    }
    let m: dataplane::map::cells::MapCells =
        serde_json::from_value(ans.body.clone()).context("the daemon's map")?;
    if let Some(file) = &a.svg {
        let title = format!(
            "session {}: {} chunks of {}, {:.1} per cell",
            a.id,
            m.chunks_total,
            human(u64::from(m.chunk_size_bytes)),
            m.chunks_total as f64 / m.cells.len().max(1) as f64
        );
        std::fs::write(file, crate::mapview::svg(&m, &title))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&ans.body)?);
    } else {
        let color = std::io::stdout().is_terminal();
        print!("{}", crate::mapview::heat_strip(&m, 64, color));
        if let Some(file) = &a.svg {
            println!("map written to {}", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn percent(s: &Session) -> Option<f64> {
    s.progress.as_ref().map(|p| {
        let total = p.chunks_total.max(1) as f64;
        (p.chunks_total - p.chunks_untouched.min(p.chunks_total)) as f64 / total * 100.0
    })
}

fn print_list(body: &Value) {
    let sessions: Vec<Session> = body
        .get("sessions")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if sessions.is_empty() {
        println!("no sessions");
        return;
    }
    println!(
        "{:<16}  {:<16}  {:<12}  {:>7}  TARGET",
        "ID", "NAME", "STATE", "DONE"
    );
    for s in sessions {
        let done = percent(&s)
            .map(|p| format!("{p:.1}%"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16}  {:<16}  {:<12}  {:>7}  {}",
            s.id,
            s.name,
            s.state.name(),
            done,
            s.target
        );
    }
}

fn print_session(s: &Session) {
    println!("session     {} ({})", s.id, s.name);
    println!("state       {}", s.state);
    if let Some(r) = &s.failure_reason {
        println!("reason      {r}");
    }
    println!(
        "source      {} volume {} -> {}",
        s.source.backend, s.source.volume, s.target
    );
    println!("export      {}", s.nbd_uri);
    let rate = match (s.state, s.options.background_rate_bytes_per_s) {
        (crate::state::State::Paused, _) => "paused".to_string(),
        (_, None) => "unlimited".to_string(),
        (_, Some(r)) => format!("{}/s", human(r)),
    };
    if !s.state.is_final() {
        println!("background  {rate}");
    }
    if let (Some(p), Some(pct)) = (&s.progress, percent(s)) {
        println!(
            "progress    {pct:.1}% on target ({} of {} chunks of {}, volume {})",
            p.chunks_total - p.chunks_untouched.min(p.chunks_total),
            p.chunks_total,
            human(u64::from(p.chunk_size_bytes)),
            human(p.volume_size_bytes)
        );
        println!(
            "chunks      untouched {}  present {}  dirty {}  zero {}",
            p.chunks_untouched, p.chunks_present, p.chunks_dirty, p.chunks_zero
        );
        println!(
            "fetched     on-demand {} ({} chunks)  background {} ({} chunks)",
            human(p.fetched_bytes_on_demand),
            p.fetched_chunks_on_demand,
            human(p.fetched_bytes_background),
            p.fetched_chunks_background
        );
        if p.uptime_ms > 0 {
            let secs = p.uptime_ms as f64 / 1000.0;
            let avg = (p.fetched_bytes_on_demand + p.fetched_bytes_background) as f64 / secs;
            println!(
                "rate        {}/s average over {secs:.0} s",
                human(avg as u64)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("64K"), Ok(65536));
        assert_eq!(super::parse_size("20m"), Ok(20 << 20));
        assert_eq!(super::parse_size("7"), Ok(7));
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("5Q").is_err());
    }
}
