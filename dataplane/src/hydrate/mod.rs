//! Background hydration: walks a shard's chunks and fetches every `Untouched` one into the
//! target, in batches (`batch_chunks` per request) with `in_flight` requests pipelined. Each
//! finished batch asks for a sync; concurrent batches share sync rounds (group commit).
//!
//! Order (issue 5): by priority class (recording, sequence, ext4 metadata, neighbours, then
//! ascending), see `crate::prefetch`. On-demand fetches use their own connection, so they
//! never queue behind these batches at the backend.
//!
//! The rate limit is a token bucket in bytes/s; a rate of 0 pauses hydration (on-demand
//! fetches still work). Cutover and abort hold hydration and wait for batches in flight.

use std::rc::Rc;
use std::time::{Duration, Instant};

use wire_format::frame::Class;
use wire_format::state::ChunkState;

pub mod cap;

use crate::frontend::shard::Shard;
use crate::runtime;

#[derive(Debug, Clone, Copy)]
pub struct HydrateConfig {
    pub batch_chunks: usize,
    pub in_flight: usize,
}

impl Default for HydrateConfig {
    fn default() -> Self {
        HydrateConfig {
            batch_chunks: 64,
            in_flight: 8,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Waits until `bytes` may be sent at `rate` bytes/s.
    async fn take(&mut self, bytes: u64, rate: u64) {
        let burst = (rate as f64 / 4.0).max(bytes as f64);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * rate as f64).min(burst);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            runtime::sleep(Duration::from_secs_f64(-self.tokens / rate as f64)).await;
        }
    }
}

pub async fn run(shard: Rc<Shard>, cfg: HydrateConfig) {
    // Under the shared-mode cap, room opens a chunk at a time and batches are small: the cap,
    // not the request count, must bound what is outstanding.
    let requests = cfg.in_flight.max(1) * 8;
    let permits = std::sync::Arc::new(async_lock::Semaphore::new(requests));
    let mut bucket = Bucket {
        tokens: 0.0,
        last: Instant::now(),
    };
    let mut batch = Vec::with_capacity(cfg.batch_chunks);
    let started = Instant::now();
    tracing::debug!(core = shard.id, "background hydration starting");
    loop {
        while shard.hydration_held.get() {
            shard.hydration_changed.wait().await;
        }
        let rate = shard.background_rate.get();
        if rate == Some(0) {
            runtime::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let permit = permits.acquire_arc().await;
        if shard.hydration_held.get() {
            continue;
        }
        // Shared connection: no more outstanding than the adaptive cap allows.
        let cap = &shard.background_cap;
        let limit = cap.grant(cfg.batch_chunks).await;
        batch.clear();
        let class = shard.prefetch.fill(&shard, &mut batch, limit);
        cap.release(limit - batch.len());
        if let Some(class) = class.filter(|&c| shard.prefetch.outranked(c)) {
            // Another core still fetches chunks the workload is likelier to want: the link is
            // theirs; this batch goes out when they are through.
            tracing::trace!(
                core = shard.id,
                class = class.name(),
                "batch held for a higher class elsewhere"
            );
            shard.prefetch.requeue(&batch);
            shard.prefetch.hold();
            cap.release(batch.len());
            batch.clear();
            drop(permit);
            runtime::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if batch.is_empty() {
            drop(permit);
            if shard.counts()[ChunkState::Untouched.code() as usize] == 0 {
                break;
            }
            // What is left is in flight or failed: come back for it after a pause.
            shard.prefetch.restart();
            runtime::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if let Some(rate) = rate {
            // The configured rate is for the whole volume; every core hydrates its share.
            let rate = (rate / shard.geo.cores as u64).max(1);
            let bytes = batch.len() as u64 * u64::from(shard.geo.chunk_size_bytes);
            bucket.take(bytes, rate).await;
            // Paused (or held) while this batch waited for its tokens: it must not go out
            // (a pause stops background traffic on the wire, not one batch later).
            if shard.background_rate.get() == Some(0) || shard.hydration_held.get() {
                shard.prefetch.requeue(&batch);
                cap.release(batch.len());
                continue;
            }
        }
        let s = shard.clone();
        // The batch's data is on the target when `done` runs; making it durable is group
        // commit's job and must not hold the next batch back.
        let done: Box<dyn FnOnce()> = Box::new(move || {
            drop(permit);
            runtime::spawn(async move {
                if let Err(e) = s.sync().await {
                    tracing::error!(error = %e, "sync after a background batch failed");
                }
            })
            .detach();
        });
        let n = shard.start_fetch(&batch, Class::Background, Some(done));
        // The fetch gives back each chunk it asks for as its answer comes; these it skipped.
        cap.release(batch.len() - n);
        tracing::trace!(core = shard.id, first = batch[0], n, "background batch");
    }
    // Make the last batches durable before reporting completion.
    let mut held = Vec::with_capacity(requests);
    for _ in 0..requests {
        held.push(permits.acquire_arc().await);
    }
    if let Err(e) = shard.sync().await {
        tracing::error!(error = %e, "final sync of hydration failed");
    }
    // The window's buffers are not needed any more: a migrated volume's frontend stays small.
    shard.bufs.keep_at_most(crate::frontend::CHUNK_BUFS_RESERVE);
    crate::sys::release_free_memory();
    let (writes, written_chunks) = shard.coalescer.counts();
    tracing::info!(
        core = shard.id,
        secs = started.elapsed().as_secs_f64(),
        writes,
        written_chunks,
        "background hydration of this shard finished"
    );
}
