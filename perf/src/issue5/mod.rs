//! The two benchmarks of issue 5, both through the WAN emulator (100 Mbit/s, 40 ms RTT)
//! on the realistic ext4 sample ([`crate::wan_bench::sample`]):
//! * `ferry-perf qos` ([`qos`]): on-demand 4 KiB random-read latency while the background
//!   saturates the link against the same with the background paused, per QoS mode;
//! * `ferry-perf prefetch` ([`prefetch`]): a recorded workload (mount, find, read a set of
//!   files) replayed on a fresh migration with recording-driven prefetch and without.
//!
//! Both write their section of the issue-5 block of `perf/RESULTS.md`
//! ([`crate::results_file::with_issue5_results`]).
//!
//! Invariants: everything lives in `DIR/issue5/` (the sample is shared with `ferry-perf
//! wan` as a cache next to it); every child process, proxy, mount, loop device and FUSE
//! mount is undone when the run ends, also on error; every wait is bounded; runs share
//! nothing but the sample (fresh target, state dir and dedup index each).

pub mod prefetch;
pub mod qos;
mod rig;
mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::report::FerryInfo;
use crate::system::Machine;
use crate::TuningArgs;

/// The link of both benchmarks: 100 Mbit/s, 20 ms each way.
pub const LINK_RATE_BYTES_PER_S: u64 = 12_500_000;
pub const LINK_ONE_WAY_MS: u64 = 20;

/// Flags both modes share.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Size of the ext4 sample volume (K, M, G suffixes; binary units). Default 1G, or
    /// 512M with --quick.
    #[arg(long, value_parser = crate::parse_size)]
    pub size: Option<u64>,
    /// A short, small run to check the set-up (smaller sample, shorter phases).
    #[arg(long)]
    pub quick: bool,
    /// Work directory; the sample is cached here (keyed by size and seed), the runs use
    /// DIR/issue5/. Must not be tmpfs (O_DIRECT).
    #[arg(long, default_value = "/var/tmp/ferry-perf")]
    pub dir: PathBuf,
    /// The ferry binary. Default: next to this benchmark if it is a release build, else
    /// target/release/ferry in the workspace.
    #[arg(long)]
    pub ferry: Option<PathBuf>,
    /// Also write the report into this markdown file (e.g. perf/RESULTS.md): this mode's
    /// section of the issue-5 block only, everything else is kept.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of markdown.
    #[arg(long)]
    pub json: bool,
    /// Seed of the sample (and of the benchmark's own random choices).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

impl CommonArgs {
    pub fn size_bytes(&self) -> u64 {
        self.size
            .unwrap_or(if self.quick { 512 << 20 } else { 1 << 30 })
    }
}

/// What every issue-5 report starts with.
#[derive(Debug, serde::Serialize)]
pub struct Header {
    pub machine: Machine,
    pub reproduce: String,
    pub source_revision: String,
    pub quick: bool,
    pub ferry: FerryInfo,
    pub sample_path: String,
    pub sample_description: String,
    pub sample_reused: bool,
    pub warnings: Vec<String>,
}

impl Header {
    pub fn markdown(&self, title: &str, o: &mut String) {
        let m = &self.machine;
        let _ = writeln!(
            o,
            "## {title} — {}{}\n",
            m.date_utc,
            if self.quick {
                " (--quick: small sample, short phases; indicative only)"
            } else {
                ""
            }
        );
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
            "* Kernel {}; CPU {} x {}; RAM {} MiB; shared, noisy machine: compare figures of one run",
            m.kernel, m.cpus, m.cpu_model, m.mem_total_mib
        );
        let _ = writeln!(
            o,
            "* ferry: `{}` ({})",
            self.ferry.binary, self.ferry.version
        );
        let _ = writeln!(o, "* Work directory {} on {}", m.work_dir, m.work_dir_fs);
        let _ = writeln!(
            o,
            "* Volume: `{}`{}: {}",
            self.sample_path,
            if self.sample_reused {
                " (cached from an earlier run)"
            } else {
                ""
            },
            self.sample_description
        );
        let _ = writeln!(
            o,
            "* Link: this crate's WAN emulator, {} Mbit/s each way, {} ms each way (RTT {} ms), one bottleneck per direction shared by all connections",
            LINK_RATE_BYTES_PER_S * 8 / 1_000_000,
            LINK_ONE_WAY_MS,
            2 * LINK_ONE_WAY_MS
        );
    }
}

