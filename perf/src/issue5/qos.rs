//! `ferry-perf qos`: on-demand 4 KiB random-read latency while the background migration
//! saturates the link, against the same with the background paused (issue 5, benchmark 1).
//!
//! Per case (QoS mode × emulator), on a fresh migration started with `--background-rate
//! 0`: N seconds of 4 KiB reads at queue depth 1 (paused), then `ferry set-rate
//! unlimited`, a warm-up for the link to fill, N seconds more (loaded). Reads come from a
//! blocking NBD client in this process, each timed around its request, into an
//! hdrhistogram. Rules that keep the figures about the link:
//! * reads go to distinct chunks of the second half of the volume that hold data in the
//!   source (holes and zero chunks need no transfer), never one chunk twice in a run (a
//!   chunk read once is local afterwards); hydration runs in order from the start and
//!   does not reach that half during the run;
//! * a read that took less than one one-way delay cannot have crossed the link: it is a
//!   hit (a hole or zero chunk the frontend knew, or a chunk the background brought), is
//!   counted and reported, and left out of the on-demand percentiles;
//! * compression is off, so the background's bytes are the link's bytes;
//! * the background's share of the link is measured over the loaded phase (Ferry's
//!   `fetched_bytes_background` and the emulator's server → client bytes).

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use control::nbd_client::NbdClient;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::fmt::Write as _;

use super::rig::{Files, Rig};
use super::{mib, ms, CommonArgs, Header, LINK_ONE_WAY_MS, LINK_RATE_BYTES_PER_S};
use crate::ferry::{Ferry, Status, VOLUME};
use crate::latency::{new_histogram, LatencySummary};
use crate::{progress, system, MIB};

/// The p99 goal of the issue: loaded / paused.
pub const P99_RATIO_GOAL: f64 = 1.5;
const READ_BYTES: usize = 4096;

#[derive(Args, Debug)]
pub struct QosArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds of reads per phase (paused, loaded). Default 20, or 8 with --quick.
    #[arg(long)]
    pub runtime: Option<u64>,
    /// Seconds between resuming the background and the loaded phase (the link fills).
    /// Default 5, or 3 with --quick.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Rounds of every case (the case order reversed every other round); medians of the
    /// ratios are the verdict. Default 3, or 1 with --quick.
    #[arg(long)]
    pub repeat: Option<usize>,
}

/// One case: a QoS mode on an emulator.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    key: &'static str,
    qos: &'static str,
    priority_by_dscp: bool,
    /// Whether the goal applies (the FIFO + separate row is context only).
    goal: bool,
}

const CASES: [Case; 3] = [
    Case {
        key: "separate, QoS-ready WAN (DSCP strict priority)",
        qos: "separate",
        priority_by_dscp: true,
        goal: true,
    },
    Case {
        key: "shared, QoS-less WAN (FIFO)",
        qos: "shared",
        priority_by_dscp: false,
        goal: true,
    },
    Case {
        key: "separate on a QoS-less WAN (FIFO), context only",
        qos: "separate",
        priority_by_dscp: false,
        goal: false,
    },
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    pub seconds: f64,
    pub reads: u64,
    /// Reads faster than one one-way delay: served from the target.
    pub hits: u64,
    /// Reads that crossed the link (the on-demand latency the goal is about).
    pub on_demand: Option<LatencySummary>,
    /// Every read, hits included.
    pub all: Option<LatencySummary>,
    /// Ferry's background and on-demand chunk bytes fetched during the phase.
    pub background_bytes: u64,
    pub on_demand_bytes: u64,
    /// Server → client bytes the emulator forwarded during the phase (all connections).
    pub wire_down_bytes: u64,
    /// The machine's 1-minute load average at the end of the phase (2 cores: above 2, the
    /// processes of the benchmark wait for a CPU).
    pub load_avg_1m: f64,
}

