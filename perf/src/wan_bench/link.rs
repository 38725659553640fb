//! An emulated link as the command line gives it: `RATE/RTT`, e.g. `100mbit/40ms`.

use std::fmt;
use std::time::Duration;

use ferry_perf::wan::{parse_rate, WanConfig};
use serde::Serialize;

/// A link: a rate per direction (shared by every connection) and a round-trip time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkSpec {
    /// As given, e.g. `100mbit/40ms`.
    pub text: String,
    pub rate_bytes_per_s: u64,
    pub rtt_ms: u64,
}

impl LinkSpec {
    /// The emulator's configuration: each direction delayed by RTT/2, so a round trip
    /// costs the RTT; the queue limit is the emulator's default (twice the
    /// bandwidth-delay product, at least 1 MiB); no faults.
    pub fn wan_config(&self) -> WanConfig {
        WanConfig {
            one_way_delay: Duration::from_micros(self.rtt_ms * 500),
            rate_bytes_per_s: Some(self.rate_bytes_per_s),
            ..WanConfig::default()
        }
    }

    /// Whether this is the 100 Mbit/s link the nbdcopy goal is stated for.
    pub fn is_100_mbit(&self) -> bool {
        self.rate_bytes_per_s == 12_500_000
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mbit = self.rate_bytes_per_s as f64 * 8.0 / 1e6;
        if mbit >= 1000.0 {
            write!(f, "{} Gbit/s, RTT {} ms", mbit / 1000.0, self.rtt_ms)
        } else {
            write!(f, "{mbit} Mbit/s, RTT {} ms", self.rtt_ms)
        }
    }
}

/// `RATE/RTT`: a rate as `ferry-wan --rate` takes it (`100mbit`, `1gbit`, `12.5MB`; not
/// unlimited) and a round-trip time in ms (`40ms`, `40`) or s (`0.1s`).
/// `none`: no emulated link (loopback only).
pub fn parse_link(s: &str) -> Result<Option<LinkSpec>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse_one(s).map(Some)
}

fn parse_one(s: &str) -> Result<LinkSpec, String> {
    let (rate, rtt) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected RATE/RTT, e.g. 100mbit/40ms"))?;
    let rate_bytes_per_s =
        parse_rate(rate)?.ok_or_else(|| format!("{s:?}: an emulated link needs a finite rate"))?;
    let rtt = rtt.trim().to_ascii_lowercase();
    let rtt_ms = if let Some(ms) = rtt.strip_suffix("ms") {
        ms.trim().parse::<f64>().ok()
    } else if let Some(secs) = rtt.strip_suffix('s') {
        secs.trim().parse::<f64>().ok().map(|s| s * 1000.0)
    } else {
        rtt.parse::<f64>().ok()
    }
    .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms <= 10_000.0)
    .ok_or_else(|| format!("{s:?}: expected a round-trip time like 40ms or 0.1s"))?;
    Ok(LinkSpec {
        text: s.trim().to_string(),
        rate_bytes_per_s,
        rtt_ms: rtt_ms.round() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert!(matches!(parse_link("none"), Ok(None)));
        let l = parse_link("100mbit/40ms")
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("a link");
        assert_eq!(l.rate_bytes_per_s, 12_500_000);
        assert_eq!(l.rtt_ms, 40);
        assert!(l.is_100_mbit());
        assert_eq!(l.wan_config().one_way_delay, Duration::from_millis(20));
        assert_eq!(l.to_string(), "100 Mbit/s, RTT 40 ms");
        let l = parse_link("1gbit/0.01s")
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("a link");
        assert_eq!((l.rate_bytes_per_s, l.rtt_ms), (125_000_000, 10));
        assert_eq!(l.to_string(), "1 Gbit/s, RTT 10 ms");
        assert!(parse_link("100mbit").is_err());
        assert!(parse_link("unlimited/10ms").is_err());
        assert!(parse_link("100mbit/soon").is_err());
    }
}
