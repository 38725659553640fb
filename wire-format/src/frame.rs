//! Ferry wire protocol v1, spoken between the backend (near the source) and the frontend
//! (near the target).
//!
//! # Layout
//!
//! All integers are big-endian. Every frame is a 24-byte [`Header`] followed by a payload
//! of `payload_len` bytes:
//!
//! ```text
//! 0..4   magic 0x4652_5931 ("FRY1")
//! 4      version u8 = 1
//! 5      kind u8 (Kind::code)
//! 6..8   flags u16, must be 0 in v1
//! 8..16  request id u64 (replies echo the request's id)
//! 16..20 payload length u32 (<= MAX_PAYLOAD)
//! 20..24 crc32c over header bytes 0..20 followed by the whole payload
//! ```
//!
//! Strings are a u16 length followed by that many UTF-8 bytes, each with its own bound
//! ([`MAX_AGENT_LEN`], [`MAX_NAME_LEN`], [`MAX_MESSAGE_LEN`]); bools are a u8 0/1.
//! The payload of each [`Kind`] is documented on the [`Frame`] variant.
//!
//! # Rules
//!
//! * A payload must be consumed exactly: bytes left over are [`WireError::TrailingBytes`].
//! * Counts (extents, chunks) are checked against their limit and against the bytes present
//!   before the `Vec` is allocated, so a frame never costs more memory than its own size.
//! * The crc covers the header too, so a flipped kind, id or length is caught as well as a
//!   flipped data byte. It is checked before the payload is parsed.
//! * [`ErrorCode`] keeps unknown codes as [`ErrorCode::Other`] instead of rejecting them,
//!   so a newer peer may add error codes without breaking an older one: the older one still
//!   sees "an error", with the number to log.

use crate::cursor::Reader;
use thiserror::Error;

/// "FRY1".
pub const MAGIC: u32 = 0x4652_5931;
/// The only protocol version this crate speaks; see the crate docs for the version rule.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;
/// Largest data block carried by `ChunkData` / `WriteBack` (one chunk of the largest size).
pub const MAX_DATA_LEN: usize = 1 << 20;
/// Largest payload a header may announce: one maximal chunk plus room for fixed fields.
pub const MAX_PAYLOAD: u32 = (1 << 20) + 4096;
/// Most chunks one `Fetch` may ask for.
pub const MAX_FETCH_CHUNKS: usize = 1024;
/// Most extents one `Extents` frame may carry (65536 × 16 bytes = 1 MiB, fits MAX_PAYLOAD).
pub const MAX_EXTENTS_PER_FRAME: usize = 65536;
/// Longest `Hello::agent`, in bytes.
pub const MAX_AGENT_LEN: usize = 64;
/// Longest `Open::name`, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest error message (`ChunkError`, `Error`), in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Bytes in a content digest (SHA-256 of a chunk's uncompressed content).
pub const DIGEST_LEN: usize = 32;
/// Most digests one `Have` frame may carry (32768 × 32 bytes = 1 MiB, fits MAX_PAYLOAD).
pub const MAX_HAVE_DIGESTS: usize = 32768;

/// Capability bit: chunk payloads may travel zstd-compressed (`ChunkZstd`).
pub const CAP_ZSTD: u64 = 1 << 0;
/// Capability bit: the frontend announces content it holds (`Have`) and the backend may
/// answer a fetch with a digest instead of the data (`ChunkRef`).
pub const CAP_REFS: u64 = 1 << 1;
/// Capability bit: the backend may send a chunk's data with the SHA-256 of its content
/// (`ChunkDataDigest`) when it computed it anyway (for `ChunkRef`), so the frontend need not
/// hash the chunk again to index it. The digest is a hint like any dedup location: content is
/// used through it only after it hashes to the digest again.
pub const CAP_DIGESTS: u64 = 1 << 2;
/// Capability bit (with [`CAP_REFS`] and [`CAP_DIGESTS`]): the frontend indexes content that
/// arrives without a digest later, off its data path. The backend may then skip hashing while
/// that does not pay (the link is faster than SHA-256 and the frontend announced nothing), and
/// a plain `ChunkData` it sends is content it did not hash and will never reference.
pub const CAP_LAZY_INDEX: u64 = 1 << 3;
/// Capability bit (with [`CAP_REFS`]): the backend may answer with `ChunkPieces`, sending
/// only the [`BLOCK_LEN`] blocks of a chunk it has not sent before and naming the others by
/// where in the volume it already sent the same content (file copies in a file system are
/// block-aligned, not chunk-aligned). Like every dedup hint, a named block is used only after
/// it hashes to its digest again.
pub const CAP_BLOCK_REFS: u64 = 1 << 4;
/// Capability bit (with [`CAP_ZSTD`]): the zstd data of every `ChunkZstd` and zstd
/// `ChunkPieces` on the connection continues one zstd stream (each chunk one flush of it,
/// frames ending only where the sender changes its level), decoded in arrival order, so content
/// sent earlier on the connection is history the next chunk can refer to. The receiver bounds
/// the history (window) it accepts.
pub const CAP_ZSTD_STREAM: u64 = 1 << 5;
/// Capability bit: the backend answers `Ping` with `Pong` at once, so the frontend can
/// measure the path's round trip with neither disk nor queued data in it (the handshake's
/// round trip also holds the backend's accept and start-up of the connection).
pub const CAP_PING: u64 = 1 << 6;
/// The unit of `ChunkPieces`: a file system block.
pub const BLOCK_LEN: usize = 4096;
/// Most block references in one `ChunkPieces` (a chunk of the largest size).
pub const MAX_BLOCK_REFS: usize = MAX_DATA_LEN / BLOCK_LEN;
/// Bytes of one block reference: `block u16, offset u64, digest [u8; 32]`.
pub const BLOCK_REF_LEN: usize = 2 + 8 + DIGEST_LEN;
/// Bit 7 of a `Fetch`'s class byte: answer with data, never with a `ChunkRef` (the frontend
/// could not use a reference it was given for these chunks).
const FETCH_NO_REFS: u8 = 0x80;
/// Bit 6 of a `Fetch`'s class byte: send these chunks uncompressed (the frontend, not the
/// link, is the bottleneck right now, so compressing would only cost CPU).
const FETCH_NO_ZSTD: u8 = 0x40;
/// Bit 5 of a `Fetch`'s class byte: the link is the bottleneck of this frontend's fetches
/// right now (its window of requests is what limits them), so compressing pays even though the
/// backend's socket, paced by those requests, never looks busy.
const FETCH_LINK_BOUND: u8 = 0x20;

/// Header bytes covered by the crc (everything before the crc itself).
const CRC_COVERED_LEN: usize = 20;
/// `handle u32` + `chunk/offset u64` in front of bulk data.
const BULK_PREFIX_LEN: usize = 12;
/// `handle u32, chunk u64, raw_len u32, raw_crc u32` in front of compressed data.
const ZSTD_PREFIX_LEN: usize = 20;
/// `handle u32, chunk u64, digest [u8; 32]` in front of digested data.
const DIGEST_PREFIX_LEN: usize = 12 + DIGEST_LEN;
/// `handle u32, chunk u64, raw_len u32, lit_crc u32, zstd u8, count u16` in front of the
/// block references of a `ChunkPieces`.
const PIECES_PREFIX_LEN: usize = 23;

