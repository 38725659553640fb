//! The per-core gate in front of NBD request processing: cutover and abort close it (new
//! requests wait) and wait until the requests already inside have finished (drain).

use std::cell::Cell;
use std::rc::Rc;

use crate::notify::Notify;

#[derive(Default)]
pub struct Gate {
    closed: Cell<bool>,
    shut_down: Cell<bool>,
    inside: Cell<usize>,
    changed: Notify,
}

pub struct Pass {
    gate: Rc<Gate>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.inside.set(self.gate.inside.get() - 1);
        self.gate.changed.notify_all();
    }
}

impl Gate {
    /// Waits while the gate is closed; `None` once the export has shut down for good.
    pub async fn enter(self: &Rc<Self>) -> Option<Pass> {
        while self.closed.get() && !self.shut_down.get() {
            self.changed.wait().await;
        }
        if self.shut_down.get() {
            return None;
        }
        self.inside.set(self.inside.get() + 1);
        Some(Pass { gate: self.clone() })
    }

    /// Closes the gate and waits until every request inside has finished.
    pub async fn close_and_drain(&self) {
        self.closed.set(true);
        while self.inside.get() > 0 {
            self.changed.wait().await;
        }
    }

    pub fn open(&self) {
        self.closed.set(false);
        self.changed.notify_all();
    }

    pub fn shut_down(&self) {
        self.shut_down.set(true);
        self.changed.notify_all();
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down.get()
    }
}
