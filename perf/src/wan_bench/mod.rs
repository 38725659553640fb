//! `ferry-perf wan`: migrating a realistic volume over an emulated WAN link, Ferry against
//! nbdcopy and `qemu-img convert`, in one run, as ratios.
//!
//! For every link (`RATE/RTT`; the emulator delays each direction by RTT/2 and gives each
//! direction one RATE shared by all connections) the same cached ext4 sample is copied by:
//! * ferry with all its WAN features: `ferry backend --fs-aware` → emulator →
//!   `ferry frontend --compress auto` with a fresh dedup index;
//! * the same with `--compress off`;
//! * nbdcopy and `qemu-img convert` from `qemu-nbd --read-only` behind the same emulator.
//!
//! and, on loopback without the emulator, ferry with compression auto and off. Each copy
//! is timed (ferry: frontend start to `chunks_untouched == 0`; peers: client start to
//! exit), its wire bytes are the emulator's server → client count (the same meter for
//! everyone), its CPU is the server's plus the client's, and its destination is checked
//! ([`verify`]) before the numbers count.
//!
//! Invariants: the default mode's work files are not touched (everything lives in
//! `DIR/wan/`, the sample next to it as a cache); every child process and proxy stops
//! when the run ends, also on error; every wait is bounded; runs share nothing (fresh
//! target, state dir and dedup index; the page cache dropped before each).

mod ferry_run;
mod link;
mod peer_run;
pub mod report;
pub(crate) mod sample;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use self::link::{parse_link, LinkSpec};
use self::peer_run::Client;
use self::report::{
    Commands, LinkResult, ToolResult, WanReport, FERRY_AUTO, FERRY_OFF, NBDCOPY, QEMU_IMG,
};
use crate::ferry::VOLUME;
use crate::fio::shell_quote;
use crate::report::FerryInfo;
use crate::{progress, system, TuningArgs, MIB};

#[derive(Args, Debug)]
pub struct WanArgs {
    /// Size of the ext4 sample volume (K, M, G suffixes; binary units). Default 4G, or
    /// 512M with --quick.
    #[arg(long, value_parser = crate::parse_size)]
    size: Option<u64>,
    /// Emulated links, RATE/RTT, comma-separated (rates as tc writes them: 100mbit, 1gbit);
    /// `none` runs loopback only.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100mbit/40ms,1gbit/10ms",
        value_parser = parse_link
    )]
    links: Vec<Option<LinkSpec>>,
    /// Rounds of everything, tools interleaved (the order reversed every other round).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Rounds on loopback (at least --repeat). A loopback copy takes seconds and moves with
    /// the disk's phase by +-20 %, so one round cannot tell auto from off.
    #[arg(long, default_value_t = 5)]
    loopback_repeat: usize,
    /// A small run to check the set-up: a 512M sample (the links stay as given).
    #[arg(long)]
    quick: bool,
    /// Work directory; the sample is cached here (keyed by size and seed), the runs use
    /// DIR/wan/. Must not be tmpfs (O_DIRECT).
    #[arg(long, default_value = "/var/tmp/ferry-perf")]
    dir: PathBuf,
    /// The ferry binary. Default: next to this benchmark if it is a release build, else
    /// target/release/ferry in the workspace.
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Also write the report into this markdown file (e.g. perf/RESULTS.md): its WAN block
    /// only, everything else is kept.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of markdown.
    #[arg(long)]
    json: bool,
    /// Seed of the sample.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up on one copy after this many seconds. Default: 300 + 4 x the time the
    /// volume takes at the link's rate.
    #[arg(long)]
    timeout_secs: Option<u64>,
    #[command(flatten)]
    tuning: TuningArgs,
}

fn timeout(args: &WanArgs, size_bytes: u64, link: Option<&LinkSpec>) -> Duration {
    if let Some(s) = args.timeout_secs {
        return Duration::from_secs(s);
    }
    let at_rate = link.map_or(size_bytes / (8 * MIB), |l| size_bytes / l.rate_bytes_per_s);
    Duration::from_secs(300 + 4 * at_rate)
}

