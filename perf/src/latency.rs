//! Per-IO latency from fio's completion-latency log, summarised with hdrhistogram.
//!
//! With `--write_lat_log=PREFIX --log_avg_msec=0` fio writes one line per IO to
//! `PREFIX_clat.N.log`: `time_ms, latency_ns, direction, block_size, priority` (fio 3.x;
//! the fifth field is the offset only with `--log_offset=1`). fio's own JSON percentiles
//! come from coarse bins; building the histogram from every IO gives exact-to-3-digits
//! percentiles and lets runs of different servers be compared on the same scale.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly: 60 s (anything above is clamped and still counted).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static histogram bounds are valid")
}

/// Loads every `latency_ns` of a fio clat log into a histogram.
pub fn load_clat_log(path: &Path) -> Result<Histogram<u64>> {
    let f = File::open(path).with_context(|| format!("open fio latency log {}", path.display()))?;
    let mut h = new_histogram();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ns: u64 = line
            .split(',')
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{}:{}: expected `time, latency_ns, ...`, got {line:?}",
                    path.display(),
                    i + 1
                )
            })?;
        h.saturating_record(ns.max(1));
    }
    if h.is_empty() {
        bail!(
            "fio latency log {} is empty: the job completed no IO",
            path.display()
        );
    }
    Ok(h)
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub latency_us_mean: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub latency_us_max: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            samples: h.len(),
            latency_us_mean: h.mean() / 1000.0,
            latency_us_p50: us(h.value_at_quantile(0.50)),
            latency_us_p99: us(h.value_at_quantile(0.99)),
            latency_us_p999: us(h.value_at_quantile(0.999)),
            latency_us_max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_clat_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x_clat.1.log");
        let mut text = String::new();
        for i in 1..=1000u64 {
            text.push_str(&format!("{i}, {}, 0, 4096, 0\n", i * 1000));
        }
        std::fs::write(&p, text).unwrap();
        let s = LatencySummary::of(&load_clat_log(&p).unwrap());
        assert_eq!(s.samples, 1000);
        assert!((s.latency_us_p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.latency_us_p99 - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.latency_us_max - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x_clat.1.log");
        std::fs::write(&p, "fio: connected\n").unwrap();
        assert!(load_clat_log(&p).is_err());
    }
}