/// Builds the header common to both reports.
pub fn header(
    machine: Machine,
    ferry: &crate::ferry::Ferry,
    quick: bool,
    sample: &crate::wan_bench::sample::Sample,
) -> Header {
    Header {
        machine,
        reproduce: without_ferry_flag(&crate::reproduce_command(true)),
        source_revision: crate::ferry::source_revision(),
        quick,
        ferry: FerryInfo {
            binary: ferry.bin.display().to_string(),
            version: ferry.version(),
            tuning: ferry.tuning.clone(),
        },
        sample_path: sample.path.display().to_string(),
        sample_description: sample.info.description.clone(),
        sample_reused: sample.reused,
        warnings: crate::warnings(),
    }
}

/// Where one issue-5 benchmark runs: its work directory (checked, with `space` bytes free),
/// a fresh `issue5/NAME` run directory with `logs/`, the machine's description and the ext4
/// sample.
pub struct Workspace {
    pub run_dir: PathBuf,
    pub logs: PathBuf,
    pub machine: Machine,
    pub sample: crate::wan_bench::sample::Sample,
}

impl Workspace {
    pub fn prepare(c: &CommonArgs, name: &str, size_bytes: u64, space: u64) -> Result<Workspace> {
        let work = crate::system::prepare_work_dir(&c.dir, space)?;
        let run_dir = work.join("issue5").join(name);
        let _ = std::fs::remove_dir_all(&run_dir);
        let logs = run_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let machine = Machine::describe(&work);
        crate::progress(&format!(
            "work directory {}, logs in {}",
            work.display(),
            logs.display()
        ));
        let sample = crate::wan_bench::sample::ensure(&work, size_bytes, c.seed)?;
        Ok(Workspace {
            run_dir,
            logs,
            machine,
            sample,
        })
    }
}

/// The reproducing command without `--ferry PATH` (a path of this machine; the report
/// names the binary separately).
pub fn without_ferry_flag(cmd: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut words = cmd.split(' ');
    while let Some(w) = words.next() {
        if w == "--ferry" {
            words.next();
        } else if !w.starts_with("--ferry=") {
            out.push(w);
        }
    }
    out.join(" ")
}

/// Prints a report and writes its section of `--results`.
pub fn finish<R: serde::Serialize>(
    mode: &str,
    report: &R,
    markdown: String,
    json: bool,
    results: Option<&std::path::Path>,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{markdown}");
    }
    if let Some(p) = results {
        crate::results_file::rewrite(p, |old| {
            crate::results_file::with_issue5_results(old, mode, &markdown)
        })?;
        crate::progress(&format!(
            "issue-5 {mode} results written to {}",
            p.display()
        ));
    }
    Ok(())
}

/// `x` as MiB with one decimal.
pub fn mib(x: f64) -> String {
    format!("{:.1}", x / (1u64 << 20) as f64)
}

/// A latency in microseconds as milliseconds with two decimals.
pub fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduce_without_the_local_binary() {
        assert_eq!(
            without_ferry_flag("cargo run -- qos --ferry /x/ferry --results R.md"),
            "cargo run -- qos --results R.md"
        );
        assert_eq!(
            without_ferry_flag("cargo run -- qos --ferry=/x --quick"),
            "cargo run -- qos --quick"
        );
        assert_eq!(without_ferry_flag("a b"), "a b");
    }
}