/// Errors from decoding or encoding Ferry frames.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The first four bytes are not "FRY1": not a Ferry peer, or the stream lost framing.
    #[error("bad frame magic {0:#010x}, expected {MAGIC:#010x} (\"FRY1\")")]
    BadMagic(u32),
    /// The header's version byte is not [`VERSION`].
    #[error("unsupported wire protocol version {0}, this side speaks {VERSION}")]
    UnsupportedVersion(u8),
    /// Flags are reserved in v1 and must be zero.
    #[error("frame flags {0:#06x} set, must be 0 in protocol v1")]
    BadFlags(u16),
    /// The kind byte has no assigned meaning.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A payload longer than the protocol allows (announced or about to be encoded).
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Announced or computed payload length.
        len: u64,
        /// The limit it broke.
        max: u64,
    },
    /// The crc32c in the header does not match the header and payload.
    #[error("frame checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    ChecksumMismatch {
        /// The crc carried in the header.
        expected: u32,
        /// The crc computed over the received bytes.
        actual: u32,
    },
    /// The payload ended before a field it must contain.
    #[error("frame truncated while reading {what}")]
    Truncated {
        /// The field that did not fit.
        what: &'static str,
    },
    /// The payload has bytes after the last field of its kind.
    #[error("trailing bytes after a {kind:?} payload")]
    TrailingBytes {
        /// Kind of the frame.
        kind: Kind,
    },
    /// A field holds a value the protocol forbids.
    #[error("invalid frame: {what}")]
    Invalid {
        /// What is wrong, e.g. "agent string too long".
        what: &'static str,
    },
}

/// Frame kind: the byte at header offset 5. Codes are stable; never reorder-derive them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// 0x01, frontend → backend, first frame of a connection.
    Hello,
    /// 0x02, backend → frontend, answer to Hello.
    HelloAck,
    /// 0x03, open a volume by name.
    Open,
    /// 0x04, answer to Open.
    OpenOk,
    /// 0x05, provisioned extents of an opened volume.
    Extents,
    /// 0x06, ask for chunks.
    Fetch,
    /// 0x07, a chunk's data.
    ChunkData,
    /// 0x08, a chunk that reads as zeroes.
    ChunkZero,
    /// 0x09, a chunk that could not be read.
    ChunkError,
    /// 0x0A, write data back to the source (abort).
    WriteBack,
    /// 0x0B, write zeroes back to the source.
    WriteZeroes,
    /// 0x0C, make written-back data durable on the source.
    Sync,
    /// 0x0D, success answer to WriteBack / WriteZeroes / Sync.
    Ack,
    /// 0x0E, failure answer to any request.
    Error,
    /// 0x0F, a chunk's data, zstd-compressed (only with [`CAP_ZSTD`]).
    ChunkZstd,
    /// 0x10, frontend → backend: digests of content the frontend already holds (only with
    /// [`CAP_REFS`]).
    Have,
    /// 0x11, a chunk answered by the digest of its content, which the frontend holds (only
    /// with [`CAP_REFS`]).
    ChunkRef,
    /// 0x12, frontend → backend: how to share this connection between the classes.
    Qos,
    /// 0x13, a chunk's data with the SHA-256 of its content (only with [`CAP_DIGESTS`]).
    ChunkDataDigest,
    /// 0x14, a chunk as new blocks plus references to blocks sent before (only with
    /// [`CAP_BLOCK_REFS`]).
    ChunkPieces,
    /// 0x15, frontend → backend: answer at once with `Pong` (only with [`CAP_PING`]).
    Ping,
    /// 0x16, answers `Ping` by request id.
    Pong,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 22] = [
        Kind::Hello,
        Kind::HelloAck,
        Kind::Open,
        Kind::OpenOk,
        Kind::Extents,
        Kind::Fetch,
        Kind::ChunkData,
        Kind::ChunkZero,
        Kind::ChunkError,
        Kind::WriteBack,
        Kind::WriteZeroes,
        Kind::Sync,
        Kind::Ack,
        Kind::Error,
        Kind::ChunkZstd,
        Kind::Have,
        Kind::ChunkRef,
        Kind::Qos,
        Kind::ChunkDataDigest,
        Kind::ChunkPieces,
        Kind::Ping,
        Kind::Pong,
    ];

    /// The stable wire code.
    pub fn code(self) -> u8 {
        match self {
            Kind::Hello => 0x01,
            Kind::HelloAck => 0x02,
            Kind::Open => 0x03,
            Kind::OpenOk => 0x04,
            Kind::Extents => 0x05,
            Kind::Fetch => 0x06,
            Kind::ChunkData => 0x07,
            Kind::ChunkZero => 0x08,
            Kind::ChunkError => 0x09,
            Kind::WriteBack => 0x0A,
            Kind::WriteZeroes => 0x0B,
            Kind::Sync => 0x0C,
            Kind::Ack => 0x0D,
            Kind::Error => 0x0E,
            Kind::ChunkZstd => 0x0F,
            Kind::Have => 0x10,
            Kind::ChunkRef => 0x11,
            Kind::Qos => 0x12,
            Kind::ChunkDataDigest => 0x13,
            Kind::ChunkPieces => 0x14,
            Kind::Ping => 0x15,
            Kind::Pong => 0x16,
        }
    }

    /// The kind with wire code `code`, if one is assigned.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0x01 => Kind::Hello,
            0x02 => Kind::HelloAck,
            0x03 => Kind::Open,
            0x04 => Kind::OpenOk,
            0x05 => Kind::Extents,
            0x06 => Kind::Fetch,
            0x07 => Kind::ChunkData,
            0x08 => Kind::ChunkZero,
            0x09 => Kind::ChunkError,
            0x0A => Kind::WriteBack,
            0x0B => Kind::WriteZeroes,
            0x0C => Kind::Sync,
            0x0D => Kind::Ack,
            0x0E => Kind::Error,
            0x0F => Kind::ChunkZstd,
            0x10 => Kind::Have,
            0x11 => Kind::ChunkRef,
            0x12 => Kind::Qos,
            0x13 => Kind::ChunkDataDigest,
            0x14 => Kind::ChunkPieces,
            0x15 => Kind::Ping,
            0x16 => Kind::Pong,
            _ => return None,
        })
    }
}

/// Priority class of a `Fetch` (DESIGN.md data path rule 1: on-demand overtakes background).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 1: a workload read is waiting for these chunks.
    OnDemand,
    /// 2: background hydration.
    Background,
}

impl Class {
    /// The stable wire code.
    pub fn code(self) -> u8 {
        match self {
            Class::OnDemand => 1,
            Class::Background => 2,
        }
    }

    /// The class with wire code `code`; unknown codes are rejected by the decoder.
    pub fn from_code(code: u8) -> Option<Class> {
        match code {
            1 => Some(Class::OnDemand),
            2 => Some(Class::Background),
            _ => None,
        }
    }
}

/// Error code carried by `ChunkError` and `Error` frames.
///
/// Unknown codes decode as [`ErrorCode::Other`] rather than failing the frame (forward
/// compatibility: a newer peer may add codes). `Other` should hold an unassigned code;
/// `Other(1)` is encoded as 1 and therefore decodes as `NotFound` — use
/// [`ErrorCode::from_code`] to build values from numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: no such volume / handle.
    NotFound,
    /// 2: the request is malformed or not valid in this state.
    InvalidRequest,
    /// 3: the storage failed.
    Io,
    /// 4: offset/chunk beyond the end of the volume.
    OutOfRange,
    /// 5: the peer does not implement this.
    Unsupported,
    /// 6: the volume cannot be written.
    ReadOnly,
    /// 7: try again later.
    Busy,
    /// 8: no common protocol version (answer to Hello).
    VersionMismatch,
    /// Any other code, kept as received.
    Other(u16),
}

