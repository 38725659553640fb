//! The ring and its in-flight operation slab: the one place where we hand the kernel pointers.
//!
//! Invariants (RUNTIME.md rules 1–3), relied on by every `unsafe` block below:
//! * **The op owns its resources.** An [`Op`] carries the buffer and the fd holder the SQE names
//!   (heap memory only, so moving the `Op` never moves what the kernel points at). If the `Op`
//!   is dropped before its CQE, those resources move into the slab slot (`Orphaned`) and are
//!   freed when the CQE arrives; the kernel is asked to cancel meanwhile. A slot's `user_data`
//!   carries a generation, so a late cancel can never hit a reused slot.
//! * **Fds outlive their ops**: ops hold an `Rc`/`Arc` of the fd; the fd is closed (through the
//!   ring when possible) only when the last holder, hence the last op, is gone.
//! * **Teardown leaks rather than frees**: dropping the [`Driver`] cancels everything in
//!   flight and drains completions for a bounded time; resources of ops that still did not
//!   complete are leaked on purpose. An orphaned op whose driver is gone leaks too.
//! * **SQ pushes only when there is room**: a full SQ is submitted first (rule 3); the CQ is
//!   twice the SQ and `IORING_FEAT_NODROP` is required.

use std::any::Any;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::buf::{AlignedBuf, IoBuf, IoBufMut};
use super::executor;
use super::sys::{self, SockAddr};
use super::{probe, RuntimeError};

/// `user_data` whose low 32 bits are all ones is ours, not a slab slot.
const TOKEN_INDEX: u64 = 0xFFFF_FFFF;
const EVENTFD_UD: u64 = (1 << 32) | TOKEN_INDEX;
const CANCEL_UD: u64 = (2 << 32) | TOKEN_INDEX;
const CLOSE_UD: u64 = (3 << 32) | TOKEN_INDEX;
/// `IORING_ENTER_GETEVENTS` (the crate keeps its sys module private).
const IORING_ENTER_GETEVENTS: u32 = 1;
/// Linux caps one read/write at this (MAX_RW_COUNT); 4 KiB aligned, so O_DIRECT loops stay
/// aligned.
pub(crate) const MAX_RW_BYTES: usize = 0x7fff_f000;
/// Registered buffers may use RLIMIT_MEMLOCK minus this much (older kernels also charge rings).
const MEMLOCK_MARGIN_BYTES: u64 = 1 << 20;
/// How long a ring being torn down waits for cancelled ops before leaking them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const PUSH_RETRIES_MAX: usize = 1 << 16;

static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);
/// Bytes of registered buffers reserved by live rings of this process.
static MEMLOCK_RESERVED_BYTES: AtomicU64 = AtomicU64::new(0);
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
static MEMLOCK_LOGGED: AtomicBool = AtomicBool::new(false);

/// The one place where a CQE result becomes an `io::Result` (rule 4): negative values are
/// errnos, whose `io::ErrorKind` names them (ECONNRESET → ConnectionReset, ...).
pub(crate) fn cqe_result(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}

/// An owned descriptor that is closed through the ring when its last holder drops (rule 2).
#[derive(Debug)]
pub(crate) struct Fd {
    fd: Option<OwnedFd>,
}

impl Fd {
    pub(crate) fn new(fd: OwnedFd) -> Fd {
        Fd { fd: Some(fd) }
    }

    /// Gives the descriptor back without closing it.
    pub(crate) fn into_owned(mut self) -> Option<OwnedFd> {
        self.fd.take()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.fd {
            Some(f) => f.as_fd(),
            None => unreachable!("Fd used after into_owned"),
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let raw = fd.as_raw_fd();
            let queued = executor::with_driver(|d| d.is_some_and(|d| d.queue_close(raw)));
            if queued {
                // The ring owns the close now.
                let _ = fd.into_raw_fd();
            }
            // else: `fd` drops here, close(2).
        }
    }
}

/// Something that keeps an fd open while an op holds it (rule 2).
pub(crate) trait FdHandle: 'static {
    fn raw(&self) -> RawFd;
}

