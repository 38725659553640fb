//! Ferry wire format: the byte layouts Ferry puts on the network and on disk.
//!
//! * [`frame`]: Ferry wire protocol v1, spoken between backend and frontend over TCP.
//! * [`nbd`]: the NBD protocol codec (fixed newstyle handshake, simple replies), for both
//!   the server side (the frontend's export) and the client side (our tools and tests).
//! * [`checksum`]: the crc32c every frame and the map header carry.
//! * [`state`]: on-disk codes shared by the dataplane (chunk states, volume-map header).
//!
//! # Invariants (do not break them; the fuzz targets in `fuzz/` check the decoders)
//!
//! 1. **No IO.** Everything here is pure encode/decode over byte slices; callers own the
//!    sockets, files and buffers. No `unsafe`.
//! 2. **Every wire length is bounded before use.** A size, count, offset or length read
//!    from the network or the disk is checked against a fixed limit *and* against the bytes
//!    actually present before anything is allocated or indexed with it: a hostile peer can
//!    make a decoder return an error, never panic, loop, or allocate more than the input
//!    it was handed (bounded by [`frame::MAX_PAYLOAD`], [`nbd::MAX_OPTION_LEN`], ...).
//! 3. **Stable codes.** Every enum that reaches the wire or the disk has explicit
//!    `code()`/`from_code()` functions with numbers written out by hand. Never `as u8` on a
//!    Rust enum: reordering variants must not change a byte on the wire.
//! 4. **Checksums.** Every Ferry frame carries a crc32c (Castagnoli) over its header and
//!    payload; the map header carries one over its fields. A frame that fails it is an
//!    error, never data (DESIGN.md, data path rule 4).
//! 5. **Version rule.** A frame header whose version byte is not [`frame::VERSION`] is
//!    refused ([`frame::WireError::UnsupportedVersion`]). In the `Hello`/`HelloAck`
//!    exchange, a peer whose `version_min..=version_max` range does not contain our major
//!    version is answered with an `Error` frame carrying
//!    [`frame::ErrorCode::VersionMismatch`] and the connection is closed; there is no
//!    cross-major compatibility. New minor features are negotiated with capability bits.
//! 6. **Encoders validate too.** An encoder refuses (typed error, `out` left unchanged)
//!    any value its decoder would refuse, so we never send what we would reject.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
mod cursor;
pub mod frame;
pub mod nbd;
pub mod state;

/// Smallest chunk size Ferry accepts (DESIGN.md: a power of two from 4 KiB to 1 MiB).
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size Ferry accepts.
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;

/// True if `chunk_size` is a power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
pub fn is_valid_chunk_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_size_bounds() {
        use super::is_valid_chunk_size as ok;
        assert!(ok(4096) && ok(65536) && ok(1 << 20));
        assert!(!ok(0) && !ok(2048) && !ok(4097) && !ok(3 << 12) && !ok(2 << 20));
    }
}
