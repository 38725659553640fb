//! Prometheus metrics of the frontend and the backend, without an async runtime: a text
//! writer for the exposition format ([`text`]) and a plain-thread HTTP responder that
//! serves `GET /metrics` ([`http`]).
//!
//! Rules:
//! * Never on a dataplane core: the responder is its own thread and takes numbers from the
//!   cores the way the admin socket does (one message to core 0, which asks every core), or
//!   from atomics the cores bump (backend).
//! * Bounded: one connection at a time, requests of at most 8 KiB, 5 s timeouts, so a slow
//!   or hostile scraper cannot pin memory or the thread.
//! * Names follow Prometheus conventions: `ferry_` prefix, units last, `_total` on counters.

pub mod http;
pub mod text;