impl<T: AsRawFd + 'static> FdHandle for Rc<T> {
    fn raw(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl<T: AsRawFd + Send + Sync + 'static> FdHandle for Arc<T> {
    fn raw(&self) -> RawFd {
        self.as_raw_fd()
    }
}

enum State {
    Free,
    /// In the kernel; the future is alive.
    Waiting(Option<Waker>),
    /// CQE arrived; the future has not collected it yet.
    Done(i32),
    /// In the kernel; the future was dropped and the slot owns its resources (rule 1).
    Orphaned(Box<dyn Any>),
}

struct Slot {
    gen: u32,
    state: State,
}

fn user_data(index: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(index)
}

/// One core's ring plus the slab of ops in flight on it.
pub(crate) struct Driver {
    ring: IoUring,
    id: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    ops_submitted: u64,
    event_fd: Arc<OwnedFd>,
    /// The kernel writes the eventfd counter here while the read is armed (rule 1: boxed,
    /// owned by the driver, leaked if teardown cannot wait for the read).
    event_buf: Box<u64>,
    event_armed: bool,
    wakers: Vec<Waker>,
    deferred: Vec<Box<dyn Any>>,
    memlock_reserved_bytes: u64,
    /// The ring sets IORING_SQ_TASKRUN when deferred completions wait for an enter.
    taskrun_flag: bool,
}

