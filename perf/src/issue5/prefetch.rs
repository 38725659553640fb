//! `ferry-perf prefetch`: a recorded workload replayed on a fresh migration, with
//! recording-driven prefetch and without (issue 5, benchmark 2).
//!
//! 1. Record: `ferry record` serves a copy of the sample over NBD and records every
//!    request while the workload ([`super::workload`]: nbdfuse → loop → `mount -o ro` →
//!    `find | wc -l` → read a fixed set of files) runs against it; SIGTERM ends it.
//! 2. Replay, each on a fresh migration through the emulator (100 Mbit/s, 40 ms RTT,
//!    strict DSCP priority: the default `--qos separate` on a QoS-ready network): the
//!    frontend started with `--prefetch REC` and without; the same workload (the same
//!    files) starts as soon as the frontend serves and is timed from its "serving" line to
//!    the last file read. The page cache is dropped before each. The hit rate is
//!    `prefetch_hits / prefetch_reads` of `ferry status --json` at the end.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::rig::{Files, Rig};
use super::workload::{self, Done};
use super::{mib, CommonArgs, Header};
use crate::child::Proc;
use crate::ferry::VOLUME;
use crate::{progress, system, MIB};

pub const SPEEDUP_GOAL: f64 = 2.0;
pub const HIT_RATE_GOAL: f64 = 0.8;

#[derive(Args, Debug)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Bytes of files the workload reads (K, M, G suffixes). Default: 1/16 of the volume.
    #[arg(long, value_parser = crate::parse_size)]
    pub workload_bytes: Option<u64>,
    /// Rounds of (with, without), the order reversed every other round; medians shown.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Give up on one workload run after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub prefetch: bool,
    pub round: usize,
    pub done: Done,
    pub frontend_start_up_s: f64,
    pub prefetch_reads: u64,
    pub prefetch_hits: u64,
    /// Misses whose chunks a background batch was already carrying.
    pub prefetch_late: u64,
    pub prefetch_class_at_end: String,
    pub prefetch_batches: std::collections::BTreeMap<String, u64>,
    pub fetched_bytes_on_demand: u64,
    pub fetched_bytes_background: u64,
    pub chunks_untouched: u64,
    pub chunks_total: u64,
    pub fetched_chunks_on_demand: u64,
    /// The frontend's fetch latencies per class at the end (µs).
    pub fetch_latency_us: Option<crate::ferry::FetchLatencies>,
}

impl Replay {
    pub fn hit_rate(&self) -> Option<f64> {
        (self.prefetch_reads > 0).then(|| self.prefetch_hits as f64 / self.prefetch_reads as f64)
    }
}

#[derive(Debug, Serialize)]
pub struct PrefetchReport {
    pub header: Header,
    pub recording: Done,
    pub recording_summary: String,
    /// Distinct chunks the recording read (`ferry recording info --json`) and their size.
    pub recorded_chunks: Option<u64>,
    pub chunk_bytes: Option<u64>,
    pub workload_files: u64,
    pub workload_bytes: u64,
    pub replays: Vec<Replay>,
    pub with_s: f64,
    pub without_s: f64,
    pub speedup: f64,
    pub hit_rate_with: Option<f64>,
    pub hit_rate_without: Option<f64>,
    pub verdicts: Vec<String>,
}

/// The median of the times of the runs with (`true`) or without prefetch.
fn median_time(replays: &[Replay], prefetch: bool) -> f64 {
    crate::report::median(
        replays
            .iter()
            .filter(|r| r.prefetch == prefetch)
            .map(|r| r.done.seconds)
            .collect(),
    )
}

/// Hits / reads summed over the runs with or without prefetch.
fn hit_rate(replays: &[Replay], prefetch: bool) -> Option<f64> {
    let (h, r) = replays
        .iter()
        .filter(|x| x.prefetch == prefetch)
        .fold((0, 0), |(h, r), x| {
            (h + x.prefetch_hits, r + x.prefetch_reads)
        });
    (r > 0).then(|| h as f64 / r as f64)
}

/// `summary.chunks_touched` and `identity.chunk_size_bytes` of `ferry recording info --json`.
pub fn recording_chunks(v: &serde_json::Value) -> (Option<u64>, Option<u64>) {
    (
        v["summary"]["chunks_touched"].as_u64(),
        v["identity"]["chunk_size_bytes"].as_u64(),
    )
}

pub fn verdicts(speedup: f64, hit_rate_with: Option<f64>) -> Vec<String> {
    let yes = |b: bool| if b { "met" } else { "NOT met" };
    vec![
        format!(
            "workload >= {SPEEDUP_GOAL}x faster with recording-driven prefetch: **{}** — {speedup:.2}x",
            yes(speedup >= SPEEDUP_GOAL)
        ),
        format!(
            "prefetch hit rate >= {:.0}%: **{}** — {}",
            HIT_RATE_GOAL * 100.0,
            yes(hit_rate_with.is_some_and(|h| h >= HIT_RATE_GOAL)),
            hit_rate_with.map_or("no reads counted".into(), |h| format!("{:.1}%", h * 100.0))
        ),
    ]
}

