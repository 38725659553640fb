//! The pacing model of one direction: a FIFO bottleneck of a fixed rate, then a delay.
//!
//! One `Link` per direction is shared by every connection of the proxy, so connections
//! compete for its rate as they would for a real WAN link. The clock is a mutex because
//! reservations must be serialized: a piece departs after the previous one has been
//! serialized, whichever connection that was.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Link {
    rate_bytes_per_s: Option<u64>,
    one_way_delay: Duration,
    /// Departure time of the last piece scheduled; `None` before the first.
    last_departure: Mutex<Option<Instant>>,
}

/// Time to put `len` bytes on a link of `rate` bytes per second.
fn serialization(len: usize, rate_bytes_per_s: u64) -> Duration {
    let ns = len as u128 * 1_000_000_000 / u128::from(rate_bytes_per_s.max(1));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl Link {
    pub(crate) fn new(rate_bytes_per_s: Option<u64>, one_way_delay: Duration) -> Link {
        Link {
            rate_bytes_per_s,
            one_way_delay,
            last_departure: Mutex::new(None),
        }
    }

    /// Schedules a piece of `len` bytes handed to the link at `now`; returns when it
    /// arrives at the far end: `max(now, last departure) + len / rate + delay`.
    pub(crate) fn schedule(&self, len: usize, now: Instant) -> Instant {
        let Some(rate) = self.rate_bytes_per_s else {
            return now + self.one_way_delay;
        };
        let mut last = self
            .last_departure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let start = last.map_or(now, |t| t.max(now));
        let departure = start + serialization(len, rate);
        *last = Some(departure);
        departure + self.one_way_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_queue_behind_each_other_at_the_rate() {
        let link = Link::new(Some(1_000_000), Duration::from_millis(10));
        let t0 = Instant::now();
        let a = link.schedule(1000, t0);
        assert_eq!(a - t0, Duration::from_millis(11));
        // Handed over at the same time: waits for the first to be serialized.
        let b = link.schedule(2000, t0);
        assert_eq!(b - t0, Duration::from_millis(13));
        // An idle link starts at `now`.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(link.schedule(0, later) - later, Duration::from_millis(10));
    }

    #[test]
    fn unlimited_rate_is_delay_only() {
        let link = Link::new(None, Duration::from_millis(5));
        let t0 = Instant::now();
        assert_eq!(link.schedule(1 << 30, t0) - t0, Duration::from_millis(5));
    }
}