impl Driver {
    /// Builds a ring on the calling thread (rule 6) and arms the wake-up read on `event_fd`.
    pub(crate) fn new(entries: u32, event_fd: Arc<OwnedFd>) -> Result<Driver, RuntimeError> {
        let cq_entries = entries.saturating_mul(2).max(2);
        let optimized = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(cq_entries)
            .build(entries);
        let (ring, taskrun_flag) = match optimized {
            Ok(ring) => (ring, true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
                return Err(probe::diagnose(e));
            }
            Err(e) => {
                if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "io_uring: SINGLE_ISSUER|DEFER_TASKRUN unavailable (Linux < 6.1?), using a plain ring"
                    );
                }
                let ring = IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .build(entries)
                    .map_err(probe::diagnose)?;
                (ring, false)
            }
        };
        if !ring.params().is_feature_nodrop() {
            return Err(RuntimeError::MissingFeature("IORING_FEAT_NODROP".into()));
        }
        let mut driver = Driver {
            ring,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            ops_submitted: 0,
            event_fd,
            event_buf: Box::new(0),
            event_armed: false,
            wakers: Vec::new(),
            deferred: Vec::new(),
            memlock_reserved_bytes: 0,
            taskrun_flag,
        };
        driver.arm_eventfd().map_err(|source| RuntimeError::Setup {
            what: "arming the wake-up eventfd read".into(),
            source,
        })?;
        Ok(driver)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Ops submitted and not yet completed (orphans included).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn ops_submitted(&self) -> u64 {
        self.ops_submitted
    }

    /// Pushes one SQE, submitting first if the SQ is full (rule 3).
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid, and every fd open, until its CQE (rules 1, 2).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..PUSH_RETRIES_MAX {
            // SAFETY: forwarded from this function's contract (rules 1 and 2).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Rule 3: the SQ is full; hand it to the kernel, then retry.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {
                    // EBUSY: the CQ (and overflow list) must drain before more submissions.
                    self.reap();
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("io_uring submission queue stayed full"))
    }

    /// Takes a slot and pushes `entry` for it.
    ///
    /// # Safety
    /// As for [`Driver::push`].
    unsafe fn start(&mut self, entry: squeue::Entry) -> io::Result<(u32, u32)> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| u64::from(i) < TOKEN_INDEX)
                    .ok_or_else(|| io::Error::other("too many io_uring ops in flight"))?;
                self.slots.push(Slot {
                    gen: 0,
                    state: State::Free,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.state = State::Waiting(None);
        let gen = slot.gen;
        let entry = entry.user_data(user_data(index, gen));
        // SAFETY: forwarded from this function's contract (rules 1 and 2).
        match unsafe { self.push(&entry) } {
            Ok(()) => {
                self.in_flight += 1;
                self.ops_submitted += 1;
                Ok((index, gen))
            }
            Err(e) => {
                self.slots[index as usize].state = State::Free;
                self.free.push(index);
                Err(e)
            }
        }
    }

    fn poll_op(&mut self, index: u32, gen: u32, waker: &Waker) -> Poll<i32> {
        let slot = &mut self.slots[index as usize];
        assert_eq!(slot.gen, gen, "op polled after its slot was reused");
        match &mut slot.state {
            State::Done(res) => {
                let res = *res;
                slot.state = State::Free;
                self.free.push(index);
                Poll::Ready(res)
            }
            State::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *w = Some(waker.clone());
                }
                Poll::Pending
            }
            State::Free | State::Orphaned(_) => panic!("op polled in a freed or orphaned slot"),
        }
    }

    /// The future of op (`index`, `gen`) is gone. If the CQE already came, hands `data` back
    /// to be freed by the caller; otherwise the slot keeps it until the CQE (rule 1) and the
    /// kernel is asked to cancel.
    fn orphan(&mut self, index: u32, gen: u32, data: Box<dyn Any>) -> Option<Box<dyn Any>> {
        let slot = &mut self.slots[index as usize];
        assert_eq!(slot.gen, gen, "op dropped after its slot was reused");
        match slot.state {
            State::Done(_) => {
                slot.state = State::Free;
                self.free.push(index);
                Some(data)
            }
            State::Waiting(_) => {
                slot.state = State::Orphaned(data);
                self.cancel(user_data(index, gen));
                None
            }
            State::Free | State::Orphaned(_) => panic!("op dropped twice"),
        }
    }

    fn cancel(&mut self, target: u64) {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(CANCEL_UD);
        // SAFETY: a cancel request names no memory and no fd (rules 1, 2 hold trivially).
        if let Err(e) = unsafe { self.push(&entry) } {
            tracing::debug!(error = %e, "could not queue an io_uring cancel");
        }
    }

    /// Queues `close(fd)` on the ring. The caller gives up the fd if this returns true.
    fn queue_close(&mut self, fd: RawFd) -> bool {
        let entry = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(CLOSE_UD);
        // SAFETY: rule 2: the fd's last holder is gone, so no op in flight names it; a close
        // names no memory.
        unsafe { self.push(&entry) }.is_ok()
    }

    fn arm_eventfd(&mut self) -> io::Result<()> {
        let ptr: *mut u8 = (&mut *self.event_buf as *mut u64).cast();
        let entry = opcode::Read::new(types::Fd(self.event_fd.as_raw_fd()), ptr, 8)
            .build()
            .user_data(EVENTFD_UD);
        // SAFETY: rule 1: `event_buf` is a Box owned by the driver, which cancels and waits for
        // this read on drop or leaks the box; rule 2: the driver holds an Arc of the eventfd.
        unsafe { self.push(&entry) }?;
        self.event_armed = true;
        Ok(())
    }

    /// Submits queued SQEs; blocks for one completion if `wait`. With DEFER_TASKRUN only an
    /// enter with GETEVENTS posts completions, so a busy core asks for them when flagged.
    fn enter(&mut self, wait: bool) -> io::Result<()> {
        let res = if wait {
            self.ring.submit_and_wait(1)
        } else {
            let mut sq = self.ring.submission();
            let pending = sq.len();
            let completions_waiting = (self.taskrun_flag && sq.taskrun()) || sq.cq_overflow();
            sq.sync();
            drop(sq);
            if pending == 0 && !completions_waiting {
                return Ok(());
            }
            // SAFETY: io_uring_enter without an argument pointer; the SQEs it submits were
            // pushed under the rules of `push`.
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    pending as u32,
                    0,
                    IORING_ENTER_GETEVENTS,
                    None,
                )
            }
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves completions into their slots; returns whether the wake-up eventfd fired.
    fn reap(&mut self) -> bool {
        let mut fired = false;
        let Driver {
            ring,
            slots,
            free,
            wakers,
            deferred,
            in_flight,
            event_armed,
            ..
        } = self;
        for cqe in ring.completion() {
            let ud = cqe.user_data();
            let res = cqe.result();
            if ud & TOKEN_INDEX == TOKEN_INDEX {
                if ud == EVENTFD_UD {
                    *event_armed = false;
                    fired = true;
                    if res < 0 && res != -libc::ECANCELED {
                        tracing::warn!(error = %io::Error::from_raw_os_error(-res), "eventfd read failed");
                    }
                } else if ud == CLOSE_UD && res < 0 {
                    tracing::debug!(error = %io::Error::from_raw_os_error(-res), "close through the ring failed");
                }
                continue;
            }
            let index = (ud & TOKEN_INDEX) as u32;
            let gen = (ud >> 32) as u32;
            let Some(slot) = slots.get_mut(index as usize).filter(|s| s.gen == gen) else {
                tracing::error!(user_data = ud, "completion for an unknown op");
                continue;
            };
            match std::mem::replace(&mut slot.state, State::Done(res)) {
                State::Waiting(w) => wakers.extend(w),
                State::Orphaned(data) => {
                    // Rule 1: only now may the orphan's buffer and fd go.
                    slot.state = State::Free;
                    free.push(index);
                    deferred.push(data);
                }
                other @ (State::Free | State::Done(_)) => {
                    slot.state = other;
                    tracing::error!(user_data = ud, "duplicate completion");
                    continue;
                }
            }
            *in_flight -= 1;
        }
        fired
    }

    /// One turn of the ring: re-arm the wake-up read, submit, wait if `wait` and nothing is
    /// ready, reap. Returns whether the wake-up eventfd fired.
    pub(crate) fn tick(&mut self, wait: bool) -> io::Result<bool> {
        if !self.event_armed {
            self.arm_eventfd()?;
        }
        let wait = wait && self.wakers.is_empty() && self.deferred.is_empty();
        self.enter(wait)?;
        Ok(self.reap())
    }

    /// Hands over wakers to call and orphaned resources to free, outside the driver's borrow.
    pub(crate) fn take_ready(&mut self, wakers: &mut Vec<Waker>, deferred: &mut Vec<Box<dyn Any>>) {
        std::mem::swap(&mut self.wakers, wakers);
        std::mem::swap(&mut self.deferred, deferred);
    }

    /// Teardown: also takes the wakers of ops still waiting, so tasks held only by them drop.
    pub(crate) fn take_all_wakers(&mut self, wakers: &mut Vec<Waker>) {
        wakers.append(&mut self.wakers);
        for slot in &mut self.slots {
            if let State::Waiting(w) = &mut slot.state {
                wakers.extend(w.take());
            }
        }
    }

    /// Registers a prefix of `iovecs` (equal-sized pool buffers) as fixed buffers, as many as
    /// RLIMIT_MEMLOCK allows (rule 9). Returns how many.
    pub(crate) fn register_buffers(&mut self, iovecs: &[libc::iovec]) -> usize {
        let total = iovecs.len();
        let Some(buf_bytes) = iovecs.first().map(|v| v.iov_len as u64) else {
            return 0;
        };
        if buf_bytes == 0 || buf_bytes > 1 << 30 {
            return 0;
        }
        let limit = match sys::memlock_limit() {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(error = %e, "getrlimit(RLIMIT_MEMLOCK) failed; not registering buffers");
                Some(0)
            }
        };
        let budget = limit.map_or(u64::MAX, |l| l.saturating_sub(MEMLOCK_MARGIN_BYTES));
        // Reserve from the process-wide budget: every core's ring counts against one limit.
        let mut n = 0usize;
        let _ = MEMLOCK_RESERVED_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            let fits = budget.saturating_sub(used) / buf_bytes;
            n = total
                .min(16384)
                .min(usize::try_from(fits).unwrap_or(usize::MAX));
            Some(used + n as u64 * buf_bytes)
        });
        let reserved = n;
        while n > 0 {
            // SAFETY: rule 1: pool memory stays allocated while any AlignedBuf of the pool
            // exists, and a fixed index is only used by an op that owns such a buffer; the
            // kernel pins the pages itself for as long as they stay registered.
            match unsafe { self.ring.submitter().register_buffers(&iovecs[..n]) } {
                Ok(()) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EAGAIN)) => {
                    // Other rings of this user already pin memory: try with fewer.
                    n /= 2;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring buffer registration failed");
                    n = 0;
                }
            }
        }
        let unused = (reserved - n) as u64 * buf_bytes;
        MEMLOCK_RESERVED_BYTES.fetch_sub(unused, Ordering::AcqRel);
        self.memlock_reserved_bytes = n as u64 * buf_bytes;
        if n < total && !MEMLOCK_LOGGED.swap(true, Ordering::Relaxed) {
            let limit = limit.map_or_else(|| "unlimited".to_string(), |l| format!("{l} bytes"));
            tracing::info!("registered {n} of {total} buffers (memlock limit {limit})");
        }
        n
    }
}