pub fn run(args: PrefetchArgs) -> Result<PrefetchReport> {
    let c = &args.common;
    for (tool, package) in [
        ("nbdfuse", "nbdfuse"),
        ("fusermount3", "fuse3"),
        ("losetup", "mount"),
        ("mount", "mount"),
        ("dumpe2fs", "e2fsprogs"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
    ] {
        system::require_tool(tool, package)?;
    }
    if !system::is_root() {
        bail!("ferry-perf prefetch needs root (loop devices, mount, dropping the page cache)");
    }
    let ferry = crate::open_ferry(c.ferry.as_deref(), c.tuning.clone().into())?;
    let help = crate::child::run_capture(
        Command::new(&ferry.bin).args(["frontend", "--help"]),
        Duration::from_secs(10),
    )?;
    if !help.contains("--prefetch") {
        bail!(
            "{} has no `frontend --prefetch`: build a ferry with recording-driven prefetch",
            ferry.bin.display()
        );
    }
    let size_bytes = c.size_bytes();
    if size_bytes < 64 * MIB || size_bytes & (MIB - 1) != 0 {
        bail!("--size must be a whole number of MiB, at least 64M (the ext4 sample's minimum)");
    }
    let budget = args.workload_bytes.unwrap_or(size_bytes / 16);
    let repeat = args.repeat.max(1);
    let timeout = Duration::from_secs(args.timeout_secs);
    // The sample, its staging copy while it is made, the recording's copy, one target.
    let super::Workspace {
        run_dir,
        logs,
        machine,
        sample,
    } = super::Workspace::prepare(c, "prefetch", size_bytes, 4 * size_bytes + 256 * MIB)?;

    // 1. Record the workload on a copy of the sample.
    let copy = run_dir.join("recorded-source.img");
    let rec = run_dir.join("workload.ferryrec");
    progress(&format!(
        "recording: copying the sample to {}",
        copy.display()
    ));
    std::fs::copy(&sample.path, &copy).context("copy the sample")?;
    let rec_sock = run_dir.join("record.sock");
    let mut recorder = Proc::spawn(
        "ferry record",
        Command::new(&ferry.bin)
            .arg("record")
            .arg("--source")
            .arg(&copy)
            .arg("--nbd")
            .arg(format!("unix:{}", rec_sock.display()))
            .arg("--out")
            .arg(&rec)
            .args(["--name", VOLUME]),
        &logs.join("ferry-record.log"),
        true,
    )?;
    recorder.wait_line("ferry record serving ", crate::ferry::READY_TIMEOUT)?;
    system::drop_caches();
    progress("recording: the workload (nbdfuse, losetup -r, mount -o ro, find, read files)");
    let uri = |sock: &std::path::Path| format!("nbd+unix:///{VOLUME}?socket={}", sock.display());
    let (recording, files) =
        workload::run(&uri(&rec_sock), &run_dir, &logs, "record", None, budget)?;
    recorder.terminate(Duration::from_secs(120))?;
    // Its last words, still in the line channel after the exit.
    let recording_summary = recorder
        .wait_line("ferry record stopped: ", Duration::from_secs(5))
        .map(|rest| {
            let events = rest.split(" into ").next().unwrap_or(&rest).to_string();
            let dropped = rest
                .split_once(" (")
                .map_or("", |(_, d)| d.split(')').next().unwrap_or(""));
            format!("{events} ({dropped})")
        })
        .unwrap_or_else(|e| format!("(no summary line from ferry record: {e:#})"));
    drop(recorder);
    let _ = std::fs::remove_file(&copy);
    let (recorded_chunks, chunk_bytes) = crate::child::run_capture(
        Command::new(&ferry.bin)
            .args(["recording", "info", "--json"])
            .arg(&rec),
        Duration::from_secs(60),
    )
    .ok()
    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    .map_or((None, None), |v| recording_chunks(&v));
    progress(&format!(
        "recorded: {} files found, {} files / {} MiB read in {:.1} s; {recording_summary}",
        recording.files_found,
        recording.files_read,
        mib(recording.bytes_read as f64),
        recording.seconds
    ));

    // 2. Replays.
    let rfiles = Files::in_dir(&run_dir);
    let mut replays = Vec::new();
    for round in 1..=repeat {
        let mut order = [true, false];
        if round % 2 == 0 {
            order.reverse();
        }
        for prefetch in order {
            let name = if prefetch {
                "with prefetch"
            } else {
                "without prefetch"
            };
            progress(&format!("replay round {round}/{repeat}: {name}"));
            let mut flags: Vec<OsString> = Vec::new();
            if prefetch {
                flags.push("--prefetch".into());
                flags.push((&rec).into());
            }
            let tag = format!("{}-{round}", if prefetch { "with" } else { "without" });
            let mut rig = Rig::start(&ferry, &sample.path, &rfiles, true, &flags, &logs, &tag)?;
            let since_ready = rig.ready_at.elapsed();
            let t = Instant::now();
            let (mut done, _) =
                workload::run(&uri(&rfiles.socket), &run_dir, &logs, &tag, Some(&files), 0)?;
            if t.elapsed() > timeout {
                crate::warn(&format!(
                    "{name}: the workload took longer than {timeout:?}"
                ));
            }
            // From the frontend's "serving" line, not from the workload's start.
            done.seconds += since_ready.as_secs_f64();
            let st = ferry.status(&rfiles.state_dir)?;
            rig.check_alive()?;
            let r = Replay {
                prefetch,
                round,
                done,
                frontend_start_up_s: rig.start_up.as_secs_f64(),
                prefetch_reads: st.prefetch_reads,
                prefetch_hits: st.prefetch_hits,
                prefetch_late: st.prefetch_late,
                prefetch_class_at_end: st.prefetch_class.clone(),
                prefetch_batches: st.prefetch_batches.clone(),
                fetched_bytes_on_demand: st.fetched_bytes_on_demand,
                fetched_bytes_background: st.fetched_bytes_background,
                chunks_untouched: st.chunks_untouched,
                chunks_total: st.chunks_total,
                fetched_chunks_on_demand: st.fetched_chunks_on_demand,
                fetch_latency_us: st.fetch_latency_us.clone(),
            };
            progress(&format!(
                "  {:.1} s (find {:.1} s), hit rate {}, on-demand {} MiB, background {} MiB",
                r.done.seconds,
                r.done.find_seconds,
                r.hit_rate()
                    .map_or("–".into(), |h| format!("{:.1}%", h * 100.0)),
                mib(r.fetched_bytes_on_demand as f64),
                mib(r.fetched_bytes_background as f64)
            ));
            drop(rig);
            rfiles.remove();
            replays.push(r);
        }
    }
    let with_s = median_time(&replays, true);
    let without_s = median_time(&replays, false);
    let speedup = without_s / with_s.max(1e-9);
    let hit_rate_with = hit_rate(&replays, true);
    let hit_rate_without = hit_rate(&replays, false);
    let header = super::header(machine, &ferry, c.quick, &sample);
    Ok(PrefetchReport {
        header,
        workload_files: recording.files_read,
        workload_bytes: recording.bytes_read,
        recording,
        recording_summary,
        recorded_chunks,
        chunk_bytes,
        replays,
        with_s,
        without_s,
        speedup,
        hit_rate_with,
        hit_rate_without,
        verdicts: verdicts(speedup, hit_rate_with),
    })
}

fn lat(l: Option<&crate::ferry::FetchLatency>) -> String {
    match l {
        Some(l) if l.count > 0 => format!(
            "{:.0} / {:.0} / {:.0}",
            l.p50 as f64 / 1000.0,
            l.p99 as f64 / 1000.0,
            l.max as f64 / 1000.0
        ),
        _ => "–".into(),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |h| format!("{:.1}%", h * 100.0))
}

impl PrefetchReport {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        self.header.markdown(
            "Recorded workload replayed with and without prefetch (`ferry-perf prefetch`)",
            &mut o,
        );
        let _ = writeln!(
            o,
            "* Workload: nbdfuse → `losetup -r` → `mount -o ro,noload` → `find MNT -type f | wc -l` ({} files) → read {} files, {} MiB (every file under {} in that order, sorted, up to the budget) → umount",
            self.recording.files_found,
            self.workload_files,
            mib(self.workload_bytes as f64),
            workload::WORKLOAD_DIRS.map(|d| format!("/{d}")).join(", ")
        );
        let _ = writeln!(
            o,
            "* Recorded with `ferry record --source COPY_OF_SAMPLE --nbd unix:SOCK --out workload.ferryrec --name vol` (workload took {:.1} s on the local copy), stopped with SIGTERM; `ferry record` said: {}",
            self.recording.seconds, self.recording_summary
        );
        if let (Some(n), Some(cb)) = (self.recorded_chunks, self.chunk_bytes) {
            let _ = writeln!(
                o,
                "* The recording read {n} distinct chunks of {} KiB = {} MiB: at the link's rate that is {:.1} s of transfer (less what compression and zero chunks save), a floor for the workload on a fresh migration whatever the prefetch order",
                cb >> 10,
                mib((n * cb) as f64),
                (n * cb) as f64 / super::LINK_RATE_BYTES_PER_S as f64
            );
        }
        let _ = writeln!(
            o,
            "* Replay: fresh target, state dir and dedup index each run; `ferry backend` → emulator with strict DSCP priority → `ferry frontend --dedup-index FRESH [--prefetch workload.ferryrec]` (default `--qos separate`, background unlimited); page cache dropped before; the workload starts when the frontend prints its serving line and is timed from that line to the last byte read"
        );
        let _ = writeln!(
            o,
            "* Hit rate: `prefetch_hits / prefetch_reads` of `ferry status --json` at the end of the workload (reads served during migration whose chunks were all on the target already); late: misses whose chunks a background batch was already carrying (`prefetch_late`)\n"
        );
        let _ = writeln!(
            o,
            "| run | time s | of which find s | hit rate | hits / reads | late | on-demand fetches (MiB) | on-demand fetch p50 / p99 / max ms | background fetch p50 / p99 / max ms | background MiB | chunks untouched at the end | prefetch batches by class |"
        );
        let _ = writeln!(
            o,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in &self.replays {
            let batches = r
                .prefetch_batches
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                o,
                "| {} (round {}) | {:.1} | {:.1} | {} | {} / {} | {} | {} ({}) | {} | {} | {} | {} of {} | {} |",
                if r.prefetch {
                    "with `--prefetch`"
                } else {
                    "without"
                },
                r.round,
                r.done.seconds,
                r.done.find_seconds,
                pct(r.hit_rate()),
                r.prefetch_hits,
                r.prefetch_reads,
                r.prefetch_late,
                r.fetched_chunks_on_demand,
                mib(r.fetched_bytes_on_demand as f64),
                lat(r.fetch_latency_us.as_ref().map(|l| &l.on_demand)),
                lat(r.fetch_latency_us.as_ref().map(|l| &l.background)),
                mib(r.fetched_bytes_background as f64),
                r.chunks_untouched,
                r.chunks_total,
                if batches.is_empty() {
                    "–".into()
                } else {
                    batches
                }
            );
        }
        let _ = writeln!(
            o,
            "\n| | with prefetch | without | speed-up (goal >= {SPEEDUP_GOAL}x) |\n|---|---:|---:|---:|\n| workload time s (median) | {:.1} | {:.1} | **{:.2}x** |\n| hit rate (goal >= {:.0}% with prefetch) | **{}** | {} | |",
            self.with_s,
            self.without_s,
            self.speedup,
            HIT_RATE_GOAL * 100.0,
            pct(self.hit_rate_with),
            pct(self.hit_rate_without)
        );
        let _ = writeln!(o, "\n### Verdicts\n");
        for v in &self.verdicts {
            let _ = writeln!(o, "* {v}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(prefetch: bool, secs: f64, hits: u64, reads: u64) -> Replay {
        Replay {
            prefetch,
            round: 1,
            done: Done {
                seconds: secs,
                ..Done::default()
            },
            frontend_start_up_s: 0.0,
            prefetch_reads: reads,
            prefetch_hits: hits,
            prefetch_late: 0,
            prefetch_class_at_end: String::new(),
            prefetch_batches: Default::default(),
            fetched_bytes_on_demand: 0,
            fetched_bytes_background: 0,
            chunks_untouched: 0,
            chunks_total: 0,
            fetched_chunks_on_demand: 0,
            fetch_latency_us: None,
        }
    }

    #[test]
    fn chunks_of_a_recording_info() {
        let v = serde_json::json!({
            "identity": {"chunk_size_bytes": 65536},
            "summary": {"chunks_touched": 2279, "events": 3038}
        });
        assert_eq!(recording_chunks(&v), (Some(2279), Some(65536)));
        assert_eq!(recording_chunks(&serde_json::json!({})), (None, None));
    }

    #[test]
    fn medians_hit_rates_and_verdicts() {
        let r = vec![
            replay(true, 10.0, 90, 100),
            replay(false, 30.0, 10, 100),
            replay(true, 12.0, 80, 100),
            replay(false, 26.0, 0, 0),
        ];
        assert_eq!(median_time(&r, true), 11.0);
        assert_eq!(median_time(&r, false), 28.0);
        assert_eq!(hit_rate(&r, true), Some(0.85));
        assert_eq!(hit_rate(&r, false), Some(0.1));
        assert_eq!(hit_rate(&[], true), None);
        let v = verdicts(28.0 / 11.0, Some(0.85));
        assert!(
            v[0].contains("**met**") && v[1].contains("**met**"),
            "{v:?}"
        );
        let v = verdicts(1.5, None);
        assert!(
            v[0].contains("NOT met") && v[1].contains("NOT met"),
            "{v:?}"
        );
    }
}
