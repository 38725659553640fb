//! Ferry's thread-per-core io_uring runtime.
//!
//! # Shape
//! One OS thread per core (`ferry-core-N`), each with its own ring, single-threaded executor and
//! buffer pool. Tasks are `!Send` and stay on the core that spawned them; work crosses cores by
//! message ([`CoreHandle::post`], [`CoreHandle::call`]) through a lock-free per-core queue plus an
//! eventfd read that is always armed on the target ring, so a remote wake interrupts its wait.
//! [`block_on`] runs the same machinery as a one-core runtime on the calling thread.
//!
//! # Rules this module guarantees (see `/work/shared/RUNTIME.md`)
//! * **Kernel-held memory (rules 1, 2).** An operation, not its future, owns the buffer and the
//!   fd it names. The in-flight slab (`op.rs`, the only module with `unsafe` besides the buffer
//!   allocator and the setup-time syscall wrappers in `sys.rs`) is indexed by `user_data`; a
//!   future dropped before its completion hands its buffer and fd holder to the slot, asks the
//!   kernel to cancel, and the slot frees them when the CQE arrives. When a ring is torn down,
//!   everything in flight is cancelled and drained; whatever does not complete in time is leaked
//!   on purpose, never freed. File descriptors are closed only when the last op on them is done.
//! * **Bounded submission (rule 3).** An SQE is pushed only when there is room (else submit and
//!   retry); the CQ is twice the SQ and `IORING_FEAT_NODROP` is required.
//! * **Partial results (rule 4).** Every read/write/send/recv may be short: the `*_exact`/`*_all`
//!   helpers loop, a zero-length recv means the peer closed. Negative CQE results become
//!   `io::Error::from_raw_os_error` in exactly one place (`op::cqe_result`).
//! * **O_DIRECT (rule 5).** Alignment is queried at open (`statx` `STATX_DIOALIGN`, `BLKSSZGET`),
//!   and a misaligned request on a direct file is a bug: `debug_assert!` in debug builds and an
//!   `InvalidInput` error without submission otherwise. A file system that refuses O_DIRECT gets
//!   an error naming the flag and the path, never silent buffered IO.
//! * **One ring per core (rules 6, 7).** Rings are built on their own thread with
//!   `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN | TASKRUN_FLAG`, falling back (logged once) to a
//!   plain ring. Cross-core traffic uses queues and an eventfd, no mutex on the data path.
//! * **Timeouts through the ring (rule 8)**: [`sleep`] is `IORING_OP_TIMEOUT`; [`timeout`] races
//!   a future against it.
//! * **Probe and memlock (rule 9)**: [`probe`] says whether io_uring is disabled by sysctl or
//!   blocked by seccomp. Pool buffers are registered with the ring only as far as RLIMIT_MEMLOCK
//!   allows ("registered N of M buffers", logged once); file IO uses `READ_FIXED`/`WRITE_FIXED`
//!   for registered buffers automatically.
//!
//! # Why raw `io-uring`
//! We measured the alternatives on this machine. glommio 0.9 (no release since 2024) sends IO on
//! a freshly created or pre-allocated file down its polled path, where reads then fail with
//! `EOPNOTSUPP` (its upstream issues #605 and #670); tokio-uring 0.5 is dormant and has neither a
//! per-core model nor aligned-buffer support. A thin runtime on the `io-uring` crate came within
//! noise of fio, so we own the few hundred lines that a runtime normally hides — and the rules
//! above that come with them.
//!
//! # Cancellation and shutdown
//! Dropping an IO future cancels the operation (best effort: a recv that already copied data
//! before the cancel consumed it, so do not reuse a stream after dropping a recv mid-frame).
//! [`CoreHandle::shutdown`] makes every core loop exit soon; pending tasks are dropped on their
//! own thread, their ops orphaned and drained as above.

mod buf;
mod cores;
mod executor;
mod fs;
mod net;
mod op;
mod probe;
mod sys;
mod time;

pub use buf::{AlignedBuf, BufPool, IoBuf, IoBufMut};
pub use cores::{CoreHandle, CoreSet};
/// A one-core, unpinned runtime with a few 64 KiB buffers, for tests outside the runtime.
#[cfg(test)]
pub(crate) use executor::tests::small_cfg;
pub use executor::{block_on, buf_pool, core_handle, current_core, spawn, yield_now};
pub use fs::{DioAlign, File, OpenOptions};
pub use net::{ConnectOpts, Listener, Stream};
pub use op::Gather;
pub use probe::probe;
/// The DSCP a TCP client's handshake carried (for tools that relay or mirror it, e.g. the
/// WAN emulator).
pub use sys::{received_tos, set_recv_tos};
pub use time::{sleep, timeout, Elapsed};

/// The task handle returned by [`spawn`]; `.detach()` it to fire and forget, drop it to cancel.
pub use async_task::Task;

/// How many cores to run and how each core's ring and buffer pool are sized.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Number of core threads (ignored by [`block_on`], which is always one core).
    pub cores: usize,
    /// Pin core N to the N-th allowed CPU (modulo their count); failure is a warning.
    pub pin: bool,
    /// Submission queue entries per ring (the kernel rounds up to a power of two; CQ = 2×).
    pub ring_entries: u32,
    /// Size of each pooled buffer, in bytes.
    pub buf_size: usize,
    /// Buffers per core pool; `BufPool::take` waits when all are out.
    pub bufs_per_core: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            pin: true,
            ring_entries: 1024,
            buf_size: 1 << 20,
            bufs_per_core: 64,
        }
    }
}

impl RuntimeConfig {
    fn validate(&self) -> Result<(), RuntimeError> {
        if self.ring_entries == 0 || self.ring_entries > 32768 {
            return Err(RuntimeError::Config(format!(
                "ring_entries must be in 1..=32768, got {}",
                self.ring_entries
            )));
        }
        if self.buf_size == 0 || self.bufs_per_core == 0 {
            return Err(RuntimeError::Config(format!(
                "buf_size and bufs_per_core must be > 0, got {} and {}",
                self.buf_size, self.bufs_per_core
            )));
        }
        Ok(())
    }
}

/// Why the runtime could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// io_uring cannot be used here at all; `reason` says why and how to allow it.
    #[error("io_uring is unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel's io_uring lacks something we rely on.
    #[error("io_uring lacks {0} (kernel too old?)")]
    MissingFeature(String),
    /// Setting up a ring, an eventfd or a thread failed.
    #[error("{what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid runtime config: {0}")]
    Config(String),
    /// A core thread panicked (the set was shut down).
    #[error("core {core} panicked")]
    CorePanicked { core: usize },
    /// A core's ring failed while running.
    #[error("core {core}: io_uring failed: {source}")]
    Ring {
        core: usize,
        #[source]
        source: std::io::Error,
    },
}
