//! Ferry's dataplane: an io_uring, thread-per-core engine that exports a volume over NBD while
//! migrating it from a backend into pre-allocated target storage.
//!
//! * [`runtime`] — our own io_uring runtime (one ring per core, owned in-flight ops, aligned
//!   buffer pools, cross-core messages).
//! * [`backend`] — owns source volumes, answers fetches, applies write-back.
//! * [`frontend`] — session set-up, per-core shards (the chunk state machine), cutover/abort,
//!   the admin socket.
//! * [`nbd`] — the NBD server on top of the frontend.
//! * [`hydrate`] — background migration of untouched chunks.
//! * [`prefetch`] — the order hydration takes them in (recording, sequence, ext4 metadata).
//! * [`map`] — the 2-bit volume map and its crash-safe file.
//! * [`link`] — the frontend↔backend connection (wire-format frames).
//! * [`geometry`] — chunks, pieces and which core owns what.

mod accept;
pub mod backend;
pub mod bufs;
pub mod dedup;
pub mod frontend;
pub mod fsaware;
pub mod geometry;
pub mod hydrate;
pub mod link;
pub mod map;
pub mod metrics;
pub mod nbd;
pub mod notify;
pub mod prefetch;
pub mod recording;
pub mod runtime;
mod sys;