/// The id of this thread's ring, if it runs one (tests and diagnostics).
#[allow(dead_code)]
pub(crate) fn current_ring_id() -> Option<u64> {
    executor::with_driver(|d| d.map(|d| d.id()))
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
    )
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Rule 1: cancel everything the kernel still holds and wait for it, bounded.
        let targets: Vec<u64> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, State::Waiting(_) | State::Orphaned(_)))
            .map(|(i, s)| user_data(i as u32, s.gen))
            .collect();
        for ud in targets {
            self.cancel(ud);
        }
        if self.event_armed {
            self.cancel(EVENTFD_UD);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let ext_arg = self.ring.params().is_feature_ext_arg();
        loop {
            self.reap();
            let sq_empty = self.ring.submission().is_empty();
            if (self.in_flight == 0 && !self.event_armed && sq_empty) || Instant::now() >= deadline
            {
                break;
            }
            if ext_arg {
                let ts = types::Timespec::new().nsec(10_000_000);
                let args = types::SubmitArgs::new().timespec(&ts);
                let _ = self.ring.submitter().submit_with_args(1, &args);
            } else {
                let _ = self.ring.submit();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // What never completed stays with the kernel: leak it, never free it (rule 1).
        let mut leaked = 0;
        for slot in &mut self.slots {
            if let State::Orphaned(_) = slot.state {
                if let State::Orphaned(data) = std::mem::replace(&mut slot.state, State::Free) {
                    std::mem::forget(data);
                    leaked += 1;
                }
            }
        }
        if self.event_armed {
            std::mem::forget(std::mem::replace(&mut self.event_buf, Box::new(0)));
            leaked += 1;
        }
        if leaked > 0 {
            tracing::warn!(
                leaked,
                "io_uring ops did not complete at teardown; their buffers are leaked"
            );
        }
        MEMLOCK_RESERVED_BYTES.fetch_sub(self.memlock_reserved_bytes, Ordering::AcqRel);
        // Completed orphans and wakers go with `deferred` and `wakers` when the fields drop.
    }
}

/// A submitted operation. Resolves to the CQE result and the resources it owned.
pub(crate) struct Op<T: 'static> {
    ring_id: u64,
    index: u32,
    gen: u32,
    data: Option<T>,
    /// Set if the op never reached the kernel.
    early: Option<io::Error>,
    _not_send: PhantomData<Rc<()>>,
}

