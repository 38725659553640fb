//! What a run found: the numbers, the ratios and goals, as markdown and JSON, and the
//! results section of `perf/RESULTS.md`.
//!
//! Ratios are always ferry / peer, so for throughput and IOPS bigger is better and for
//! latency smaller is better. Medians are taken per metric over the repetitions.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::ferry::Tuning;
use crate::fio::FioRun;
use crate::hydrate::FerryHydration;
use crate::system::Machine;

pub const HYDRATION_GOAL: f64 = 0.8;
pub const IOPS_GOAL: f64 = 1.0;
pub const P50_GOAL: f64 = 1.1;

/// Everything above this line in RESULTS.md is kept; everything below is rewritten.
pub const RESULTS_MARKER: &str =
    "<!-- ferry-perf: everything below is rewritten by `ferry-perf --results` -->";

/// The explanatory head of `perf/RESULTS.md`, written when the file has no marker yet.
pub const RESULTS_HEADER: &str = include_str!("results_header.md");

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// The command that reproduces this run.
    pub reproduce: String,
    /// `git describe --always --dirty` of the workspace.
    pub source_revision: String,
    pub quick: bool,
    pub ferry: Option<FerryInfo>,
    pub size_bytes: u64,
    pub source: String,
    pub page_cache_dropped: bool,
    pub runtime_s: u64,
    pub repeat: usize,
    pub hydration: Hydration,
    pub serving: Serving,
    pub memory: Memory,
    pub verdicts: Vec<Verdict>,
    /// Conditions that weaken the numbers (stale or debug binary, page cache kept...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FerryInfo {
    pub binary: String,
    pub version: String,
    pub tuning: Tuning,
}

#[derive(Debug, Default, Serialize)]
pub struct Hydration {
    pub fio_read_command: String,
    pub fio_write_command: String,
    pub fio_read: Vec<FioRun>,
    pub fio_write: Vec<FioRun>,
    pub ferry: Vec<FerryHydration>,
    pub fio_read_bytes_per_s: f64,
    pub fio_write_bytes_per_s: f64,
    pub ferry_bytes_per_s: Option<f64>,
    pub ratio_to_slower_fio: Option<f64>,
    /// fio reading the source and writing a new file *at the same time*: what a copy on this
    /// one device can do at best (migration reads and writes at once).
    pub fio_concurrent: Vec<f64>,
    pub fio_concurrent_bytes_per_s: f64,
    pub ratio_to_concurrent_fio: Option<f64>,
    /// (a2): the same with the source on a second device (a zram RAM disk); None when
    /// it did not run, and then `second_device_skipped` says why.
    pub second_device: Option<SecondDevice>,
    pub second_device_skipped: Option<String>,
}

/// (a2) hydration with the source on a second device (a zram RAM disk made for the run)
/// and the target a new file on the disk, as in (a); rounds interleaved with (a)'s.
#[derive(Debug, Default, Serialize)]
pub struct SecondDevice {
    /// The device holding the copy of the source, e.g. `/dev/zram2`.
    pub device: String,
    /// How the device was made and filled.
    pub how: String,
    pub fio_read_command: String,
    pub fio_write_command: String,
    /// fio reading the device.
    pub fio_read: Vec<FioRun>,
    /// fio writing a new file on the disk (measured again, next to this ferry round).
    pub fio_write: Vec<FioRun>,
    /// ferry with the device as the backend's volume.
    pub ferry: Vec<FerryHydration>,
    pub fio_read_bytes_per_s: f64,
    pub fio_write_bytes_per_s: f64,
    pub ferry_bytes_per_s: Option<f64>,
    pub ratio_to_slower_fio: Option<f64>,
}

