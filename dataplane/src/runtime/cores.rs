//! A set of core threads and the handle other threads use to reach them.
//!
//! Messages between cores are closures run as tasks on the target core (rule 7: a queue plus
//! an eventfd wake, no mutex). `call` awaits a result through a oneshot channel; when the target
//! core has already shut down, `call` never resolves (the caller's core is shutting down too:
//! shutdown is set-wide) and `call_blocking` panics with a message.

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::executor::{self, Local, Remote};
use super::{sys, RuntimeConfig, RuntimeError};

struct SetShared {
    remotes: Vec<Arc<Remote>>,
}

/// A cloneable, `Send + Sync` handle to a set of cores.
#[derive(Clone)]
pub struct CoreHandle {
    shared: Arc<SetShared>,
}

impl std::fmt::Debug for CoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreHandle")
            .field("cores", &self.cores())
            .finish()
    }
}

impl CoreHandle {
    pub(crate) fn new(remotes: Vec<Arc<Remote>>) -> CoreHandle {
        CoreHandle {
            shared: Arc::new(SetShared { remotes }),
        }
    }

    pub(crate) fn same_set(&self, other: &CoreHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Number of cores in the set.
    pub fn cores(&self) -> usize {
        self.shared.remotes.len()
    }

    fn remote(&self, core: usize) -> &Arc<Remote> {
        match self.shared.remotes.get(core) {
            Some(r) => r,
            None => panic!(
                "ferry runtime: core {core} out of range (the set has {} cores)",
                self.cores()
            ),
        }
    }

    /// Runs `f` on core `core`'s thread soon. Callable from any thread; dropped silently if
    /// that core has exited.
    pub fn post(&self, core: usize, f: impl FnOnce() + Send + 'static) {
        self.remote(core).post(f);
    }

    /// Runs `f()` as a local task on `core` and awaits its result. Works from a core (of this
    /// or another set) or from `block_on`. Never resolves if `core` has shut down.
    pub async fn call<T, Fut, F>(&self, core: usize, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if executor::is_core_of(self, core) {
            return executor::spawn(f()).await;
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        self.post(core, move || {
            executor::spawn(async move {
                let _ = tx.send(f().await);
            })
            .detach();
        });
        match rx.await {
            Ok(v) => v,
            // The target core exited before answering; so is ours, soon (shutdown is
            // set-wide), and this task is dropped with it.
            Err(_) => std::future::pending().await,
        }
    }

    /// Like [`CoreHandle::call`], from a thread that is not a core (e.g. an admin thread):
    /// blocks the calling thread. Panics on a core thread, and if `core` shuts down first.
    pub fn call_blocking<T, Fut, F>(&self, core: usize, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        assert!(
            !executor::on_a_core(),
            "ferry runtime: call_blocking() on a core thread would stall its ring; use call().await"
        );
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.post(core, move || {
            executor::spawn(async move {
                let _ = tx.send(f().await);
            })
            .detach();
        });
        match rx.recv() {
            Ok(v) => v,
            Err(_) => {
                panic!("ferry runtime: core {core} shut down before call_blocking() completed")
            }
        }
    }

    /// Asks every core loop to exit soon; their pending tasks are dropped (ops in flight are
    /// cancelled and drained safely).
    pub fn shutdown(&self) {
        for remote in &self.shared.remotes {
            remote.request_stop();
        }
    }
}

/// The running core threads. Dropping it without `join` shuts the set down and joins it.
pub struct CoreSet {
    handle: CoreHandle,
    threads: Vec<(usize, JoinHandle<Result<(), RuntimeError>>)>,
}

impl CoreSet {
    /// Spawns `cfg.cores` threads `ferry-core-N` (pinned to the N-th allowed CPU, modulo their
    /// count, when `cfg.pin`; failure to pin is a warning). Each builds its ring, executor and
    /// pool; once all have, each spawns `init(N)` as a local task and runs until shutdown.
    pub fn start<F, Fut>(cfg: RuntimeConfig, init: F) -> Result<CoreSet, RuntimeError>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        cfg.validate()?;
        if cfg.cores == 0 {
            return Err(RuntimeError::Config("cores must be > 0".into()));
        }
        let remotes = (0..cfg.cores)
            .map(|_| Remote::new())
            .collect::<Result<Vec<_>, _>>()?;
        let handle = CoreHandle::new(remotes.clone());
        let init = Arc::new(init);
        let cpus = if cfg.pin {
            sys::allowed_cpus().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "sched_getaffinity failed; cores are not pinned");
                Vec::new()
            })
        } else {
            Vec::new()
        };

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<(), RuntimeError>)>();
        let mut gos = Vec::with_capacity(cfg.cores);
        let mut set = CoreSet {
            handle: handle.clone(),
            threads: Vec::with_capacity(cfg.cores),
        };
        for (core, remote) in remotes.into_iter().enumerate() {
            let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
            let cpu = (!cpus.is_empty()).then(|| cpus[core % cpus.len()]);
            let (handle, cfg, init, ready_tx) = (
                handle.clone(),
                cfg.clone(),
                Arc::clone(&init),
                ready_tx.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("ferry-core-{core}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = sys::pin_current_thread(cpu) {
                            tracing::warn!(core, cpu, error = %e, "could not pin core thread");
                        }
                    }
                    let local = match Local::build(core, remote, handle, &cfg) {
                        Ok(local) => {
                            let _ = ready_tx.send((core, Ok(())));
                            local
                        }
                        Err(e) => {
                            let _ = ready_tx.send((core, Err(e)));
                            return Ok(());
                        }
                    };
                    drop(ready_tx);
                    if go_rx.recv() != Ok(true) {
                        return Ok(());
                    }
                    executor::run_core(local, init(core))
                        .map_err(|source| RuntimeError::Ring { core, source })
                });
            match spawned {
                Ok(t) => {
                    set.threads.push((core, t));
                    gos.push(go_tx);
                }
                Err(source) => {
                    drop(gos); // threads already started see a closed channel and exit
                    let _ = set.join_all();
                    return Err(RuntimeError::Setup {
                        what: format!("spawning thread ferry-core-{core}"),
                        source,
                    });
                }
            }
        }
        drop(ready_tx);

        let mut failure = None;
        for _ in 0..cfg.cores {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(e))) => {
                    failure.get_or_insert(e);
                }
                Err(_) => break, // a thread died before reporting; join says which
            }
        }
        if failure.is_none() && set.threads.iter().any(|(_, t)| t.is_finished()) {
            drop(gos);
            return Err(set.join_all().err().unwrap_or(RuntimeError::Config(
                "a core thread exited during start-up".into(),
            )));
        }
        if let Some(e) = failure {
            drop(gos);
            let _ = set.join_all();
            return Err(e);
        }
        for go in gos {
            let _ = go.send(true);
        }
        Ok(set)
    }

    /// A handle for posting to, calling into and shutting down the set.
    pub fn handle(&self) -> CoreHandle {
        self.handle.clone()
    }

    /// Waits until every core thread has exited (after [`CoreHandle::shutdown`]). Returns the
    /// first failure: a core's ring error or a panic.
    pub fn join(mut self) -> Result<(), RuntimeError> {
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        for (core, thread) in self.threads.drain(..) {
            let res = thread
                .join()
                .unwrap_or(Err(RuntimeError::CorePanicked { core }));
            if first.is_ok() {
                first = res;
            }
        }
        first
    }
}

