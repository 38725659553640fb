//! What a WAN run found: per link and tool the time, wire bytes and CPU, the ratios and
//! goals, as markdown (the WAN block of `perf/RESULTS.md`) and JSON.
//!
//! Ratios are ferry / peer (or compression auto / off) of times and of wire bytes, so
//! smaller is better. Medians are taken per metric over the rounds.

use std::fmt::Write as _;

use serde::Serialize;

use super::link::LinkSpec;
use super::sample::SampleInfo;
use crate::ferry::Status;
use crate::report::{median, FerryInfo, Verdict};
use crate::system::Machine;

/// Goal of the issue: at 100 Mbit/s Ferry takes at most a third of nbdcopy's time.
pub const FERRY_VS_NBDCOPY_GOAL: f64 = 1.0 / 3.0;
/// Goal of the issue: compression never makes Ferry slower.
pub const AUTO_VS_OFF_GOAL: f64 = 1.0;

pub const FERRY_AUTO: &str = "ferry";
pub const FERRY_OFF: &str = "ferry-compress-off";
pub const NBDCOPY: &str = "nbdcopy";
pub const QEMU_IMG: &str = "qemu-img";

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// One timed, verified copy of the sample.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub elapsed_s: f64,
    /// The volume size: what the destination holds afterwards.
    pub logical_bytes: u64,
    /// Server → client bytes the emulator forwarded (`None` on loopback: no emulator).
    pub wire_bytes: Option<u64>,
    pub upstream_wire_bytes: Option<u64>,
    /// Connections the emulator accepted.
    pub connections: Option<u64>,
    /// CPU seconds (user + system) of the server process (ferry backend or qemu-nbd).
    pub cpu_server_s: f64,
    /// CPU seconds of the client process (ferry frontend, nbdcopy or qemu-img).
    pub cpu_client_s: f64,
    pub ferry: Option<FerryDetails>,
    /// How the destination was checked.
    pub verified: String,
}

impl Run {
    pub fn cpu_s_per_gib(&self) -> f64 {
        (self.cpu_server_s + self.cpu_client_s) / (self.logical_bytes as f64 / GIB)
    }

    /// The wire bytes of this run: the emulator's meter, else (loopback) Ferry's own count
    /// of chunk payload bytes.
    fn wire_or_ferry(&self) -> Option<u64> {
        self.wire_bytes
            .or_else(|| self.ferry.as_ref().map(|f| f.wire_bytes))
    }
}

/// What Ferry's `status --json` said when the migration finished.
#[derive(Debug, Clone, Serialize)]
pub struct FerryDetails {
    pub volume_size_bytes: u64,
    pub chunks_total: u64,
    pub chunks_present: u64,
    /// Chunks that were all zero or free in the source file system: not sent.
    pub chunks_zero: u64,
    pub fetched_bytes_background: u64,
    pub fetched_bytes_on_demand: u64,
    /// Chunk payload bytes on the wire by Ferry's own count (no protocol headers).
    pub wire_bytes: u64,
    pub zstd_chunks: u64,
    pub zstd_raw_bytes: u64,
    pub deduped_chunks: u64,
    pub deduped_bytes: u64,
    /// 4 KiB blocks the backend named by where it sent them before (`ChunkPieces`).
    pub deduped_blocks: u64,
    pub ref_misses: u64,
}

impl From<&Status> for FerryDetails {
    fn from(s: &Status) -> Self {
        FerryDetails {
            volume_size_bytes: s.volume_size_bytes,
            chunks_total: s.chunks_total,
            chunks_present: s.chunks_present,
            chunks_zero: s.chunks_zero,
            fetched_bytes_background: s.fetched_bytes_background,
            fetched_bytes_on_demand: s.fetched_bytes_on_demand,
            wire_bytes: s.wire_bytes,
            zstd_chunks: s.zstd_chunks,
            zstd_raw_bytes: s.zstd_raw_bytes,
            deduped_chunks: s.deduped_chunks,
            deduped_bytes: s.deduped_bytes,
            deduped_blocks: s.deduped_blocks,
            ref_misses: s.ref_misses,
        }
    }
}

/// One tool on one link, all rounds.
#[derive(Debug, Serialize)]
pub struct ToolResult {
    pub key: String,
    pub label: String,
    pub runs: Vec<Run>,
    pub elapsed_s: f64,
    pub wire_bytes: Option<f64>,
    pub cpu_s_per_gib: f64,
}

