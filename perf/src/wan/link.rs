//! The pacing model of one direction: a bottleneck of a fixed rate, then a delay.
//!
//! One `Link` per direction is shared by every connection of the proxy, so connections
//! compete for its rate as they would for a real WAN link. Two disciplines:
//! * **FIFO** (the default): a piece's departure is reserved when it is read, behind the
//!   previous reservation, whichever connection that was. The clock is a mutex because
//!   reservations must be serialized.
//! * **Strict priority** (`priority_by_dscp`, with a rate): normal pieces depart before
//!   queued low pieces; the piece being serialized is never preempted. Which piece goes
//!   next can only be decided when the link frees, so departures are not reserved at read
//!   time: the piece waits in its pipe without an arrival and a ticket waits in its class
//!   queue here, and a scheduler thread gives the chosen piece its arrival when the link
//!   frees. Decisions use emulated times (the link's free time and each ticket's queueing
//!   time), not the time the thread woke up, so pacing does not drift with scheduling
//!   latency.
//!
//! Lock order: the scheduler's state, then a pipe's (never the reverse).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::pipe::{Piece, Pipe};
use super::tos::Class;

pub(crate) struct Link {
    rate_bytes_per_s: Option<u64>,
    one_way_delay: Duration,
    /// FIFO: departure time of the last piece scheduled; `None` before the first.
    last_departure: Mutex<Option<Instant>>,
    /// Strict priority: the scheduler, when on.
    priority: Option<Priority>,
}