impl Drop for CoreSet {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.handle.shutdown();
        let me = std::thread::current().id();
        if self.threads.iter().any(|(_, t)| t.thread().id() == me) {
            return; // dropped on one of its own cores: cannot join itself
        }
        let _ = self.join_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{buf_pool, current_core, spawn, RuntimeConfig};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn two_cores() -> RuntimeConfig {
        RuntimeConfig {
            cores: 2,
            pin: true,
            ring_entries: 64,
            buf_size: 64 << 10,
            bufs_per_core: 2,
        }
    }

    #[test]
    fn call_post_call_blocking_shutdown_join() {
        let started = Arc::new(AtomicUsize::new(0));
        let s2 = Arc::clone(&started);
        let set = CoreSet::start(two_cores(), move |core| {
            let started = Arc::clone(&s2);
            async move {
                assert_eq!(current_core(), core);
                started.fetch_add(1, Ordering::SeqCst);
            }
        })
        .expect("start");
        let h = set.handle();
        assert_eq!(h.cores(), 2);

        // From a plain thread: call_blocking into core 0, which calls core 1 and back.
        let h2 = h.clone();
        let (on1, back_on0, local) = h.call_blocking(0, move || async move {
            assert_eq!(current_core(), 0);
            let on1 = h2
                .call(1, || async {
                    let h = super::super::core_handle();
                    // and back from core 1 to core 0
                    let back = h.call(0, || async { current_core() }).await;
                    (current_core(), back)
                })
                .await;
            // Same-core call spawns locally.
            let local = h2.call(0, || async { current_core() }).await;
            (on1.0, on1.1, local)
        });
        assert_eq!((on1, back_on0, local), (1, 0, 0));

        // post from a plain thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let h3 = h.clone();
        std::thread::spawn(move || {
            h3.post(1, move || {
                let _ = tx.send(current_core());
            })
        })
        .join()
        .expect("poster");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert_eq!(started.load(Ordering::SeqCst), 2);

        h.shutdown();
        set.join().expect("join");
    }

