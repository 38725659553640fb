//! `ferry migrate status ID --watch`: one progress line per poll, redrawn in place on a
//! terminal. Rates come from the difference between two polls (what happens now, not an
//! average since start); the ETA from the rate at which chunks left `untouched`, smoothed.

use dataplane::frontend::status::Status;

use crate::cli::human;

/// One poll: the session's state and its frontend's status, at `at_ms` (any monotonic ms).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: u64,
    pub state: String,
    pub status: Option<Status>,
}

/// What the watcher carries from one poll to the next.
#[derive(Debug, Default)]
pub struct Watch {
    prev: Option<Sample>,
    /// Chunks per second leaving `untouched`, smoothed (EWMA).
    chunk_rate: Option<f64>,
}

/// Bytes saved so far: zero chunks not sent, dedup, compression.
pub fn saved(st: &Status) -> (u64, u64, u64) {
    let zero = st.zero_replies * u64::from(st.chunk_size_bytes);
    let zstd = st.zstd_raw_bytes.saturating_sub(st.zstd_wire_bytes);
    (zero, st.deduped_bytes, zstd)
}

fn done_chunks(st: &Status) -> u64 {
    st.chunks_total - st.chunks_untouched.min(st.chunks_total)
}

fn bar(fraction: f64, width: usize) -> String {
    let full = ((fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(full), ".".repeat(width - full))
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

impl Watch {
    /// The line for `cur` (no newline, no escape codes).
    pub fn line(&mut self, cur: Sample) -> String {
        let Some(st) = cur.status.as_ref() else {
            self.prev = Some(cur.clone());
            return format!("{:<12} (no progress from a frontend yet)", cur.state);
        };
        let total = st.chunks_total.max(1);
        let done = done_chunks(st);
        let pct = done as f64 / total as f64;
        let mut rates = (None, None);
        if let Some(p) = self
            .prev
            .as_ref()
            .and_then(|p| p.status.as_ref().map(|s| (p.at_ms, s)))
        {
            let (at, ps) = p;
            let dt = cur.at_ms.saturating_sub(at) as f64 / 1000.0;
            // A restarted frontend starts its counters again: no rate from that pair.
            if dt > 0.0 && st.uptime_ms >= ps.uptime_ms {
                let od = st
                    .fetched_bytes_on_demand
                    .saturating_sub(ps.fetched_bytes_on_demand);
                let bg = st
                    .fetched_bytes_background
                    .saturating_sub(ps.fetched_bytes_background);
                rates = (Some(od as f64 / dt), Some(bg as f64 / dt));
                let dc = done.saturating_sub(done_chunks(ps)) as f64 / dt;
                self.chunk_rate = Some(match self.chunk_rate {
                    Some(r) => 0.3 * dc + 0.7 * r,
                    None => dc,
                });
            }
        }
        let eta = if st.chunks_untouched == 0 {
            "done".to_string()
        } else {
            match self.chunk_rate {
                Some(r) if r > 0.0 => duration(st.chunks_untouched as f64 / r),
                Some(_) if st.background_rate_bytes_per_s == Some(0) => "paused".into(),
                Some(_) => "stalled".into(),
                None => "-".into(),
            }
        };
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{}/s", human(r as u64)));
        let (zero, dedup, zstd) = saved(st);
        let line = format!(
            "{:<10} {:>5.1}% {} ETA {:<7} on-demand {:>11}  background {:>11}  saved {} (zero {}, dedup {}, zstd {})  unsynced {}",
            cur.state,
            pct * 100.0,
            bar(pct, 20),
            eta,
            rate(rates.0),
            rate(rates.1),
            human(zero + dedup + zstd),
            human(zero),
            human(dedup),
            human(zstd),
            human(st.unsynced_bytes),
        );
        self.prev = Some(cur);
        line
    }
}

/// The watch ends in these session states.
pub fn is_end(state: &str) -> bool {
    matches!(state, "ready" | "completed" | "aborted" | "failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(untouched: u64, od: u64, bg: u64, up: u64) -> Status {
        Status {
            chunk_size_bytes: 65536,
            chunks_total: 100,
            chunks_untouched: untouched,
            fetched_bytes_on_demand: od,
            fetched_bytes_background: bg,
            zero_replies: 2,
            deduped_bytes: 1024,
            zstd_raw_bytes: 5000,
            zstd_wire_bytes: 1000,
            unsynced_bytes: 65536,
            uptime_ms: up,
            ..Status::default()
        }
    }

    #[test]
    fn rates_from_deltas_and_eta() {
        let mut w = Watch::default();
        let s = |at, status| Sample {
            at_ms: at,
            state: "migrating".into(),
            status: Some(status),
        };
        let first = w.line(s(0, st(100, 0, 0, 10)));
        assert!(first.contains("0.0%") && first.contains("ETA -"), "{first}");
        let second = w.line(s(2000, st(80, 2 << 20, 4 << 20, 2010)));
        let second = second.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(second.contains("20.0%"), "{second}");
        assert!(second.contains("on-demand 1.0 MiB/s"), "{second}");
        assert!(second.contains("background 2.0 MiB/s"), "{second}");
        // 20 chunks in 2 s: 80 left at 10/s.
        assert!(second.contains("ETA 0:08"), "{second}");
        assert!(
            second.contains("zero 128.0 KiB, dedup 1.0 KiB, zstd 3.9 KiB"),
            "{second}"
        );
        assert!(second.contains("unsynced 64.0 KiB"), "{second}");
        let done = w.line(s(3000, st(0, 2 << 20, 9 << 20, 3010)));
        assert!(
            done.contains("100.0%") && done.contains("ETA done"),
            "{done}"
        );
    }
}
