//! What the proxy did: bytes forwarded, faults injected, bytes queued.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::config::Direction;
use super::tos::Class;

/// A snapshot of the proxy's counters (all since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanCounters {
    /// Bytes written to the upstream server (after faults).
    pub upstream_bytes: u64,
    /// Bytes written to clients (after faults).
    pub downstream_bytes: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Accepted connections whose upstream connect failed (the client was closed).
    pub connect_failures: u64,
    /// Bytes flipped by corrupt faults.
    pub corrupted_bytes: u64,
    /// Bytes removed by drop faults.
    pub dropped_bytes: u64,
    /// Connections closed by cut faults.
    pub cut_connections: u64,
    /// Payload bytes read but not yet written, summed over every connection-direction.
    pub queued_bytes: u64,
    /// The highest `queued_bytes` seen.
    pub queued_bytes_max: u64,
}

impl fmt::Display for WanCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream_bytes={} downstream_bytes={} connections={} connect_failures={} \
             corrupted_bytes={} dropped_bytes={} cut_connections={} queued_bytes={} queued_bytes_max={}",
            self.upstream_bytes,
            self.downstream_bytes,
            self.connections,
            self.connect_failures,
            self.corrupted_bytes,
            self.dropped_bytes,
            self.cut_connections,
            self.queued_bytes,
            self.queued_bytes_max
        )
    }
}

/// Bytes forwarded per DSCP class (see [`WanConfig::priority_by_dscp`]); counted whether
/// or not the classes are scheduled apart. Kept out of [`WanCounters`] so that code
/// building that struct whole keeps compiling.
///
/// [`WanConfig::priority_by_dscp`]: super::WanConfig::priority_by_dscp
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanClassCounters {
    /// Bytes written to the server, then to the client, by normal connections.
    pub normal_upstream_bytes: u64,
    pub normal_downstream_bytes: u64,
    /// The same for low connections (client handshake marked DSCP CS1 or LE).
    pub low_upstream_bytes: u64,
    pub low_downstream_bytes: u64,
    /// Connections accepted as low.
    pub low_connections: u64,
}

impl fmt::Display for WanClassCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "normal_upstream_bytes={} normal_downstream_bytes={} low_upstream_bytes={} \
             low_downstream_bytes={} low_connections={}",
            self.normal_upstream_bytes,
            self.normal_downstream_bytes,
            self.low_upstream_bytes,
            self.low_downstream_bytes,
            self.low_connections
        )
    }
}

/// The live counters, shared by all threads of a proxy.
#[derive(Default)]
pub(crate) struct Counters {
    forwarded_bytes: [AtomicU64; 2],
    /// Indexed by [`Class::index`], then [`Direction::index`].
    class_bytes: [[AtomicU64; 2]; 2],
    pub low_connections: AtomicU64,
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    pub corrupted_bytes: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub cut_connections: AtomicU64,
    queued_bytes: AtomicU64,
    queued_bytes_max: AtomicU64,
}

impl Counters {
    pub(crate) fn forwarded(&self, dir: Direction, class: Class, bytes: usize) {
        self.forwarded_bytes[dir.index()].fetch_add(bytes as u64, Relaxed);
        self.class_bytes[class.index()][dir.index()].fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn class_snapshot(&self) -> WanClassCounters {
        let get = |c: Class, d: Direction| self.class_bytes[c.index()][d.index()].load(Relaxed);
        WanClassCounters {
            normal_upstream_bytes: get(Class::Normal, Direction::Upstream),
            normal_downstream_bytes: get(Class::Normal, Direction::Downstream),
            low_upstream_bytes: get(Class::Low, Direction::Upstream),
            low_downstream_bytes: get(Class::Low, Direction::Downstream),
            low_connections: self.low_connections.load(Relaxed),
        }
    }

    pub(crate) fn queued(&self, bytes: usize) {
        let now = self.queued_bytes.fetch_add(bytes as u64, Relaxed) + bytes as u64;
        self.queued_bytes_max.fetch_max(now, Relaxed);
    }

    pub(crate) fn unqueued(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WanCounters {
        WanCounters {
            upstream_bytes: self.forwarded_bytes[Direction::Upstream.index()].load(Relaxed),
            downstream_bytes: self.forwarded_bytes[Direction::Downstream.index()].load(Relaxed),
            connections: self.connections.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            corrupted_bytes: self.corrupted_bytes.load(Relaxed),
            dropped_bytes: self.dropped_bytes.load(Relaxed),
            cut_connections: self.cut_connections.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            queued_bytes_max: self.queued_bytes_max.load(Relaxed),
        }
    }
}
