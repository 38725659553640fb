//! How many background chunks one shard may have outstanding (seed §4.4.4: the frontend
//! "limits the amount of outstanding fetcher requests").
//!
//! Why a window at all: whatever background data is already in the backend's kernel, in
//! flight or queued at the bottleneck router is ahead of every on-demand reply on a shared
//! connection (`--qos shared`), and TCP alone fills the bottleneck's buffer. With separate
//! connections (`--qos separate`) a QoS network lets on-demand replies pass, but a read of a
//! chunk that a background request already carries waits for that request, behind the whole
//! background backlog: seconds on a slow link if nothing bounds it. Background requests are
//! the only thing that puts data there, so the frontend keeps just enough of them outstanding
//! to fill the pipe, plus a small queue: `SHARED_TARGET_DELAY` or `SEPARATE_TARGET_DELAY`.
//!
//! The window follows a delay-based rule in the manner of TCP Vegas / LEDBAT: the time to the
//! first reply of a request, minus the lowest such time seen lately (the base round trip),
//! is queueing. Below the target the window grows (by an eighth when well below, else by one
//! chunk, at most once per round trip); above it shrinks. Until queueing first reaches half
//! the target it doubles per round trip instead, like TCP's slow start: a fresh migration's
//! first second is when the workload boots and reads most, and growing by an eighth from a
//! few chunks would leave a 100 Mbit/s, 40 ms link half idle for most of it (measured).
//! On-demand replies overtaking background show up as background queueing too, so the
//! window gives way to on-demand load by itself. In the shared mode it never drops below the floor: `floor bytes/s × the time a
//! background request takes now`, so background keeps moving at the configured rate whatever
//! the on-demand load.
//!
//! The rule steers a window of *full chunks' worth of wire bytes*. With separate connections
//! the chunks allowed outstanding are that many times what a chunk has lately cost on the wire
//! (up to [`WIRE_SCALE_MAX`] times): a run of zero chunks, references or named blocks carries
//! a few dozen bytes a chunk, and a window counted in chunks starved the link through such
//! runs (on the WAN sample at 100 Mbit/s, 3–8 MB/s for seconds while the window grew an
//! eighth per round trip, and the last second was all zero chunks). The shared mode keeps
//! counting chunks, and cheap chunks may grow its window only back to the largest one that
//! chunks of half their size or more ran at: there a run of full chunks after cheap ones
//! would delay on-demand replies behind it.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::notify::Notify;

/// Queueing delay the window aims under on a shared connection, where every millisecond of
/// it is added to on-demand replies: small next to a WAN round trip, large enough to ride out
/// scheduling noise on a busy core.
const SHARED_TARGET_DELAY: Duration = Duration::from_millis(5);
/// With background on its own connections, its queue delays on-demand replies only where a
/// read waits for a chunk a background request already carries; a longer queue is allowed
/// there, for throughput, but not the seconds an unbounded backlog would take on a slow link.
/// What the rule sees as queueing also holds the two ends' work (reading the source, hashing,
/// compressing, resolving named blocks), which on a compressible volume is tens of ms: at 25
/// ms the window starved a 100 Mbit/s, 40 ms link (the 4 GiB WAN sample took 88 s, the link
/// 89% busy); at 60 ms it took 77.5–78.3 s (97%).
const SEPARATE_TARGET_DELAY: Duration = Duration::from_millis(60);
/// With separate connections, below this round trip (a LAN, loopback) the window is not
/// applied: a backlog there lasts milliseconds, and the "queue" the delay rule sees is the
/// two ends' CPU and disks, which a smaller window would only starve (measured: 20–30% less
/// hydration throughput on loopback). The round trip is the lower of the base and the
/// links' handshakes ([`BackgroundCap::path_rtt`]): the first reply of a fetch waits for the
/// backend's disk, and with source and target on one busy disk the base stayed at 2.4–2.8
/// ms on loopback, which made it a "WAN" whose full window told the backend to compress.
const SEPARATE_WAN_RTT_MIN: Duration = Duration::from_millis(2);
/// The base round trip is the minimum of the last two periods of this length, so a route
/// that got slower is noticed within one to two periods.
const BASE_PERIOD: Duration = Duration::from_secs(10);
/// Most chunks a window of one full chunk's wire bytes allows when chunks cost less: bounds
/// the backlog if a run of small ones ends in incompressible data (the requests then in
/// flight carry this many times the bytes the rule meant).
const WIRE_SCALE_MAX: f64 = 8.0;
/// Answered chunks per measurement of the wire bytes a chunk costs.
const WIRE_SAMPLE_CHUNKS: u64 = 16;
/// A full window counts as link-bound for two base round trips after a grant waited, and at
/// least this long.
const LINK_BOUND_HOLD_MIN: Duration = Duration::from_millis(50);

