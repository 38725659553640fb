//! A single-core broadcast notification: `wait()` resolves after the next `notify_all()`.
//! Cheaper than a channel per waiter; never crosses threads (cores talk by message).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once `notify_all` is called after this call.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            seen: self.generation.get(),
        }
    }
}

pub struct Wait<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
