//! How many background chunks one shard may have outstanding on a connection shared with
//! on-demand fetches (QoS-less WAN, seed §4.4.4: the frontend "limits the amount of
//! outstanding fetcher requests").
//!
//! Why a cap at all: the backend sends on-demand replies first, but only among what it still
//! holds. Whatever background data is already in the kernel, in flight or queued at the
//! bottleneck router is ahead of every on-demand reply, and TCP alone fills the bottleneck's
//! buffer. Background requests are the only thing that puts data there, so the frontend keeps
//! just enough of them outstanding to fill the pipe and no more.
//!
//! The window follows a delay-based rule in the manner of TCP Vegas / LEDBAT: the time to the
//! first reply of a request, minus the lowest such time seen lately (the base round trip),
//! is queueing. Below `target` the window grows (by an eighth when well below, else by one
//! chunk, at most once per round trip); above it shrinks. On-demand replies overtaking
//! background show up as background queueing too, so the window gives way to on-demand load
//! by itself. It never drops below the floor: `floor bytes/s × round trip` in chunks, so
//! background keeps moving at the configured rate whatever the on-demand load.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::notify::Notify;

/// Queueing delay the window aims under: small next to a WAN round trip, large enough to
/// ride out scheduling noise on a busy core.
const TARGET_QUEUE_DELAY: Duration = Duration::from_millis(5);
/// The base round trip is the minimum of the last two periods of this length, so a route
/// that got slower is noticed within one to two periods.
const BASE_PERIOD: Duration = Duration::from_secs(10);

pub struct BackgroundCap {
    chunk_bytes: u64,
    max_chunks: usize,
    /// Background bytes/s this shard keeps requesting whatever the on-demand load.
    floor_bytes_per_s: u64,
    window: Cell<f64>,
    outstanding: Cell<usize>,
    base_cur: Cell<Option<Duration>>,
    base_prev: Cell<Option<Duration>>,
    period_start: Cell<Instant>,
    last_adjust: Cell<Instant>,
    last_delay: Cell<Duration>,
    /// Smoothed time to the first reply of background requests, queueing included.
    background_rtt: Cell<Option<Duration>>,
    changed: Notify,
}

impl BackgroundCap {
    pub fn new(chunk_bytes: u32, max_chunks: usize, floor_bytes_per_s: u64) -> BackgroundCap {
        let now = Instant::now();
        let cap = BackgroundCap {
            chunk_bytes: u64::from(chunk_bytes).max(1),
            max_chunks: max_chunks.max(1),
            floor_bytes_per_s,
            window: Cell::new(0.0),
            outstanding: Cell::new(0),
            base_cur: Cell::new(None),
            base_prev: Cell::new(None),
            period_start: Cell::new(now),
            last_adjust: Cell::new(now),
            last_delay: Cell::new(Duration::ZERO),
            background_rtt: Cell::new(None),
            changed: Notify::default(),
        };
        // Start like slow start from a few chunks: a long link fills within a few round trips.
        cap.window.set(cap.floor().max(4.0).min(cap.max_chunks as f64));
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
        let base = self.base().unwrap_or(Duration::from_millis(1)) + TARGET_QUEUE_DELAY;
        let rtt = self.background_rtt.get().map_or(base, |r| r.max(base));
        let chunks = self.floor_bytes_per_s as f64 * rtt.as_secs_f64() / self.chunk_bytes as f64;
        chunks.ceil().max(1.0)
    }

    /// Chunks allowed outstanding now.
    pub fn window(&self) -> usize {
        (self.window.get().max(self.floor()) as usize).clamp(1, self.max_chunks)
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

    /// Waits for room, then takes up to `want` chunks of it (at least one).
    pub async fn grant(&self, want: usize) -> usize {
        loop {
            let room = self.window().saturating_sub(self.outstanding.get());
            if room > 0 {
                let n = room.min(want.max(1));
                self.outstanding.set(self.outstanding.get() + n);
                return n;
            }
            self.changed.wait().await;
        }
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
        let cur = self.base_cur.get().map_or(first_reply, |b| b.min(first_reply));
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
        // One change per round trip: the effect of the last one must show first.
        if now.duration_since(self.last_adjust.get()) < base {
            return;
        }
        self.last_adjust.set(now);
        let w = self.window.get();
        let w = if delay < TARGET_QUEUE_DELAY / 2 {
            w + (w / 8.0).max(1.0)
        } else if delay < TARGET_QUEUE_DELAY {
            w + 1.0
        } else if delay < 2 * TARGET_QUEUE_DELAY {
            w - 1.0
        } else {
            w * 0.8
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
        let cap = BackgroundCap::new(65536, 512, 0);
        let start = cap.window();
        settle(&cap, Duration::from_millis(40), 30);
        let grown = cap.window();
        assert!(grown > start * 4, "{start} -> {grown}");
        // Queueing of 30 ms over the 40 ms base: the window backs off.
        settle(&cap, Duration::from_millis(70), 10);
        assert!(cap.window() < grown / 4, "{grown} -> {}", cap.window());
        assert_eq!(cap.base_rtt(), Some(Duration::from_millis(40)));
        assert_eq!(cap.queue_delay(), Duration::from_millis(30));
    }

    #[test]
    fn never_below_the_floor_over_the_time_requests_take_now() {
        // Idle link: 1 MiB/s over a 40 ms + 5 ms round trip is 0.72 of a 64 KiB chunk: one.
        let cap = BackgroundCap::new(65536, 512, 1 << 20);
        cap.sample(Duration::from_millis(40), false);
        assert_eq!(cap.floor(), 1.0);
        // Under load background replies take 400 ms: the floor grows to 1 MiB/s × 0.4 s
        // = 6.4 chunks → 7, however hard the delay rule pushes the window down.
        settle(&cap, Duration::from_millis(400), 50);
        assert_eq!(cap.window(), 7);
        let cap = BackgroundCap::new(65536, 512, 10 << 20);
        cap.sample(Duration::from_millis(40), false);
        settle(&cap, Duration::from_millis(400), 50);
        assert_eq!(cap.window(), 64);
    }

    #[test]
    fn grants_wait_for_room() {
        let cap = BackgroundCap::new(65536, 4, 0);
        futures::executor::block_on(async {
            assert_eq!(cap.grant(64).await, 4);
            let mut next = Box::pin(cap.grant(64));
            assert!(futures::poll!(next.as_mut()).is_pending());
            cap.release(3);
            assert_eq!(next.await, 3);
        });
    }
}
