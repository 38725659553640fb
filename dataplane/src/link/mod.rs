//! Links between frontend and backend over the Ferry wire protocol (`wire_format::frame`).
//!
//! * [`reader`]: turns a byte stream into checked frames (crc32c verified before anything is
//!   used; a bad frame ends the link — its data is never stored).
//! * [`client`]: the frontend's side of one connection: requests with ids, replies routed back
//!   to the task that asked.
//! * [`blocking`]: a small std-IO client used once at start-up to learn the volume's geometry.

pub mod blocking;
pub mod client;
pub mod reader;
pub(crate) mod unzstd;

use wire_format::frame::{ErrorCode, WireError};

/// Every capability this build speaks (zstd chunks, content references, digests sent with
/// data); a frontend offers the ones its configuration enables, the backend accepts the common
/// subset.
pub const CAPABILITIES: u64 = wire_format::frame::CAP_ZSTD
    | wire_format::frame::CAP_REFS
    | wire_format::frame::CAP_DIGESTS
    | wire_format::frame::CAP_LAZY_INDEX
    | wire_format::frame::CAP_BLOCK_REFS
    | wire_format::frame::CAP_ZSTD_STREAM
    | wire_format::frame::CAP_PING;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("backend link: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend link: corrupt or invalid frame: {0}")]
    Wire(#[from] WireError),
    #[error("backend link closed by the peer")]
    Closed,
    #[error("backend link: protocol violation: {0}")]
    Protocol(String),
    #[error("backend refused: {code:?}: {message}")]
    Remote { code: ErrorCode, message: String },
}

/// The error for a frame that is not the `what` we waited for: the backend's own refusal when
/// it sent an Error frame, a protocol violation otherwise.
pub(crate) fn refusal(what: &str, f: &wire_format::frame::Frame<'_>) -> LinkError {
    match f {
        wire_format::frame::Frame::Error { code, message } => LinkError::Remote {
            code: *code,
            message: message.to_string(),
        },
        other => LinkError::Protocol(format!("expected {what}, got {:?}", other.kind())),
    }
}