// Op never pins its data (the kernel sees only heap memory owned by it).
impl<T: 'static> Unpin for Op<T> {}

impl<T: 'static> Op<T> {
    /// Builds an SQE from `data` and submits it on this thread's ring.
    ///
    /// # Safety
    /// Every pointer `build` puts in the entry must point into heap memory owned by `data`
    /// (or `'static` memory), and every fd must be kept open by `data` (rules 1, 2): `data`
    /// stays alive until the CQE, in this `Op` or in its orphaned slot.
    unsafe fn submit(mut data: T, build: impl FnOnce(u64, &mut T) -> squeue::Entry) -> Op<T> {
        let started = executor::with_driver(|d| {
            let d = d?;
            let entry = build(d.id(), &mut data);
            // SAFETY: forwarded from this function's contract.
            Some((d.id(), unsafe { d.start(entry) }))
        });
        let Some((ring_id, started)) = started else {
            panic!("ferry runtime: IO op used outside a core thread or block_on (or from inside the driver)");
        };
        let (index, gen, early) = match started {
            Ok((index, gen)) => (index, gen, None),
            Err(e) => (0, 0, Some(e)),
        };
        Op {
            ring_id,
            index,
            gen,
            data: Some(data),
            early,
            _not_send: PhantomData,
        }
    }
}