    #[test]
    fn shutdown_drops_pending_tasks_and_ops() {
        let set = CoreSet::start(two_cores(), |_| async {
            // Tasks stuck on IO and on nothing at all.
            spawn(super::super::sleep(Duration::from_secs(600))).detach();
            spawn(std::future::pending::<()>()).detach();
        })
        .expect("start");
        std::thread::sleep(Duration::from_millis(50));
        let t0 = std::time::Instant::now();
        set.handle().shutdown();
        set.join().expect("join");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn pool_back_pressure_across_cores() {
        let set = CoreSet::start(two_cores(), |_| async {}).expect("start");
        let h = set.handle();
        let h2 = h.clone();
        let waited_ms = h.call_blocking(0, move || async move {
            let pool = buf_pool();
            let a = pool.take().await;
            let _b = pool.take().await;
            assert!(pool.try_take().is_none());
            // Hand one buffer to core 1, which drops it after a while.
            h2.post(1, move || {
                spawn(async move {
                    super::super::sleep(Duration::from_millis(100)).await;
                    drop(a); // returns to core 0's pool from core 1's thread
                })
                .detach();
            });
            let t0 = std::time::Instant::now();
            let c = pool.take().await; // waits for the drop on core 1
            assert_eq!(c.len(), pool.buf_size());
            t0.elapsed().as_millis()
        });
        assert!(waited_ms >= 90, "take() returned after {waited_ms} ms");
        h.shutdown();
        set.join().expect("join");
    }

    #[test]
    fn a_panicking_core_stops_the_set() {
        let set = CoreSet::start(two_cores(), |core| async move {
            if core == 1 {
                super::super::sleep(Duration::from_millis(20)).await;
                panic!("core 1 fails on purpose");
            }
        })
        .expect("start");
        // No shutdown() from us: the panic on core 1 stops core 0 too.
        assert!(matches!(
            set.join(),
            Err(RuntimeError::CorePanicked { core: 1 })
        ));
    }

    #[test]
    fn start_rejects_bad_config() {
        let cfg = RuntimeConfig {
            cores: 0,
            ..two_cores()
        };
        assert!(matches!(
            CoreSet::start(cfg, |_| async {}),
            Err(RuntimeError::Config(_))
        ));
    }
}