impl Phase {
    pub fn background_bytes_per_s(&self) -> f64 {
        self.background_bytes as f64 / self.seconds.max(1e-9)
    }
    pub fn link_use(&self) -> f64 {
        self.wire_down_bytes as f64 / self.seconds.max(1e-9) / LINK_RATE_BYTES_PER_S as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub round: usize,
    pub case: String,
    pub qos: String,
    pub emulator: String,
    pub goal_applies: bool,
    pub paused: Phase,
    pub loaded: Phase,
    /// On-demand p99 loaded / paused.
    pub p99_ratio: Option<f64>,
    pub p50_ratio: Option<f64>,
    /// `ferry status --json` at the end of the loaded phase.
    pub status_qos: String,
    pub background_window_chunks: u64,
    pub queue_delay_us: u64,
    pub base_rtt_us: u64,
}

#[derive(Debug, Serialize)]
pub struct QosReport {
    pub header: Header,
    pub runtime_s: u64,
    pub warmup_s: u64,
    pub frontend_flags: String,
    pub repeat: usize,
    pub cases: Vec<CaseResult>,
    pub summary: Vec<CaseSummary>,
    pub verdict: String,
}

/// The chunks of the second half of the source that hold data (not a hole, not all
/// zeros): the ones an on-demand read has to fetch across the link.
pub fn data_chunks_of_second_half(source: &Path, chunk_bytes: u64) -> Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(source)?;
    let chunks = f.metadata()?.len() / chunk_bytes;
    let mut buf = vec![0u8; chunk_bytes as usize];
    let mut out = Vec::new();
    for c in chunks.div_ceil(2)..chunks {
        f.read_exact_at(&mut buf, c * chunk_bytes)?;
        if buf.iter().any(|&b| b != 0) {
            out.push(c);
        }
    }
    Ok(out)
}

/// One case over every round.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub case: String,
    pub goal_applies: bool,
    pub p99_ratios: Vec<f64>,
    pub p99_ratio_median: Option<f64>,
    pub p50_ratio_median: Option<f64>,
    pub background_bytes_per_s_median: f64,
}

/// Per case (in [`CASES`] order), the medians over its rounds.
pub fn summarise_cases(cases: &[CaseResult]) -> Vec<CaseSummary> {
    let med = |v: Vec<f64>| (!v.is_empty()).then(|| crate::report::median(v));
    CASES
        .iter()
        .filter_map(|k| {
            let rs: Vec<&CaseResult> = cases.iter().filter(|c| c.case == k.key).collect();
            let first = rs.first()?;
            let p99_ratios: Vec<f64> = rs.iter().filter_map(|c| c.p99_ratio).collect();
            Some(CaseSummary {
                case: first.case.clone(),
                goal_applies: first.goal_applies,
                p99_ratio_median: med(p99_ratios.clone()),
                p99_ratios,
                p50_ratio_median: med(rs.iter().filter_map(|c| c.p50_ratio).collect()),
                background_bytes_per_s_median: med(rs
                    .iter()
                    .map(|c| c.loaded.background_bytes_per_s())
                    .collect())
                .unwrap_or(0.0),
            })
        })
        .collect()
}

/// The 1-minute load average (`/proc/loadavg`), 0 if unreadable.
fn load_avg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Read offsets (4 KiB aligned), one in each of `chunks` in a seeded random order, at
/// most `n`; each at a random 4 KiB block inside its chunk.
pub fn read_plan(chunks: &[u64], chunk_bytes: u64, n: usize, seed: u64) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut idx = chunks.to_vec();
    idx.shuffle(&mut rng);
    idx.truncate(n);
    let blocks = (chunk_bytes / READ_BYTES as u64).max(1);
    idx.into_iter()
        .map(|c| c * chunk_bytes + rng.gen_range(0..blocks) * READ_BYTES as u64)
        .collect()
}

/// Splits latencies (ns) into hits (below `threshold_ns`) and the rest; returns the
/// number of hits and summaries of the others and of all.
pub fn summarise(
    latencies_ns: &[u64],
    threshold_ns: u64,
) -> (u64, Option<LatencySummary>, Option<LatencySummary>) {
    let mut misses = new_histogram();
    let mut all = new_histogram();
    let mut hits = 0;
    for &ns in latencies_ns {
        all.saturating_record(ns.max(1));
        if ns < threshold_ns {
            hits += 1;
        } else {
            misses.saturating_record(ns.max(1));
        }
    }
    let of = |h: &hdrhistogram::Histogram<u64>| (!h.is_empty()).then(|| LatencySummary::of(h));
    (hits, of(&misses), of(&all))
}