impl ErrorCode {
    /// The stable wire code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::InvalidRequest => 2,
            ErrorCode::Io => 3,
            ErrorCode::OutOfRange => 4,
            ErrorCode::Unsupported => 5,
            ErrorCode::ReadOnly => 6,
            ErrorCode::Busy => 7,
            ErrorCode::VersionMismatch => 8,
            ErrorCode::Other(c) => c,
        }
    }

    /// The error code for wire code `code`; never fails (unknown → `Other`).
    pub fn from_code(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::InvalidRequest,
            3 => ErrorCode::Io,
            4 => ErrorCode::OutOfRange,
            5 => ErrorCode::Unsupported,
            6 => ErrorCode::ReadOnly,
            7 => ErrorCode::Busy,
            8 => ErrorCode::VersionMismatch,
            c => ErrorCode::Other(c),
        }
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: Kind,
    /// Request id (replies echo it).
    pub id: u64,
    /// Payload bytes following the header, `<= MAX_PAYLOAD`.
    pub payload_len: u32,
    /// crc32c over header bytes 0..20 and the payload (checked by [`Frame::decode`]).
    pub crc: u32,
}

impl Header {
    /// Decodes and checks magic, version, flags, kind and the payload length bound.
    /// The crc is only checked by [`Frame::decode`], once the payload is there.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let mut r = Reader::new(b);
        // The reads below cannot fail on a 24-byte array; `unwrap_or` keeps this panic-free.
        let magic = r.u32().unwrap_or(0);
        let version = r.u8().unwrap_or(0);
        let kind = r.u8().unwrap_or(0);
        let flags = r.u16().unwrap_or(0);
        let id = r.u64().unwrap_or(0);
        let payload_len = r.u32().unwrap_or(0);
        let crc = r.u32().unwrap_or(0);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        if flags != 0 {
            return Err(WireError::BadFlags(flags));
        }
        let kind = Kind::from_code(kind).ok_or(WireError::UnknownKind(kind))?;
        if payload_len > MAX_PAYLOAD {
            return Err(WireError::PayloadTooLarge {
                len: payload_len.into(),
                max: MAX_PAYLOAD.into(),
            });
        }
        Ok(Header {
            kind,
            id,
            payload_len,
            crc,
        })
    }

    /// The 24 header bytes (with `self.crc` as given; see [`Header::compute_crc`]).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..CRC_COVERED_LEN].copy_from_slice(&covered_prefix(self.kind, self.id, self.payload_len));
        b[CRC_COVERED_LEN..].copy_from_slice(&self.crc.to_be_bytes());
        b
    }

    /// The crc this header should carry for `payload`.
    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let prefix = covered_prefix(self.kind, self.id, self.payload_len);
        crate::checksum::crc32c_parts(&[&prefix, payload])
    }
}

/// Header bytes 0..20: everything the crc covers in the header.
fn covered_prefix(kind: Kind, id: u64, payload_len: u32) -> [u8; CRC_COVERED_LEN] {
    let mut b = [0u8; CRC_COVERED_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    b[4] = VERSION;
    b[5] = kind.code();
    b[6..8].copy_from_slice(&0u16.to_be_bytes());
    b[8..16].copy_from_slice(&id.to_be_bytes());
    b[16..20].copy_from_slice(&payload_len.to_be_bytes());
    b
}

/// One Ferry frame, borrowing strings and bulk data from the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `version_min u8, version_max u8, capabilities u64, agent str<=64`;
    /// `version_min <= version_max`.
    Hello {
        /// Lowest protocol version the sender speaks.
        version_min: u8,
        /// Highest protocol version the sender speaks.
        version_max: u8,
        /// Capability bits offered.
        capabilities: u64,
        /// Free-form software name/version of the sender.
        agent: &'a str,
    },
    /// `version u8, capabilities u64`.
    HelloAck {
        /// Version chosen for the connection.
        version: u8,
        /// Capability bits accepted (a subset of those offered).
        capabilities: u64,
    },
    /// `chunk_size u32 (power of two, 4 KiB..=1 MiB), name str<=255`.
    Open {
        /// Chunk size the frontend will fetch in.
        chunk_size: u32,
        /// Volume name on the backend.
        name: &'a str,
    },
    /// `handle u32, size u64, chunk_size u32 (validated like Open's), extent_frames u32`.
    OpenOk {
        /// Handle for later requests on this volume.
        handle: u32,
        /// Volume size in bytes.
        size: u64,
        /// Chunk size in force.
        chunk_size: u32,
        /// How many `Extents` frames follow this one.
        extent_frames: u32,
    },
    /// `handle u32, count u32 (<= 65536), (offset u64, len u64) × count`, exactly filling
    /// the payload; `offset + len` must not overflow. Provisioned (data) extents of the
    /// source as reported by SEEK_DATA/SEEK_HOLE.
    Extents {
        /// Volume handle.
        handle: u32,
        /// `(offset, len)` in bytes.
        extents: Vec<(u64, u64)>,
    },
    /// `handle u32, class u8, count u32 (1..=1024), chunk u64 × count`. The class byte's
    /// low 5 bits are the [`Class`] code; bit 7 set means `no_refs`, bit 6 `no_zstd`, bit 5
    /// `link_bound`.
    Fetch {
        /// Volume handle.
        handle: u32,
        /// Priority class.
        class: Class,
        /// Answer with data, never `ChunkRef` (meaningful only with [`CAP_REFS`]).
        no_refs: bool,
        /// Answer uncompressed (meaningful only with [`CAP_ZSTD`]).
        no_zstd: bool,
        /// The link limits this frontend's fetches now: compress if it pays (meaningful
        /// only with [`CAP_ZSTD`]; `no_zstd` wins).
        link_bound: bool,
        /// Chunk indexes wanted.
        chunks: Vec<u64>,
    },
    /// `handle u32, chunk u64, data` (rest of the payload, 1..=1 MiB bytes).
    ChunkData {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
        /// Chunk contents (the last chunk of a volume may be short).
        data: &'a [u8],
    },
    /// `handle u32, chunk u64`.
    ChunkZero {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
    },
    /// `handle u32, chunk u64, code u16, message str<=1024`.
    ChunkError {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
    },
    /// `handle u32, offset u64, data` (rest of the payload, 1..=1 MiB bytes);
    /// `offset + data.len()` must not overflow.
    WriteBack {
        /// Volume handle.
        handle: u32,
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes to write.
        data: &'a [u8],
    },
    /// `handle u32, offset u64, len u64`; `offset + len` must not overflow.
    WriteZeroes {
        /// Volume handle.
        handle: u32,
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes to zero.
        len: u64,
    },
    /// `handle u32`.
    Sync {
        /// Volume handle.
        handle: u32,
    },
    /// Empty payload; answers WriteBack / WriteZeroes / Sync by request id.
    Ack,
    /// Empty payload; asks for a `Pong` (only with [`CAP_PING`]).
    Ping,
    /// Empty payload; answers `Ping` by request id.
    Pong,
    /// `code u16, message str<=1024`.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
    },
    /// `handle u32, chunk u64, raw_len u32 (1..=1 MiB), raw_crc u32, data` (rest of the
    /// payload, 1..=1 MiB bytes of zstd frame). `raw_crc` is the crc32c of the *uncompressed*
    /// content: the receiver checks it after decompression, so a compressor or decompressor
    /// fault is caught like a wire fault.
    ChunkZstd {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
        /// Length of the content once decompressed.
        raw_len: u32,
        /// crc32c of the decompressed content.
        raw_crc: u32,
        /// The zstd frame.
        data: &'a [u8],
    },
    /// `handle u32, count u32 (1..=32768), digest [u8; 32] × count`, exactly filling the
    /// payload.
    Have {
        /// Volume handle.
        handle: u32,
        /// `count × 32` bytes: SHA-256 digests of chunk contents the frontend holds.
        digests: &'a [u8],
    },
    /// `handle u32, chunk u64, digest [u8; 32]`: the chunk's content has this SHA-256, which
    /// the frontend said it holds (or which this connection already carried).
    ChunkRef {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
        /// SHA-256 of the chunk's content.
        digest: [u8; DIGEST_LEN],
    },
    /// `handle u32, floor u64`: on a connection that carries both classes, the backend sends
    /// on-demand replies first but lets background replies through at no less than
    /// `background_floor_bytes_per_s` (0: strict priority).
    Qos {
        /// Volume handle.
        handle: u32,
        /// Background bytes/s the backend keeps sending under on-demand load.
        background_floor_bytes_per_s: u64,
    },
    /// `handle u32, chunk u64, digest [u8; 32], data` (rest of the payload, 1..=1 MiB
    /// bytes): `ChunkData` with the SHA-256 the backend computed of `data`.
    ChunkDataDigest {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
        /// SHA-256 of `data`, as the backend computed it (a hint: see [`CAP_DIGESTS`]).
        digest: [u8; DIGEST_LEN],
        /// Chunk contents (the last chunk of a volume may be short).
        data: &'a [u8],
    },
    /// `handle u32, chunk u64, raw_len u32 (1..=1 MiB), lit_crc u32, zstd u8 (0/1), count u16
    /// (1..=256), count × (block u16, offset u64, digest [u8; 32]), data` (rest of the
    /// payload). The chunk's content is `raw_len` bytes cut into [`BLOCK_LEN`] blocks: the
    /// blocks listed (strictly ascending, each whole inside `raw_len`) hold the content the
    /// volume has at `offset` (a multiple of `BLOCK_LEN`), whose SHA-256 is `digest`; the
    /// others, in order, are the literal bytes, `raw_len - count × BLOCK_LEN` of them, which
    /// `data` carries as is or, with `zstd` = 1, as a zstd frame. `lit_crc` is the crc32c of
    /// the literal bytes (checked after decompression). All blocks named: no data, `zstd` 0.
    ChunkPieces {
        /// Volume handle.
        handle: u32,
        /// Chunk index.
        chunk: u64,
        /// Length, literal crc, compression and references (checked; read the references
        /// with [`block_refs`]).
        pieces: Pieces<'a>,
        /// The literal bytes (or their zstd frame); empty when every block is named.
        data: &'a [u8],
    },
}

