//! Group commit: making target data and then the map durable.
//!
//! Every completed change pushes `(chunk, state it now has)`. A sync round takes everything
//! pushed so far, `fdatasync`s the target, then moves those chunks' durable state and writes
//! the changed map stripes (`fdatasync` again). Only then are the callers of that round
//! answered — data before metadata, and an acknowledged FLUSH/FUA survives `kill -9` and power
//! loss. Concurrent callers share rounds: one round runs at a time, and a caller is served by
//! the first round that *started* after it asked.

use std::cell::{Cell, RefCell};

use wire_format::state::ChunkState;

use super::error::VolError;
use super::shard::Shard;
use crate::map::file;
use crate::notify::Notify;

#[derive(Default)]
pub struct SyncState {
    pending: RefCell<Vec<(u64, ChunkState)>>,
    requested: Cell<u64>,
    done_upto: Cell<u64>,
    running: Cell<bool>,
    failed: RefCell<Option<(u64, String)>>,
    changed: Notify,
}

impl SyncState {
    pub fn push(&self, chunk: u64, state: ChunkState) {
        self.pending.borrow_mut().push((chunk, state));
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }
}

impl Shard {
    /// Makes every change completed before this call durable, with the map that describes it.
    pub async fn sync(&self) -> Result<(), VolError> {
        let s = &self.sync;
        let ticket = s.requested.get() + 1;
        s.requested.set(ticket);
        loop {
            if s.done_upto.get() >= ticket {
                return Ok(());
            }
            if let Some((upto, reason)) = s.failed.borrow().as_ref() {
                if *upto >= ticket {
                    return Err(VolError::Target {
                        op: "sync",
                        offset: 0,
                        errno: libc::EIO,
                        message: reason.clone(),
                    });
                }
            }
            if s.running.get() {
                s.changed.wait().await;
                continue;
            }
            s.running.set(true);
            let covers = s.requested.get();
            let batch = std::mem::take(&mut *s.pending.borrow_mut());
            let result = self.sync_round(&batch).await;
            if result.is_err() {
                // Nothing of this batch is known durable: keep it for the next round.
                s.pending.borrow_mut().splice(0..0, batch);
            }
            s.running.set(false);
            match result {
                Ok(()) => s.done_upto.set(covers),
                Err(reason) => {
                    tracing::error!(%reason, "sync failed");
                    *s.failed.borrow_mut() = Some((covers, reason));
                }
            }
            s.changed.notify_all();
        }
    }

    async fn sync_round(&self, batch: &[(u64, ChunkState)]) -> Result<(), String> {
        self.target
            .fdatasync()
            .await
            .map_err(|e| format!("fdatasync of the target: {e}"))?;
        if batch.is_empty() {
            return Ok(());
        }
        let stripes = {
            let mut map = self.map.borrow_mut();
            for &(chunk, state) in batch {
                map.promote_to(chunk, state);
            }
            map.take_dirty_stripes()
        };
        if let Err(e) = file::persist(&self.map_file, &stripes).await {
            self.map
                .borrow_mut()
                .restore_dirty_stripes(stripes.iter().map(|(s, _)| *s));
            return Err(format!("writing the map: {e}"));
        }
        Ok(())
    }
}