/// A ratio of two percentiles, when both exist.
fn ratio(
    a: &Option<LatencySummary>,
    b: &Option<LatencySummary>,
    f: fn(&LatencySummary) -> f64,
) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if f(b) > 0.0 => Some(f(a) / f(b)),
        _ => None,
    }
}

struct Reader<'a> {
    client: NbdClient,
    plan: &'a [u64],
    chunks_in_plan: usize,
    next: usize,
    buf: Vec<u8>,
}

impl Reader<'_> {
    /// Reads for `duration` (or until the plan is used up); returns every latency in ns.
    fn run(&mut self, duration: Duration) -> Result<Vec<u64>> {
        let t0 = Instant::now();
        let mut lat = Vec::new();
        while t0.elapsed() < duration {
            let Some(&off) = self.plan.get(self.next) else {
                crate::warn(&format!(
                    "all {} data chunks of the second half were read before the phase ended (a larger --size or a shorter --runtime)",
                    self.chunks_in_plan
                ));
                break;
            };
            self.next += 1;
            let t = Instant::now();
            self.client.read(off, &mut self.buf)?;
            lat.push(t.elapsed().as_nanos() as u64);
        }
        Ok(lat)
    }
}

fn phase(
    ferry: &Ferry,
    rig: &Rig,
    state_dir: &Path,
    reader: &mut Reader,
    duration: Duration,
) -> Result<Phase> {
    let s0: Status = ferry.status(state_dir)?;
    let w0 = rig.proxy.counters().downstream_bytes;
    let t0 = Instant::now();
    let lat = reader.run(duration)?;
    let seconds = t0.elapsed().as_secs_f64();
    let w1 = rig.proxy.counters().downstream_bytes;
    let s1: Status = ferry.status(state_dir)?;
    let (hits, on_demand, all) = summarise(&lat, LINK_ONE_WAY_MS * 1_000_000);
    Ok(Phase {
        seconds,
        reads: lat.len() as u64,
        hits,
        on_demand,
        all,
        background_bytes: s1
            .fetched_bytes_background
            .saturating_sub(s0.fetched_bytes_background),
        on_demand_bytes: s1
            .fetched_bytes_on_demand
            .saturating_sub(s0.fetched_bytes_on_demand),
        wire_down_bytes: w1.saturating_sub(w0),
        load_avg_1m: load_avg_1m(),
    })
}

fn frontend_flags(qos: &str) -> Vec<OsString> {
    ["--background-rate", "0", "--compress", "off", "--qos", qos]
        .map(OsString::from)
        .to_vec()
}

