//! Timers through the ring (rule 8): a dead peer or a stuck device cannot hang a core as long as
//! the wait is wrapped in [`timeout`].

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use io_uring::types::Timespec;

use super::op;

/// `timeout` gave up: the deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

impl From<Elapsed> for std::io::Error {
    fn from(_: Elapsed) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, Elapsed)
    }
}

/// Sleeps for `d` (an `IORING_OP_TIMEOUT`). Dropping it cancels the timer.
pub async fn sleep(d: Duration) {
    let (res, _ts) = op::timeout(Box::new(Timespec::from(d))).await;
    match res {
        Ok(_) => {}
        // -ETIME is the normal expiry; -ECANCELED only at teardown.
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => tracing::debug!(error = %e, "sleep ended early"),
    }
}

/// Runs `f` for at most `d`. On expiry `f` is dropped (cancelling any op it has in flight).
pub async fn timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, Elapsed> {
    let mut f = pin!(f);
    let mut timer = pin!(sleep(d));
    poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::executor::in_flight_ops;
    use super::super::{block_on, spawn, RuntimeConfig};
    use super::*;
    use std::time::Instant;

    fn cfg() -> RuntimeConfig {
        RuntimeConfig {
            cores: 1,
            pin: false,
            ring_entries: 32,
            buf_size: 4096,
            bufs_per_core: 1,
        }
    }

    #[test]
    fn sleep_sleeps() {
        block_on(cfg(), async {
            let t0 = Instant::now();
            sleep(Duration::from_millis(30)).await;
            assert!(t0.elapsed() >= Duration::from_millis(29));
            sleep(Duration::ZERO).await;
        });
    }

    #[test]
    fn timeout_elapses_and_passes() {
        block_on(cfg(), async {
            let r = timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            let r = timeout(Duration::from_secs(30), async { 5 }).await;
            assert_eq!(r, Ok(5));
            // The 30 s timer was cancelled when timeout() returned; its slot frees once the
            // cancellation completes.
            for _ in 0..100 {
                if in_flight_ops() == 0 {
                    break;
                }
                sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(in_flight_ops(), 0);
        });
    }

    #[test]
    fn many_timers_interleave() {
        block_on(cfg(), async {
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..200u64)
                .map(|i| spawn(async move { sleep(Duration::from_millis(i % 20)).await }))
                .collect();
            for t in tasks {
                t.await;
            }
            assert!(t0.elapsed() < Duration::from_secs(2));
        });
    }
}
