//! Access-pattern recording (issue 5, point 2): every request a frontend's NBD export serves,
//! in the order it was admitted, into a portable SQLite file tied to the volume's identity
//! (size, ext2/3/4 UUID). A later migration of the same (or a similar) volume can prefetch
//! what the workload read.
//!
//! # Rules
//! * **Never SQLite on a core.** Cores hand a small fixed-size event to a [`writer`] thread
//!   through a `std::sync::mpsc` channel (a send never blocks); the thread writes batches in
//!   transactions.
//! * **Bounded.** When the writer falls behind by [`writer::QUEUED_MAX`] events, new events
//!   are dropped and counted (logged by the writer, stored in `meta` as `events_dropped`): a
//!   recording is a hint for prefetch, never worth slowing the workload.
//! * **Refuse, never guess.** The [`reader`] refuses anything that is not SQLite, not a ferry
//!   recording, of a format version it does not read, or inconsistent, with a typed
//!   [`RecordingError`]. The schema and the stable codes are in [`format`].

pub mod format;
pub mod reader;
pub mod writer;

use std::path::PathBuf;

pub use format::{EventKind, Identity, FORMAT_NAME, FORMAT_VERSION};
pub use reader::Recording;
pub use writer::{RecordSink, Recorder};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    #[error("recording {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a ferry recording: it is not an SQLite database")]
    NotSqlite { path: PathBuf },
    #[error("{path} is not a ferry recording: {why}")]
    NotRecording { path: PathBuf, why: String },
    #[error("recording {path}: recording format {found} is older than this ferry reads ({FORMAT_VERSION}); record again")]
    TooOld { path: PathBuf, found: i64 },
    #[error("recording {path}: recording format {found} is newer than this ferry reads ({FORMAT_VERSION}); use a newer ferry")]
    TooNew { path: PathBuf, found: i64 },
    #[error("recording {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("recording {path} already exists; choose another file or move it away")]
    Exists { path: PathBuf },
    #[error("recording {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

#[cfg(test)]
mod tests;