pub fn run(args: WanArgs) -> Result<WanReport> {
    for (tool, package) in [
        ("qemu-nbd", "qemu-utils"),
        ("qemu-img", "qemu-utils"),
        ("nbdcopy", "libnbd-bin"),
        ("e2fsck", "e2fsprogs"),
        ("dumpe2fs", "e2fsprogs"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
    ] {
        system::require_tool(tool, package)?;
    }
    if !system::is_root() {
        crate::warn(
            "not root; the page cache cannot be dropped and the source read may come from RAM",
        );
    }
    let ferry = crate::open_ferry(args.ferry.as_deref(), args.tuning.clone().into())?;
    let size_bytes = args
        .size
        .unwrap_or(if args.quick { 512 * MIB } else { 4096 * MIB });
    if size_bytes < 64 * MIB || size_bytes & (MIB - 1) != 0 {
        bail!("--size must be a whole number of MiB, at least 64M (the ext4 sample's minimum)");
    }
    let repeat = args.repeat.max(1);
    let loopback_repeat = args.loopback_repeat.max(repeat);
    // The sample, its staging copy while it is made (about 70 %), and one destination.
    let work = system::prepare_work_dir(&args.dir, 3 * size_bytes + 256 * MIB)?;
    let run_dir = work.join("wan");
    let _ = std::fs::remove_dir_all(&run_dir);
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let machine = system::Machine::describe(&work);
    progress(&format!(
        "work directory {} ({}), logs in {}",
        work.display(),
        machine.work_dir_fs,
        logs.display()
    ));
    let sample = sample::ensure(&work, size_bytes, args.seed)?;
    let page_cache_dropped = system::drop_caches();

    let target = run_dir.join("target.img");
    let state_dir = run_dir.join("state");
    let socket = run_dir.join("ferry-nbd.sock");
    let dedup_index = run_dir.join("dedup.sqlite");
    let ferry_paths = ferry_run::Paths {
        target: &target,
        state_dir: &state_dir,
        socket: &socket,
        dedup_index: &dedup_index,
        logs: &logs,
    };
    let ferry_tools = || {
        vec![
            ToolResult::new(FERRY_AUTO, "ferry (fs-aware, compression auto, dedup)"),
            ToolResult::new(FERRY_OFF, "ferry, compression off"),
        ]
    };
    let mut qemu_nbd_command = String::new();
    let mut results = Vec::new();

    // Loopback first: it is quick and checks the whole set-up before the long runs.
    let mut lo = LinkResult::new(None, ferry_tools());
    for round in 1..=loopback_repeat {
        let mut order = [true, false];
        if round % 2 == 0 {
            order.reverse();
        }
        for compress in order {
            let key = if compress { FERRY_AUTO } else { FERRY_OFF };
            progress(&format!(
                "loopback, round {round}/{loopback_repeat}: {key} ({} MiB)",
                size_bytes >> 20
            ));
            let run = ferry_run::migrate(
                &ferry,
                &sample,
                &ferry_paths,
                None,
                compress,
                &format!("loopback-{key}-{round}"),
                timeout(&args, size_bytes, None),
            )?;
            progress(&format!(
                "  {:.1} s, {:.2} CPU s/GiB; {}",
                run.elapsed_s,
                run.cpu_s_per_gib(),
                run.verified
            ));
            lo.tool_mut(key).expect("listed").push(run);
        }
    }
    lo.compute_ratios();
    results.push(lo);

    for link in args.links.iter().flatten() {
        let mut tools = ferry_tools();
        tools.push(ToolResult::new(NBDCOPY, "nbdcopy"));
        tools.push(ToolResult::new(QEMU_IMG, "qemu-img convert"));
        let mut lr = LinkResult::new(Some(link.clone()), tools);
        let timeout = timeout(&args, size_bytes, Some(link));
        for round in 1..=repeat {
            let mut order = [FERRY_AUTO, FERRY_OFF, NBDCOPY, QEMU_IMG];
            if round % 2 == 0 {
                order.reverse();
            }
            for key in order {
                progress(&format!(
                    "{} ({link}), round {round}/{repeat}: {key}",
                    link.text
                ));
                let tag = format!("{}-{key}-{round}", link.text.replace('/', "-"));
                let run = match key {
                    FERRY_AUTO | FERRY_OFF => ferry_run::migrate(
                        &ferry,
                        &sample,
                        &ferry_paths,
                        Some(link),
                        key == FERRY_AUTO,
                        &tag,
                        timeout,
                    )?,
                    _ => {
                        let client = if key == NBDCOPY {
                            Client::Nbdcopy
                        } else {
                            Client::QemuImg
                        };
                        let (run, server) =
                            peer_run::copy(client, &sample, &target, link, &logs, &tag, timeout)?;
                        qemu_nbd_command = server;
                        run
                    }
                };
                progress(&format!(
                    "  {:.1} s, {} MiB on the wire, {:.2} CPU s/GiB; {}",
                    run.elapsed_s,
                    run.wire_bytes.unwrap_or(0) >> 20,
                    run.cpu_s_per_gib(),
                    run.verified
                ));
                lr.tool_mut(key).expect("listed").push(run);
            }
        }
        lr.compute_ratios();
        results.push(lr);
    }
    let _ = std::fs::remove_file(&target);

    let verdicts = report::verdicts(&results);
    let sample_path = sample.path.display().to_string();
    let commands = Commands {
        ferry_backend: format!(
            "ferry backend --listen 127.0.0.1:0 --volume {VOLUME}={sample_path} {}",
            ferry_run::BACKEND_FLAGS.join(" ")
        ),
        ferry_frontend: format!(
            "ferry frontend --backend EMULATOR_ADDR --volume {VOLUME} --target TARGET.img --state-dir STATE \
             --nbd unix:SOCKET {}",
            ferry_run::frontend_flags(true, std::path::Path::new("FRESH.sqlite"))
                .iter()
                .map(|a| shell_quote(&a.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        qemu_nbd: qemu_nbd_command,
        nbdcopy: Client::Nbdcopy.command_line(),
        qemu_img: Client::QemuImg.command_line(),
    };
    Ok(WanReport {
        machine,
        nbdcopy_version: system::version("nbdcopy"),
        qemu_img_version: system::version("qemu-img"),
        reproduce: crate::reproduce_command(true),
        source_revision: crate::ferry::source_revision(),
        quick: args.quick,
        ferry: FerryInfo {
            binary: ferry.bin.display().to_string(),
            version: ferry.version(),
            tuning: ferry.tuning.clone(),
        },
        sample_path,
        sample: sample.info.clone(),
        sample_reused: sample.reused,
        sample_allocated_bytes: sample.allocated_bytes,
        repeat,
        loopback_repeat,
        page_cache_dropped,
        cpu_method: "utime + stime of the server (ferry backend / qemu-nbd) from /proc/PID/stat when the copy \
                     is done, plus the client's (ferry frontend from /proc/PID/stat at the same moment; nbdcopy \
                     and qemu-img from wait4's rusage at exit), all threads; per GiB of volume. The emulator's \
                     own CPU (threads of ferry-perf) is not counted for anyone."
            .into(),
        commands,
        results,
        verdicts,
        warnings: crate::warnings(),
    })
}

/// Prints the report and writes the WAN block of `--results`.
pub fn main(args: WanArgs) -> Result<()> {
    let json = args.json;
    let results = args.results.clone();
    let report = run(args)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    if let Some(p) = results {
        let body = report.markdown();
        crate::results_file::rewrite(&p, |old| crate::results_file::with_wan_results(old, &body))?;
        progress(&format!("WAN results written to {}", p.display()));
    }
    Ok(())
}
