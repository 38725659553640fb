//! The send side of one frontend connection: whoever holds the lock writes whole frames.
//!
//! Waiters are served by class, not arrival: on-demand replies go before background ones
//! (seed §4.4.4, QoS-less WAN: the backend "re-orders outgoing WAN queues"). Strict priority
//! would starve background under constant on-demand load, so a floor lets a background
//! waiter go first while background has sent less than `floor` bytes/s: a token bucket that
//! fills at the floor rate and is spent by every background send. While background flows
//! freely the bucket stays empty, so it never jumps ahead of on-demand replies; credit builds
//! only when background is held back, and at most one chunk's worth at a time.
//! Within a class, FIFO.
//!
//! Single core (`Rc`, `Cell`): the lock is handed from the releasing holder straight to the
//! chosen waiter, so nobody can barge in between.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::time::Instant;

use futures::channel::oneshot;
use wire_format::frame::Class;

/// Most floor credit: one chunk may go ahead of on-demand replies at a time.
const FLOOR_CREDIT_MAX: f64 = 64.0 * 1024.0;
/// Most floor debt: background that just ran far above the floor waits this many bytes'
/// worth of floor time before it may overtake again.
const FLOOR_DEBT_MAX: f64 = 256.0 * 1024.0;

pub struct SendLock<T> {
    value: RefCell<T>,
    locked: Cell<bool>,
    /// `[on-demand, background]`.
    waiters: RefCell<[VecDeque<oneshot::Sender<()>>; 2]>,
    floor_bytes_per_s: Cell<u64>,
    credit: Cell<f64>,
    credit_at: Cell<Instant>,
    /// Handoffs where background overtook waiting on-demand replies (the floor at work).
    floor_handoffs: Cell<u64>,
    /// Handoffs where on-demand overtook waiting background replies.
    overtakes: Cell<u64>,
}

pub struct SendGuard<'a, T> {
    lock: &'a SendLock<T>,
    value: Option<RefMut<'a, T>>,
    /// Background holder: its bytes spend floor credit.
    background: bool,
}

fn slot(class: Class) -> usize {
    match class {
        Class::OnDemand => 0,
        Class::Background => 1,
    }
}

impl<T> SendLock<T> {
    pub fn new(value: T) -> SendLock<T> {
        SendLock {
            value: RefCell::new(value),
            locked: Cell::new(false),
            waiters: RefCell::new([VecDeque::new(), VecDeque::new()]),
            floor_bytes_per_s: Cell::new(0),
            credit: Cell::new(0.0),
            credit_at: Cell::new(Instant::now()),
            floor_handoffs: Cell::new(0),
            overtakes: Cell::new(0),
        }
    }

    /// Background bytes/s kept flowing under on-demand load (0: strict priority).
    pub fn set_floor(&self, bytes_per_s: u64) {
        self.floor_bytes_per_s.set(bytes_per_s);
    }

    pub fn floor_handoffs(&self) -> u64 {
        self.floor_handoffs.get()
    }

    pub fn overtakes(&self) -> u64 {
        self.overtakes.get()
    }

    pub async fn lock(&self, class: Class) -> SendGuard<'_, T> {
        let background = class == Class::Background;
        if !self.locked.get() {
            self.locked.set(true);
            return self.guard(background);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut()[slot(class)].push_back(tx);
        let mut wait = Waiting {
            lock: self,
            rx: Some(rx),
        };
        let handed = match wait.rx.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        wait.rx = None;
        // A sender is only dropped unsent when the lock itself goes away with its waiters;
        // then nobody else can hold it either.
        debug_assert!(handed, "send lock dropped with waiters");
        self.guard(background)
    }

    fn guard(&self, background: bool) -> SendGuard<'_, T> {
        SendGuard {
            lock: self,
            value: Some(self.value.borrow_mut()),
            background,
        }
    }

    fn refill(&self) -> f64 {
        let now = Instant::now();
        let rate = self.floor_bytes_per_s.get() as f64;
        let dt = now.duration_since(self.credit_at.get()).as_secs_f64();
        self.credit_at.set(now);
        let c = (self.credit.get() + dt * rate).min(FLOOR_CREDIT_MAX);
        self.credit.set(c);
        c
    }

    /// Hands the lock to the next waiter, or frees it.
    fn release(&self) {
        loop {
            let next = {
                let mut w = self.waiters.borrow_mut();
                let both = !w[0].is_empty() && !w[1].is_empty();
                let floor_turn = both && self.floor_bytes_per_s.get() > 0 && self.refill() > 0.0;
                if floor_turn {
                    self.floor_handoffs.set(self.floor_handoffs.get() + 1);
                    w[1].pop_front()
                } else if let Some(tx) = w[0].pop_front() {
                    if !w[1].is_empty() {
                        self.overtakes.set(self.overtakes.get() + 1);
                    }
                    Some(tx)
                } else {
                    w[1].pop_front()
                }
            };
            match next {
                // The waiter owns the lock from here (`locked` stays set).
                Some(tx) => {
                    if tx.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    self.locked.set(false);
                    return;
                }
            }
        }
    }
}

/// A `lock` call waiting its turn; if it is dropped after the lock was handed to it but
/// before it ran, the lock must go on to the next waiter, not leak.
struct Waiting<'a, T> {
    lock: &'a SendLock<T>,
    rx: Option<oneshot::Receiver<()>>,
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if let Ok(Some(())) = rx.try_recv() {
                self.lock.release();
            }
        }
    }
}

