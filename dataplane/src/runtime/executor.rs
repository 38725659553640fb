//! The per-core executor: a run queue of local tasks, the loop that alternates between running
//! them and turning the ring, and the thread-local state that IO futures find their ring in.
//!
//! Tasks are `async_task::spawn_local` tasks; their schedule function pushes the `Runnable` into
//! the core's lock-free queue and, when called from another thread (a waker fired elsewhere),
//! kicks the core's eventfd, whose read is always armed on the ring (rule 7). So wakers work from
//! any thread and a waiting core wakes up. A `Runnable` is only ever run or dropped on its own
//! core: queues are never closed, and after a core exits its queue is simply never drained again
//! (a late wake leaks the task instead of dropping a `!Send` future on the wrong thread).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use async_task::{Runnable, Task};
use concurrent_queue::ConcurrentQueue;

use super::buf::BufPool;
use super::cores::CoreHandle;
use super::op::Driver;
use super::{sys, RuntimeConfig, RuntimeError};

/// Runnables run per loop turn before the ring is turned again (fairness between CPU-bound
/// tasks and IO completions).
const RUN_BATCH: usize = 128;

/// The part of a core other threads may touch: its run queue, its eventfd, its flags.
pub(crate) struct Remote {
    queue: ConcurrentQueue<Runnable>,
    eventfd: Arc<OwnedFd>,
    /// A kick is pending (coalesces eventfd writes).
    notified: AtomicBool,
    /// Shutdown requested.
    stop: AtomicBool,
    /// The loop has exited; posts are dropped.
    exited: AtomicBool,
}

impl Remote {
    pub(crate) fn new() -> Result<Arc<Remote>, RuntimeError> {
        let eventfd = sys::eventfd().map_err(|source| RuntimeError::Setup {
            what: "creating the core's wake-up eventfd".into(),
            source,
        })?;
        Ok(Arc::new(Remote {
            queue: ConcurrentQueue::unbounded(),
            eventfd: Arc::new(eventfd),
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            exited: AtomicBool::new(false),
        }))
    }

    /// True on the thread that runs this core.
    fn is_local(&self) -> bool {
        CURRENT_REMOTE
            .try_with(|c| c.get() == self as *const Remote as usize)
            .unwrap_or(false)
    }

    /// Wakes the core's ring wait. The swap pairs with the core's swap after reaping the
    /// eventfd: whoever sees `true` knows a wake-up is already on its way.
    fn kick(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            sys::eventfd_kick(self.eventfd.as_fd());
        }
    }

    fn schedule_local(&self, runnable: Runnable) {
        if let Err(e) = self.queue.push(runnable) {
            // Unbounded and never closed, so unreachable; never drop a local task here.
            std::mem::forget(e.into_inner());
        }
        if !self.is_local() {
            self.kick();
        }
    }

    fn schedule_send(&self, runnable: Runnable) {
        if self.exited.load(Ordering::Acquire) {
            return; // a Send task: fine to drop anywhere
        }
        if let Err(e) = self.queue.push(runnable) {
            drop(e.into_inner());
        }
        if !self.is_local() {
            self.kick();
        }
    }

    /// Runs `f` on this core soon.
    pub(crate) fn post(self: &Arc<Self>, f: impl FnOnce() + Send + 'static) {
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        let remote = Arc::clone(self);
        let (runnable, task) =
            async_task::spawn(async move { f() }, move |r| remote.schedule_send(r));
        task.detach();
        runnable.schedule();
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
    }
}

/// Everything a core thread owns.
pub(crate) struct Local {
    core: usize,
    remote: Arc<Remote>,
    handle: CoreHandle,
    driver: RefCell<Option<Driver>>,
    pool: BufPool,
}

