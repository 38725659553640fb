//! What the emulated link looks like: delay, rate, queue limit, faults, seed.

use std::io;
use std::time::Duration;

use super::faults::Faults;
use super::pipe::PIECE_OVERHEAD_BYTES;

const MIB: usize = 1 << 20;

/// Queue limit per connection-direction when the rate is unlimited.
pub const UNLIMITED_QUEUE_LIMIT_BYTES: usize = 64 * MIB;
/// Smallest default queue limit: enough for short links to reach their rate.
pub const MIN_DEFAULT_QUEUE_LIMIT_BYTES: usize = MIB;
/// Smallest queue limit accepted: a piece must fit next to its bookkeeping.
pub const MIN_QUEUE_LIMIT_BYTES: usize = 4096;
const _: () = assert!(MIN_QUEUE_LIMIT_BYTES > PIECE_OVERHEAD_BYTES);

/// The emulated link. `Default` is a transparent proxy: no delay, no rate limit, no faults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WanConfig {
    /// Applied in each direction: a round trip costs at least twice this.
    pub one_way_delay: Duration,
    /// Rate of each direction's link, in bytes per second; `None` is unlimited. One link
    /// per direction is **shared by all connections** of the proxy (a FIFO bottleneck, or
    /// strict priority with `priority_by_dscp`), so two busy connections of one class get
    /// about half of it each. `Some(0)` is rejected.
    pub rate_bytes_per_s: Option<u64>,
    /// Bytes queued (read, not yet written) per connection-direction beyond which the
    /// proxy stops reading from the sender. `None`: see
    /// [`WanConfig::effective_queue_limit_bytes`].
    pub queue_limit_bytes: Option<usize>,
    /// Faults of connections accepted from now on.
    pub faults: Faults,
    /// Seed of every random choice (corruption values, random fault positions).
    pub seed: u64,
    /// Emulate a QoS-ready network: connections whose client marked its handshake DSCP
    /// CS1 or LE (TOS 0x20 / 0x04) are low priority in both directions, and each
    /// direction's link becomes a strict-priority scheduler: pieces of normal connections
    /// depart before queued pieces of low ones (a piece being serialized is not
    /// preempted; FIFO within a class). No effect with an unlimited rate (nothing queues).
    pub priority_by_dscp: bool,
}

impl WanConfig {
    /// The queue limit in force: the configured one, else `max(2 × rate × delay, 1 MiB)`,
    /// or 64 MiB when the rate is unlimited.
    pub fn effective_queue_limit_bytes(&self) -> usize {
        if let Some(limit) = self.queue_limit_bytes {
            return limit;
        }
        match self.rate_bytes_per_s {
            None => UNLIMITED_QUEUE_LIMIT_BYTES,
            Some(rate) => {
                let bdp = rate as f64 * self.one_way_delay.as_secs_f64();
                // Saturating float-to-int cast: an absurd delay gives usize::MAX, not a wrap.
                ((2.0 * bdp) as usize).max(MIN_DEFAULT_QUEUE_LIMIT_BYTES)
            }
        }
    }

    /// Rejects configurations the link model cannot run.
    pub fn validate(&self) -> io::Result<()> {
        if self.rate_bytes_per_s == Some(0) {
            return Err(invalid(
                "rate_bytes_per_s must be positive (None is unlimited)",
            ));
        }
        let limit = self.effective_queue_limit_bytes();
        if limit < MIN_QUEUE_LIMIT_BYTES {
            return Err(invalid(&format!(
                "queue limit {limit} bytes is below the minimum of {MIN_QUEUE_LIMIT_BYTES}"
            )));
        }
        self.faults.validate()
    }
}

pub(crate) fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("wan: {msg}"))
}

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server (bytes read from the accepted socket).
    Upstream,
    /// Server → client (bytes read from the upstream socket).
    Downstream,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Upstream, Direction::Downstream];

    /// Index into per-direction arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Direction::Upstream => 0,
            Direction::Downstream => 1,
        }
    }

    /// Stable code mixed into seeds: fault positions must not change if the enum does.
    pub(crate) fn seed_code(self) -> u64 {
        match self {
            Direction::Upstream => 0x7570,       // "up"
            Direction::Downstream => 0x646f776e, // "down"
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Upstream => "up",
            Direction::Downstream => "down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_queue_limit_follows_the_bandwidth_delay_product() {
        let mut cfg = WanConfig::default();
        assert_eq!(cfg.effective_queue_limit_bytes(), 64 * MIB);
        cfg.rate_bytes_per_s = Some(1_000_000);
        assert_eq!(cfg.effective_queue_limit_bytes(), MIB);
        cfg.rate_bytes_per_s = Some(125_000_000);
        cfg.one_way_delay = Duration::from_millis(40);
        assert_eq!(cfg.effective_queue_limit_bytes(), 10_000_000);
        cfg.queue_limit_bytes = Some(5000);
        assert_eq!(cfg.effective_queue_limit_bytes(), 5000);
        assert!(cfg.validate().is_ok());
        cfg.queue_limit_bytes = Some(100);
        assert!(cfg.validate().is_err());
        cfg.queue_limit_bytes = None;
        cfg.rate_bytes_per_s = Some(0);
        assert!(cfg.validate().is_err());
    }
}