impl ToolResult {
    pub fn new(key: &str, label: &str) -> ToolResult {
        ToolResult {
            key: key.into(),
            label: label.into(),
            runs: Vec::new(),
            elapsed_s: 0.0,
            wire_bytes: None,
            cpu_s_per_gib: 0.0,
        }
    }

    /// Records a run and updates the medians.
    pub fn push(&mut self, run: Run) {
        self.runs.push(run);
        self.elapsed_s = median(self.runs.iter().map(|r| r.elapsed_s).collect());
        self.cpu_s_per_gib = median(self.runs.iter().map(Run::cpu_s_per_gib).collect());
        let wire: Option<Vec<f64>> = self
            .runs
            .iter()
            .map(|r| r.wire_or_ferry().map(|b| b as f64))
            .collect();
        self.wire_bytes = wire.map(median);
    }

    fn bytes_per_s(&self) -> f64 {
        self.runs.first().map_or(0.0, |r| r.logical_bytes as f64) / self.elapsed_s
    }
}

/// The tools on one link (`link == None`: loopback, no emulator).
#[derive(Debug, Serialize)]
pub struct LinkResult {
    pub link: Option<LinkSpec>,
    /// Where the wire bytes come from.
    pub wire_meter: String,
    pub tools: Vec<ToolResult>,
    pub ratios: LinkRatios,
}

/// Ratios of medians; `None` where a side was not run.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct LinkRatios {
    pub ferry_vs_nbdcopy_time: Option<f64>,
    pub ferry_vs_qemu_img_time: Option<f64>,
    pub ferry_auto_vs_off_time: Option<f64>,
    pub ferry_vs_nbdcopy_wire: Option<f64>,
    pub ferry_vs_qemu_img_wire: Option<f64>,
    pub ferry_auto_vs_off_wire: Option<f64>,
}

impl LinkResult {
    pub fn new(link: Option<LinkSpec>, tools: Vec<ToolResult>) -> LinkResult {
        let wire_meter = if link.is_some() {
            "the emulator: server → client bytes forwarded, protocol included"
        } else {
            "Ferry's own count of chunk payload bytes (no emulator on loopback)"
        };
        LinkResult {
            link,
            wire_meter: wire_meter.into(),
            tools,
            ratios: LinkRatios::default(),
        }
    }

    pub fn tool(&self, key: &str) -> Option<&ToolResult> {
        self.tools
            .iter()
            .find(|t| t.key == key && !t.runs.is_empty())
    }

    pub fn tool_mut(&mut self, key: &str) -> Option<&mut ToolResult> {
        self.tools.iter_mut().find(|t| t.key == key)
    }

    pub fn compute_ratios(&mut self) {
        let time = |a: &str, b: &str| Some(self.tool(a)?.elapsed_s / self.tool(b)?.elapsed_s);
        let wire = |a: &str, b: &str| Some(self.tool(a)?.wire_bytes? / self.tool(b)?.wire_bytes?);
        self.ratios = LinkRatios {
            ferry_vs_nbdcopy_time: time(FERRY_AUTO, NBDCOPY),
            ferry_vs_qemu_img_time: time(FERRY_AUTO, QEMU_IMG),
            ferry_auto_vs_off_time: time(FERRY_AUTO, FERRY_OFF),
            ferry_vs_nbdcopy_wire: wire(FERRY_AUTO, NBDCOPY),
            ferry_vs_qemu_img_wire: wire(FERRY_AUTO, QEMU_IMG),
            ferry_auto_vs_off_wire: wire(FERRY_AUTO, FERRY_OFF),
        };
    }

    fn name(&self) -> String {
        self.link
            .as_ref()
            .map_or("loopback, no emulator".into(), |l| {
                format!("{} ({l})", l.text)
            })
    }
}

/// The commands each tool ran, with placeholders for what changes per run.
#[derive(Debug, Serialize)]
pub struct Commands {
    pub ferry_backend: String,
    pub ferry_frontend: String,
    pub qemu_nbd: String,
    pub nbdcopy: String,
    pub qemu_img: String,
}

#[derive(Debug, Serialize)]
pub struct WanReport {
    pub machine: Machine,
    pub nbdcopy_version: String,
    pub qemu_img_version: String,
    pub reproduce: String,
    pub source_revision: String,
    pub quick: bool,
    pub ferry: FerryInfo,
    pub sample_path: String,
    pub sample: SampleInfo,
    pub sample_reused: bool,
    pub sample_allocated_bytes: u64,
    pub repeat: usize,
    pub loopback_repeat: usize,
    pub page_cache_dropped: bool,
    pub cpu_method: String,
    pub commands: Commands,
    /// Loopback first, then the links in the order given.
    pub results: Vec<LinkResult>,
    pub verdicts: Vec<Verdict>,
    pub warnings: Vec<String>,
}