impl Local {
    /// Builds the ring and the pool on the calling thread (rule 6).
    pub(crate) fn build(
        core: usize,
        remote: Arc<Remote>,
        handle: CoreHandle,
        cfg: &RuntimeConfig,
    ) -> Result<Local, RuntimeError> {
        let mut driver = Driver::new(cfg.ring_entries, Arc::clone(&remote.eventfd))?;
        let pool = BufPool::new(cfg.buf_size, cfg.bufs_per_core, |iovecs| {
            (driver.register_buffers(iovecs), driver.id())
        });
        Ok(Local {
            core,
            remote,
            handle,
            driver: RefCell::new(Some(driver)),
            pool,
        })
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
    /// Address of the current core's Remote, for the cheap "am I on that core" test.
    static CURRENT_REMOTE: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with this thread's driver: `None` off a core, while the driver is borrowed
/// (re-entrant use) or after teardown took it. `f` is always called, so callers can decide what
/// to do with resources they moved in (op.rs leaks them rather than free them, rule 1).
pub(crate) fn with_driver<R>(f: impl FnOnce(Option<&mut Driver>) -> R) -> R {
    let mut f = Some(f);
    let res = CURRENT.try_with(|cur| {
        let cur = cur.try_borrow().ok();
        let local = cur.as_ref().and_then(|c| c.as_ref());
        let mut driver = local.and_then(|l| l.driver.try_borrow_mut().ok());
        let driver = driver.as_mut().and_then(|d| d.as_mut());
        match f.take() {
            Some(f) => f(driver),
            None => unreachable!(),
        }
    });
    match (res, f.take()) {
        (Ok(r), _) => r,
        (Err(_), Some(f)) => f(None),
        (Err(_), None) => unreachable!("with_driver closure consumed without a result"),
    }
}

fn with_local<R>(f: impl FnOnce(&Rc<Local>) -> R) -> Option<R> {
    CURRENT
        .try_with(|cur| cur.try_borrow().ok().and_then(|c| c.as_ref().map(f)))
        .ok()
        .flatten()
}

fn outside(what: &str) -> ! {
    panic!("ferry runtime: {what} called outside a core thread or block_on")
}

/// Spawns a task on the current core. Drop the handle to cancel it, `.detach()` to let it run.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let remote = with_local(|l| Arc::clone(&l.remote)).unwrap_or_else(|| outside("spawn()"));
    let (runnable, task) = async_task::spawn_local(future, move |r| remote.schedule_local(r));
    runnable.schedule();
    task
}

/// This core's index (0 inside `block_on`).
pub fn current_core() -> usize {
    with_local(|l| l.core).unwrap_or_else(|| outside("current_core()"))
}

/// The set this core belongs to (a set of one inside `block_on`).
pub fn core_handle() -> CoreHandle {
    with_local(|l| l.handle.clone()).unwrap_or_else(|| outside("core_handle()"))
}

/// This core's buffer pool.
pub fn buf_pool() -> BufPool {
    with_local(|l| l.pool.clone()).unwrap_or_else(|| outside("buf_pool()"))
}

/// True on any core thread or inside `block_on`.
pub(crate) fn on_a_core() -> bool {
    with_local(|_| ()).is_some()
}

/// True if the calling thread is core `core` of the set `handle` belongs to.
pub(crate) fn is_core_of(handle: &CoreHandle, core: usize) -> bool {
    with_local(|l| l.core == core && l.handle.same_set(handle)).unwrap_or(false)
}

/// In-flight op count of this thread's ring (tests and diagnostics).
#[allow(dead_code)]
pub(crate) fn in_flight_ops() -> usize {
    with_driver(|d| d.map_or(0, |d| d.in_flight()))
}

/// Ops ever submitted on this thread's ring (tests and diagnostics).
#[allow(dead_code)]
pub(crate) fn ops_submitted() -> u64 {
    with_driver(|d| d.map_or(0, |d| d.ops_submitted()))
}

/// Yields once to other tasks on this core.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    YieldNow(false).await
}

/// Makes `local` this thread's core until dropped; dropping tears it down.
struct Entered {
    local: Rc<Local>,
}

fn enter(local: Local) -> Entered {
    let local = Rc::new(local);
    CURRENT.with(|cur| {
        let mut cur = cur.borrow_mut();
        assert!(
            cur.is_none(),
            "ferry runtime: this thread already runs a core (nested block_on?)"
        );
        *cur = Some(Rc::clone(&local));
    });
    CURRENT_REMOTE.with(|c| c.set(Arc::as_ptr(&local.remote) as usize));
    Entered { local }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A task panicked. Stop the whole set so join() returns, and leak this core (ring,
            // tasks, buffers) rather than drop futures while unwinding: leaking keeps rule 1.
            self.local.handle.shutdown();
            self.local.remote.exited.store(true, Ordering::Release);
            std::mem::forget(Rc::clone(&self.local));
        } else {
            teardown(&self.local);
        }
        let _ = CURRENT_REMOTE.try_with(|c| c.set(0));
        let _ = CURRENT.try_with(|cur| cur.borrow_mut().take());
    }
}