impl<T: 'static> Future for Op<T> {
    type Output = (io::Result<u32>, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.early.take() {
            let data = this.data.take().expect("Op polled after completion");
            return Poll::Ready((Err(e), data));
        }
        let (ring_id, index, gen) = (this.ring_id, this.index, this.gen);
        let polled = executor::with_driver(|d| match d {
            Some(d) if d.id() == ring_id => Some(d.poll_op(index, gen, cx.waker())),
            _ => None,
        });
        match polled {
            None => panic!("ferry runtime: IO op polled on a thread other than its core"),
            Some(Poll::Pending) => Poll::Pending,
            Some(Poll::Ready(res)) => {
                let data = this.data.take().expect("Op polled after completion");
                Poll::Ready((cqe_result(res), data))
            }
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        if self.early.is_some() {
            return; // never reached the kernel
        }
        let boxed: Box<dyn Any> = Box::new(data);
        let (ring_id, index, gen) = (self.ring_id, self.index, self.gen);
        let done = executor::with_driver(|d| match d {
            Some(d) if d.id() == ring_id => d.orphan(index, gen, boxed),
            _ => {
                // Our ring is gone or not reachable: the kernel may still hold the memory,
                // so leak it (rule 1).
                std::mem::forget(boxed);
                None
            }
        });
        drop(done); // completed already: free outside the driver borrow
    }
}

/// One op moves at most MAX_RW_BYTES; callers loop over the rest (rule 4).
fn clamp_len(len: usize) -> u32 {
    len.min(MAX_RW_BYTES) as u32
}

fn check_range(range: &Range<usize>, init: usize, what: &str) {
    assert!(
        range.start <= range.end && range.end <= init,
        "{what}: range {range:?} outside the buffer's {init} initialised bytes"
    );
}

/// `pread` into `buf[range]` at `offset`; uses READ_FIXED if `buf` is registered here.
pub(crate) fn read_at<H: FdHandle>(
    fd: H,
    buf: AlignedBuf,
    range: Range<usize>,
    offset: u64,
) -> Op<(H, AlignedBuf)> {
    check_range(&range, buf.len(), "read_at");
    let len = clamp_len(range.len());
    // SAFETY: rule 1: the pointer is into `buf`'s heap allocation (range checked above), and
    // `buf` travels with the op until its CQE; rule 2: so does `fd`.
    unsafe {
        Op::submit((fd, buf), |ring_id, (fd, buf)| {
            let ptr = buf.as_mut_ptr().wrapping_add(range.start);
            match buf.fixed_index(ring_id) {
                Some(index) => opcode::ReadFixed::new(types::Fd(fd.raw()), ptr, len, index)
                    .offset(offset)
                    .build(),
                None => opcode::Read::new(types::Fd(fd.raw()), ptr, len)
                    .offset(offset)
                    .build(),
            }
        })
    }
}

/// `pwrite` from `buf[range]` at `offset`; uses WRITE_FIXED if `buf` is registered here.
pub(crate) fn write_at<H: FdHandle>(
    fd: H,
    buf: AlignedBuf,
    range: Range<usize>,
    offset: u64,
) -> Op<(H, AlignedBuf)> {
    check_range(&range, buf.len(), "write_at");
    let len = clamp_len(range.len());
    // SAFETY: as in read_at (rules 1, 2); the kernel only reads the buffer.
    unsafe {
        Op::submit((fd, buf), |ring_id, (fd, buf)| {
            let ptr = buf.as_ptr().wrapping_add(range.start);
            match buf.fixed_index(ring_id) {
                Some(index) => opcode::WriteFixed::new(types::Fd(fd.raw()), ptr, len, index)
                    .offset(offset)
                    .build(),
                None => opcode::Write::new(types::Fd(fd.raw()), ptr, len)
                    .offset(offset)
                    .build(),
            }
        })
    }
}

