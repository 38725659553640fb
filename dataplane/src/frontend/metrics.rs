//! The frontend's Prometheus metrics, rendered from one live [`Status`] (the metrics thread
//! asks the cores exactly as the admin socket does; see `metrics`).

use super::status::{LatencySummary, Status};
use crate::metrics::text::{Exposition, Kind};

pub fn render(st: &Status) -> String {
    let mut e = Exposition::default();
    let vol = st.volume.as_str();
    let l = |extra: &'static str, v: &'static str| [("volume", vol), (extra, v)];
    e.family(
        "ferry_frontend_chunks",
        Kind::Gauge,
        "Chunks of the volume per state (untouched: still only on the source).",
    );
    for (state, n) in [
        ("untouched", st.chunks_untouched),
        ("present", st.chunks_present),
        ("dirty", st.chunks_dirty),
        ("zero", st.chunks_zero),
    ] {
        e.sample("ferry_frontend_chunks", &l("state", state), n as f64);
    }
    e.family(
        "ferry_frontend_fetched_chunks_total",
        Kind::Counter,
        "Chunks fetched from the backend and stored, per class.",
    )
    .sample(
        "ferry_frontend_fetched_chunks_total",
        &l("class", "on-demand"),
        st.fetched_chunks_on_demand as f64,
    )
    .sample(
        "ferry_frontend_fetched_chunks_total",
        &l("class", "background"),
        st.fetched_chunks_background as f64,
    );
    e.family(
        "ferry_frontend_fetched_bytes_total",
        Kind::Counter,
        "Chunk bytes fetched and stored (uncompressed), per class.",
    )
    .sample(
        "ferry_frontend_fetched_bytes_total",
        &l("class", "on-demand"),
        st.fetched_bytes_on_demand as f64,
    )
    .sample(
        "ferry_frontend_fetched_bytes_total",
        &l("class", "background"),
        st.fetched_bytes_background as f64,
    );
    let v = [("volume", vol)];
    let counters: [(&str, &str, u64); 12] = [
        (
            "ferry_frontend_wire_bytes_total",
            "Chunk payload bytes received (compressed size, 32 per reference).",
            st.wire_bytes,
        ),
        (
            "ferry_frontend_zstd_chunks_total",
            "Chunks received zstd-compressed.",
            st.zstd_chunks,
        ),
        (
            "ferry_frontend_zstd_raw_bytes_total",
            "Uncompressed size of the zstd chunks.",
            st.zstd_raw_bytes,
        ),
        (
            "ferry_frontend_zstd_wire_bytes_total",
            "Compressed size of the zstd chunks.",
            st.zstd_wire_bytes,
        ),
        (
            "ferry_frontend_deduped_chunks_total",
            "Chunks filled from content this machine held (dedup).",
            st.deduped_chunks,
        ),
        (
            "ferry_frontend_deduped_bytes_total",
            "Bytes filled from content this machine held (dedup).",
            st.deduped_bytes,
        ),
        (
            "ferry_frontend_ref_misses_total",
            "References whose content was gone or changed, fetched as data.",
            st.ref_misses,
        ),
        (
            "ferry_frontend_deduped_blocks_total",
            "4 KiB blocks copied from the target because the backend named where it sent them before.",
            st.deduped_blocks,
        ),
        (
            "ferry_frontend_block_ref_misses_total",
            "Chunks whose named blocks could not be used, fetched as data.",
            st.block_ref_misses,
        ),
        (
            "ferry_frontend_zero_replies_total",
            "Chunks the backend answered as zero (nothing sent).",
            st.zero_replies,
        ),
        (
            "ferry_frontend_fetch_retries_total",
            "Fetch attempts after the first.",
            st.fetch_retries,
        ),
        (
            "ferry_frontend_fetch_failures_total",
            "Chunks whose fetch failed for good (readers got EIO).",
            st.fetch_failures,
        ),
    ];
    for (name, help, n) in counters {
        e.family(name, Kind::Counter, help)
            .sample(name, &v, n as f64);
    }
    let gauges: [(&str, &str, u64); 8] = [
        (
            "ferry_frontend_dedup_unindexed_chunks",
            "Chunks that arrived unhashed and wait for the dedup indexer (runs after hydration).",
            st.dedup_unindexed_chunks,
        ),
        (
            "ferry_frontend_background_window_chunks",
            "Background chunks allowed outstanding (the delay-based window, all cores).",
            st.background_window_chunks,
        ),
        (
            "ferry_frontend_queue_delay_microseconds",
            "Queueing delay the background window steers by (first reply minus base RTT).",
            st.queue_delay_us,
        ),
        (
            "ferry_frontend_fetches_in_flight",
            "Chunks with a fetch in flight (queue depth toward the backend).",
            st.fetches_in_flight,
        ),
        (
            "ferry_frontend_unsynced_bytes",
            "Bytes written or filled but not yet durable (lag behind fdatasync).",
            st.unsynced_bytes,
        ),
        (
            "ferry_frontend_volume_size_bytes",
            "Size of the volume.",
            st.volume_size_bytes,
        ),
        (
            "ferry_frontend_chunk_size_bytes",
            "Chunk size.",
            u64::from(st.chunk_size_bytes),
        ),
        (
            "ferry_frontend_uptime_seconds",
            "Seconds since the frontend started.",
            st.uptime_ms / 1000,
        ),
    ];
    for (name, help, n) in gauges {
        e.family(name, Kind::Gauge, help).sample(name, &v, n as f64);
    }
    e.one(
        "ferry_frontend_background_rate_bytes_per_second",
        Kind::Gauge,
        "Background rate limit; -1 unlimited, 0 paused.",
        st.background_rate_bytes_per_s.map_or(-1.0, |r| r as f64),
    );
    prefetch(&mut e, st);
    let lat = st.fetch_latency_us.clone().unwrap_or_default();
    let name = "ferry_frontend_fetch_latency_seconds";
    e.family(
        name,
        Kind::Summary,
        "Latency of fetch requests (asked until every chunk is stored), from an hdrhistogram.",
    );
    for (class, s) in [
        ("on-demand", &lat.on_demand),
        ("background", &lat.background),
    ] {
        summary(&mut e, name, vol, class, s);
    }
    e.finish()
}