/// Drops every task this core can reach, then the ring (which cancels and drains what is still
/// in flight, leaking what does not come back).
fn teardown(local: &Local) {
    local.remote.exited.store(true, Ordering::Release);
    let mut wakers: Vec<Waker> = Vec::new();
    let mut deferred: Vec<Box<dyn Any>> = Vec::new();
    loop {
        let mut progressed = false;
        while let Ok(runnable) = local.remote.queue.pop() {
            drop(runnable); // drops the task's future, here on its own thread
            progressed = true;
        }
        if let Some(driver) = local.driver.borrow_mut().as_mut() {
            driver.take_ready(&mut wakers, &mut deferred);
            driver.take_all_wakers(&mut wakers);
        }
        progressed |= !wakers.is_empty() || !deferred.is_empty();
        // Dropping the last waker of a detached task schedules it one last time, so its
        // runnable lands in the queue and is dropped on the next pass.
        wakers.clear();
        deferred.clear();
        if !progressed {
            break;
        }
    }
    let driver = local.driver.borrow_mut().take();
    drop(driver);
    while let Ok(runnable) = local.remote.queue.pop() {
        drop(runnable);
    }
}

/// What the loop runs for: a core until shutdown, or `block_on`'s main future.
trait Driving {
    /// Called once per turn; true = exit the loop.
    fn step(&mut self) -> bool;
    /// Work is ready without waiting on the ring.
    fn ready(&self) -> bool;
}

fn run_loop(local: &Local, driving: &mut dyn Driving) -> io::Result<()> {
    let mut wakers: Vec<Waker> = Vec::new();
    let mut deferred: Vec<Box<dyn Any>> = Vec::new();
    loop {
        if driving.step() {
            return Ok(());
        }
        for _ in 0..RUN_BATCH {
            match local.remote.queue.pop() {
                Ok(runnable) => {
                    runnable.run();
                }
                Err(_) => break,
            }
        }
        let idle = local.remote.queue.is_empty() && !driving.ready();
        let fired = {
            let mut driver = local.driver.borrow_mut();
            let Some(driver) = driver.as_mut() else {
                return Err(io::Error::other("ring already torn down"));
            };
            let fired = driver.tick(idle)?;
            driver.take_ready(&mut wakers, &mut deferred);
            fired
        };
        if fired {
            // Pairs with Remote::kick; after this, pushes made before a suppressed kick are
            // visible to the pops of the next turn.
            local.remote.notified.swap(false, Ordering::AcqRel);
        }
        for waker in wakers.drain(..) {
            waker.wake();
        }
        deferred.clear(); // orphaned ops' buffers and fds, freed after their CQE (rule 1)
    }
}

struct CoreLoop {
    remote: Arc<Remote>,
}

impl Driving for CoreLoop {
    fn step(&mut self) -> bool {
        self.remote.stop.load(Ordering::Acquire)
    }
    fn ready(&self) -> bool {
        false
    }
}

/// Runs a core thread: `init` as its first task, then the loop until shutdown.
pub(crate) fn run_core(local: Local, init: impl Future<Output = ()> + 'static) -> io::Result<()> {
    let entered = enter(local);
    spawn(init).detach();
    let mut driving = CoreLoop {
        remote: Arc::clone(&entered.local.remote),
    };
    let res = run_loop(&entered.local, &mut driving);
    if res.is_err() {
        entered.local.handle.shutdown();
    }
    drop(entered);
    res
}

struct MainWaker {
    woken: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if !self.remote.is_local() {
            self.remote.kick();
        }
    }
}