/// One block of a `ChunkPieces` named by where the volume already sent its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Index of the block in the chunk.
    pub block: u16,
    /// Volume offset of a block with the same content (a multiple of [`BLOCK_LEN`]).
    pub offset: u64,
    /// SHA-256 of the block's content.
    pub digest: [u8; DIGEST_LEN],
}

impl BlockRef {
    /// Appends the wire form (`BLOCK_REF_LEN` bytes).
    pub fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.digest);
    }
}

/// The references of a `ChunkPieces` (`refs` as the decoder checked it).
pub fn block_refs(refs: &[u8]) -> impl Iterator<Item = BlockRef> + '_ {
    refs.chunks_exact(BLOCK_REF_LEN).map(|r| {
        let mut block = [0u8; 2];
        block.copy_from_slice(&r[..2]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&r[2..10]);
        let mut digest = [0u8; DIGEST_LEN];
        digest.copy_from_slice(&r[10..]);
        BlockRef {
            block: u16::from_be_bytes(block),
            offset: u64::from_be_bytes(offset),
            digest,
        }
    })
}

impl<'a> Frame<'a> {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello { .. } => Kind::Hello,
            Frame::HelloAck { .. } => Kind::HelloAck,
            Frame::Open { .. } => Kind::Open,
            Frame::OpenOk { .. } => Kind::OpenOk,
            Frame::Extents { .. } => Kind::Extents,
            Frame::Fetch { .. } => Kind::Fetch,
            Frame::ChunkData { .. } => Kind::ChunkData,
            Frame::ChunkZero { .. } => Kind::ChunkZero,
            Frame::ChunkError { .. } => Kind::ChunkError,
            Frame::WriteBack { .. } => Kind::WriteBack,
            Frame::WriteZeroes { .. } => Kind::WriteZeroes,
            Frame::Sync { .. } => Kind::Sync,
            Frame::Ack => Kind::Ack,
            Frame::Ping => Kind::Ping,
            Frame::Pong => Kind::Pong,
            Frame::Error { .. } => Kind::Error,
            Frame::ChunkZstd { .. } => Kind::ChunkZstd,
            Frame::Have { .. } => Kind::Have,
            Frame::ChunkRef { .. } => Kind::ChunkRef,
            Frame::Qos { .. } => Kind::Qos,
            Frame::ChunkDataDigest { .. } => Kind::ChunkDataDigest,
            Frame::ChunkPieces { .. } => Kind::ChunkPieces,
        }
    }

    /// Verifies the crc (header bytes re-encoded from `h`), then parses the payload.
    /// `payload.len()` must equal `h.payload_len`.
    pub fn decode(h: &Header, payload: &'a [u8]) -> Result<Frame<'a>, WireError> {
        // `Header` has public fields, so re-check the bound for hand-built headers.
        if h.payload_len > MAX_PAYLOAD {
            return Err(WireError::PayloadTooLarge {
                len: h.payload_len.into(),
                max: MAX_PAYLOAD.into(),
            });
        }
        let want = h.payload_len as usize;
        if payload.len() < want {
            return Err(WireError::Truncated { what: "payload" });
        }
        if payload.len() > want {
            return Err(WireError::TrailingBytes { kind: h.kind });
        }
        let actual = h.compute_crc(payload);
        if actual != h.crc {
            return Err(WireError::ChecksumMismatch {
                expected: h.crc,
                actual,
            });
        }
        parse_payload(h.kind, payload)
    }

    /// Appends header + payload to `out`. Fails, leaving `out` as it was, if a field is out
    /// of the bounds the decoder enforces (too many chunks, string too long, ...).
    pub fn encode(&self, id: u64, out: &mut Vec<u8>) -> Result<(), WireError> {
        // Bulk frames share the zero-copy prefix path so the two can never disagree.
        match *self {
            Frame::ChunkData {
                handle,
                chunk,
                data,
            } => {
                encode_chunk_data_prefix(id, handle, chunk, data, out)?;
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::ChunkDataDigest {
                handle,
                chunk,
                ref digest,
                data,
            } => {
                encode_chunk_data_digest_prefix(id, handle, chunk, digest, data, out)?;
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::WriteBack {
                handle,
                offset,
                data,
            } => {
                encode_write_back_prefix(id, handle, offset, data, out)?;
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::ChunkZstd {
                handle,
                chunk,
                raw_len,
                raw_crc,
                data,
            } => {
                encode_chunk_zstd_prefix(id, handle, chunk, raw_len, raw_crc, data, out)?;
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::ChunkPieces {
                handle,
                chunk,
                ref pieces,
                data,
            } => {
                encode_chunk_pieces_prefix(id, handle, chunk, pieces, data, out)?;
                out.extend_from_slice(data);
                return Ok(());
            }
            _ => {}
        }
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        if let Err(e) = self.write_payload(out) {
            out.truncate(start);
            return Err(e);
        }
        let payload_len = out.len() - start - HEADER_LEN;
        if payload_len > MAX_PAYLOAD as usize {
            out.truncate(start);
            return Err(WireError::PayloadTooLarge {
                len: payload_len as u64,
                max: MAX_PAYLOAD.into(),
            });
        }
        let mut h = Header {
            kind: self.kind(),
            id,
            payload_len: payload_len as u32,
            crc: 0,
        };
        h.crc = h.compute_crc(&out[start + HEADER_LEN..]);
        out[start..start + HEADER_LEN].copy_from_slice(&h.encode());
        Ok(())
    }

    /// Writes the payload of a non-bulk frame, validating as it goes.
    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Frame::Hello {
                version_min,
                version_max,
                capabilities,
                agent,
            } => {
                if version_min > version_max {
                    return Err(WireError::Invalid {
                        what: "hello version_min > version_max",
                    });
                }
                out.push(*version_min);
                out.push(*version_max);
                out.extend_from_slice(&capabilities.to_be_bytes());
                put_str(out, agent, MAX_AGENT_LEN, "agent string too long")?;
            }
            Frame::HelloAck {
                version,
                capabilities,
            } => {
                out.push(*version);
                out.extend_from_slice(&capabilities.to_be_bytes());
            }
            Frame::Open { chunk_size, name } => {
                check_chunk_size(*chunk_size)?;
                out.extend_from_slice(&chunk_size.to_be_bytes());
                put_str(out, name, MAX_NAME_LEN, "volume name too long")?;
            }
            Frame::OpenOk {
                handle,
                size,
                chunk_size,
                extent_frames,
            } => {
                check_chunk_size(*chunk_size)?;
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&chunk_size.to_be_bytes());
                out.extend_from_slice(&extent_frames.to_be_bytes());
            }
            Frame::Extents { handle, extents } => {
                if extents.len() > MAX_EXTENTS_PER_FRAME {
                    return Err(WireError::Invalid {
                        what: "extent count over MAX_EXTENTS_PER_FRAME",
                    });
                }
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&(extents.len() as u32).to_be_bytes());
                for &(offset, len) in extents {
                    check_range(offset, len, "extent offset + len overflows")?;
                    out.extend_from_slice(&offset.to_be_bytes());
                    out.extend_from_slice(&len.to_be_bytes());
                }
            }
            Frame::Fetch {
                handle,
                class,
                no_refs,
                no_zstd,
                link_bound,
                chunks,
            } => {
                check_fetch_count(chunks.len())?;
                out.extend_from_slice(&handle.to_be_bytes());
                let mut b = class.code();
                if *no_refs {
                    b |= FETCH_NO_REFS;
                }
                if *no_zstd {
                    b |= FETCH_NO_ZSTD;
                }
                if *link_bound {
                    b |= FETCH_LINK_BOUND;
                }
                out.push(b);
                out.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
                for c in chunks {
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            Frame::ChunkZero { handle, chunk } => {
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
            }
            Frame::ChunkError {
                handle,
                chunk,
                code,
                message,
            } => {
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
                out.extend_from_slice(&code.code().to_be_bytes());
                put_str(out, message, MAX_MESSAGE_LEN, "error message too long")?;
            }
            Frame::WriteZeroes {
                handle,
                offset,
                len,
            } => {
                check_range(*offset, *len, "write-zeroes offset + len overflows")?;
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Frame::Sync { handle } => out.extend_from_slice(&handle.to_be_bytes()),
            Frame::Qos {
                handle,
                background_floor_bytes_per_s,
            } => {
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&background_floor_bytes_per_s.to_be_bytes());
            }
            Frame::Ack | Frame::Ping | Frame::Pong => {}
            Frame::Error { code, message } => {
                out.extend_from_slice(&code.code().to_be_bytes());
                put_str(out, message, MAX_MESSAGE_LEN, "error message too long")?;
            }
            Frame::Have { handle, digests } => {
                check_have(digests)?;
                out.extend_from_slice(&handle.to_be_bytes());
                // <= MAX_HAVE_DIGESTS, checked above.
                out.extend_from_slice(&((digests.len() / DIGEST_LEN) as u32).to_be_bytes());
                out.extend_from_slice(digests);
            }
            Frame::ChunkRef {
                handle,
                chunk,
                digest,
            } => {
                out.extend_from_slice(&handle.to_be_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
                out.extend_from_slice(digest);
            }
            Frame::ChunkData { .. }
            | Frame::ChunkDataDigest { .. }
            | Frame::WriteBack { .. }
            | Frame::ChunkPieces { .. }
            | Frame::ChunkZstd { .. } => {
                // Handled by the prefix encoders in `encode`; kept here for exhaustiveness.
                return Err(WireError::Invalid {
                    what: "bulk frame routed to the fixed-payload encoder",
                });
            }
        }
        Ok(())
    }
}

/// Writes header + fixed fields of a `ChunkData` frame into `out`, with the crc already
/// covering `data`; the caller then sends `out` followed by `data` (no copy of the data).
pub fn encode_chunk_data_prefix(
    id: u64,
    handle: u32,
    chunk: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    encode_bulk_prefix(Kind::ChunkData, id, handle, chunk, data, out)
}

/// Writes header + fixed fields of a `ChunkDataDigest` frame into `out`, with the crc already
/// covering `data`; the caller then sends `out` followed by `data` (no copy of the data).
pub fn encode_chunk_data_digest_prefix(
    id: u64,
    handle: u32,
    chunk: u64,
    digest: &[u8; DIGEST_LEN],
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_data(data)?;
    let mut fixed = [0u8; DIGEST_PREFIX_LEN];
    fixed[..4].copy_from_slice(&handle.to_be_bytes());
    fixed[4..12].copy_from_slice(&chunk.to_be_bytes());
    fixed[12..].copy_from_slice(digest);
    write_prefix(Kind::ChunkDataDigest, id, &fixed, data, out);
    Ok(())
}

/// Writes header + fixed fields of a `WriteBack` frame into `out`, with the crc already
/// covering `data`; the caller then sends `out` followed by `data` (no copy of the data).
pub fn encode_write_back_prefix(
    id: u64,
    handle: u32,
    offset: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_range(
        offset,
        data.len() as u64,
        "write-back offset + len overflows",
    )?;
    encode_bulk_prefix(Kind::WriteBack, id, handle, offset, data, out)
}

/// Writes header + fixed fields of a `ChunkZstd` frame into `out`, with the crc already
/// covering `data` (the compressed bytes); the caller then sends `out` followed by `data`.
pub fn encode_chunk_zstd_prefix(
    id: u64,
    handle: u32,
    chunk: u64,
    raw_len: u32,
    raw_crc: u32,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_data(data)?;
    check_raw_len(raw_len)?;
    let mut fixed = [0u8; ZSTD_PREFIX_LEN];
    fixed[..4].copy_from_slice(&handle.to_be_bytes());
    fixed[4..12].copy_from_slice(&chunk.to_be_bytes());
    fixed[12..16].copy_from_slice(&raw_len.to_be_bytes());
    fixed[16..20].copy_from_slice(&raw_crc.to_be_bytes());
    write_prefix(Kind::ChunkZstd, id, &fixed, data, out);
    Ok(())
}

/// The fixed fields of a `ChunkPieces` (see [`Frame::ChunkPieces`]); `refs` already in wire
/// form ([`BlockRef::put`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pieces<'a> {
    /// Length of the chunk's content.
    pub raw_len: u32,
    /// crc32c of the literal bytes, uncompressed.
    pub lit_crc: u32,
    /// The data is a zstd frame of the literal bytes.
    pub zstd: bool,
    /// `count × BLOCK_REF_LEN` bytes.
    pub refs: &'a [u8],
}

/// Writes header + fixed fields + block references of a `ChunkPieces` frame into `out`, with
/// the crc already covering `data`; the caller then sends `out` followed by `data`.
pub fn encode_chunk_pieces_prefix(
    id: u64,
    handle: u32,
    chunk: u64,
    pieces: &Pieces<'_>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_pieces(pieces, data)?;
    let mut fixed = Vec::with_capacity(PIECES_PREFIX_LEN + pieces.refs.len());
    fixed.extend_from_slice(&handle.to_be_bytes());
    fixed.extend_from_slice(&chunk.to_be_bytes());
    fixed.extend_from_slice(&pieces.raw_len.to_be_bytes());
    fixed.extend_from_slice(&pieces.lit_crc.to_be_bytes());
    fixed.push(u8::from(pieces.zstd));
    // <= MAX_BLOCK_REFS, checked above.
    fixed.extend_from_slice(&((pieces.refs.len() / BLOCK_REF_LEN) as u16).to_be_bytes());
    fixed.extend_from_slice(pieces.refs);
    write_prefix(Kind::ChunkPieces, id, &fixed, data, out);
    Ok(())
}

/// Every rule of [`Frame::ChunkPieces`] that the frame alone can check.
fn check_pieces(p: &Pieces<'_>, data: &[u8]) -> Result<(), WireError> {
    let invalid = |what| Err(WireError::Invalid { what });
    if !(1..=MAX_DATA_LEN as u32).contains(&p.raw_len) {
        return invalid("pieces raw_len not in 1..=MAX_DATA_LEN");
    }
    let count = p.refs.len() / BLOCK_REF_LEN;
    if !p.refs.len().is_multiple_of(BLOCK_REF_LEN) || !(1..=MAX_BLOCK_REFS).contains(&count) {
        return invalid("pieces reference count not in 1..=MAX_BLOCK_REFS");
    }
    let blocks = p.raw_len as usize / BLOCK_LEN;
    let mut next = 0usize;
    for r in block_refs(p.refs) {
        let block = usize::from(r.block);
        if block < next {
            return invalid("pieces block references not strictly ascending");
        }
        if block >= blocks {
            return invalid("pieces block reference past the chunk's whole blocks");
        }
        if !r.offset.is_multiple_of(BLOCK_LEN as u64)
            || r.offset.checked_add(BLOCK_LEN as u64).is_none()
        {
            return invalid("pieces block offset not a block boundary");
        }
        next = block + 1;
    }
    // count <= blocks, so this cannot underflow.
    let literal = p.raw_len as usize - count * BLOCK_LEN;
    match (literal, p.zstd) {
        (0, false) if data.is_empty() => Ok(()),
        (0, _) => invalid("pieces with every block named carry data"),
        (_, false) if data.len() == literal => Ok(()),
        (_, false) => invalid("pieces literal length does not match raw_len"),
        (_, true) if !data.is_empty() && data.len() <= MAX_DATA_LEN => Ok(()),
        (_, true) => invalid("pieces zstd frame empty or larger than MAX_DATA_LEN"),
    }
}

fn encode_bulk_prefix(
    kind: Kind,
    id: u64,
    handle: u32,
    position: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_data(data)?;
    let mut fixed = [0u8; BULK_PREFIX_LEN];
    fixed[..4].copy_from_slice(&handle.to_be_bytes());
    fixed[4..].copy_from_slice(&position.to_be_bytes());
    write_prefix(kind, id, &fixed, data, out);
    Ok(())
}

/// Header (crc over `fixed` and `data`) and `fixed` into `out`; the caller sends `data` after.
/// `data.len() <= MAX_DATA_LEN` must have been checked: with at most 44 fixed bytes the payload
/// then fits MAX_PAYLOAD.
fn write_prefix(kind: Kind, id: u64, fixed: &[u8], data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(
        data.len() <= MAX_DATA_LEN
            && fixed.len() <= PIECES_PREFIX_LEN + MAX_BLOCK_REFS * BLOCK_REF_LEN
    );
    let payload_len = (fixed.len() + data.len()) as u32;
    let crc = crate::checksum::crc32c_parts(&[&covered_prefix(kind, id, payload_len), fixed, data]);
    let h = Header {
        kind,
        id,
        payload_len,
        crc,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(fixed);
}

/// Incremental decode from the front of a byte buffer.
///
/// `Ok(None)`: the buffer holds less than one whole frame, read more and call again.
/// `Ok(Some((frame, consumed)))`: one frame decoded from `buf[..consumed]`.
/// An error means the stream is corrupt or hostile; it cannot be resynchronised, so close
/// the connection. The header is checked as soon as its 24 bytes are present, so an
/// oversized length is refused before the caller buffers any of it.
pub fn decode_from(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let h = Header::decode(head)?;
    let total = HEADER_LEN + h.payload_len as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((Frame::decode(&h, payload)?, total)))
}

fn parse_payload(kind: Kind, payload: &[u8]) -> Result<Frame<'_>, WireError> {
    let mut r = Reader::new(payload);
    let frame = match kind {
        Kind::Hello => {
            let version_min = get_u8(&mut r, "hello version_min")?;
            let version_max = get_u8(&mut r, "hello version_max")?;
            let capabilities = get_u64(&mut r, "hello capabilities")?;
            let agent = get_str(&mut r, MAX_AGENT_LEN, "agent")?;
            if version_min > version_max {
                return Err(WireError::Invalid {
                    what: "hello version_min > version_max",
                });
            }
            Frame::Hello {
                version_min,
                version_max,
                capabilities,
                agent,
            }
        }
        Kind::HelloAck => Frame::HelloAck {
            version: get_u8(&mut r, "hello-ack version")?,
            capabilities: get_u64(&mut r, "hello-ack capabilities")?,
        },
        Kind::Open => {
            let chunk_size = get_u32(&mut r, "open chunk_size")?;
            check_chunk_size(chunk_size)?;
            let name = get_str(&mut r, MAX_NAME_LEN, "volume name")?;
            Frame::Open { chunk_size, name }
        }
        Kind::OpenOk => {
            let handle = get_u32(&mut r, "handle")?;
            let size = get_u64(&mut r, "open-ok size")?;
            let chunk_size = get_u32(&mut r, "open-ok chunk_size")?;
            check_chunk_size(chunk_size)?;
            let extent_frames = get_u32(&mut r, "open-ok extent_frames")?;
            Frame::OpenOk {
                handle,
                size,
                chunk_size,
                extent_frames,
            }
        }
        Kind::Extents => {
            let handle = get_u32(&mut r, "handle")?;
            let count = get_u32(&mut r, "extent count")? as usize;
            if count > MAX_EXTENTS_PER_FRAME {
                return Err(WireError::Invalid {
                    what: "extent count over MAX_EXTENTS_PER_FRAME",
                });
            }
            // count <= 65536, so count * 16 cannot overflow.
            exact_fit(&r, count * 16, kind, "extents")?;
            let mut extents = Vec::with_capacity(count);
            for _ in 0..count {
                let offset = get_u64(&mut r, "extent offset")?;
                let len = get_u64(&mut r, "extent len")?;
                check_range(offset, len, "extent offset + len overflows")?;
                extents.push((offset, len));
            }
            Frame::Extents { handle, extents }
        }
        Kind::Fetch => {
            let handle = get_u32(&mut r, "handle")?;
            let class_byte = get_u8(&mut r, "fetch class")?;
            let no_refs = class_byte & FETCH_NO_REFS != 0;
            let no_zstd = class_byte & FETCH_NO_ZSTD != 0;
            let link_bound = class_byte & FETCH_LINK_BOUND != 0;
            let flags = FETCH_NO_REFS | FETCH_NO_ZSTD | FETCH_LINK_BOUND;
            let class = Class::from_code(class_byte & !flags).ok_or(WireError::Invalid {
                what: "unknown fetch class",
            })?;
            let count = get_u32(&mut r, "fetch count")? as usize;
            check_fetch_count(count)?;
            exact_fit(&r, count * 8, kind, "fetch chunks")?;
            let mut chunks = Vec::with_capacity(count);
            for _ in 0..count {
                chunks.push(get_u64(&mut r, "fetch chunk")?);
            }
            Frame::Fetch {
                handle,
                class,
                no_refs,
                no_zstd,
                link_bound,
                chunks,
            }
        }
        Kind::ChunkData => {
            let handle = get_u32(&mut r, "handle")?;
            let chunk = get_u64(&mut r, "chunk")?;
            let data = r.rest();
            check_data(data)?;
            Frame::ChunkData {
                handle,
                chunk,
                data,
            }
        }
        Kind::ChunkDataDigest => {
            let handle = get_u32(&mut r, "handle")?;
            let chunk = get_u64(&mut r, "chunk")?;
            let digest = get_digest(&mut r, "chunk-data digest")?;
            let data = r.rest();
            check_data(data)?;
            Frame::ChunkDataDigest {
                handle,
                chunk,
                digest,
                data,
            }
        }
        Kind::ChunkZero => Frame::ChunkZero {
            handle: get_u32(&mut r, "handle")?,
            chunk: get_u64(&mut r, "chunk")?,
        },
        Kind::ChunkError => Frame::ChunkError {
            handle: get_u32(&mut r, "handle")?,
            chunk: get_u64(&mut r, "chunk")?,
            code: ErrorCode::from_code(get_u16(&mut r, "error code")?),
            message: get_str(&mut r, MAX_MESSAGE_LEN, "error message")?,
        },
        Kind::WriteBack => {
            let handle = get_u32(&mut r, "handle")?;
            let offset = get_u64(&mut r, "write-back offset")?;
            let data = r.rest();
            check_data(data)?;
            check_range(
                offset,
                data.len() as u64,
                "write-back offset + len overflows",
            )?;
            Frame::WriteBack {
                handle,
                offset,
                data,
            }
        }
        Kind::WriteZeroes => {
            let handle = get_u32(&mut r, "handle")?;
            let offset = get_u64(&mut r, "write-zeroes offset")?;
            let len = get_u64(&mut r, "write-zeroes len")?;
            check_range(offset, len, "write-zeroes offset + len overflows")?;
            Frame::WriteZeroes {
                handle,
                offset,
                len,
            }
        }
        Kind::Sync => Frame::Sync {
            handle: get_u32(&mut r, "handle")?,
        },
        Kind::Ack => Frame::Ack,
        Kind::Ping => Frame::Ping,
        Kind::Pong => Frame::Pong,
        Kind::Error => Frame::Error {
            code: ErrorCode::from_code(get_u16(&mut r, "error code")?),
            message: get_str(&mut r, MAX_MESSAGE_LEN, "error message")?,
        },
        Kind::ChunkZstd => {
            let handle = get_u32(&mut r, "handle")?;
            let chunk = get_u64(&mut r, "chunk")?;
            let raw_len = get_u32(&mut r, "zstd raw_len")?;
            check_raw_len(raw_len)?;
            let raw_crc = get_u32(&mut r, "zstd raw_crc")?;
            let data = r.rest();
            check_data(data)?;
            Frame::ChunkZstd {
                handle,
                chunk,
                raw_len,
                raw_crc,
                data,
            }
        }
        Kind::Have => {
            let handle = get_u32(&mut r, "handle")?;
            let count = get_u32(&mut r, "have count")? as usize;
            if !(1..=MAX_HAVE_DIGESTS).contains(&count) {
                return Err(WireError::Invalid {
                    what: "have digest count not in 1..=MAX_HAVE_DIGESTS",
                });
            }
            // count <= 32768, so count * 32 cannot overflow.
            exact_fit(&r, count * DIGEST_LEN, kind, "have digests")?;
            let digests = r.rest();
            Frame::Have { handle, digests }
        }
        Kind::ChunkRef => {
            let handle = get_u32(&mut r, "handle")?;
            let chunk = get_u64(&mut r, "chunk")?;
            let digest = get_digest(&mut r, "chunk-ref digest")?;
            Frame::ChunkRef {
                handle,
                chunk,
                digest,
            }
        }
        Kind::Qos => Frame::Qos {
            handle: get_u32(&mut r, "handle")?,
            background_floor_bytes_per_s: get_u64(&mut r, "background floor")?,
        },
        Kind::ChunkPieces => {
            let handle = get_u32(&mut r, "handle")?;
            let chunk = get_u64(&mut r, "chunk")?;
            let raw_len = get_u32(&mut r, "pieces raw_len")?;
            let lit_crc = get_u32(&mut r, "pieces lit_crc")?;
            let zstd = match r.u8() {
                Some(0) => false,
                Some(1) => true,
                Some(_) => {
                    return Err(WireError::Invalid {
                        what: "pieces zstd flag not 0 or 1",
                    })
                }
                None => {
                    return Err(WireError::Truncated {
                        what: "pieces zstd flag",
                    })
                }
            };
            let count = usize::from(get_u16(&mut r, "pieces count")?);
            if !(1..=MAX_BLOCK_REFS).contains(&count) {
                return Err(WireError::Invalid {
                    what: "pieces reference count not in 1..=MAX_BLOCK_REFS",
                });
            }
            let refs = r.bytes(count * BLOCK_REF_LEN).ok_or(WireError::Truncated {
                what: "pieces block references",
            })?;
            let data = r.rest();
            let pieces = Pieces {
                raw_len,
                lit_crc,
                zstd,
                refs,
            };
            check_pieces(&pieces, data)?;
            Frame::ChunkPieces {
                handle,
                chunk,
                pieces,
                data,
            }
        }
    };
    if !r.is_empty() {
        return Err(WireError::TrailingBytes { kind });
    }
    Ok(frame)
}

fn get_digest(r: &mut Reader<'_>, what: &'static str) -> Result<[u8; DIGEST_LEN], WireError> {
    let bytes = r.bytes(DIGEST_LEN).ok_or(WireError::Truncated { what })?;
    let mut digest = [0u8; DIGEST_LEN];
    digest.copy_from_slice(bytes);
    Ok(digest)
}

fn get_u8(r: &mut Reader<'_>, what: &'static str) -> Result<u8, WireError> {
    r.u8().ok_or(WireError::Truncated { what })
}

fn get_u16(r: &mut Reader<'_>, what: &'static str) -> Result<u16, WireError> {
    r.u16().ok_or(WireError::Truncated { what })
}

fn get_u32(r: &mut Reader<'_>, what: &'static str) -> Result<u32, WireError> {
    r.u32().ok_or(WireError::Truncated { what })
}

fn get_u64(r: &mut Reader<'_>, what: &'static str) -> Result<u64, WireError> {
    r.u64().ok_or(WireError::Truncated { what })
}

/// u16 length + UTF-8 bytes, length checked against `max` before the bytes are taken.
fn get_str<'a>(r: &mut Reader<'a>, max: usize, what: &'static str) -> Result<&'a str, WireError> {
    let len = get_u16(r, what)? as usize;
    if len > max {
        return Err(WireError::Invalid {
            what: "string longer than its field allows",
        });
    }
    let bytes = r.bytes(len).ok_or(WireError::Truncated { what })?;
    std::str::from_utf8(bytes).map_err(|_| WireError::Invalid {
        what: "string is not valid UTF-8",
    })
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize, what: &'static str) -> Result<(), WireError> {
    if s.len() > max {
        return Err(WireError::Invalid { what });
    }
    // max <= MAX_MESSAGE_LEN < u16::MAX, so the cast is exact.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The counted array must fill the rest of the payload exactly.
fn exact_fit(r: &Reader<'_>, need: usize, kind: Kind, what: &'static str) -> Result<(), WireError> {
    match r.remaining().cmp(&need) {
        std::cmp::Ordering::Less => Err(WireError::Truncated { what }),
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes { kind }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

fn check_chunk_size(chunk_size: u32) -> Result<(), WireError> {
    if crate::is_valid_chunk_size(chunk_size) {
        Ok(())
    } else {
        Err(WireError::Invalid {
            what: "chunk size is not a power of two in 4 KiB..=1 MiB",
        })
    }
}

fn check_fetch_count(count: usize) -> Result<(), WireError> {
    if (1..=MAX_FETCH_CHUNKS).contains(&count) {
        Ok(())
    } else {
        Err(WireError::Invalid {
            what: "fetch chunk count not in 1..=MAX_FETCH_CHUNKS",
        })
    }
}

fn check_data(data: &[u8]) -> Result<(), WireError> {
    if data.is_empty() {
        return Err(WireError::Invalid {
            what: "empty data block",
        });
    }
    if data.len() > MAX_DATA_LEN {
        return Err(WireError::Invalid {
            what: "data block larger than MAX_DATA_LEN",
        });
    }
    Ok(())
}

fn check_raw_len(raw_len: u32) -> Result<(), WireError> {
    if (1..=MAX_DATA_LEN as u32).contains(&raw_len) {
        Ok(())
    } else {
        Err(WireError::Invalid {
            what: "zstd raw_len not in 1..=MAX_DATA_LEN",
        })
    }
}

fn check_have(digests: &[u8]) -> Result<(), WireError> {
    let count = digests.len() / DIGEST_LEN;
    if !digests.len().is_multiple_of(DIGEST_LEN) || !(1..=MAX_HAVE_DIGESTS).contains(&count) {
        return Err(WireError::Invalid {
            what: "have digests not a whole number of 1..=MAX_HAVE_DIGESTS digests",
        });
    }
    Ok(())
}

fn check_range(offset: u64, len: u64, what: &'static str) -> Result<(), WireError> {
    match offset.checked_add(len) {
        Some(_) => Ok(()),
        None => Err(WireError::Invalid { what }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_stable() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(k.code() as usize, i + 1);
            assert_eq!(Kind::from_code(k.code()), Some(*k));
        }
        assert_eq!(Kind::from_code(0), None);
        assert_eq!(Kind::from_code(0x14), Some(Kind::ChunkPieces));
        assert_eq!(Kind::from_code(0x15), Some(Kind::Ping));
        assert_eq!(Kind::from_code(0x16), Some(Kind::Pong));
        assert_eq!(Kind::from_code(0x17), None);
        assert_eq!(Class::from_code(0), None);
        assert_eq!(Class::from_code(3), None);
        for c in 0..=20u16 {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
        assert_eq!(ErrorCode::VersionMismatch.code(), 8);
    }

    fn pieces_frame(raw_len: u32, refs: &[(u16, u64)], zstd: bool, data: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for &(block, offset) in refs {
            BlockRef {
                block,
                offset,
                digest: [block as u8; DIGEST_LEN],
            }
            .put(&mut wire);
        }
        // Built by hand, past the encoder's checks, as a hostile peer would.
        let mut payload = Vec::new();
        payload.extend_from_slice(&7u32.to_be_bytes());
        payload.extend_from_slice(&3u64.to_be_bytes());
        payload.extend_from_slice(&raw_len.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.push(u8::from(zstd));
        payload.extend_from_slice(&(refs.len() as u16).to_be_bytes());
        payload.extend_from_slice(&wire);
        payload.extend_from_slice(data);
        let mut h = Header {
            kind: Kind::ChunkPieces,
            id: 1,
            payload_len: payload.len() as u32,
            crc: 0,
        };
        h.crc = h.compute_crc(&payload);
        let mut out = h.encode().to_vec();
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn pieces_rules_are_enforced() {
        let b = BLOCK_LEN as u64;
        let ok = |raw_len, refs: &[(u16, u64)], zstd, data: &[u8]| {
            decode_from(&pieces_frame(raw_len, refs, zstd, data)).map(|f| f.map(|(f, _)| f.kind()))
        };
        // Two blocks, the second named: 4096 literal bytes.
        assert_eq!(
            ok(8192, &[(1, 5 * b)], false, &[1; 4096]),
            Ok(Some(Kind::ChunkPieces))
        );
        // Every block named: no data.
        assert_eq!(
            ok(8192, &[(0, 0), (1, b)], false, &[]),
            Ok(Some(Kind::ChunkPieces))
        );
        // A short tail is literal; it cannot be named.
        assert_eq!(
            ok(4100, &[(0, b)], false, &[9; 4]),
            Ok(Some(Kind::ChunkPieces))
        );
        let bad = [
            ok(8192, &[(1, 5 * b)], false, &[1; 4095]),
            ok(8192, &[(0, 0), (1, b)], false, &[1]),
            ok(8192, &[(0, 0), (1, b)], true, &[]),
            ok(8192, &[(1, 0), (0, b)], false, &[]),
            ok(8192, &[(1, 0), (1, b)], false, &[]),
            ok(4100, &[(1, b)], false, &[]),
            ok(8192, &[(0, 100)], false, &[1; 4096]),
            ok(8192, &[(0, u64::MAX - b + 1)], false, &[1; 4096]),
            ok(0, &[(0, 0)], false, &[]),
            ok(8192, &[], false, &[1; 8192]),
            ok(8192, &[(0, 0)], true, &[]),
        ];
        for (i, r) in bad.iter().enumerate() {
            assert!(
                matches!(r, Err(WireError::Invalid { .. })),
                "case {i}: {r:?}"
            );
        }
        let mut flag2 = pieces_frame(8192, &[(1, 5 * b)], false, &[1; 4096]);
        flag2[HEADER_LEN + 20] = 2;
        let payload_crc = Header::decode(flag2[..HEADER_LEN].try_into().unwrap()).unwrap();
        let mut h = payload_crc;
        h.crc = h.compute_crc(&flag2[HEADER_LEN..]);
        flag2[..HEADER_LEN].copy_from_slice(&h.encode());
        assert!(matches!(
            decode_from(&flag2),
            Err(WireError::Invalid { .. })
        ));
    }

    #[test]
    fn header_layout() {
        let mut out = Vec::new();
        Frame::Sync { handle: 7 }
            .encode(0x0102_0304_0506_0708, &mut out)
            .unwrap();
        assert_eq!(&out[0..4], b"FRY1");
        assert_eq!(out[4], 1);
        assert_eq!(out[5], 0x0C);
        assert_eq!(&out[6..8], &[0, 0]);
        assert_eq!(&out[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[16..20], &[0, 0, 0, 4]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..20]), &out[24..]);
        assert_eq!(&out[20..24], &crc.to_be_bytes());
        assert_eq!(&out[24..], &[0, 0, 0, 7]);
    }

    #[test]
    fn failed_encode_leaves_out_untouched() {
        let mut out = vec![9u8; 3];
        let long = "x".repeat(MAX_AGENT_LEN + 1);
        let f = Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: 0,
            agent: &long,
        };
        assert!(matches!(
            f.encode(1, &mut out),
            Err(WireError::Invalid { .. })
        ));
        assert_eq!(out, vec![9u8; 3]);
    }
}