/// `recv` into `buf[range]`.
pub(crate) fn recv<H: FdHandle, B: IoBufMut>(fd: H, buf: B, range: Range<usize>) -> Op<(H, B)> {
    check_range(&range, buf.bytes_init(), "recv");
    let len = clamp_len(range.len());
    // SAFETY: rule 1: IoBufMut guarantees stable heap memory for bytes_init() bytes, range is
    // inside it, and `buf` travels with the op; rule 2: so does `fd`.
    unsafe {
        Op::submit((fd, buf), |_, (fd, buf)| {
            let ptr = buf.stable_mut_ptr().wrapping_add(range.start);
            opcode::Recv::new(types::Fd(fd.raw()), ptr, len).build()
        })
    }
}

/// `send(MSG_NOSIGNAL)` from `buf[range]`.
pub(crate) fn send<H: FdHandle, B: IoBuf>(fd: H, buf: B, range: Range<usize>) -> Op<(H, B)> {
    check_range(&range, buf.bytes_init(), "send");
    let len = clamp_len(range.len());
    // SAFETY: as in recv (rules 1, 2); the kernel only reads the buffer.
    unsafe {
        Op::submit((fd, buf), |_, (fd, buf)| {
            let ptr = buf.stable_ptr().wrapping_add(range.start);
            opcode::Send::new(types::Fd(fd.raw()), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        })
    }
}

/// Most iovecs one `sendmsg` takes (Linux UIO_MAXIOV); longer lists go out in several ops.
pub(crate) const IOV_MAX: usize = 1024;

/// A gather list for one vectored send: pieces of `head` and `body` in wire order. The
/// iovecs and the msghdr live in this (boxed) struct, so they stay put while the kernel reads
/// them.
pub struct Gather {
    pub head: Vec<u8>,
    pub body: AlignedBuf,
    /// `(from_body, range)` in the order the bytes go on the wire.
    pub parts: Vec<(bool, Range<usize>)>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Gather {
    pub fn new(head: Vec<u8>, body: AlignedBuf, parts: Vec<(bool, Range<usize>)>) -> Box<Gather> {
        for (from_body, r) in &parts {
            let init = if *from_body {
                body.bytes_init()
            } else {
                head.len()
            };
            check_range(r, init, "gather");
        }
        // SAFETY: msghdr is plain data; all-zero is its empty value.
        let msg = unsafe { std::mem::zeroed::<libc::msghdr>() };
        Box::new(Gather {
            head,
            body,
            parts,
            iov: Vec::new(),
            msg,
        })
    }

    pub fn total(&self) -> usize {
        self.parts.iter().map(|(_, r)| r.len()).sum()
    }

    pub fn into_parts(self) -> (Vec<u8>, AlignedBuf) {
        (self.head, self.body)
    }
}

/// `sendmsg(MSG_NOSIGNAL)` of everything in `g` after its first `skip` bytes.
pub(crate) fn send_gather<H: FdHandle>(
    fd: H,
    mut g: Box<Gather>,
    skip: usize,
) -> Op<(H, Box<Gather>)> {
    let mut skip = skip;
    let mut iov = std::mem::take(&mut g.iov);
    iov.clear();
    for (from_body, r) in &g.parts {
        if skip >= r.len() {
            skip -= r.len();
            continue;
        }
        let base = if *from_body {
            g.body.stable_ptr()
        } else {
            g.head.as_ptr()
        };
        iov.push(libc::iovec {
            iov_base: base.wrapping_add(r.start + skip) as *mut libc::c_void,
            iov_len: r.len() - skip,
        });
        skip = 0;
        if iov.len() == IOV_MAX {
            break;
        }
    }
    g.iov = iov;
    g.msg.msg_iov = g.iov.as_mut_ptr();
    g.msg.msg_iovlen = g.iov.len() as _;
    // SAFETY: rule 1: the msghdr, the iovec array and every byte they point at (head, body)
    // are heap memory owned by the boxed Gather, which travels with the op; ranges were
    // checked in Gather::new. Rule 2: `fd` travels with the op. The kernel only reads.
    unsafe {
        Op::submit((fd, g), |_, (fd, g)| {
            opcode::SendMsg::new(types::Fd(fd.raw()), &g.msg as *const libc::msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        })
    }
}

/// Buffers written back to back by one `pwritev`: the buffers and the iovec array live in
/// this (boxed) struct, so they stay put while the kernel reads them.
pub struct WriteV {
    pub bufs: Vec<AlignedBuf>,
    iov: Vec<libc::iovec>,
}

impl WriteV {
    pub fn new(bufs: Vec<AlignedBuf>) -> Box<WriteV> {
        Box::new(WriteV {
            bufs,
            iov: Vec::new(),
        })
    }

    pub fn total(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }
}

/// `pwritev` of every buffer of `w` (each `[..len]`), in order, at `offset`. At most
/// [`IOV_MAX`] buffers and `MAX_RW_BYTES` in all (checked): callers write more in several ops.
pub(crate) fn write_vectored_at<H: FdHandle>(
    fd: H,
    mut w: Box<WriteV>,
    offset: u64,
) -> Op<(H, Box<WriteV>)> {
    assert!(
        w.bufs.len() <= IOV_MAX && w.total() <= MAX_RW_BYTES,
        "write_vectored_at: {} buffers, {} bytes: over one op's bounds",
        w.bufs.len(),
        w.total()
    );
    let mut iov = std::mem::take(&mut w.iov);
    iov.clear();
    for b in &w.bufs {
        iov.push(libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
    }
    w.iov = iov;
    let n = w.iov.len() as u32;
    // SAFETY: rule 1: the iovec array and every buffer it points at ([..len] of each) are heap
    // memory owned by the boxed WriteV, which travels with the op; the kernel only reads them.
    // Rule 2: `fd` travels with the op.
    unsafe {
        Op::submit((fd, w), |_, (fd, w)| {
            opcode::Writev::new(types::Fd(fd.raw()), w.iov.as_ptr(), n)
                .offset(offset)
                .build()
        })
    }
}

/// `accept4(SOCK_CLOEXEC)` without the peer address.
pub(crate) fn accept<H: FdHandle>(fd: H) -> Op<H> {
    // SAFETY: null address pointers name no memory (rule 1); `fd` travels with the op (rule 2).
    unsafe {
        Op::submit(fd, |_, fd| {
            opcode::Accept::new(
                types::Fd(fd.raw()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
        })
    }
}

/// `connect` to a boxed address.
pub(crate) fn connect<H: FdHandle>(fd: H, addr: Box<SockAddr>) -> Op<(H, Box<SockAddr>)> {
    // SAFETY: rule 1: the address is boxed and travels with the op; rule 2: so does `fd`.
    unsafe {
        Op::submit((fd, addr), |_, (fd, addr)| {
            let (ptr, len) = addr.as_raw();
            opcode::Connect::new(types::Fd(fd.raw()), ptr, len).build()
        })
    }
}

/// `fsync`, or `fdatasync` if `datasync`.
pub(crate) fn fsync<H: FdHandle>(fd: H, datasync: bool) -> Op<H> {
    let flags = if datasync {
        types::FsyncFlags::DATASYNC
    } else {
        types::FsyncFlags::empty()
    };
    // SAFETY: names no memory (rule 1); `fd` travels with the op (rule 2).
    unsafe {
        Op::submit(fd, |_, fd| {
            opcode::Fsync::new(types::Fd(fd.raw())).flags(flags).build()
        })
    }
}

/// `fallocate(mode, offset, len)`.
pub(crate) fn fallocate<H: FdHandle>(fd: H, mode: i32, offset: u64, len: u64) -> Op<H> {
    // SAFETY: names no memory (rule 1); `fd` travels with the op (rule 2).
    unsafe {
        Op::submit(fd, |_, fd| {
            opcode::Fallocate::new(types::Fd(fd.raw()), len)
                .offset(offset)
                .mode(mode)
                .build()
        })
    }
}

/// A relative timeout; completes with -ETIME when it expires.
pub(crate) fn timeout(ts: Box<types::Timespec>) -> Op<Box<types::Timespec>> {
    // SAFETY: rule 1: the timespec is boxed and travels with the op.
    unsafe {
        Op::submit(ts, |_, ts| {
            opcode::Timeout::new(&**ts as *const types::Timespec).build()
        })
    }
}