/// Runs `future` to completion on a one-core runtime on the calling thread (tests, tools).
/// `cfg.cores` is ignored. Panics if io_uring cannot be set up (the message says why) or if
/// called on a thread that already runs a core. `core_handle().shutdown()` does not end
/// `block_on`; only the future's completion does.
pub fn block_on<F: Future>(cfg: RuntimeConfig, future: F) -> F::Output {
    if let Err(e) = cfg.validate() {
        panic!("ferry runtime: {e}");
    }
    let remote = Remote::new().unwrap_or_else(|e| panic!("ferry runtime: {e}"));
    let handle = CoreHandle::new(vec![Arc::clone(&remote)]);
    let local = Local::build(0, Arc::clone(&remote), handle, &cfg)
        .unwrap_or_else(|e| panic!("ferry runtime: {e}"));
    let entered = enter(local);
    let main_waker = Arc::new(MainWaker {
        woken: AtomicBool::new(true),
        remote,
    });
    let waker = Waker::from(Arc::clone(&main_waker));
    let mut future = pin!(future);

    struct BlockOn<'a, F: Future> {
        future: Pin<&'a mut F>,
        main_waker: &'a MainWaker,
        waker: &'a Waker,
        output: Option<F::Output>,
    }
    impl<F: Future> Driving for BlockOn<'_, F> {
        fn step(&mut self) -> bool {
            if !self.main_waker.woken.swap(false, Ordering::AcqRel) {
                return false;
            }
            let mut cx = Context::from_waker(self.waker);
            match self.future.as_mut().poll(&mut cx) {
                Poll::Ready(out) => {
                    self.output = Some(out);
                    true
                }
                Poll::Pending => false,
            }
        }
        fn ready(&self) -> bool {
            self.main_waker.woken.load(Ordering::Acquire)
        }
    }

    let mut driving = BlockOn {
        future: future.as_mut(),
        main_waker: &main_waker,
        waker: &waker,
        output: None,
    };
    if let Err(e) = run_loop(&entered.local, &mut driving) {
        panic!("ferry runtime: io_uring failed: {e}");
    }
    let output = driving.output.take();
    drop(driving);
    // Locals drop in reverse order: `future` (which may own ops in flight) goes before
    // `entered`, i.e. while this thread's ring still exists to orphan them into.
    match output {
        Some(out) => out,
        None => unreachable!("block_on loop ended without output"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::RuntimeConfig;
    use super::*;
    use std::time::Duration;

    pub(crate) fn small_cfg() -> RuntimeConfig {
        RuntimeConfig {
            cores: 1,
            pin: false,
            ring_entries: 64,
            buf_size: 64 << 10,
            bufs_per_core: 4,
        }
    }

    #[test]
    fn spawn_and_yield() {
        let out = block_on(small_cfg(), async {
            let a = spawn(async {
                for _ in 0..10 {
                    yield_now().await;
                }
                1
            });
            let b = spawn(async { 2 });
            assert_eq!(current_core(), 0);
            assert_eq!(core_handle().cores(), 1);
            a.await + b.await
        });
        assert_eq!(out, 3);
    }

    #[test]
    fn remote_wake_from_plain_thread() {
        block_on(small_cfg(), async {
            let (tx, rx) = futures::channel::oneshot::channel::<u32>();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                tx.send(7).expect("receiver alive");
            });
            // The main future waits on a waker fired from another thread.
            assert_eq!(rx.await.expect("sender alive"), 7);
            // And a spawned task too.
            let (tx, rx) = futures::channel::oneshot::channel::<u32>();
            let task = spawn(async move { rx.await.expect("sender alive") });
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(9).expect("receiver alive");
            });
            assert_eq!(task.await, 9);
            t.join().expect("thread");
        });
    }

    #[test]
    fn post_from_plain_thread_into_block_on() {
        block_on(small_cfg(), async {
            let handle = core_handle();
            let (tx, rx) = futures::channel::oneshot::channel::<usize>();
            std::thread::spawn(move || {
                handle.post(0, move || {
                    let _ = tx.send(current_core());
                });
            });
            assert_eq!(rx.await.expect("posted"), 0);
        });
    }

    #[test]
    #[should_panic(expected = "outside a core thread")]
    fn spawn_outside_panics() {
        drop(spawn(async {}));
    }

    #[test]
    fn tasks_blocked_on_io_are_dropped_at_exit() {
        struct Flag(Rc<Cell<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let dropped = Rc::new(Cell::new(false));
        let d2 = Rc::clone(&dropped);
        let started = std::time::Instant::now();
        block_on(small_cfg(), async move {
            spawn(async move {
                let _flag = Flag(d2);
                super::super::sleep(Duration::from_secs(60)).await;
            })
            .detach();
            yield_now().await;
            assert_eq!(in_flight_ops(), 1);
        });
        // Teardown dropped the task (its only owner was the op's waker), orphaned and
        // cancelled the timeout, and drained it: no 60 s wait.
        assert!(dropped.get());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