impl SecondDevice {
    /// Fills in the medians and the ratio from the rounds.
    pub fn summarize(&mut self) {
        self.fio_read_bytes_per_s = median(self.fio_read.iter().map(|r| r.bytes_per_s).collect());
        self.fio_write_bytes_per_s = median(self.fio_write.iter().map(|r| r.bytes_per_s).collect());
        if !self.ferry.is_empty() {
            let f = median(self.ferry.iter().map(|r| r.bytes_per_s).collect());
            self.ferry_bytes_per_s = Some(f);
            let slower = self.fio_read_bytes_per_s.min(self.fio_write_bytes_per_s);
            self.ratio_to_slower_fio = (slower > 0.0).then(|| f / slower);
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Serving {
    pub served_file: String,
    pub qemu_nbd_command: String,
    /// Seconds (b) waited, after the last hydration, for the frontend's dedup indexing of
    /// chunks that arrived unhashed (it reads the whole target once).
    pub settle_s: Option<f64>,
    pub jobs: Vec<ServingJob>,
}

#[derive(Debug, Serialize)]
pub struct ServingJob {
    pub key: String,
    pub label: String,
    pub fio_command: String,
    pub servers: Vec<ServerResult>,
    pub ratio: Option<Ratios>,
}

#[derive(Debug, Serialize)]
pub struct ServerResult {
    pub name: String,
    pub median: Median,
    pub runs: Vec<FioRun>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Median {
    pub iops: f64,
    pub bytes_per_s: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
}

/// ferry / qemu-nbd.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    pub iops: f64,
    pub bytes_per_s: f64,
    pub latency_p50: f64,
    pub latency_p99: f64,
    pub latency_p999: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    pub frontend_hydration_peak_rss_kib: Option<u64>,
    pub backend_hydration_peak_rss_kib: Option<u64>,
    pub frontend_serving_peak_rss_kib: Option<u64>,
    pub qemu_nbd_serving_peak_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub goal: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
    pub detail: String,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Median {
    pub fn of(runs: &[FioRun]) -> Median {
        let m = |f: fn(&FioRun) -> f64| median(runs.iter().map(f).collect());
        Median {
            iops: m(|r| r.iops),
            bytes_per_s: m(|r| r.bytes_per_s),
            latency_us_p50: m(|r| r.latency.map_or(0.0, |l| l.latency_us_p50)),
            latency_us_p99: m(|r| r.latency.map_or(0.0, |l| l.latency_us_p99)),
            latency_us_p999: m(|r| r.latency.map_or(0.0, |l| l.latency_us_p999)),
        }
    }
}

impl Ratios {
    pub fn of(ferry: &Median, peer: &Median) -> Ratios {
        let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Ratios {
            iops: r(ferry.iops, peer.iops),
            bytes_per_s: r(ferry.bytes_per_s, peer.bytes_per_s),
            latency_p50: r(ferry.latency_us_p50, peer.latency_us_p50),
            latency_p99: r(ferry.latency_us_p99, peer.latency_us_p99),
            latency_p999: r(ferry.latency_us_p999, peer.latency_us_p999),
        }
    }
}

pub fn verdicts(h: &Hydration, s: &Serving) -> Vec<Verdict> {
    let mib = |b: f64| b / (1 << 20) as f64;
    let mut v = Vec::new();
    let hydration_goal = format!("hydration >= {HYDRATION_GOAL} x the slower fio rate");
    v.push(match (h.ferry_bytes_per_s, h.ratio_to_slower_fio) {
        (Some(f), Some(r)) => Verdict {
            goal: hydration_goal,
            met: Some(r >= HYDRATION_GOAL),
            detail: format!(
                "{r:.2} (ferry {:.0} MiB/s; fio read {:.0} MiB/s, fio write {:.0} MiB/s; \
                 fio reading and writing at once {:.0} MiB/s, ferry / that {:.2})",
                mib(f),
                mib(h.fio_read_bytes_per_s),
                mib(h.fio_write_bytes_per_s),
                mib(h.fio_concurrent_bytes_per_s),
                h.ratio_to_concurrent_fio.unwrap_or(0.0)
            ),
        },
        _ => Verdict {
            goal: hydration_goal,
            met: None,
            detail: "ferry was not run".into(),
        },
    });
    let goal =
        format!("hydration >= {HYDRATION_GOAL} x the slower fio rate, source on a second device");
    v.push(match (&h.second_device, &h.second_device_skipped) {
        (Some(d), _) => match (d.ferry_bytes_per_s, d.ratio_to_slower_fio) {
            (Some(f), Some(r)) => Verdict {
                goal,
                met: Some(r >= HYDRATION_GOAL),
                detail: format!(
                    "{r:.2} (ferry {:.0} MiB/s; fio read of {} {:.0} MiB/s, fio write {:.0} MiB/s)",
                    mib(f),
                    d.device,
                    mib(d.fio_read_bytes_per_s),
                    mib(d.fio_write_bytes_per_s)
                ),
            },
            _ => Verdict {
                goal,
                met: None,
                detail: "ferry was not run".into(),
            },
        },
        (None, why) => Verdict {
            goal,
            met: None,
            detail: format!("(a2) skipped: {}", why.as_deref().unwrap_or("not run")),
        },
    });
    let per_job = |goal: String, pick: fn(&Ratios) -> f64, ok: fn(f64) -> bool| {
        let measured: Vec<(&str, f64)> = s
            .jobs
            .iter()
            .filter_map(|j| j.ratio.map(|r| (j.key.as_str(), pick(&r))))
            .collect();
        if measured.is_empty() {
            return Verdict {
                goal,
                met: None,
                detail: "ferry was not run".into(),
            };
        }
        let met = measured.iter().all(|(_, r)| ok(*r));
        let detail = measured
            .iter()
            .map(|(k, r)| format!("{k} {r:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        Verdict {
            goal,
            met: Some(met),
            detail,
        }
    };
    v.push(per_job(
        format!("serving IOPS >= {IOPS_GOAL:.1} x qemu-nbd, every job"),
        |r| r.iops,
        |r| r >= IOPS_GOAL,
    ));
    v.push(per_job(
        format!("serving p50 latency <= {P50_GOAL} x qemu-nbd, every job"),
        |r| r.latency_p50,
        |r| r <= P50_GOAL,
    ));
    v
}

fn mib_s(b: f64) -> String {
    format!("{:.0}", b / (1 << 20) as f64)
}

fn mib_kib(k: Option<u64>) -> String {
    k.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("**{r:.2}**"))
}

fn human_size(b: u64) -> String {
    if b >= 1 << 30 && b & ((1 << 30) - 1) == 0 {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// One row of a hydration table: `| what | median | rounds{note} |`, rates in MiB/s.
fn rate_row(
    o: &mut String,
    what: &str,
    median: f64,
    rounds: impl Iterator<Item = f64>,
    note: &str,
) {
    let rounds = rounds.map(mib_s).collect::<Vec<_>>().join(", ");
    let _ = writeln!(o, "| {what} | {} | {rounds}{note} |", mib_s(median));
}

fn fio_row(o: &mut String, what: &str, median: f64, runs: &[FioRun]) {
    rate_row(o, what, median, runs.iter().map(|r| r.bytes_per_s), "");
}

/// A ferry row also gives each round's time.
fn ferry_row(o: &mut String, what: &str, median: f64, runs: &[FerryHydration]) {
    let secs = runs
        .iter()
        .map(|r| format!("{:.2} s", r.elapsed_s))
        .collect::<Vec<_>>()
        .join(", ");
    let rates = runs.iter().map(|r| r.bytes_per_s);
    rate_row(o, what, median, rates, &format!(" ({secs})"));
}

/// Where ferry's hydration time went: CPU seconds per GiB of each server, and how many of the
/// machine's CPUs both kept busy on average (near `cpus`: CPU-bound, not disk-bound).
fn cpu_line(o: &mut String, runs: &[FerryHydration], size_bytes: u64, cpus: usize) {
    if runs.is_empty() || size_bytes == 0 {
        return;
    }
    let gib = size_bytes as f64 / (1u64 << 30) as f64;
    let fe = median(runs.iter().map(|r| r.frontend_cpu_s / gib).collect());
    let be = median(runs.iter().map(|r| r.backend_cpu_s / gib).collect());
    let busy = median(
        runs.iter()
            .map(|r| (r.frontend_cpu_s + r.backend_cpu_s) / r.elapsed_s)
            .collect(),
    );
    let _ = writeln!(
        o,
        "Ferry's CPU (user + system, every thread, io_uring workers included; medians): frontend \
         {fe:.2} s per GiB, backend {be:.2} s per GiB; together {busy:.2} of the machine's {cpus} \
         CPUs busy for the whole hydration.\n"
    );
}

/// The (a2) section: its table, or why it did not run.
fn second_device_markdown(o: &mut String, h: &Hydration, size_bytes: u64, cpus: usize) {
    let _ = writeln!(
        o,
        "### (a2) Hydration, source on a second device (zram RAM disk), target on the disk\n"
    );
    let Some(d) = &h.second_device else {
        let why = h.second_device_skipped.as_deref().unwrap_or("not run");
        let _ = writeln!(o, "**Skipped:** {why}.\n");
        return;
    };
    let _ = writeln!(o, "| what | MiB/s (median) | rounds |");
    let _ = writeln!(o, "|---|---:|---|");
    fio_row(
        o,
        &format!(
            "fio sequential O_DIRECT read of {} (the source copied onto a RAM disk)",
            d.device
        ),
        d.fio_read_bytes_per_s,
        &d.fio_read,
    );
    fio_row(
        o,
        "fio sequential O_DIRECT write of a new file (on the disk, again next to this ferry round)",
        d.fio_write_bytes_per_s,
        &d.fio_write,
    );
    if let Some(f) = d.ferry_bytes_per_s {
        ferry_row(
            o,
            &format!(
                "ferry backend (volume {}) + frontend (target on the disk), frontend start to `chunks_untouched == 0`",
                d.device
            ),
            f,
            &d.ferry,
        );
    }
    let _ = writeln!(
        o,
        "| **ratio ferry / slower fio** (goal >= {HYDRATION_GOAL}) | {} | |\n",
        ratio(d.ratio_to_slower_fio)
    );
    cpu_line(o, &d.ferry, size_bytes, cpus);
    let _ = writeln!(o, "Device: {}, {}.", d.device, d.how);
    let _ = writeln!(
        o,
        "fio: `{}` and `{}`\n",
        d.fio_read_command, d.fio_write_command
    );
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "## Results of {}{}\n",
            m.date_utc,
            if self.quick {
                " (--quick: short, small run; indicative only)"
            } else {
                ""
            }
        );
        if self.ferry.is_none() {
            let _ = writeln!(o, "**No Ferry results in this run:** it ran with `--without-ferry` (the peers only, to check \
             the set-up), so there are no ratios and no verdicts; qemu-nbd served the source file.\n");
        }
        let _ = writeln!(
            o,
            "* Reproduce (as root, from the workspace root): `{}`",
            self.reproduce
        );
        for w in &self.warnings {
            let _ = writeln!(o, "* **Warning:** {w}");
        }
        let _ = writeln!(o, "* Workspace revision {}", self.source_revision);
        let _ = writeln!(
            o,
            "* Kernel {}; CPU {} x {}; RAM {} MiB",
            m.kernel, m.cpus, m.cpu_model, m.mem_total_mib
        );
        let _ = writeln!(o, "* {}; {}", m.fio_version, m.qemu_nbd_version);
        if let Some(f) = &self.ferry {
            let _ = writeln!(o, "* ferry: `{}` ({})", f.binary, f.version);
        }
        let _ = writeln!(o, "* Work directory {} on {}", m.work_dir, m.work_dir_fs);
        let _ = writeln!(
            o,
            "* Volume: {} of {}",
            human_size(self.size_bytes),
            self.source
        );
        let _ = writeln!(
            o,
            "* Page cache dropped before every run: {}",
            if self.page_cache_dropped {
                "yes"
            } else {
                "**no** (not root?): the source read may come from RAM"
            }
        );
        let _ = writeln!(
            o,
            "* {} round(s) of everything, interleaved; medians shown; serving jobs {} s each\n",
            self.repeat, self.runtime_s
        );

        let h = &self.hydration;
        let _ = writeln!(o, "### (a) Hydration throughput\n");
        let _ = writeln!(o, "| what | MiB/s (median) | rounds |");
        let _ = writeln!(o, "|---|---:|---|");
        fio_row(
            &mut o,
            "fio sequential O_DIRECT read of the source",
            h.fio_read_bytes_per_s,
            &h.fio_read,
        );
        fio_row(
            &mut o,
            "fio sequential O_DIRECT write of a new file",
            h.fio_write_bytes_per_s,
            &h.fio_write,
        );
        if let Some(f) = h.ferry_bytes_per_s {
            ferry_row(
                &mut o,
                "ferry backend + frontend, frontend start to `chunks_untouched == 0`",
                f,
                &h.ferry,
            );
        }
        rate_row(
            &mut o,
            "fio read of the source and write of a new file at the same time (copy ceiling of one device)",
            h.fio_concurrent_bytes_per_s,
            h.fio_concurrent.iter().copied(),
            "",
        );
        let _ = writeln!(
            o,
            "| **ratio ferry / slower fio** (goal >= {HYDRATION_GOAL}) | {} | |",
            ratio(h.ratio_to_slower_fio)
        );
        let _ = writeln!(
            o,
            "| ratio ferry / concurrent fio read+write (same device) | {} | |\n",
            ratio(h.ratio_to_concurrent_fio)
        );
        cpu_line(&mut o, &h.ferry, self.size_bytes, m.cpus);
        let _ = writeln!(
            o,
            "fio: `{}` and `{}`\n",
            h.fio_read_command, h.fio_write_command
        );

        second_device_markdown(&mut o, h, self.size_bytes, m.cpus);

        let s = &self.serving;
        let _ = writeln!(
            o,
            "### (b) Serving a fully migrated volume (fio nbd engine, unix socket)\n"
        );
        let _ = writeln!(
            o,
            "| job | server | IOPS | MiB/s | p50 us | p99 us | p99.9 us | IOPS per round |"
        );
        let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---|");
        for j in &s.jobs {
            for (i, sv) in j.servers.iter().enumerate() {
                let label = if i == 0 { j.label.as_str() } else { "" };
                let md = &sv.median;
                let _ = writeln!(
                    o,
                    "| {label} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                    sv.name,
                    md.iops,
                    md.bytes_per_s / (1 << 20) as f64,
                    md.latency_us_p50,
                    md.latency_us_p99,
                    md.latency_us_p999,
                    sv.runs
                        .iter()
                        .map(|r| format!("{:.0}", r.iops))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if let Some(r) = j.ratio {
                let _ = writeln!(
                    o,
                    "| | **ferry / qemu-nbd** | **{:.2}** | {:.2} | **{:.2}** | {:.2} | {:.2} | |",
                    r.iops, r.bytes_per_s, r.latency_p50, r.latency_p99, r.latency_p999
                );
            }
        }
        let _ = writeln!(o, "\nLatency: completion latency of every IO (fio `--write_lat_log --log_avg_msec=0`) in an hdrhistogram (3 significant digits); median over rounds.");
        let _ = writeln!(o, "qemu-nbd: `{}`", s.qemu_nbd_command);
        if let Some(w) = s.settle_s {
            let _ = writeln!(o, "Started after the frontend's dedup indexing of the chunks that arrived unhashed was done ({w:.1} s after the hydration; it reads the whole target once, at idle CPU priority): (b) measures a migration that is over.");
        }
        if let Some(j) = s.jobs.first() {
            let _ = writeln!(o, "fio, e.g.: `{}`\n", j.fio_command);
        }

        let mm = &self.memory;
        let _ = writeln!(o, "### (c) Peak RSS (VmHWM)\n");
        let _ = writeln!(o, "| process | during | MiB |");
        let _ = writeln!(o, "|---|---|---:|");
        let _ = writeln!(
            o,
            "| ferry frontend | (a) hydration | {} |",
            mib_kib(mm.frontend_hydration_peak_rss_kib)
        );
        let _ = writeln!(
            o,
            "| ferry backend | (a) hydration | {} |",
            mib_kib(mm.backend_hydration_peak_rss_kib)
        );
        let _ = writeln!(
            o,
            "| ferry frontend | (b) serving (peak reset with clear_refs before (b)) | {} |",
            mib_kib(mm.frontend_serving_peak_rss_kib)
        );
        let _ = writeln!(
            o,
            "| qemu-nbd | (b) serving | {} |\n",
            mib_kib(mm.qemu_nbd_serving_peak_rss_kib)
        );

        let _ = writeln!(o, "### Verdicts\n");
        for v in &self.verdicts {
            let met = match v.met {
                Some(true) => "**met**",
                Some(false) => "**NOT met**",
                None => "not measured",
            };
            let _ = writeln!(o, "* {}: {met} — {}", v.goal, v.detail);
        }
        o
    }

    /// Rewrites the results section of `path`, keeping everything up to the marker and
    /// the WAN block after it (see [`crate::results_file`]).
    pub fn write_results(&self, path: &Path) -> Result<()> {
        let body = self.markdown();
        crate::results_file::rewrite(path, |old| {
            crate::results_file::with_main_results(old, &body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = (1 << 20) as f64;

    fn run(mib_per_s: f64) -> FioRun {
        FioRun {
            bytes_per_s: mib_per_s * MIB,
            ..FioRun::default()
        }
    }

    fn second_device_verdict(h: &Hydration) -> &'static str {
        let v = verdicts(h, &Serving::default());
        assert_eq!(v.len(), 4);
        assert!(v[1].goal.ends_with("source on a second device"));
        match v[1].met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "none",
        }
    }

    #[test]
    fn second_device_summary_and_verdict() {
        let mut d = SecondDevice {
            device: "/dev/zram9".into(),
            fio_read: vec![run(3000.0), run(2000.0)],
            fio_write: vec![run(900.0), run(1100.0)],
            ..SecondDevice::default()
        };
        d.summarize();
        assert_eq!(d.fio_read_bytes_per_s, 2500.0 * MIB);
        assert_eq!(d.fio_write_bytes_per_s, 1000.0 * MIB);
        // No ferry rounds (--without-ferry): no ratio, no verdict.
        assert_eq!(d.ratio_to_slower_fio, None);
        let mut h = Hydration {
            second_device: Some(d),
            ..Hydration::default()
        };
        assert_eq!(second_device_verdict(&h), "none");

        // With a ratio: the slower fio is the write.
        if let Some(d) = h.second_device.as_mut() {
            d.ferry_bytes_per_s = Some(850.0 * MIB);
            d.ratio_to_slower_fio = Some(0.85);
        }
        assert_eq!(second_device_verdict(&h), "met");
        let md = {
            let mut o = String::new();
            second_device_markdown(&mut o, &h, 1 << 30, 2);
            o
        };
        assert!(md.contains("### (a2) Hydration, source on a second device (zram RAM disk)"));
        assert!(md.contains("| **ratio ferry / slower fio** (goal >= 0.8) | **0.85** | |"));
        assert!(md.contains("/dev/zram9"));
    }

    #[test]
    fn cpu_line_gives_seconds_per_gib_and_cpus_busy() {
        let round = |elapsed_s, frontend_cpu_s, backend_cpu_s| FerryHydration {
            elapsed_s,
            bytes_per_s: 0.0,
            status: Default::default(),
            frontend_peak_rss_kib: 0,
            backend_peak_rss_kib: 0,
            frontend_cpu_s,
            backend_cpu_s,
            blocks_verified: 0,
        };
        // 2 GiB: 1.0 + 1.2 s in 1.1 s and 1.4 + 1.6 s in 2.0 s.
        let runs = [round(1.1, 1.0, 1.2), round(2.0, 1.4, 1.6)];
        let mut o = String::new();
        cpu_line(&mut o, &runs, 2 << 30, 2);
        assert!(
            o.contains("frontend 0.60 s per GiB, backend 0.70 s per GiB"),
            "{o}"
        );
        assert!(
            o.contains("together 1.75 of the machine's 2 CPUs busy"),
            "{o}"
        );
        let mut none = String::new();
        cpu_line(&mut none, &[], 2 << 30, 2);
        assert!(none.is_empty());
    }

    #[test]
    fn second_device_skipped() {
        let h = Hydration {
            second_device_skipped: Some("not root".into()),
            ..Hydration::default()
        };
        assert_eq!(second_device_verdict(&h), "none");
        let v = verdicts(&h, &Serving::default());
        assert!(v[1].detail.contains("not root"));
        // The (a) verdict keeps its goal text.
        assert_eq!(v[0].goal, "hydration >= 0.8 x the slower fio rate");
        let mut o = String::new();
        second_device_markdown(&mut o, &h, 1 << 30, 2);
        assert!(o.contains("**Skipped:** not root."));
    }
}