/// One chunk held by [`BackgroundCap::hold_one`].
pub struct Held<'a>(&'a BackgroundCap);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let cap = self.0;
        cap.held.set(cap.held.get().saturating_sub(1));
        cap.changed.notify_all();
    }
}

pub struct BackgroundCap {
    /// `--qos shared`: on-demand replies share the connection (and the window applies on
    /// any link); else background has its own connections.
    shared: bool,
    target: Duration,
    chunk_bytes: u64,
    max_chunks: usize,
    /// Background bytes/s this shard keeps requesting whatever the on-demand load.
    floor_bytes_per_s: u64,
    window: Cell<f64>,
    outstanding: Cell<usize>,
    /// Answered chunks held in memory until a target write can start: they take room in the
    /// window too, so a target slower than the link slows the fetches instead of piling
    /// chunks up in memory.
    held: Cell<usize>,
    base_cur: Cell<Option<Duration>>,
    base_prev: Cell<Option<Duration>>,
    /// The lowest handshake round trip of the shard's links.
    handshake_rtt: Cell<Option<Duration>>,
    period_start: Cell<Instant>,
    last_adjust: Cell<Instant>,
    last_delay: Cell<Duration>,
    /// When a grant last had to wait for room: the window, not the supply of work, limits
    /// background then.
    waited_at: Cell<Option<Instant>>,
    /// No queueing of half the target seen yet: the window doubles per round trip.
    slow_start: Cell<bool>,
    /// Smoothed time to the first reply of background requests, queueing included.
    background_rtt: Cell<Option<Duration>>,
    /// Smoothed wire bytes per answered background chunk, and the counts it was last
    /// measured from (answered chunks, the link's wire bytes).
    wire_per_chunk: Cell<f64>,
    answered: Cell<u64>,
    measured_at: Cell<(u64, u64)>,
    /// Shared mode: the largest window chunks of half their size or more ran at with
    /// queueing under the target.
    proven: Cell<f64>,
    changed: Notify,
}

impl BackgroundCap {
    pub fn new(
        shared: bool,
        chunk_bytes: u32,
        max_chunks: usize,
        floor_bytes_per_s: u64,
    ) -> BackgroundCap {
        let now = Instant::now();
        let cap = BackgroundCap {
            shared,
            target: if shared {
                SHARED_TARGET_DELAY
            } else {
                SEPARATE_TARGET_DELAY
            },
            chunk_bytes: u64::from(chunk_bytes).max(1),
            max_chunks: max_chunks.max(1),
            floor_bytes_per_s,
            window: Cell::new(0.0),
            outstanding: Cell::new(0),
            held: Cell::new(0),
            base_cur: Cell::new(None),
            base_prev: Cell::new(None),
            handshake_rtt: Cell::new(None),
            period_start: Cell::new(now),
            last_adjust: Cell::new(now),
            last_delay: Cell::new(Duration::ZERO),
            slow_start: Cell::new(true),
            waited_at: Cell::new(None),
            background_rtt: Cell::new(None),
            wire_per_chunk: Cell::new(f64::from(chunk_bytes.max(1))),
            answered: Cell::new(0),
            measured_at: Cell::new((0, 0)),
            proven: Cell::new(0.0),
            changed: Notify::default(),
        };
        // Start like slow start from a few chunks: a long link fills within a few round trips.
        cap.window
            .set(cap.floor().max(4.0).min(cap.max_chunks as f64));
        cap
    }