pub fn verdicts(results: &[LinkResult]) -> Vec<Verdict> {
    let mut v = Vec::new();
    let goal = "ferry time <= 1/3 x nbdcopy time at 100 Mbit/s".to_string();
    let at_100: Vec<(String, f64)> = results
        .iter()
        .filter(|r| r.link.as_ref().is_some_and(LinkSpec::is_100_mbit))
        .filter_map(|r| Some((r.name(), r.ratios.ferry_vs_nbdcopy_time?)))
        .collect();
    v.push(if at_100.is_empty() {
        Verdict {
            goal,
            met: None,
            detail: "no 100 Mbit/s link in this run".into(),
        }
    } else {
        Verdict {
            goal,
            met: Some(at_100.iter().all(|(_, r)| *r <= FERRY_VS_NBDCOPY_GOAL)),
            detail: detail(&at_100),
        }
    });
    let goal = format!(
        "ferry compression auto time <= {AUTO_VS_OFF_GOAL:.1} x compression off, loopback and every link"
    );
    let auto_off: Vec<(String, f64)> = results
        .iter()
        .filter_map(|r| Some((r.name(), r.ratios.ferry_auto_vs_off_time?)))
        .collect();
    v.push(Verdict {
        goal,
        met: (!auto_off.is_empty()).then(|| auto_off.iter().all(|(_, r)| *r <= AUTO_VS_OFF_GOAL)),
        detail: detail(&auto_off),
    });
    v
}