fn prefetch(e: &mut Exposition, st: &Status) {
    let vol = st.volume.as_str();
    let v = [("volume", vol)];
    for (name, help, n) in [
        (
            "ferry_frontend_prefetch_reads_total",
            "Reads served during migration (pieces within one stripe).",
            st.prefetch_reads,
        ),
        (
            "ferry_frontend_prefetch_hits_total",
            "Reads served during migration whose chunks were all on the target already.",
            st.prefetch_hits,
        ),
        (
            "ferry_frontend_prefetch_late_total",
            "Reads that missed while a background batch was already carrying their chunks.",
            st.prefetch_late,
        ),
    ] {
        e.family(name, Kind::Counter, help)
            .sample(name, &v, n as f64);
    }
    let classes = crate::prefetch::Class::ALL.map(|c| c.name());
    let name = "ferry_frontend_prefetch_class";
    e.family(
        name,
        Kind::Gauge,
        "1 for the priority class background migration takes chunks from now.",
    );
    for class in classes.iter().copied().chain(["starting", "done"]) {
        let now = f64::from(u8::from(st.prefetch_class == class));
        e.sample(name, &[("volume", vol), ("class", class)], now);
    }
    let name = "ferry_frontend_prefetch_batches_total";
    e.family(
        name,
        Kind::Counter,
        "Background batches per priority class.",
    );
    for class in classes {
        let n = st.prefetch_batches.get(class).copied().unwrap_or(0);
        e.sample(name, &[("volume", vol), ("class", class)], n as f64);
    }
}

fn summary(e: &mut Exposition, name: &str, vol: &str, class: &str, s: &LatencySummary) {
    for (q, v) in [
        ("0.5", s.p50),
        ("0.9", s.p90),
        ("0.99", s.p99),
        ("0.999", s.p999),
        ("1", s.max),
    ] {
        e.sample(
            name,
            &[("volume", vol), ("class", class), ("quantile", q)],
            v as f64 / 1e6,
        );
    }
    let labels = [("volume", vol), ("class", class)];
    e.sample(
        &format!("{name}_sum"),
        &labels,
        s.mean * s.count as f64 / 1e6,
    );
    e.sample(&format!("{name}_count"), &labels, s.count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type() {
        let st = Status {
            volume: "db".into(),
            chunks_untouched: 3,
            ..Status::default()
        };
        let t = render(&st);
        assert!(t.contains("ferry_frontend_chunks{volume=\"db\",state=\"untouched\"} 3\n"));
        assert!(t.contains("# TYPE ferry_frontend_fetch_latency_seconds summary\n"));
        assert!(t.contains("ferry_frontend_prefetch_class{volume=\"db\",class=\"in-order\"} 0\n"));
        let st = Status {
            prefetch_class: "recording".into(),
            prefetch_hits: 2,
            ..st
        };
        let t2 = render(&st);
        assert!(t2.contains("ferry_frontend_prefetch_class{volume=\"db\",class=\"recording\"} 1\n"));
        assert!(t2.contains("ferry_frontend_prefetch_hits_total{volume=\"db\"} 2\n"));
        let families = t.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(
            families,
            t.lines().filter(|l| l.starts_with("# HELP")).count()
        );
    }
}
