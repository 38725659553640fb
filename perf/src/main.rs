//! `ferry-perf`: Ferry side by side with fio and qemu-nbd, in one run, as ratios.
//!
//! (a) hydration throughput of `ferry backend` + `ferry frontend` on loopback against
//! fio's sequential O_DIRECT read of the source and write of a target-like file;
//! (a2) the same with the source copied onto a second device (a zram RAM disk made for the
//! run, [`zram`]), so that the source read and the target writes do not share the disk;
//! (b) serving the last fully migrated volume against qemu-nbd serving the same file, with
//! fio's nbd engine, latency percentiles from every IO; (c) peak RSS of each server.
//! `ferry-perf wan` is a separate mode: a realistic volume migrated over an emulated WAN
//! link, against nbdcopy and `qemu-img convert` ([`wan_bench`]).
//! The machine may be shared and noisy, so every measurement is repeated, interleaved
//! with its peer, and reported as a median and a ratio to that peer.
//!
//! Invariants: every child process is stopped when the run ends, also on error
//! ([`child::Proc`]); every wait is bounded; work files live on a disk-backed file system
//! (never tmpfs) and the large ones are removed at the end unless `--keep`.

mod child;
mod ferry;
mod fio;
mod hydrate;
mod issue5;
mod latency;
mod qemu_nbd;
mod report;
mod results_file;
mod serve;
mod source;
mod system;
mod wan_bench;
mod zram;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::ferry::{Ferry, Tuning};
use crate::fio::shell_quote;
use crate::report::{
    FerryInfo, Hydration, Median, Memory, Ratios, Report, SecondDevice, ServerResult, Serving,
    ServingJob,
};

const MIB: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-perf",
    about = "Benchmarks Ferry against fio and qemu-nbd in one run and reports ratios",
    after_help = "Needs root (to drop the page cache), fio with the nbd engine, qemu-nbd, and a release \
                  build of ferry: `cargo build --release && cargo run --release -p ferry-perf -- --results perf/RESULTS.md`. \
                  `ferry-perf wan --help` describes the WAN migration benchmark.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Without a mode: the hydration, serving and memory benchmark.
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Volume size (K, M, G suffixes; binary units). Default 2G, or 256M with --quick.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Seconds per serving job (b). Default 15, or 3 with --quick.
    #[arg(long)]
    runtime: Option<u64>,
    /// Rounds of every measurement, interleaved with the peers. Default 2, or 1 with --quick.
    #[arg(long)]
    repeat: Option<usize>,
    /// A short, small run to check the set-up: 256M volume, 3 s jobs, 1 round.
    #[arg(long)]
    quick: bool,
    /// Work directory for the volume, the target and logs; must not be tmpfs (O_DIRECT).
    #[arg(long, default_value = "/var/tmp/ferry-perf")]
    dir: PathBuf,
    /// The ferry binary. Default: next to this benchmark if it is a release build, else
    /// target/release/ferry in the workspace.
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Run only the peers (fio, and qemu-nbd serving the source file): checks the set-up
    /// when no ferry binary is at hand. No ratios.
    #[arg(long, conflicts_with = "ferry")]
    without_ferry: bool,
    /// Also write the report into this markdown file (e.g. perf/RESULTS.md), keeping its header.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of markdown.
    #[arg(long)]
    json: bool,
    /// Seed of the random source data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up on one hydration or one fio pass over the volume after this many seconds.
    /// Default: 120 + 1 s per 8 MiB of volume.
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Keep the volume, target and fio files in --dir (logs are always kept).
    #[arg(long)]
    keep: bool,
    /// Skip (a2), hydration with the source copied onto a zram RAM disk made for the run
    /// (needs root, the zram module and RAM for a copy of the volume).
    #[arg(long)]
    no_second_device: bool,
    #[command(flatten)]
    tuning: TuningArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Migrate a realistic ext4 volume over emulated WAN links: ferry (compression auto and
    /// off) against nbdcopy and qemu-img convert; time, wire bytes, CPU, ratios.
    Wan(wan_bench::WanArgs),
    /// Issue 5, benchmark 1: on-demand 4 KiB random-read latency while the background
    /// saturates an emulated 100 Mbit/s, 40 ms link, against the background paused, in
    /// both QoS modes (separate on a DSCP-priority link, shared on a FIFO link).
    Qos(issue5::qos::QosArgs),
    /// Issue 5, benchmark 2: a recorded workload (mount, find, read files) replayed on a
    /// fresh migration over an emulated 100 Mbit/s, 40 ms link, with recording-driven
    /// prefetch and without.
    Prefetch(issue5::prefetch::PrefetchArgs),
}

