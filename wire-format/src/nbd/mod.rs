//! NBD protocol codec: fixed newstyle handshake and simple replies, server and client side.
//!
//! Follows `doc/proto.md` of NetworkBlockDevice/nbd ("the spec" below; section names are
//! quoted where a rule comes from it). Only the fixed newstyle handshake is supported;
//! oldstyle and non-fixed newstyle are refused. Structured and extended replies are not
//! encoded here (yet), but their option/flag constants are, so a server can refuse them
//! by name.
//!
//! * [`consts`]: every magic, flag, option, reply, info and command number of the spec.
//! * [`handshake`]: greeting, client flags, options, option replies and `NBD_INFO_*`.
//! * [`transmission`]: requests, simple replies and the errno mapping.
//!
//! All items are re-exported here, so callers write `wire_format::nbd::decode_request`.
//!
//! Every length read from the peer is bounded before use: option data by
//! [`MAX_OPTION_LEN`], option reply data by [`MAX_OPTION_REPLY_LEN`], strings by
//! [`MAX_STRING_LEN`] (the spec's "MUST be no longer than 4096 bytes"). The request
//! `length` is *not* bounded here: whether it fits the export and the server's buffers is
//! the server's decision (see [`Request::end`]), and a WRITE's payload must not be read
//! before that check.

pub mod consts;
pub mod handshake;
pub mod transmission;

pub use consts::*;
pub use handshake::*;
pub use transmission::*;

use thiserror::Error;

/// Errors from decoding or encoding NBD messages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NbdError {
    /// A magic number did not match: the peer does not speak (fixed newstyle) NBD.
    #[error("bad {what} magic {got:#x}")]
    BadMagic {
        /// Which magic, e.g. "IHAVEOPT".
        what: &'static str,
        /// The value received.
        got: u64,
    },
    /// The client set flags we do not know; the spec says the server MUST drop the
    /// connection ("Client flags").
    #[error("unknown client flags {0:#010x}")]
    UnknownClientFlags(u32),
    /// An option (or option reply) announced more data than we accept.
    #[error("option data of {len} bytes exceeds the maximum of {max}")]
    OptionTooLong {
        /// Announced length.
        len: u32,
        /// The limit it broke.
        max: u32,
    },
    /// A message ended before a field it must contain.
    #[error("NBD message truncated while reading {what}")]
    Truncated {
        /// The field that did not fit.
        what: &'static str,
    },
    /// A field holds a value the spec (or this implementation) forbids.
    #[error("invalid NBD message: {what}")]
    Invalid {
        /// What is wrong.
        what: &'static str,
    },
}