struct Priority {
    sched: Arc<Sched>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A piece waiting for the link in its pipe, by reference.
struct Ticket {
    len: usize,
    queued_at: Instant,
    pipe: Arc<Pipe>,
}

#[derive(Default)]
struct SchedState {
    /// Indexed by [`Class::index`]; FIFO within a class, `queued_at` non-decreasing.
    queues: [VecDeque<Ticket>; 2],
    /// When the piece being serialized has left; `None` before the first.
    free_at: Option<Instant>,
    stopping: bool,
}

#[derive(Default)]
struct Sched {
    state: Mutex<SchedState>,
    /// Signalled when a ticket is queued or the link stops.
    wake: Condvar,
}

impl Sched {
    fn lock(&self) -> MutexGuard<'_, SchedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Time to put `len` bytes on a link of `rate` bytes per second.
fn serialization(len: usize, rate_bytes_per_s: u64) -> Duration {
    let ns = len as u128 * 1_000_000_000 / u128::from(rate_bytes_per_s.max(1));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl Link {
    /// A FIFO link.
    pub(crate) fn new(rate_bytes_per_s: Option<u64>, one_way_delay: Duration) -> Link {
        Link {
            rate_bytes_per_s,
            one_way_delay,
            last_departure: Mutex::new(None),
            priority: None,
        }
    }

    /// A strict-priority link when `priority` and a rate are given (an unlimited link has
    /// no queue to reorder, so it stays FIFO); starts its scheduler thread.
    pub(crate) fn with_priority(
        rate_bytes_per_s: Option<u64>,
        one_way_delay: Duration,
        priority: bool,
        name: &str,
    ) -> io::Result<Link> {
        let mut link = Link::new(rate_bytes_per_s, one_way_delay);
        let (true, Some(rate)) = (priority, rate_bytes_per_s) else {
            return Ok(link);
        };
        let sched = Arc::new(Sched::default());
        let thread_sched = Arc::clone(&sched);
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || run_scheduler(&thread_sched, rate, one_way_delay))?;
        link.priority = Some(Priority {
            sched,
            thread: Mutex::new(Some(thread)),
        });
        Ok(link)
    }

    /// Schedules a piece of `len` bytes handed to the link at `now` on a FIFO link;
    /// returns when it arrives at the far end: `max(now, last departure) + len / rate +
    /// delay`.
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

    /// Hands a piece of class `class` to the link and queues it in `pipe`. Returns false
    /// (and drops the piece) when the pipe is closed.
    pub(crate) fn send(&self, pipe: &Arc<Pipe>, mut piece: Piece, class: Class) -> bool {
        let Some(priority) = &self.priority else {
            piece.arrival = Some(self.schedule(piece.data.len(), Instant::now()));
            return pipe.push(piece);
        };
        let len = piece.data.len();
        piece.arrival = None;
        // The piece first, so that the scheduler never picks a ticket without one.
        if !pipe.push(piece) {
            return false;
        }
        let mut st = priority.sched.lock();
        // Taken under the lock so each class queue is in time order.
        let queued_at = Instant::now();
        st.queues[class.index()].push_back(Ticket {
            len,
            queued_at,
            pipe: Arc::clone(pipe),
        });
        priority.sched.wake.notify_one();
        true
    }

    /// Stops the scheduler (if any) and returns its thread for the caller to join.
    pub(crate) fn stop(&self) -> Option<JoinHandle<()>> {
        let priority = self.priority.as_ref()?;
        priority.sched.lock().stopping = true;
        priority.sched.wake.notify_all();
        priority
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Drop for Link {
    /// A scheduler thread holds only its `Sched`: tell it to end, or it would wait forever.
    fn drop(&mut self) {
        drop(self.stop());
    }
}

/// The strict-priority scheduler of one link: whenever the link frees, the oldest normal
/// ticket queued by then departs, else the oldest low one.
fn run_scheduler(sched: &Sched, rate: u64, one_way_delay: Duration) {
    let mut st = sched.lock();
    loop {
        if st.stopping {
            return;
        }
        let now = Instant::now();
        if let Some(free) = st.free_at.filter(|&free| free > now) {
            st = sched
                .wake
                .wait_timeout(st, free - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let heads = Class::ALL.map(|c| st.queues[c.index()].front().map(|t| t.queued_at));
        let Some(first) = heads.iter().flatten().min().copied() else {
            st = sched.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        // The emulated decision time: the link frees, or the first piece comes to an idle
        // link. Only pieces queued by then compete.
        let decided_at = st.free_at.map_or(first, |free| free.max(first));
        let class = if heads[Class::Normal.index()].is_some_and(|t| t <= decided_at) {
            Class::Normal
        } else {
            Class::Low
        };
        let Some(ticket) = st.queues[class.index()].pop_front() else {
            continue;
        };
        // A closed connection's pieces are gone: they take no link time.
        if ticket.pipe.is_closed() {
            continue;
        }
        let departure = decided_at + serialization(ticket.len, rate);
        st.free_at = Some(departure);
        drop(st);
        ticket.pipe.assign(departure + one_way_delay);
        st = sched.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wan::pipe::Next;

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

    fn piece(len: usize) -> Piece {
        Piece {
            data: vec![0; len],
            arrival: None,
            cut_after: false,
        }
    }

    /// Arrival times of every piece in `pipe`, as the writer sees them.
    fn arrivals(pipe: &Pipe, count: usize) -> Vec<Instant> {
        (0..count)
            .map(|_| match pipe.next() {
                Next::Piece(p) => {
                    pipe.delivered(p.data.len());
                    p.arrival.expect("delivered pieces have an arrival")
                }
                _ => panic!("expected a piece"),
            })
            .collect()
    }

    const PIECE: usize = 64 * 1024;
    const RATE: u64 = 4_000_000;
    const DELAY: Duration = Duration::from_millis(10);

    /// 1 MiB of low pieces queued, then one normal piece: where does the normal one land?
    fn normal_after_a_mib_of_low(priority: bool) -> (Instant, Duration, Vec<Instant>) {
        let link =
            Link::with_priority(Some(RATE), DELAY, priority, "test-link").expect("scheduler");
        let low = Arc::new(Pipe::new(4 << 20));
        let normal = Arc::new(Pipe::new(4 << 20));
        let t0 = Instant::now();
        for _ in 0..16 {
            assert!(link.send(&low, piece(PIECE), Class::Low));
        }
        let queued = Instant::now();
        assert!(link.send(&normal, piece(1000), Class::Normal));
        let normal_arrival = arrivals(&normal, 1)[0];
        let low_arrivals = arrivals(&low, 16);
        drop(link.stop().map(JoinHandle::join));
        (normal_arrival, queued - t0, low_arrivals)
    }

    #[test]
    fn strict_priority_lets_a_normal_piece_pass_queued_low_ones() {
        let (normal, queueing, low) = normal_after_a_mib_of_low(true);
        let one_low = serialization(PIECE, RATE);
        let own = serialization(1000, RATE);
        // The first low piece was already being serialized: at most that one goes first.
        let first_low = low[0];
        let latest = first_low + own + Duration::from_millis(1);
        assert!(
            normal <= latest,
            "normal arrived {:?} after the first low piece, expected at most {own:?} \
             (queueing took {queueing:?})",
            normal - first_low
        );
        assert!(normal < low[1], "the normal piece went second");
        // The low pieces keep the rate behind it, in order.
        for pair in low.windows(2) {
            assert!(pair[1] > pair[0]);
        }
        let span = low[15] - low[0];
        let expect = one_low * 15 + own;
        assert!(
            span >= expect && span <= expect + Duration::from_millis(5),
            "{span:?} vs {expect:?}"
        );
    }

    #[test]
    fn without_priority_the_normal_piece_waits_for_the_mib() {
        let (normal, _, low) = normal_after_a_mib_of_low(false);
        assert!(normal > low[15], "FIFO: the normal piece is last");
        assert_eq!(
            normal - low[15],
            serialization(1000, RATE),
            "right behind the last low piece"
        );
    }

    #[test]
    fn an_idle_priority_link_is_delay_plus_serialization() {
        let link = Link::with_priority(Some(RATE), DELAY, true, "test-link").expect("scheduler");
        let pipe = Arc::new(Pipe::new(1 << 20));
        let t0 = Instant::now();
        assert!(link.send(&pipe, piece(4000), Class::Low));
        let arrival = arrivals(&pipe, 1)[0];
        let expect = DELAY + serialization(4000, RATE);
        assert!(arrival - t0 >= expect && arrival - t0 <= expect + Duration::from_millis(5));
        // A closed pipe's tickets are skipped, not sent.
        pipe.close();
        assert!(!link.send(&pipe, piece(10), Class::Normal));
        let handle = link.stop().expect("a scheduler thread");
        assert!(handle.join().is_ok());
    }
}
