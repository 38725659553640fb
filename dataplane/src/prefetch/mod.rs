//! Prefetch priority for background hydration (issue 5, points 3 and 4).
//!
//! Background hydration takes its batches from per-shard class queues ([`queue`]), highest
//! class first:
//!
//! 1. **sequence** — the chunks that follow in the recording's read sequence once live reads
//!    match a stretch of it ([`sequence`]; pushed while running);
//! 2. **recording** — chunks an access-pattern recording read, most often read first
//!    ([`plan`]);
//! 3. **fs-metadata** — the first MiB, and the ext4 superblock, descriptor table, bitmaps,
//!    inode tables and journal, located from chunk 0 of the source ([`hot`]);
//! 4. **neighbours** — the 16 chunks after an on-demand read that continues the previous
//!    read on its core (a file read goes on; random reads queue nothing);
//! 5. **in-order** — everything else, ascending (the behaviour before prefetch).
//!
//! Sequence goes before recording, against the list: the recording class holds every
//! chunk the recording read, so with it first a prediction would only ever name chunks
//! already fetched. A match is live evidence of what comes next, a few chunks at a time.
//!
//! A chunk taken from any class is fetched only if it is still `Untouched` and not being
//! fetched: classes are hints, never state.
//!
//! # Which recording (`--prefetch PATH`)
//! PATH is a recording file, or a directory whose `*.sqlite` and `*.ferryrec` files are
//! recordings ([`select`]). A file named explicitly must open (the reader's own refusals:
//! not a recording, corrupt, older or newer format) and be of this volume's size, else the
//! frontend refuses to start. From a directory the best one is taken: same size and ext4
//! UUID (newest first), else same size and also ext4 (newest), else none — files that do not
//! open are skipped with a warning, and with no match prefetch goes on with classes 3–5.
//! Without `--prefetch` there is no recording: classes 1–2 are empty; chunk 0 is still read
//! at start-up for the file-system hot areas (class 3), best effort.
//!
//! # Cores
//! Chunk c's queue entries live on core `owner(c)` only. The sequence matcher runs on the
//! core that serves the read ([`local`], called from `Volume::read_range`) and posts its
//! predictions to their owners (`CoreHandle::post`, fire and forget). The plan is shared
//! read-only (`Arc`); everything per core is `Cell`/`RefCell`.

pub mod hot;
pub mod local;
pub mod plan;
pub mod queue;
pub mod select;
pub mod sequence;

use std::path::PathBuf;

pub use local::ShardPrefetch;
pub use plan::Plan;
pub use queue::Class;

/// Chunks queued after an on-demand read of chunk c: c+1 ..= c+NEIGHBOURS.
pub const NEIGHBOURS: u64 = 16;

/// Chunks of the recorded sequence queued ahead of the live position.
pub const SEQUENCE_AHEAD: usize = 128;

/// Entries a dynamic class queue holds per shard; the oldest are dropped beyond it.
pub const DYNAMIC_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrefetchError {
    #[error("--prefetch: {0}")]
    Recording(#[from] crate::recording::RecordingError),
    #[error("--prefetch: recording {path} was made on a {recorded} byte volume; this volume has {volume} bytes")]
    WrongSize {
        path: PathBuf,
        recorded: u64,
        volume: u64,
    },
    #[error("--prefetch: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
