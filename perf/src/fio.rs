//! Running fio and reading what it measured.
//!
//! Quirks this module absorbs:
//! * fio's nbd engine prints `fio: connected to NBD server` on stdout before the JSON, so
//!   the JSON goes to a file (`--output`) and stdout/stderr to the run's log.
//! * The per-IO latency log is `PREFIX_clat.N.log` (plus `_lat` and `_slat` siblings we
//!   do not use); they can be large (one line per IO), so they are deleted once loaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::child::Proc;
use crate::latency::{load_clat_log, LatencySummary};

/// One fio job: its name (used for file names) and its job options.
#[derive(Debug, Clone)]
pub struct FioJob {
    pub name: String,
    pub args: Vec<String>,
}

impl FioJob {
    pub fn new(name: &str, args: &[&str]) -> FioJob {
        FioJob {
            name: name.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The command line as a user would type it (for the report).
    pub fn command_line(&self) -> String {
        let mut s = format!("fio --name={}", self.name);
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }
}

pub fn shell_quote(a: &str) -> String {
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// What one fio run measured, for the direction that did IO.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FioRun {
    pub iops: f64,
    pub bytes_per_s: f64,
    pub io_bytes: u64,
    pub runtime_ms: u64,
    /// From the per-IO clat log, when one was requested.
    pub latency: Option<LatencySummary>,
}

/// Runs `job` (with `tag` making its file names unique) and parses its JSON. With
/// `latency_log`, fio logs every IO's completion latency and the run carries percentiles.
pub fn run(
    job: &FioJob,
    tag: &str,
    work: &Path,
    latency_log: bool,
    timeout: Duration,
) -> Result<FioRun> {
    let stem = format!("fio-{}-{tag}", job.name);
    let json_path = work.join(format!("{stem}.json"));
    let log_path = work.join(format!("{stem}.log"));
    let lat_prefix = work.join(format!("{stem}-lat"));
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_file(&log_path);
    remove_lat_logs(&lat_prefix);

    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={}", job.name)).args(&job.args);
    cmd.arg("--output-format=json")
        .arg(format!("--output={}", json_path.display()));
    if latency_log {
        cmd.arg(format!("--write_lat_log={}", lat_prefix.display()))
            .arg("--log_avg_msec=0");
    }
    let mut p = Proc::spawn(&format!("fio {}", job.name), &mut cmd, &log_path, false)?;
    p.finish(timeout)?;
    drop(p);

    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("read fio output {}", json_path.display()))?;
    let mut r = parse_json(&text).with_context(|| {
        format!(
            "parse fio output {} (log: {})",
            json_path.display(),
            log_path.display()
        )
    })?;
    if latency_log {
        let clat = clat_log(&lat_prefix)?;
        r.latency = Some(LatencySummary::of(&load_clat_log(&clat)?));
        remove_lat_logs(&lat_prefix);
    }
    Ok(r)
}

fn lat_logs(prefix: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(base)) = (prefix.parent(), prefix.file_name().and_then(|b| b.to_str()))
    else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix(base).is_some_and(|rest| {
                    ["_clat.", "_lat.", "_slat."]
                        .iter()
                        .any(|k| rest.starts_with(k))
                        && rest.ends_with(".log")
                })
            })
        })
        .collect()
}

fn clat_log(prefix: &Path) -> Result<PathBuf> {
    let mut clat: Vec<PathBuf> = lat_logs(prefix)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("_clat."))
        })
        .collect();
    match clat.len() {
        1 => Ok(clat.remove(0)),
        0 => bail!(
            "fio wrote no completion-latency log {}_clat.*.log",
            prefix.display()
        ),
        _ => bail!(
            "fio wrote several clat logs for {} (numjobs > 1?): {clat:?}",
            prefix.display()
        ),
    }
}

fn remove_lat_logs(prefix: &Path) {
    for p in lat_logs(prefix) {
        let _ = std::fs::remove_file(p);
    }
}

/// Reads the one job of a fio JSON report.
pub fn parse_json(text: &str) -> Result<FioRun> {
    // Anything an engine printed before the JSON object is skipped.
    let start = text
        .find('{')
        .ok_or_else(|| anyhow!("no JSON object in fio output"))?;
    let v: Value = serde_json::from_str(&text[start..])?;
    let jobs = v["jobs"]
        .as_array()
        .ok_or_else(|| anyhow!("no `jobs` array"))?;
    let [job] = jobs.as_slice() else {
        bail!("expected one job, found {}", jobs.len())
    };
    if job["error"].as_i64().unwrap_or(0) != 0 {
        bail!("fio job failed with error {}", job["error"]);
    }
    let dir = ["read", "write"]
        .iter()
        .map(|d| &job[*d])
        .find(|d| d["io_bytes"].as_u64().unwrap_or(0) > 0)
        .ok_or_else(|| anyhow!("the job did no IO"))?;
    Ok(FioRun {
        iops: dir["iops"].as_f64().unwrap_or(0.0),
        bytes_per_s: dir["bw_bytes"].as_f64().unwrap_or(0.0),
        io_bytes: dir["io_bytes"].as_u64().unwrap_or(0),
        runtime_ms: dir["runtime"].as_u64().unwrap_or(0),
        latency: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_after_engine_chatter() {
        let text = r#"fio: connected to NBD server
{"fio version": "fio-3.33", "jobs": [{"jobname": "j", "error": 0,
  "read": {"io_bytes": 4096000, "bw_bytes": 2048000, "iops": 500.5, "runtime": 2000},
  "write": {"io_bytes": 0, "bw_bytes": 0, "iops": 0.0, "runtime": 0}}]}"#;
        let r = parse_json(text).unwrap();
        assert_eq!(r.io_bytes, 4_096_000);
        assert_eq!(r.runtime_ms, 2000);
        assert!((r.iops - 500.5).abs() < 1e-9);
    }

    #[test]
    fn quotes_uris() {
        assert_eq!(
            shell_quote("--uri=nbd+unix:///vol?socket=/x"),
            "'--uri=nbd+unix:///vol?socket=/x'"
        );
        assert_eq!(shell_quote("--bs=4k"), "--bs=4k");
    }
}
