//! Whole-volume operations, run on core 0 and fanned out to every core by message: status,
//! cutover and abort (DESIGN.md data path rule 5).

use std::rc::Rc;

use super::shard::FetchLatency;
use super::status::{FetchLatencies, LatencySummary, ShardNumbers, Status};
use super::volume::{local_gate, Volume};

pub fn numbers(shard: &super::shard::Shard) -> ShardNumbers {
    let s = &shard.stats;
    ShardNumbers {
        counts: shard.counts(),
        fetched_chunks_on_demand: s.fetched_chunks_on_demand.get(),
        fetched_chunks_background: s.fetched_chunks_background.get(),
        fetched_bytes_on_demand: s.fetched_bytes_on_demand.get(),
        fetched_bytes_background: s.fetched_bytes_background.get(),
        fetch_failures: s.fetch_failures.get(),
        wire_bytes: shard.link_counters.wire_bytes.get(),
        zstd_chunks: shard.link_counters.zstd_chunks.get(),
        zstd_raw_bytes: shard.link_counters.zstd_raw_bytes.get(),
        deduped_chunks: s.deduped_chunks.get(),
        deduped_bytes: s.deduped_bytes.get(),
        ref_misses: s.ref_misses.get(),
        deduped_blocks: s.deduped_blocks.get(),
        block_ref_misses: s.block_ref_misses.get(),
        zstd_wire_bytes: shard.link_counters.zstd_wire_bytes.get(),
        zero_replies: s.zero_replies.get(),
        fetch_retries: s.fetch_retries.get(),
        fetches_in_flight: shard.fetches_in_flight.get() as u64,
        unsynced_chunks: shard.unsynced(),
        qos_shared: shard.qos_shared,
        backfill: shard.dedup.as_ref().and_then(|d| d.backfill_numbers()),
        cap: {
            let c = &shard.background_cap;
            let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            Some((
                c.window() as u64,
                c.outstanding() as u64,
                c.base_rtt().map_or(0, us),
                us(c.queue_delay()),
                c.handshake_rtt().map_or(0, us),
            ))
        },
    }
}

pub async fn status(vol: &Rc<Volume>) -> Status {
    let mut st = Status {
        running: true,
        volume: vol.name.clone(),
        volume_size_bytes: vol.geo.volume_size_bytes,
        chunk_size_bytes: vol.geo.chunk_size_bytes,
        chunks_total: vol.geo.chunk_count,
        ..Status::default()
    };
    // The histograms are copied (a few KiB each) once per status, off the fetch path.
    let all = vol
        .on_all(|s| async move {
            let latency = s.latency.borrow();
            let copy = FetchLatency {
                on_demand: latency.on_demand.clone(),
                background: latency.background.clone(),
            };
            (
                numbers(&s),
                s.background_rate.get(),
                copy,
                s.prefetch.numbers(),
            )
        })
        .await;
    let mut latency = FetchLatency::default();
    for (n, rate, l, _) in &all {
        st.add(n);
        st.background_rate_bytes_per_s = *rate;
        latency.merge(l);
    }
    let prefetch: Vec<_> = all.into_iter().map(|(.., p)| p).collect();
    st.prefetch_class = crate::prefetch::local::class_name(&prefetch, st.chunks_untouched);
    for p in &prefetch {
        st.prefetch_reads += p.reads;
        st.prefetch_hits += p.hits;
        st.prefetch_late += p.late;
        st.prefetch_recording = st.prefetch_recording.take().or(p.recording.clone());
        for (class, n) in crate::prefetch::Class::ALL.iter().zip(p.batches) {
            *st.prefetch_batches.entry(class.name().into()).or_default() += n;
        }
    }
    st.fetch_latency_us = Some(FetchLatencies {
        on_demand: LatencySummary::of(&latency.on_demand),
        background: LatencySummary::of(&latency.background),
    });
    st.state = if st.chunks_untouched == 0 {
        "ready"
    } else {
        "migrating"
    }
    .into();
    st
}

/// The live map in `cells` cells (clamped, see `map::cells`), from every core.
pub async fn map(vol: &Rc<Volume>, cells: u32) -> crate::map::cells::MapCells {
    let n = crate::map::cells::clamp(cells, vol.geo.chunk_count);
    let geo = vol.geo;
    let parts = vol
        .on_all(move |s| async move {
            let mut out = crate::map::cells::MapCells::new(&geo, n);
            s.map_cells(&mut out).await;
            out
        })
        .await;
    let mut out = crate::map::cells::MapCells::new(&vol.geo, n);
    for p in &parts {
        out.merge(p);
    }
    out
}

/// Stops the workload's IO and background traffic: gates closed and drained, hydration held,
/// fetches in flight finished.
async fn quiesce(vol: &Rc<Volume>) {
    vol.on_all(|s| async move {
        local_gate().close_and_drain().await;
        s.hydration_held.set(true);
        s.fetches_idle().await;
    })
    .await;
}

pub async fn resume(vol: &Rc<Volume>) {
    vol.on_all(|s| async move {
        local_gate().open();
        s.hydration_held.set(false);
        s.hydration_changed.notify_all();
    })
    .await;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CutoverError {
    #[error("cutover refused: {0} chunks still untouched")]
    Untouched(u64),
    #[error("cutover failed: {0}")]
    Failed(String),
}

/// Quiesces, checks that nothing is `Untouched`, and makes target and map durable. On success
/// the export stays closed (the caller records the phase and stops the process).
pub async fn cutover(vol: &Rc<Volume>) -> Result<Status, CutoverError> {
    quiesce(vol).await;
    let st = status(vol).await;
    if st.chunks_untouched > 0 {
        resume(vol).await;
        return Err(CutoverError::Untouched(st.chunks_untouched));
    }
    if let Err(e) = vol.flush().await {
        resume(vol).await;
        return Err(CutoverError::Failed(e.to_string()));
    }
    Ok(st)
}

/// Quiesces and writes every change back to the source. On failure the export is reopened so
/// the workload keeps running on the target; nothing is lost.
pub async fn abort(vol: &Rc<Volume>) -> Result<u64, String> {
    quiesce(vol).await;
    if let Err(e) = vol.flush().await {
        resume(vol).await;
        return Err(e.to_string());
    }
    let results = vol
        .on_all(|s| async move { s.write_back_all().await })
        .await;
    let mut total = 0;
    for r in results {
        match r {
            Ok(n) => total += n,
            Err(e) => {
                resume(vol).await;
                return Err(format!("abort failed, the export is serving again: {e}"));
            }
        }
    }
    Ok(total)
}

/// Closes every core's export for good and stops its links.
pub async fn shut_down(vol: &Rc<Volume>) {
    vol.on_all(|s| async move {
        local_gate().shut_down();
        s.on_demand.close();
        s.background.close();
    })
    .await;
}