pub fn run(args: QosArgs) -> Result<QosReport> {
    let c = &args.common;
    let runtime = args.runtime.unwrap_or(if c.quick { 8 } else { 20 }).max(1);
    let warmup = args.warmup.unwrap_or(if c.quick { 3 } else { 5 });
    let repeat = args.repeat.unwrap_or(if c.quick { 1 } else { 3 }).max(1);
    if !system::is_root() {
        crate::warn("not root; the page cache cannot be dropped");
    }
    let ferry = crate::open_ferry(c.ferry.as_deref(), c.tuning.clone().into())?;
    let size_bytes = c.size_bytes();
    if size_bytes < 64 * MIB || size_bytes & (MIB - 1) != 0 {
        bail!("--size must be a whole number of MiB, at least 64M (the ext4 sample's minimum)");
    }
    let super::Workspace {
        run_dir,
        logs,
        machine,
        sample,
    } = super::Workspace::prepare(c, "qos", size_bytes, 3 * size_bytes + 256 * MIB)?;
    let files = Files::in_dir(&run_dir);

    let mut cases = Vec::new();
    // (chunk size, the data chunks of the source's second half): read once.
    let mut data_chunks: Option<(u64, Vec<u64>)> = None;
    let mut order: Vec<(usize, Case)> = Vec::new();
    for round in 1..=repeat {
        let mut r: Vec<Case> = CASES.to_vec();
        if round % 2 == 0 {
            r.reverse();
        }
        order.extend(r.into_iter().map(|c| (round, c)));
    }
    for (i, (round, case)) in order.into_iter().enumerate() {
        progress(&format!("qos round {round}/{repeat}: {}", case.key));
        let tag = format!(
            "{round}-{}-{}",
            case.qos,
            if case.priority_by_dscp {
                "dscp"
            } else {
                "fifo"
            }
        );
        let mut rig = Rig::start(
            &ferry,
            &sample.path,
            &files,
            case.priority_by_dscp,
            &frontend_flags(case.qos),
            &logs,
            &tag,
        )?;
        let st = ferry.status(&files.state_dir)?;
        let chunk = st.volume_size_bytes / st.chunks_total.max(1);
        if data_chunks.as_ref().is_none_or(|(cs, _)| *cs != chunk) {
            data_chunks = Some((chunk, data_chunks_of_second_half(&sample.path, chunk)?));
        }
        let (_, data) = data_chunks.as_ref().expect("just set");
        let plan = read_plan(data, chunk, usize::MAX, c.seed.wrapping_add(i as u64));
        let mut reader = Reader {
            client: NbdClient::connect_unix(&files.socket, VOLUME)?,
            plan: &plan,
            chunks_in_plan: plan.len(),
            next: 0,
            buf: vec![0u8; READ_BYTES],
        };
        let d = Duration::from_secs(runtime);
        progress(&format!("  paused: {runtime} s of 4 KiB reads, QD1"));
        let paused = phase(&ferry, &rig, &files.state_dir, &mut reader, d)?;
        progress(&format!("  {}", phase_line(&paused)));
        ferry.set_rate(&files.state_dir, "unlimited")?;
        progress(&format!(
            "  background resumed; {warmup} s for the link to fill"
        ));
        std::thread::sleep(Duration::from_secs(warmup));
        progress(&format!("  loaded: {runtime} s of 4 KiB reads, QD1"));
        let loaded = phase(&ferry, &rig, &files.state_dir, &mut reader, d)?;
        progress(&format!("  {}", phase_line(&loaded)));
        let end = ferry.status(&files.state_dir)?;
        rig.check_alive()?;
        let _ = reader.client.disconnect();
        drop(rig);
        files.remove();
        cases.push(CaseResult {
            round,
            case: case.key.into(),
            qos: case.qos.into(),
            emulator: if case.priority_by_dscp {
                "strict priority by DSCP".into()
            } else {
                "FIFO".into()
            },
            goal_applies: case.goal,
            p99_ratio: ratio(&loaded.on_demand, &paused.on_demand, |s| s.latency_us_p99),
            p50_ratio: ratio(&loaded.on_demand, &paused.on_demand, |s| s.latency_us_p50),
            paused,
            loaded,
            status_qos: end.qos,
            background_window_chunks: end.background_window_chunks,
            queue_delay_us: end.queue_delay_us,
            base_rtt_us: end.base_rtt_us,
        });
    }
    let summary = summarise_cases(&cases);
    let verdict = verdict(&summary);
    let header = super::header(machine, &ferry, c.quick, &sample);
    let flags = frontend_flags("MODE")
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(QosReport {
        header,
        runtime_s: runtime,
        warmup_s: warmup,
        frontend_flags: flags,
        repeat,
        cases,
        summary,
        verdict,
    })
}

fn phase_line(p: &Phase) -> String {
    let od = p
        .on_demand
        .as_ref()
        .map_or("no on-demand reads".into(), |s| {
            format!(
                "on-demand p50 {} ms p99 {} ms",
                ms(s.latency_us_p50),
                ms(s.latency_us_p99)
            )
        });
    format!(
        "{} reads ({} hits), {od}; background {} MiB/s, link {:.0}%",
        p.reads,
        p.hits,
        mib(p.background_bytes_per_s()),
        p.link_use() * 100.0
    )
}

fn verdict(summary: &[CaseSummary]) -> String {
    let goal: Vec<&CaseSummary> = summary.iter().filter(|c| c.goal_applies).collect();
    let parts: Vec<String> = goal
        .iter()
        .map(|c| match c.p99_ratio_median {
            Some(r) => format!("{}: {r:.2}", c.case),
            None => format!("{}: no on-demand reads to compare", c.case),
        })
        .collect();
    let met = !goal.is_empty()
        && goal
            .iter()
            .all(|c| c.p99_ratio_median.is_some_and(|r| r <= P99_RATIO_GOAL));
    format!(
        "on-demand p99 loaded / paused <= {P99_RATIO_GOAL} in both QoS modes (median over rounds): **{}** — {}",
        if met { "met" } else { "NOT met" },
        parts.join("; ")
    )
}

