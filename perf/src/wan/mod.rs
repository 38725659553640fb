//! WAN emulator: a TCP proxy with a one-way delay, a rate limit and seeded faults.
//!
//! The kernels we test on have no netem, so a slow, long link between a Ferry frontend
//! and backend (or any TCP peers) is emulated in user space: clients connect to the
//! proxy, the proxy connects to the upstream server and forwards both directions through
//! an emulated link.
//!
//! # Model
//! * Two links, one per [`Direction`] (client→server is [`Direction::Upstream`]). Each link
//!   is one FIFO bottleneck (unless QoS is on, below) **shared by every connection of
//!   the proxy**: a piece of `len` bytes read from a source socket departs at
//!   `max(now, previous departure on that link) + len / rate` and arrives at
//!   `departure + one_way_delay`. A round trip therefore costs at least
//!   `2 × one_way_delay`.
//! * Per connection and direction a reader thread reads pieces of at most
//!   [`PIECE_MAX_BYTES`], applies the faults and queues them; a writer thread writes each
//!   piece to the destination when it arrives.
//! * Back-pressure: while the bytes queued in one connection-direction (read, not yet
//!   written) reach the queue limit, its reader stops reading, so the sender sees a slow
//!   link through TCP flow control. The default limit is `max(2 × rate × delay, 1 MiB)`
//!   (twice the bandwidth-delay product keeps the link busy), or 64 MiB when the rate is
//!   unlimited ([`WanConfig::effective_queue_limit_bytes`]).
//! * QoS (opt-in, [`WanConfig::priority_by_dscp`]): a connection whose client marked its
//!   handshake DSCP CS1 or LE (IP_TOS 0x20 / 0x04, read from the accepted socket; no byte
//!   of the stream is inspected) is *low* in both directions, every other one *normal*.
//!   Each link is then a strict-priority scheduler instead of a FIFO: when it frees, the
//!   oldest normal piece waiting goes next, a low piece only when no normal one waits; the
//!   piece being serialized is never preempted, and the rate and delay are as above. A
//!   low piece's departure is therefore decided when the link frees, not when it is read
//!   (see `link.rs`). The client's mark is copied onto the upstream connection, so the
//!   server sees it as it would without the proxy. Bytes are counted per class either
//!   way ([`WanProxy::class_counters`]).
//! * End of stream: EOF from a source is passed on as `shutdown(Write)` after the queued
//!   bytes (half-close); a connection closes when both directions are done. A read or
//!   write error (a peer reset) closes both sides at once and drops what is queued.
//!
//! # Invariants
//! * Order is preserved per connection and direction; bytes are only changed, removed or
//!   cut where a fault says so.
//! * Memory is bounded: at most the queue limit per connection-direction (payload plus a
//!   fixed per-piece overhead), whatever the senders do.
//! * Faults are deterministic: positions are byte offsets in the stream *read from the
//!   sender* of one connection-direction (connections are numbered in accept order from
//!   0), and everything random is derived from `(seed, connection, direction, offset)`
//!   with a fixed generator (SplitMix64), never from timing or from how reads split the
//!   stream. The same seed and config give the same faults at the same offsets on every
//!   run and every machine.
//! * A cut delivers exactly the bytes before its offset, then closes both sockets
//!   (`shutdown` both ways: the peers read EOF, or a reset if they keep writing).
//! * Dropping a [`WanProxy`] stops accepting, closes every connection and joins its
//!   threads (bounded wait).
//!
//! # Usage
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use ferry_perf::wan::{Direction, FaultAt, WanConfig, WanProxy};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut cfg = WanConfig {
//!     one_way_delay: Duration::from_millis(20),
//!     rate_bytes_per_s: Some(12_500_000), // 100 Mbit/s
//!     ..WanConfig::default()
//! };
//! cfg.faults.corrupt.push(FaultAt { direction: Direction::Upstream, connection: 0, offset: 4096 });
//! let upstream = SocketAddr::from(([127, 0, 0, 1], 10809)); // e.g. `ferry backend`
//! let proxy = WanProxy::start(upstream, SocketAddr::from(([127, 0, 0, 1], 0)), cfg)?;
//! println!("connect to {}", proxy.local_addr());
//! // ... run the client against proxy.local_addr() ...
//! println!("{}", proxy.counters());
//! # Ok(()) }
//! ```
//! Standalone, the `ferry-wan` binary runs the same proxy until killed:
//! ```text
//! ferry-wan --listen 127.0.0.1:0 --upstream 127.0.0.1:10809 --delay-ms 20 --rate 100mbit \
//!           --seed 7 --corrupt-at up:0:1M --cut-at down:1:64K --random-corrupt-per-mib 0.01
//! ```
//! It prints `ferry-wan listening on ADDR` on stdout, and its counters on stderr when it
//! gets SIGINT or SIGTERM.

mod config;
mod conn;
mod counters;
mod faults;
mod link;
mod parse;
mod pipe;
mod plan;
#[cfg(test)]
mod priority_tests;
mod proxy;
mod rng;
mod tos;

pub use config::{Direction, WanConfig};
pub use counters::{WanClassCounters, WanCounters};
pub use faults::{FaultAt, Faults, RandomFaults};
pub use parse::{parse_bytes, parse_drop, parse_rate};
pub use pipe::PIECE_MAX_BYTES;
pub use proxy::WanProxy;
