//! The backend's counters, shared by every core and connection: plain atomics bumped with
//! `Relaxed` (no ordering is needed between counters; a scrape sees each one monotonic) and
//! rendered by the metrics thread. A relaxed `fetch_add` is an ordinary instruction, not a
//! syscall or a lock, so the data path pays next to nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use wire_format::frame::Class;

use crate::metrics::text::{Exposition, Kind};

/// How a chunk went on the wire.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    Raw = 0,
    Zstd = 1,
    Ref = 2,
    Zero = 3,
    Pieces = 4,
}

const FORMS: [(Form, &str); 5] = [
    (Form::Raw, "raw"),
    (Form::Zstd, "zstd"),
    (Form::Ref, "ref"),
    (Form::Zero, "zero"),
    (Form::Pieces, "pieces"),
];

#[derive(Default)]
struct PerClass {
    requests: AtomicU64,
    chunks: [AtomicU64; 5],
    /// Uncompressed bytes of the chunks sent as data, compressed or referenced.
    logical_bytes: AtomicU64,
    /// Chunk payload bytes on the wire.
    wire_bytes: AtomicU64,
}

#[derive(Default)]
pub struct BackendMetrics {
    classes: [PerClass; 2],
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Chunks answered with an error (read failure, out of range).
    pub chunk_errors: AtomicU64,
    /// Fetch requests being served now (bounded per connection).
    pub fetches_in_flight: AtomicU64,
    pub written_back_bytes: AtomicU64,
}

fn idx(c: Class) -> usize {
    match c {
        Class::OnDemand => 0,
        Class::Background => 1,
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Relaxed);
}

impl BackendMetrics {
    pub fn request(&self, class: Class) {
        add(&self.classes[idx(class)].requests, 1);
    }

    /// One chunk sent: its form, its size, and its size on the wire.
    pub fn chunk(&self, class: Class, form: Form, logical: u64, wire: u64) {
        let c = &self.classes[idx(class)];
        add(&c.chunks[form as usize], 1);
        add(&c.logical_bytes, logical);
        add(&c.wire_bytes, wire);
    }

    pub fn inc(&self, a: &AtomicU64) {
        add(a, 1);
    }

    pub fn dec(&self, a: &AtomicU64) {
        a.fetch_sub(1, Relaxed);
    }

    pub fn render(&self, volumes: &[String]) -> String {
        let mut e = Exposition::default();
        let classes = [
            ("on-demand", &self.classes[0]),
            ("background", &self.classes[1]),
        ];
        let name = "ferry_backend_fetch_requests_total";
        e.family(name, Kind::Counter, "Fetch requests received, per class.");
        for (cl, c) in classes {
            e.sample(name, &[("class", cl)], c.requests.load(Relaxed) as f64);
        }
        let name = "ferry_backend_chunks_sent_total";
        e.family(
            name,
            Kind::Counter,
            "Chunks sent, per class and wire form (raw, zstd, ref: a 32-byte digest, zero: a header only, pieces: new blocks plus blocks named by where they were sent before).",
        );
        for (cl, c) in classes {
            for (f, fname) in FORMS {
                let n = c.chunks[f as usize].load(Relaxed);
                e.sample(name, &[("class", cl), ("form", fname)], n as f64);
            }
        }
        let name = "ferry_backend_sent_bytes_total";
        e.family(
            name,
            Kind::Counter,
            "Chunk bytes sent as data, compressed or referenced (uncompressed size), per class.",
        );
        for (cl, c) in classes {
            e.sample(name, &[("class", cl)], c.logical_bytes.load(Relaxed) as f64);
        }
        let name = "ferry_backend_wire_bytes_total";
        e.family(
            name,
            Kind::Counter,
            "Chunk payload bytes on the wire, per class.",
        );
        for (cl, c) in classes {
            e.sample(name, &[("class", cl)], c.wire_bytes.load(Relaxed) as f64);
        }
        for (name, kind, help, a) in [
            (
                "ferry_backend_connections",
                Kind::Gauge,
                "Frontend connections open.",
                &self.connections_open,
            ),
            (
                "ferry_backend_connections_total",
                Kind::Counter,
                "Frontend connections accepted.",
                &self.connections_total,
            ),
            (
                "ferry_backend_connection_errors_total",
                Kind::Counter,
                "Connections that ended with an error.",
                &self.connection_errors,
            ),
            (
                "ferry_backend_chunk_errors_total",
                Kind::Counter,
                "Chunks answered with an error (read failure, out of range).",
                &self.chunk_errors,
            ),
            (
                "ferry_backend_fetches_in_flight",
                Kind::Gauge,
                "Fetch requests being served (queue depth).",
                &self.fetches_in_flight,
            ),
            (
                "ferry_backend_written_back_bytes_total",
                Kind::Counter,
                "Bytes written back to sources (abort).",
                &self.written_back_bytes,
            ),
        ] {
            e.one(name, kind, help, a.load(Relaxed) as f64);
        }
        let name = "ferry_backend_volume_info";
        e.family(name, Kind::Gauge, "Volumes served (value 1).");
        for v in volumes {
            e.sample(name, &[("volume", v)], 1.0);
        }
        e.finish()
    }
}