fn detail(v: &[(String, f64)]) -> String {
    v.iter()
        .map(|(n, r)| format!("{n}: {r:.2}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn opt_ratio(r: Option<f64>, bold: bool) -> String {
    match (r, bold) {
        (Some(r), true) => format!("**{r:.2}**"),
        (Some(r), false) => format!("{r:.2}"),
        (None, _) => "–".into(),
    }
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / MIB)
}

impl WanReport {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "## WAN migration results of {}{}\n",
            m.date_utc,
            if self.quick {
                " (--quick: small sample; indicative only)"
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
            "* Kernel {}; CPU {} x {}; RAM {} MiB",
            m.kernel, m.cpus, m.cpu_model, m.mem_total_mib
        );
        let _ = writeln!(
            o,
            "* {}; {}; {}",
            self.nbdcopy_version, self.qemu_img_version, m.qemu_nbd_version
        );
        let _ = writeln!(
            o,
            "* ferry: `{}` ({})",
            self.ferry.binary, self.ferry.version
        );
        let _ = writeln!(o, "* Work directory {} on {}", m.work_dir, m.work_dir_fs);
        let s = &self.sample;
        let _ = writeln!(
            o,
            "* Volume: `{}` ({}, seed {}): {}; {} MiB free per dumpe2fs; the image file has {} MiB allocated{}",
            self.sample_path,
            if self.sample_reused {
                "cached from an earlier run"
            } else {
                "made by this run"
            },
            s.seed,
            s.description,
            mib(s.free_bytes),
            mib(self.sample_allocated_bytes),
            if s.notes.is_empty() {
                String::new()
            } else {
                format!(" (notes: {})", s.notes.join("; "))
            }
        );
        let _ = writeln!(
            o,
            "* Page cache dropped before every run: {}",
            if self.page_cache_dropped {
                "yes"
            } else {
                "**no** (not root?)"
            }
        );
        let _ = writeln!(
            o,
            "* {} round(s) on every link, {} on loopback; tools interleaved within each link; medians shown",
            self.repeat, self.loopback_repeat
        );
        let _ = writeln!(o, "* CPU: {}\n", self.cpu_method);

        let _ = writeln!(o, "### Time, wire bytes and CPU\n");
        let _ = writeln!(o, "| link | tool | time s | MiB/s (volume / time) | wire MiB | wire / volume | CPU s per GiB (server + client) | time per round s |");
        let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---|");
        for r in &self.results {
            let mut first = true;
            for t in r.tools.iter().filter(|t| !t.runs.is_empty()) {
                let name = if first { r.name() } else { String::new() };
                first = false;
                let volume = t.runs[0].logical_bytes as f64;
                let wire = t
                    .wire_bytes
                    .map_or("–".into(), |w| format!("{:.0}", w / MIB));
                let share = t
                    .wire_bytes
                    .map_or("–".into(), |w| format!("{:.2}", w / volume));
                let rounds = t
                    .runs
                    .iter()
                    .map(|r| format!("{:.1}", r.elapsed_s))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    o,
                    "| {name} | {} | {:.1} | {:.1} | {wire}{} | {share} | {:.2} | {rounds} |",
                    t.label,
                    t.elapsed_s,
                    t.bytes_per_s() / MIB,
                    if r.link.is_none() { "*" } else { "" },
                    t.cpu_s_per_gib,
                );
            }
        }
        let _ = writeln!(
            o,
            "\nWire MiB: server → client bytes the emulator forwarded (the same meter for every tool, \
             NBD/Ferry protocol included); \\* on loopback there is no emulator, so it is Ferry's own count \
             of chunk payload bytes (`wire_bytes` of `ferry status --json`).\n"
        );

        let _ = writeln!(o, "### Ratios (medians; smaller is better)\n");
        let _ = writeln!(o, "| link | ferry / nbdcopy time (goal at 100 Mbit/s <= 0.33) | ferry / qemu-img time | ferry auto / off time (goal <= 1.0) | ferry / nbdcopy wire | ferry / qemu-img wire | ferry auto / off wire |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let q = &r.ratios;
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.name(),
                opt_ratio(q.ferry_vs_nbdcopy_time, true),
                opt_ratio(q.ferry_vs_qemu_img_time, false),
                opt_ratio(q.ferry_auto_vs_off_time, true),
                opt_ratio(q.ferry_vs_nbdcopy_wire, false),
                opt_ratio(q.ferry_vs_qemu_img_wire, false),
                opt_ratio(q.ferry_auto_vs_off_wire, false),
            );
        }

        let _ = writeln!(
            o,
            "\n### What Ferry did (`ferry status --json` at the end of the last round)\n"
        );
        let _ = writeln!(o, "| link | compression | chunks | zero or free (not sent) | zstd chunks (MiB raw) | deduped chunks (MiB) | 4 KiB blocks copied, not sent (MiB) | other chunks (raw, or pieces) | Ferry wire MiB | emulator wire MiB | connections | CPU s backend / frontend |");
        let _ = writeln!(
            o,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in &self.results {
            for t in &r.tools {
                let Some(run) = t.runs.last() else { continue };
                let Some(f) = &run.ferry else { continue };
                let raw = f
                    .chunks_total
                    .saturating_sub(f.chunks_zero + f.zstd_chunks + f.deduped_chunks);
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} ({}) | {} ({}) | {} ({}) | {raw} | {} | {} | {} | {:.1} / {:.1} |",
                    r.link.as_ref().map_or("loopback".into(), |l| l.text.clone()),
                    if t.key == FERRY_OFF { "off" } else { "auto" },
                    f.chunks_total,
                    f.chunks_zero,
                    f.zstd_chunks,
                    mib(f.zstd_raw_bytes),
                    f.deduped_chunks,
                    mib(f.deduped_bytes),
                    f.deduped_blocks,
                    mib(f.deduped_blocks * 4096),
                    mib(f.wire_bytes),
                    run.wire_bytes.map_or("–".into(), mib),
                    run.connections.map_or("–".into(), |c| c.to_string()),
                    run.cpu_server_s,
                    run.cpu_client_s,
                );
            }
        }

        let c = &self.commands;
        let _ = writeln!(o, "\n### Commands\n");
        let _ = writeln!(o, "* ferry backend: `{}`", c.ferry_backend);
        let _ = writeln!(o, "* ferry frontend: `{}`", c.ferry_frontend);
        let _ = writeln!(
            o,
            "* qemu-nbd (source of nbdcopy and qemu-img): `{}`",
            c.qemu_nbd
        );
        let _ = writeln!(o, "* nbdcopy: `{}`", c.nbdcopy);
        let _ = writeln!(o, "* qemu-img: `{}`", c.qemu_img);
        let _ = writeln!(o, "* Every destination checked: {}\n", self.checks());

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

    /// How the destinations were checked, from the first run of each kind.
    fn checks(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for r in &self.results {
            for t in &r.tools {
                if let Some(run) = t.runs.first() {
                    let kind = if run.ferry.is_some() {
                        "ferry"
                    } else {
                        "peers"
                    };
                    if !seen.iter().any(|s| s.starts_with(kind)) {
                        let what = run.verified.split(" (").next().unwrap_or("");
                        seen.push(format!("{kind}: {what}"));
                    }
                }
            }
        }
        seen.join("; ")
    }
}