/// Ferry's tuning flags, passed through to `ferry frontend` / `ferry backend`.
#[derive(Args, Debug, Clone)]
struct TuningArgs {
    /// Passed to `ferry frontend --chunk-size`.
    #[arg(long)]
    chunk_size: Option<String>,
    /// Passed to `ferry frontend --cores`.
    #[arg(long)]
    frontend_cores: Option<usize>,
    /// Passed to `ferry backend --cores`.
    #[arg(long)]
    backend_cores: Option<usize>,
    /// Passed to `ferry frontend --batch-chunks`.
    #[arg(long)]
    batch_chunks: Option<usize>,
    /// Passed to `ferry frontend --background-in-flight`.
    #[arg(long)]
    background_in_flight: Option<usize>,
}

impl From<TuningArgs> for Tuning {
    fn from(t: TuningArgs) -> Tuning {
        Tuning {
            chunk_size: t.chunk_size,
            frontend_cores: t.frontend_cores,
            backend_cores: t.backend_cores,
            batch_chunks: t.batch_chunks,
            background_in_flight: t.background_in_flight,
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    ferry_perf::wan::parse_bytes(s)
}

static START: OnceLock<Instant> = OnceLock::new();
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A condition that weakens the numbers: printed now and listed in the report.
pub fn warn(msg: &str) {
    progress(&format!("warning: {msg}"));
    WARNINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(msg.to_string());
}

/// The warnings so far, for the report.
fn warnings() -> Vec<String> {
    WARNINGS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Progress goes to stderr so stdout carries only the report.
pub fn progress(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[ferry-perf {t:7.1}s] {msg}");
}

/// Removes the large work files when the run ends (declared before the processes that
/// use them, so it drops after them).
struct Cleanup {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for p in &self.paths {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The command, run as root from the workspace root, that repeats this run.
fn reproduce_command(with_ferry: bool) -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let build = if with_ferry {
        "cargo build --release && "
    } else {
        ""
    };
    let mut s = format!("{build}cargo run --release -p ferry-perf --");
    for a in args {
        s.push(' ');
        s.push_str(&a);
    }
    s
}

fn mib_s(b: f64) -> String {
    format!("{:.0} MiB/s", b / MIB as f64)
}

/// Finds the ferry binary and warns about what would make its numbers mean little.
fn open_ferry(explicit: Option<&Path>, tuning: Tuning) -> Result<Ferry> {
    let bin = ferry::locate(explicit)?;
    progress(&format!("ferry binary: {}", bin.display()));
    if let Some(newer) = ferry::newer_source_than(&bin) {
        warn(&format!(
            "{} is newer than the ferry binary; rebuild (cargo build --release) unless that is intended",
            newer.display()
        ));
    }
    if bin.components().any(|c| c.as_os_str() == "debug") {
        warn(&format!(
            "{} looks like a debug build; its numbers mean little",
            bin.display()
        ));
    }
    Ok(Ferry { bin, tuning })
}

fn run(cli: Cli) -> Result<Report> {
    START.get_or_init(Instant::now);
    system::require_tool("fio", "fio")?;
    system::require_tool("qemu-nbd", "qemu-utils")?;
    if !system::is_root() {
        warn("not root; the page cache cannot be dropped and the source read may come from RAM");
    }
    let ferry = if cli.without_ferry {
        None
    } else {
        Some(open_ferry(cli.ferry.as_deref(), cli.tuning.clone().into())?)
    };

    let size_bytes = cli
        .size
        .unwrap_or(if cli.quick { 256 * MIB } else { 2048 * MIB });
    if size_bytes < 16 * MIB || size_bytes & (MIB - 1) != 0 {
        bail!("--size must be a whole number of MiB, at least 16M");
    }
    let runtime_s = cli.runtime.unwrap_or(if cli.quick { 3 } else { 15 }).max(1);
    let repeat = cli.repeat.unwrap_or(if cli.quick { 1 } else { 2 }).max(1);
    let timeout = Duration::from_secs(cli.timeout_secs.unwrap_or(120 + size_bytes / (8 * MIB)));

    // Peak disk use: the source plus either the target or fio's scratch file.
    let work = system::prepare_work_dir(&cli.dir, 2 * size_bytes + 256 * MIB)?;
    // Logs of this run only: server logs are appended to, so old ones would mislead.
    let logs = work.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let source = work.join("source.img");
    let target = work.join("target.img");
    let scratch = work.join("fio-write.img");
    let state_dir = work.join("state");
    let ferry_sock = work.join("ferry-nbd.sock");
    let qemu_sock = work.join("qemu-nbd.sock");
    let _cleanup = Cleanup {
        paths: vec![
            source.clone(),
            source.with_extension("json"),
            target.clone(),
            scratch.clone(),
            state_dir.clone(),
            ferry_sock.clone(),
            qemu_sock.clone(),
        ],
        keep: cli.keep,
    };
    let machine = system::Machine::describe(&work);
    progress(&format!(
        "work directory {} ({}), logs in {}",
        work.display(),
        machine.work_dir_fs,
        logs.display()
    ));

    progress(&format!(
        "writing a {} MiB source of random data (seed {})",
        size_bytes / MIB,
        cli.seed
    ));
    let reused = source::ensure(&source, size_bytes, cli.seed)?;
    if reused {
        progress("reusing the identical source left by a previous --keep run");
    }
    // (a2)'s second device, made once for all rounds. Declared before `live` so it is
    // removed only after the servers that hold it open have stopped.
    let zram = if cli.no_second_device {
        Err("--no-second-device was given".to_string())
    } else {
        progress(&format!(
            "(a2) copying the source onto a new zram device ({} MiB of RAM)",
            size_bytes / MIB
        ));
        match zram::Zram::with_copy_of(&source, size_bytes) {
            Ok(z) => {
                progress(&format!("  {}", z.path.display()));
                Ok(z)
            }
            Err(e) => {
                let why = format!("no second device for (a2), so it is skipped: {e:#}");
                warn(&why);
                Err(format!("{e:#}"))
            }
        }
    };
    let (zram, second_device_skipped) = match zram {
        Ok(z) => (Some(z), None),
        Err(why) => (None, Some(why)),
    };
    let logs_second = logs.join("second-device");
    if zram.is_some() {
        std::fs::create_dir_all(&logs_second)?;
    }
    let page_cache_dropped = system::drop_caches();

    // (a) hydration, with its fio peers, round by round.
    let mut hyd = Hydration {
        fio_read_command: hydrate::fio_read_job(&source).command_line(),
        fio_write_command: hydrate::fio_write_job(&scratch, size_bytes).command_line(),
        second_device: zram.as_ref().map(|z| SecondDevice {
            device: z.path.display().to_string(),
            how: z.how.clone(),
            fio_read_command: hydrate::fio_read_device_job(&z.path, size_bytes).command_line(),
            fio_write_command: hydrate::fio_write_job(&scratch, size_bytes).command_line(),
            ..SecondDevice::default()
        }),
        second_device_skipped,
        ..Hydration::default()
    };
    let mut mem = Memory::default();
    let mut live: Option<hydrate::LiveFerry> = None;
    for round in 1..=repeat {
        live = None; // the previous round's servers stop before anything else runs
        let _ = std::fs::remove_file(&target);
        let tag = round.to_string();

        progress(&format!(
            "(a) round {round}/{repeat}: fio sequential read of the source"
        ));
        system::drop_caches();
        let r = fio::run(&hydrate::fio_read_job(&source), &tag, &logs, false, timeout)?;
        progress(&format!("  {}", mib_s(r.bytes_per_s)));
        hyd.fio_read.push(r);

        progress(&format!(
            "(a) round {round}/{repeat}: fio sequential write of a new {} MiB file",
            size_bytes / MIB
        ));
        let r = fio_write(&scratch, size_bytes, &tag, &logs, timeout)?;
        hyd.fio_write.push(r);

        progress(&format!(
            "(a) round {round}/{repeat}: fio read of the source and write of a new file at once"
        ));
        system::drop_caches();
        let both = concurrent_fio(&source, &scratch, size_bytes, &tag, &logs, timeout)?;
        let _ = std::fs::remove_file(&scratch);
        progress(&format!("  {}", mib_s(both)));
        hyd.fio_concurrent.push(both);

        if let Some(f) = &ferry {
            progress(&format!("(a) round {round}/{repeat}: ferry hydration"));
            let paths = hydrate::Paths {
                source: &source,
                target: &target,
                state_dir: &state_dir,
                socket: &ferry_sock,
                log_dir: &logs,
            };
            let (h, l) = hydrate::ferry_round(f, &paths, size_bytes, round, timeout)?;
            progress(&format!(
                "  {} ({:.2} s, {} sampled blocks match the source)",
                mib_s(h.bytes_per_s),
                h.elapsed_s,
                h.blocks_verified
            ));
            mem.frontend_hydration_peak_rss_kib = mem
                .frontend_hydration_peak_rss_kib
                .max(Some(h.frontend_peak_rss_kib));
            mem.backend_hydration_peak_rss_kib = mem
                .backend_hydration_peak_rss_kib
                .max(Some(h.backend_peak_rss_kib));
            hyd.ferry.push(h);
            live = Some(l);
        }

        // (a2): the same round with the source on the zram device.
        if let (Some(z), Some(sd)) = (&zram, hyd.second_device.as_mut()) {
            // (a)'s servers stop, and its target goes, before anything of (a2) runs.
            live = None;
            let _ = std::fs::remove_file(&target);
            let dev = z.path.display();

            progress(&format!(
                "(a2) round {round}/{repeat}: fio sequential read of {dev}"
            ));
            system::drop_caches();
            let r = fio::run(
                &hydrate::fio_read_device_job(&z.path, size_bytes),
                &tag,
                &logs_second,
                false,
                timeout,
            )?;
            progress(&format!("  {}", mib_s(r.bytes_per_s)));
            sd.fio_read.push(r);

            progress(&format!(
                "(a2) round {round}/{repeat}: fio sequential write of a new {} MiB file",
                size_bytes / MIB
            ));
            let r = fio_write(&scratch, size_bytes, &tag, &logs_second, timeout)?;
            sd.fio_write.push(r);

            if let Some(f) = &ferry {
                progress(&format!(
                    "(a2) round {round}/{repeat}: ferry hydration from {dev}"
                ));
                let paths = hydrate::Paths {
                    source: &z.path,
                    target: &target,
                    state_dir: &state_dir,
                    socket: &ferry_sock,
                    log_dir: &logs_second,
                };
                let (h, l) = hydrate::ferry_round(f, &paths, size_bytes, round, timeout)?;
                progress(&format!(
                    "  {} ({:.2} s, {} sampled blocks match {dev})",
                    mib_s(h.bytes_per_s),
                    h.elapsed_s,
                    h.blocks_verified
                ));
                sd.ferry.push(h);
                live = Some(l);
            }
        }
    }
    if let Some(sd) = hyd.second_device.as_mut() {
        sd.summarize();
    }
    hyd.fio_read_bytes_per_s = report::median(hyd.fio_read.iter().map(|r| r.bytes_per_s).collect());
    hyd.fio_write_bytes_per_s =
        report::median(hyd.fio_write.iter().map(|r| r.bytes_per_s).collect());
    hyd.fio_concurrent_bytes_per_s = report::median(hyd.fio_concurrent.clone());
    if !hyd.ferry.is_empty() {
        let f = report::median(hyd.ferry.iter().map(|r| r.bytes_per_s).collect());
        hyd.ferry_bytes_per_s = Some(f);
        hyd.ratio_to_slower_fio = Some(f / hyd.fio_read_bytes_per_s.min(hyd.fio_write_bytes_per_s));
        hyd.ratio_to_concurrent_fio = Some(f / hyd.fio_concurrent_bytes_per_s);
    }

    // (b) serving: the frontend left running by the last round (its (a2) hydration when
    // (a2) ran, else its (a) one), and qemu-nbd on its target.
    let mut settle_s = None;
    if let (Some(l), Some(f)) = (live.as_mut(), ferry.as_ref()) {
        progress("(b) waiting for the frontend's dedup indexing of the migrated chunks");
        let waited = hydrate::wait_settled(f, l)?;
        progress(&format!("  done after {:.1} s", waited.as_secs_f64()));
        settle_s = Some(waited.as_secs_f64());
    }
    let served_file: &Path = live.as_ref().map_or(&source, |l| &l.target);
    progress(&format!(
        "(b) starting qemu-nbd on {}",
        served_file.display()
    ));
    let mut qemu = qemu_nbd::start(served_file, &qemu_sock, &logs.join("qemu-nbd.log"))?;
    progress(&format!("  {}", qemu.command_line));
    let mut servers = Vec::new();
    if let Some(l) = &live {
        if let Err(e) = l.frontend.reset_hwm() {
            warn(&format!(
                "cannot reset the frontend's peak RSS, (b) includes (a): {e:#}"
            ));
        }
        servers.push(serve::Server {
            name: "ferry".into(),
            socket: l.socket.display().to_string(),
        });
    }
    servers.push(serve::Server {
        name: "qemu-nbd".into(),
        socket: qemu_sock.display().to_string(),
    });
    let runs = serve::run(&servers, runtime_s, repeat, &logs)?;
    if let Some(l) = live.as_mut() {
        l.frontend.check_alive()?;
        l.backend.check_alive()?;
        mem.frontend_serving_peak_rss_kib = Some(l.frontend.vm_hwm_kib()?);
    }
    qemu.proc.check_alive()?;
    mem.qemu_nbd_serving_peak_rss_kib = Some(qemu.proc.vm_hwm_kib()?);
    drop(qemu.proc);
    drop(live);

    let jobs = serve::JOBS
        .iter()
        .zip(runs)
        .map(|(job, per_server)| {
            let results: Vec<ServerResult> = servers
                .iter()
                .zip(per_server)
                .map(|(s, runs)| ServerResult {
                    name: s.name.clone(),
                    median: Median::of(&runs),
                    runs,
                })
                .collect();
            let ratio =
                (results.len() == 2).then(|| Ratios::of(&results[0].median, &results[1].median));
            ServingJob {
                key: job.key.into(),
                label: job.label.into(),
                fio_command: serve::fio_job(job, "nbd+unix:///vol?socket=SOCKET", runtime_s)
                    .command_line(),
                servers: results,
                ratio,
            }
        })
        .collect();
    let serving = Serving {
        served_file: served_file_note(&cli, hyd.second_device.is_some()),
        qemu_nbd_command: qemu.command_line,
        settle_s,
        jobs,
    };
    let verdicts = report::verdicts(&hyd, &serving);
    Ok(Report {
        machine,
        reproduce: reproduce_command(ferry.is_some()),
        source_revision: ferry::source_revision(),
        quick: cli.quick,
        ferry: ferry.as_ref().map(|f| FerryInfo {
            binary: f.bin.display().to_string(),
            version: f.version(),
            tuning: f.tuning.clone(),
        }),
        size_bytes,
        source: "seeded random data written in 1 MiB pieces, no holes and no zero chunks (checked with SEEK_HOLE), \
                 so neither side can skip anything"
            .into(),
        page_cache_dropped,
        runtime_s,
        repeat,
        hydration: hyd,
        serving,
        memory: mem,
        verdicts,
        warnings: warnings(),
    })
}

fn served_file_note(cli: &Cli, second_device: bool) -> String {
    if cli.without_ferry {
        "the source file (no ferry target in --without-ferry)".into()
    } else if second_device {
        "the target of the last round's (a2) hydration, a file on the disk (both servers serve the same file)"
            .into()
    } else {
        "the target of the last round's (a) hydration (both servers serve the same file)".into()
    }
}

/// fio writing a new file of the volume's size (the frontend's side), page cache dropped
/// first; the file is removed afterwards.
fn fio_write(
    scratch: &Path,
    size_bytes: u64,
    tag: &str,
    logs: &Path,
    timeout: Duration,
) -> Result<fio::FioRun> {
    let _ = std::fs::remove_file(scratch);
    system::drop_caches();
    let r = fio::run(
        &hydrate::fio_write_job(scratch, size_bytes),
        tag,
        logs,
        false,
        timeout,
    );
    let _ = std::fs::remove_file(scratch);
    let r = r?;
    progress(&format!("  {}", mib_s(r.bytes_per_s)));
    Ok(r)
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(mode) = cli.mode.take() {
        START.get_or_init(Instant::now);
        let r = match mode {
            Mode::Wan(args) => wan_bench::main(args),
            Mode::Qos(args) => {
                let (json, results) = (args.common.json, args.common.results.clone());
                issue5::qos::run(args)
                    .and_then(|r| issue5::finish("qos", &r, r.markdown(), json, results.as_deref()))
            }
            Mode::Prefetch(args) => {
                let (json, results) = (args.common.json, args.common.results.clone());
                issue5::prefetch::run(args).and_then(|r| {
                    issue5::finish("prefetch", &r, r.markdown(), json, results.as_deref())
                })
            }
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-perf: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let json = cli.json;
    let results = cli.results.clone();
    match run(cli) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("ferry-perf: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.markdown());
            }
            if let Some(p) = results {
                if let Err(e) = report.write_results(&p) {
                    eprintln!("ferry-perf: {e:#}");
                    return ExitCode::FAILURE;
                }
                progress(&format!("results written to {}", p.display()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the read and the write fio jobs at the same time and returns the rate of the copy
/// they amount to: size / the longer of the two runtimes.
fn concurrent_fio(
    source: &Path,
    scratch: &Path,
    size_bytes: u64,
    tag: &str,
    logs: &Path,
    timeout: Duration,
) -> Result<f64> {
    let tag = format!("{tag}-concurrent");
    let (r, w) = std::thread::scope(|s| {
        let r = s.spawn(|| fio::run(&hydrate::fio_read_job(source), &tag, logs, false, timeout));
        let w = s.spawn(|| {
            fio::run(
                &hydrate::fio_write_job(scratch, size_bytes),
                &tag,
                logs,
                false,
                timeout,
            )
        });
        (r.join(), w.join())
    });
    let r = r.map_err(|_| anyhow::anyhow!("fio read thread panicked"))??;
    let w = w.map_err(|_| anyhow::anyhow!("fio write thread panicked"))??;
    let ms = r.runtime_ms.max(w.runtime_ms).max(1);
    Ok(size_bytes as f64 / (ms as f64 / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(report::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(report::median(vec![4.0, 1.0]), 2.5);
    }
}