impl<T> SendGuard<'_, T> {
    /// Tells the lock how many bytes this holder put on the wire (spends floor credit).
    pub fn sent(&self, bytes: u64) {
        if self.background && self.lock.floor_bytes_per_s.get() > 0 {
            let c = self.lock.refill() - bytes as f64;
            self.lock.credit.set(c.max(-FLOOR_DEBT_MAX));
        }
    }
}

impl<T> Deref for SendGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("guard holds the value until dropped")
    }
}

impl<T> DerefMut for SendGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .expect("guard holds the value until dropped")
    }
}

impl<T> Drop for SendGuard<'_, T> {
    fn drop(&mut self) {
        self.value = None;
        self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn run<F: std::future::Future<Output = ()>>(f: F) {
        futures::executor::LocalPool::new().run_until(f);
    }

    /// Spawns `n` waiters of `class` that log their order into `log`.
    fn waiters(
        sp: &futures::executor::LocalSpawner,
        lock: &Rc<SendLock<()>>,
        log: &Rc<RefCell<Vec<String>>>,
        class: Class,
        n: usize,
        bytes: u64,
    ) {
        use futures::task::LocalSpawnExt;
        for i in 0..n {
            let (lock, log) = (lock.clone(), log.clone());
            sp.spawn_local(async move {
                let g = lock.lock(class).await;
                g.sent(bytes);
                log.borrow_mut().push(format!("{class:?}{i}"));
            })
            .expect("spawn");
        }
    }

    #[test]
    fn on_demand_waiters_go_before_background_ones() {
        let mut pool = futures::executor::LocalPool::new();
        let sp = pool.spawner();
        let lock = Rc::new(SendLock::new(()));
        let log = Rc::new(RefCell::new(Vec::new()));
        let held = lock.clone();
        let first = futures::executor::block_on(async { held.lock(Class::Background).await });
        waiters(&sp, &lock, &log, Class::Background, 3, 65536);
        waiters(&sp, &lock, &log, Class::OnDemand, 2, 65536);
        pool.run_until_stalled();
        assert!(
            log.borrow().is_empty(),
            "nobody runs while the lock is held"
        );
        drop(first);
        pool.run_until_stalled();
        assert_eq!(
            *log.borrow(),
            [
                "OnDemand0",
                "OnDemand1",
                "Background0",
                "Background1",
                "Background2"
            ]
        );
        assert_eq!(lock.overtakes(), 2);
        assert!(!lock.locked.get());
    }

    #[test]
    fn the_floor_lets_background_through_under_on_demand_load() {
        let mut pool = futures::executor::LocalPool::new();
        let sp = pool.spawner();
        let lock = Rc::new(SendLock::new(()));
        lock.set_floor(1 << 20);
        // Let credit build up as if background had been held back.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let log = Rc::new(RefCell::new(Vec::new()));
        let held = lock.clone();
        let first = futures::executor::block_on(async { held.lock(Class::OnDemand).await });
        waiters(&sp, &lock, &log, Class::Background, 2, 65536);
        waiters(&sp, &lock, &log, Class::OnDemand, 4, 4096);
        pool.run_until_stalled();
        drop(first);
        pool.run_until_stalled();
        let log = log.borrow();
        // ~50 KiB of credit: one background send overtakes, then its 64 KiB put the
        // credit below zero and on-demand has the link again.
        assert_eq!(log[0], "Background0", "{log:?}");
        assert_eq!(
            &log[1..5],
            ["OnDemand0", "OnDemand1", "OnDemand2", "OnDemand3"]
        );
        assert_eq!(lock.floor_handoffs(), 1);
    }

    #[test]
    fn background_running_above_the_floor_never_overtakes() {
        let mut pool = futures::executor::LocalPool::new();
        let sp = pool.spawner();
        let lock = Rc::new(SendLock::new(()));
        lock.set_floor(1 << 20);
        // Background alone on the link for a while, far above 1 MiB/s.
        for _ in 0..10 {
            let g = futures::executor::block_on(lock.lock(Class::Background));
            g.sent(65536);
            drop(g);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let log = Rc::new(RefCell::new(Vec::new()));
        let held = lock.clone();
        let first = futures::executor::block_on(async { held.lock(Class::Background).await });
        waiters(&sp, &lock, &log, Class::Background, 1, 65536);
        waiters(&sp, &lock, &log, Class::OnDemand, 1, 4096);
        pool.run_until_stalled();
        drop(first);
        pool.run_until_stalled();
        assert_eq!(*log.borrow(), ["OnDemand0", "Background0"]);
        assert_eq!(lock.floor_handoffs(), 0);
    }

    #[test]
    fn a_waiter_dropped_after_the_handoff_passes_the_lock_on() {
        run(async {
            let lock = SendLock::new(());
            let g = lock.lock(Class::OnDemand).await;
            let mut abandoned = Box::pin(lock.lock(Class::OnDemand));
            // Register it as a waiter, then hand it the lock, then drop it unpolled.
            assert!(futures::poll!(abandoned.as_mut()).is_pending());
            drop(g);
            drop(abandoned);
            assert!(!lock.locked.get(), "the lock leaked");
            let _again = lock.lock(Class::Background).await;
        });
    }
}