impl QosReport {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        self.header.markdown(
            "On-demand latency under a saturating background (`ferry-perf qos`)",
            &mut o,
        );
        let _ = writeln!(
            o,
            "* Per case a fresh migration: `ferry backend` → emulator → `ferry frontend --dedup-index FRESH {}`; {} s of 4 KiB reads at QD1 (blocking NBD client, each read timed) with the background paused, then `ferry set-rate --background-rate unlimited`, {} s warm-up, {} s more (loaded)",
            self.frontend_flags, self.runtime_s, self.warmup_s, self.runtime_s
        );
        let _ = writeln!(
            o,
            "* Reads go to distinct chunks of the second half of the volume that hold data in the source (not holes, not all zeros; never one chunk twice); a read under one one-way delay ({LINK_ONE_WAY_MS} ms) did not cross the link and is a *hit* (a hole or zero chunk, or a chunk the background brought): counted, and left out of the on-demand percentiles (all-read p99 shown too)"
        );
        let _ = writeln!(
            o,
            "* Background: Ferry's `fetched_bytes_background` over the loaded phase (compression off, so chunk bytes = link bytes); link use: the emulator's server → client bytes over the phase / {} MB/s (all traffic: background, on-demand chunks, protocol)\n",
            LINK_RATE_BYTES_PER_S as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "| case | round | phase | reads (hits) | on-demand p50 ms | p99 ms | p99.9 ms | all reads p99 ms | background MiB/s | link use | load avg |"
        );
        let _ = writeln!(o, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &self.cases {
            for (name, p) in [("paused", &c.paused), ("loaded", &c.loaded)] {
                let (p50, p99, p999) =
                    p.on_demand
                        .as_ref()
                        .map_or(("–".into(), "–".into(), "–".into()), |s| {
                            (
                                ms(s.latency_us_p50),
                                ms(s.latency_us_p99),
                                ms(s.latency_us_p999),
                            )
                        });
                let _ = writeln!(
                    o,
                    "| {} | {} | {name} | {} ({}) | {p50} | {p99} | {p999} | {} | {} | {:.0}% | {:.1} |",
                    if name == "paused" {
                        c.case.as_str()
                    } else {
                        ""
                    },
                    c.round,
                    p.reads,
                    p.hits,
                    p.all.as_ref().map_or("–".into(), |s| ms(s.latency_us_p99)),
                    mib(p.background_bytes_per_s()),
                    p.link_use() * 100.0,
                    p.load_avg_1m
                );
            }
        }
        let _ = writeln!(
            o,
            "\n| case | round | p99 loaded / paused (goal <= {P99_RATIO_GOAL}) | p50 loaded / paused | background during loaded, MiB/s (% of link) | frontend at the end (qos; shared: window chunks, base RTT, queueing delay) |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---|");
        for c in &self.cases {
            let f = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}"));
            let p99 = if c.goal_applies {
                format!("**{}**", f(c.p99_ratio))
            } else {
                format!("{} (no goal)", f(c.p99_ratio))
            };
            let bg = c.loaded.background_bytes_per_s();
            let fe = if c.status_qos == "shared" {
                format!(
                    "shared: {} chunks, {:.1} ms, {:.1} ms",
                    c.background_window_chunks,
                    c.base_rtt_us as f64 / 1000.0,
                    c.queue_delay_us as f64 / 1000.0
                )
            } else {
                c.status_qos.clone()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {p99} | {} | {} ({:.0}%) | {fe} |",
                c.case,
                c.round,
                f(c.p50_ratio),
                mib(bg),
                bg / LINK_RATE_BYTES_PER_S as f64 * 100.0
            );
        }
        let _ = writeln!(
            o,
            "\n**Medians over {} round(s):**\n\n| case | p99 loaded / paused, median (goal <= {P99_RATIO_GOAL}) | per round | p50 loaded / paused, median | background during loaded, MiB/s (% of link), median |\n|---|---:|---|---:|---:|",
            self.repeat
        );
        for c in &self.summary {
            let f = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}"));
            let bg = c.background_bytes_per_s_median;
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} ({:.0}%) |",
                c.case,
                if c.goal_applies {
                    format!("**{}**", f(c.p99_ratio_median))
                } else {
                    format!("{} (no goal)", f(c.p99_ratio_median))
                },
                c.p99_ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                f(c.p50_ratio_median),
                mib(bg),
                bg / LINK_RATE_BYTES_PER_S as f64 * 100.0
            );
        }
        let _ = writeln!(o, "\n### Verdict\n\n* {}", self.verdict);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_reads_each_data_chunk_once_in_a_seeded_order() -> Result<()> {
        let chunk = 64 << 10;
        let d = tempfile::tempdir()?;
        let src = d.path().join("src.img");
        // 16 chunks: data in 1, 9, 12 and 15 (a single non-zero byte is data).
        let mut img = vec![0u8; 16 * chunk as usize];
        for c in [1usize, 9, 12, 15] {
            img[c * chunk as usize + 100] = 1;
        }
        std::fs::write(&src, &img)?;
        let data = data_chunks_of_second_half(&src, chunk)?;
        assert_eq!(data, [9, 12, 15]);
        let plan = read_plan(&data, chunk, 10, 7);
        assert_eq!(plan.len(), 3);
        let mut chunks: Vec<u64> = plan.iter().map(|o| o / chunk).collect();
        assert!(plan.iter().all(|&o| o % 4096 == 0));
        chunks.sort_unstable();
        assert_eq!(chunks, [9, 12, 15]);
        assert_eq!(plan, read_plan(&data, chunk, 10, 7));
        assert_eq!(read_plan(&data, chunk, 2, 7).len(), 2);
        Ok(())
    }

    #[test]
    fn medians_per_case_over_rounds() {
        let r = |round, case: &Case, p99: Option<f64>| CaseResult {
            round,
            case: case.key.into(),
            qos: case.qos.into(),
            emulator: String::new(),
            goal_applies: case.goal,
            paused: Phase::default(),
            loaded: Phase {
                seconds: 1.0,
                background_bytes: 10,
                ..Phase::default()
            },
            p99_ratio: p99,
            p50_ratio: p99,
            status_qos: String::new(),
            background_window_chunks: 0,
            queue_delay_us: 0,
            base_rtt_us: 0,
        };
        let cases = vec![
            r(1, &CASES[0], Some(0.9)),
            r(1, &CASES[1], Some(1.2)),
            r(2, &CASES[1], Some(3.0)),
            r(2, &CASES[0], Some(1.1)),
            r(3, &CASES[0], Some(5.0)),
            r(3, &CASES[1], None),
        ];
        let s = summarise_cases(&cases);
        assert_eq!(s.len(), 2, "a case without rounds is left out");
        assert_eq!(s[0].p99_ratio_median, Some(1.1));
        assert_eq!(s[0].p99_ratios, [0.9, 1.1, 5.0]);
        assert_eq!(s[1].p99_ratio_median, Some(2.1));
        assert_eq!(s[0].background_bytes_per_s_median, 10.0);
        assert!(verdict(&s).contains("NOT met"));
        let s = summarise_cases(&cases[..2]);
        assert!(verdict(&s).contains("**met**"), "{}", verdict(&s));
    }

    #[test]
    fn hits_are_left_out_of_the_on_demand_percentiles() {
        let mut lat = vec![100_000u64; 10]; // 0.1 ms: hits
        lat.extend((1..=100).map(|i| 40_000_000 + i * 100_000)); // 40.1..50 ms
        let (hits, od, all) = summarise(&lat, 20_000_000);
        assert_eq!(hits, 10);
        let od = od.unwrap();
        assert_eq!(od.samples, 100);
        assert!(od.latency_us_p50 > 40_000.0, "{od:?}");
        assert_eq!(all.unwrap().samples, 110);
        let (h, od, all) = summarise(&[1, 2], 10);
        assert_eq!(h, 2);
        assert!(od.is_none() && all.is_some());
        assert_eq!(ratio(&None, &all, |s| s.latency_us_p99), None);
    }
}