    fn base(&self) -> Option<Duration> {
        match (self.base_cur.get(), self.base_prev.get()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The floor in chunks outstanding: floor rate × the time a background request takes
    /// now. Under on-demand load that is the base round trip plus the on-demand queue ahead
    /// of it, and the floor must cover it, or background would get only a fraction of it.
    fn floor(&self) -> f64 {
        let base = self.base().unwrap_or(Duration::from_millis(1)) + self.target;
        let rtt = self.background_rtt.get().map_or(base, |r| r.max(base));
        let chunks = self.floor_bytes_per_s as f64 * rtt.as_secs_f64() / self.chunk_bytes as f64;
        chunks.ceil().max(1.0)
    }

    /// A link's handshake took `rtt`.
    pub fn path_rtt(&self, rtt: Duration) {
        let low = self.handshake_rtt.get().map_or(rtt, |h| h.min(rtt));
        self.handshake_rtt.set(Some(low));
    }

    /// The path is a LAN (or loopback): see [`SEPARATE_WAN_RTT_MIN`].
    fn lan(&self) -> bool {
        [self.base(), self.handshake_rtt.get()]
            .into_iter()
            .flatten()
            .min()
            .is_some_and(|rtt| rtt < SEPARATE_WAN_RTT_MIN)
    }

    /// Chunks allowed outstanding now.
    pub fn window(&self) -> usize {
        if !self.shared && self.lan() {
            return self.max_chunks;
        }
        let full_chunks = self.window.get().max(self.floor());
        let scale = if self.shared {
            1.0
        } else {
            (self.chunk_bytes as f64 / self.wire_per_chunk.get()).clamp(1.0, WIRE_SCALE_MAX)
        };
        ((full_chunks * scale) as usize).clamp(1, self.max_chunks)
    }

    /// A background chunk was answered; `link_wire_bytes` is the count of wire bytes the
    /// shard's links received so far (on-demand ones too: they only make chunks look dearer,
    /// and the window smaller).
    pub fn answered(&self, link_wire_bytes: u64) {
        let n = self.answered.get() + 1;
        self.answered.set(n);
        let (n0, w0) = self.measured_at.get();
        if n - n0 < WIRE_SAMPLE_CHUNKS {
            return;
        }
        self.measured_at.set((n, link_wire_bytes));
        // A frame header at least: a run of zero chunks is not free.
        let per_chunk = (link_wire_bytes.saturating_sub(w0) as f64 / (n - n0) as f64).max(32.0);
        let avg = self.wire_per_chunk.get();
        self.wire_per_chunk.set(avg / 2.0 + per_chunk / 2.0);
        self.changed.notify_all();
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// The latest queueing delay measured (first reply time minus base round trip).
    pub fn queue_delay(&self) -> Duration {
        self.last_delay.get()
    }

    pub fn base_rtt(&self) -> Option<Duration> {
        self.base()
    }

    pub fn handshake_rtt(&self) -> Option<Duration> {
        self.handshake_rtt.get()
    }

    /// The link is what limits background now: a WAN round trip, and either requests queue
    /// at least half the target behind each other, or the window is full with work waiting
    /// (the window is sized to fill the pipe). The backend's socket, paced by our window,
    /// never looks busy then, so it is told (to compress if that pays). The second test keeps
    /// the answer steady: queueing samples alone come and go with every batch, and each
    /// "not link-bound" window made the backend drop a compression level (measured: its level
    /// swung between none and 9 several times a second on a 100 Mbit/s link).
    pub fn link_bound(&self) -> bool {
        let Some(base) = self.base().filter(|_| !self.lan()) else {
            return false;
        };
        let hold = (base * 2).max(LINK_BOUND_HOLD_MIN);
        self.last_delay.get() >= self.target / 2
            || self.waited_at.get().is_some_and(|t| t.elapsed() < hold)
    }

    /// Waits for room, then takes up to `want` chunks of it. Room opens a chunk at a time as
    /// replies come; with a large window, waiting for an eighth of it keeps requests big
    /// (a stream of one-chunk requests costs both ends far more per byte).
    pub async fn grant(&self, want: usize) -> usize {
        loop {
            let window = self.window();
            let link_room = window.saturating_sub(self.outstanding.get());
            let room = link_room.saturating_sub(self.held.get());
            let need = want.clamp(1, (window / 8).max(1));
            if room >= need {
                let n = room.min(want.max(1));
                self.outstanding.set(self.outstanding.get() + n);
                return n;
            }
            if link_room < need {
                // Waiting for the link, not for the target: see `link_bound`.
                self.waited_at.set(Some(Instant::now()));
            }
            self.changed.wait().await;
        }
    }

    /// An answered chunk waits in memory for a target write until the guard drops (its
    /// write starts, or the wait is abandoned): its room opens then.
    pub fn hold_one(&self) -> Held<'_> {
        self.held.set(self.held.get() + 1);
        Held(self)
    }

    /// Gives back `n` granted chunks (answered, or never asked for).
    pub fn release(&self, n: usize) {
        self.outstanding
            .set(self.outstanding.get().saturating_sub(n));
        self.changed.notify_all();
    }

    /// A request's first reply came `first_reply` after it was sent. On-demand samples only
    /// teach the base round trip; background ones also steer the window.
    pub fn sample(&self, first_reply: Duration, background: bool) {
        let now = Instant::now();
        if now.duration_since(self.period_start.get()) >= BASE_PERIOD {
            self.base_prev.set(self.base_cur.take());
            self.period_start.set(now);
        }
        let cur = self
            .base_cur
            .get()
            .map_or(first_reply, |b| b.min(first_reply));
        self.base_cur.set(Some(cur));
        if !background {
            return;
        }
        let srtt = self
            .background_rtt
            .get()
            .map_or(first_reply, |s| (s * 7 + first_reply) / 8);
        self.background_rtt.set(Some(srtt));
        let base = self.base().unwrap_or(first_reply);
        let delay = first_reply.saturating_sub(base);
        self.last_delay.set(delay);
        if delay >= self.target / 2 {
            self.slow_start.set(false);
        }
        // One change per round trip: the effect of the last one must show first.
        if now.duration_since(self.last_adjust.get()) < base {
            return;
        }
        self.last_adjust.set(now);
        let w = self.window.get();
        // Shared mode: low queueing while chunks come back cheap (zeros, references, named
        // blocks) says nothing about full ones, and a window grown on it put a run of full
        // chunks ahead of on-demand replies (p99 loaded / paused 1.4-1.7 against 1.1 with
        // dedup off). Cheap chunks may take the window back up to the largest one that chunks
        // costing half their size or more ran at without queueing past the target, no further.
        let cheap = self.shared && self.wire_per_chunk.get() < self.chunk_bytes as f64 / 2.0;
        if !cheap && delay < self.target {
            self.proven.set(self.proven.get().max(w));
        }
        let w = if self.slow_start.get() {
            w * 2.0
        } else if delay < self.target / 2 {
            w + (w / 8.0).max(1.0)
        } else if delay < self.target {
            w + 1.0
        } else if delay < 2 * self.target {
            w - 1.0
        } else {
            w * 0.8
        };
        let w = if cheap && delay < self.target {
            w.min(self.proven.get().max(self.window.get()))
        } else {
            w
        };
        self.window
            .set(w.clamp(self.floor(), self.max_chunks as f64));
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(cap: &BackgroundCap, first_reply: Duration, rounds: usize) {
        for _ in 0..rounds {
            // Pretend a round trip has passed since the last change.
            cap.last_adjust
                .set(Instant::now() - first_reply - Duration::from_millis(1));
            cap.sample(first_reply, true);
        }
    }

    #[test]
    fn grows_while_nothing_queues_and_shrinks_when_it_does() {
        let cap = BackgroundCap::new(true, 65536, 512, 0);
        let start = cap.window();
        settle(&cap, Duration::from_millis(40), 30);
        let grown = cap.window();
        assert!(grown > start * 4, "{start} -> {grown}");
        // Slow start is over at the first queueing of half the target: from then on the
        // window grows by at most an eighth per round trip.
        settle(&cap, Duration::from_millis(43), 1);
        let w = cap.window();
        settle(&cap, Duration::from_millis(40), 1);
        assert!(cap.window() <= w + w / 8 + 1, "{w} -> {}", cap.window());
        // Queueing of 30 ms over the 40 ms base: the window backs off.
        settle(&cap, Duration::from_millis(70), 10);
        assert!(cap.window() < grown / 4, "{grown} -> {}", cap.window());
        assert_eq!(cap.base_rtt(), Some(Duration::from_millis(40)));
        assert_eq!(cap.queue_delay(), Duration::from_millis(30));
    }

    #[test]
    fn slow_start_doubles_per_round_trip_until_queueing_shows() {
        let cap = BackgroundCap::new(false, 65536, 4096, 0);
        cap.sample(Duration::from_millis(40), false);
        let start = cap.window();
        settle(&cap, Duration::from_millis(40), 3);
        assert_eq!(cap.window(), start * 8);
        // Queueing of the whole target: out of slow start, and one step back.
        settle(&cap, Duration::from_millis(40) + SEPARATE_TARGET_DELAY, 1);
        let w = cap.window();
        assert!(w < start * 8, "{w}");
        settle(&cap, Duration::from_millis(40), 1);
        assert!(cap.window() <= w + w / 8 + 1, "{w} -> {}", cap.window());
    }

    #[test]
    fn never_below_the_floor_over_the_time_requests_take_now() {
        // Idle link: 1 MiB/s over a 40 ms + 5 ms round trip is 0.72 of a 64 KiB chunk: one.
        let cap = BackgroundCap::new(true, 65536, 512, 1 << 20);
        cap.sample(Duration::from_millis(40), false);
        assert_eq!(cap.floor(), 1.0);
        // Under load background replies take 400 ms: the floor grows to 1 MiB/s × 0.4 s
        // = 6.4 chunks → 7, however hard the delay rule pushes the window down.
        settle(&cap, Duration::from_millis(400), 50);
        assert_eq!(cap.window(), 7);
        let cap = BackgroundCap::new(true, 65536, 512, 10 << 20);
        cap.sample(Duration::from_millis(40), false);
        settle(&cap, Duration::from_millis(400), 50);
        assert_eq!(cap.window(), 64);
    }

    #[test]
    fn separate_connections_are_capped_only_on_a_wan() {
        let cap = BackgroundCap::new(false, 65536, 512, 0);
        // Loopback: 300 µs first replies, and however much they queue, no window.
        cap.sample(Duration::from_micros(300), false);
        settle(&cap, Duration::from_millis(200), 20);
        assert_eq!(cap.window(), 512);
        // A 40 ms WAN with 200 ms of queueing: the window closes in.
        let cap = BackgroundCap::new(false, 65536, 512, 0);
        cap.sample(Duration::from_millis(40), false);
        settle(&cap, Duration::from_millis(40), 30);
        let open = cap.window();
        settle(&cap, Duration::from_millis(240), 20);
        assert!(cap.window() < open / 4, "{open} -> {}", cap.window());
        // Loopback with a busy disk: every first reply waits 3 ms for the source, which
        // looks like a short WAN, but the handshake took 80 µs: no window, not link-bound.
        let cap = BackgroundCap::new(false, 65536, 512, 0);
        settle(&cap, Duration::from_millis(3), 5);
        settle(&cap, Duration::from_millis(200), 20);
        assert!(cap.window() < 512);
        cap.waited_at.set(Some(Instant::now()));
        assert!(cap.link_bound());
        cap.path_rtt(Duration::from_micros(80));
        assert_eq!(cap.window(), 512);
        assert!(!cap.link_bound());
        // A WAN's handshake is as long as its round trip: the window stays.
        let cap = BackgroundCap::new(false, 65536, 512, 0);
        cap.path_rtt(Duration::from_millis(41));
        settle(&cap, Duration::from_millis(40), 30);
        settle(&cap, Duration::from_millis(240), 20);
        assert!(cap.window() < 512, "{}", cap.window());
    }

    #[test]
    fn with_separate_connections_cheap_chunks_widen_the_window_within_a_bound() {
        let answer = |cap: &BackgroundCap, chunks: u64, wire_each: u64, wire: &mut u64| {
            for _ in 0..chunks {
                *wire += wire_each;
                cap.answered(*wire);
            }
        };
        let mut wire = 0;
        let cap = BackgroundCap::new(false, 65536, 4096, 0);
        cap.sample(Duration::from_millis(40), false);
        settle(&cap, Duration::from_millis(40) + SEPARATE_TARGET_DELAY, 1);
        let w = cap.window();
        // Full chunks: the window as the rule set it.
        answer(&cap, 64, 65536, &mut wire);
        assert_eq!(cap.window(), w);
        // A run of zero chunks: many times more chunks, at most WIRE_SCALE_MAX times.
        answer(&cap, 256, 20, &mut wire);
        assert_eq!(cap.window(), (w as f64 * WIRE_SCALE_MAX) as usize);
        // Compressed to a quarter: about four times.
        answer(&cap, 256, 16384, &mut wire);
        let quarter = cap.window();
        assert!(
            (w * 7 / 2..=w * 9 / 2).contains(&quarter),
            "{w} -> {quarter}"
        );
        // Back to full chunks: back to the rule's window.
        answer(&cap, 256, 65536, &mut wire);
        assert!(cap.window() <= w + 1, "{w} -> {}", cap.window());
        // The shared mode counts chunks whatever they cost ...
        let cap = BackgroundCap::new(true, 65536, 4096, 0);
        cap.sample(Duration::from_millis(40), false);
        let w = cap.window();
        answer(&cap, 256, 20, &mut wire);
        assert_eq!(cap.window(), w);
        // ... and cheap ones are no reason to grow past what full ones ran at: no queueing,
        // yet the window holds ...
        settle(&cap, Duration::from_millis(40), 10);
        assert_eq!(cap.window(), w);
        // ... full chunks grow it ...
        answer(&cap, 256, 65536, &mut wire);
        settle(&cap, Duration::from_millis(40), 3);
        let proven = cap.window();
        assert!(proven > w, "{w} -> {proven}");
        // ... queueing shrinks it ...
        settle(&cap, Duration::from_millis(40) + 3 * SHARED_TARGET_DELAY, 4);
        let low = cap.window();
        assert!(low < proven, "{proven} -> {low}");
        // ... and cheap chunks may take it back up to what full ones ran at, not beyond.
        answer(&cap, 256, 20, &mut wire);
        settle(&cap, Duration::from_millis(40), 40);
        assert!(cap.window() > low, "{low} -> {}", cap.window());
        assert!(cap.window() <= proven, "{proven} -> {}", cap.window());
        assert_eq!(cap.window(), cap.proven.get() as usize);
    }

    #[test]
    fn a_full_window_on_a_wan_is_link_bound() {
        let cap = BackgroundCap::new(false, 65536, 4, 0);
        cap.sample(Duration::from_millis(40), false);
        assert!(!cap.link_bound());
        futures::executor::block_on(async {
            assert_eq!(cap.grant(64).await, 4);
            let mut next = Box::pin(cap.grant(64));
            assert!(futures::poll!(next.as_mut()).is_pending());
            assert!(cap.link_bound());
        });
        // Loopback: a full window says nothing about a link.
        let cap = BackgroundCap::new(false, 65536, 4, 0);
        cap.sample(Duration::from_micros(300), false);
        cap.waited_at.set(Some(Instant::now()));
        assert!(!cap.link_bound());
    }

    #[test]
    fn grants_wait_for_room() {
        let cap = BackgroundCap::new(true, 65536, 4, 0);
        futures::executor::block_on(async {
            assert_eq!(cap.grant(64).await, 4);
            let mut next = Box::pin(cap.grant(64));
            assert!(futures::poll!(next.as_mut()).is_pending());
            cap.release(3);
            assert_eq!(next.await, 3);
        });
    }

    #[test]
    fn held_chunks_take_room_but_do_not_make_the_link_bound() {
        // A WAN round trip, window of 4: all 4 answered (released) but waiting for the
        // target (held). The next grant waits for the target, and that wait is not the link's.
        let cap = BackgroundCap::new(false, 65536, 4, 0);
        cap.sample(Duration::from_millis(40), false);
        futures::executor::block_on(async {
            assert_eq!(cap.grant(64).await, 4);
            cap.release(4);
            let mut held: Vec<Held<'_>> = (0..4).map(|_| cap.hold_one()).collect();
            let mut next = Box::pin(cap.grant(64));
            assert!(futures::poll!(next.as_mut()).is_pending());
            assert!(!cap.link_bound());
            held.truncate(2);
            assert_eq!(next.await, 2);
        });
    }
}
