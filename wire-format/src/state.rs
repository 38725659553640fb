//! On-disk codes shared by the dataplane: chunk states and the volume-map header.
//!
//! A volume map file is one [`MAP_HEADER_LEN`]-byte header block followed by a body of
//! [`map_bytes`]`(chunk_count)` bytes holding 2 bits per chunk ([`ChunkState::code`]).
//! The header is a full 4 KiB block so the body starts O_DIRECT-aligned.
//!
//! Header layout (big-endian, like the wire):
//!
//! ```text
//! 0..8    magic b"FERRYMAP"
//! 8..10   format version u16 = 1
//! 10..12  reserved u16 = 0
//! 12..16  chunk_size u32 (power of two, 4 KiB..=1 MiB)
//! 16..24  volume_size u64 (bytes)
//! 24..32  chunk_count u64 (== ceil(volume_size / chunk_size))
//! 32..36  crc32c of bytes 0..32
//! 36..4096 zero
//! ```
//!
//! The decoder checks all of it, including that the unused tail is zero: a header block
//! is written whole, so anything else there means the block is not what we wrote.

use thiserror::Error;

/// State of one chunk in the volume map (DESIGN.md "State"). Codes are stable (2 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkState {
    /// 0: only on the source.
    Untouched,
    /// 1: on the target, equal to the source. Recorded only after the data is durable.
    Present,
    /// 2: written on the target, differs from the source.
    Dirty,
    /// 3: known zero or unprovisioned; never transferred nor stored.
    Zero,
}

impl ChunkState {
    /// The stable 2-bit code.
    pub fn code(self) -> u8 {
        match self {
            ChunkState::Untouched => 0,
            ChunkState::Present => 1,
            ChunkState::Dirty => 2,
            ChunkState::Zero => 3,
        }
    }

    /// The state with code `code`, or `None` for codes above 3.
    pub fn from_code(code: u8) -> Option<ChunkState> {
        match code {
            0 => Some(ChunkState::Untouched),
            1 => Some(ChunkState::Present),
            2 => Some(ChunkState::Dirty),
            3 => Some(ChunkState::Zero),
            _ => None,
        }
    }
}

/// Bytes of the map header block.
pub const MAP_HEADER_LEN: usize = 4096;
/// Magic at the start of a map file.
pub const MAP_MAGIC: [u8; 8] = *b"FERRYMAP";
/// Map format version written and accepted.
pub const MAP_VERSION: u16 = 1;
/// Header bytes covered by the crc.
const MAP_CRC_COVERED: usize = 32;
/// Header bytes in use (fields + crc); the rest is zero.
const MAP_USED: usize = MAP_CRC_COVERED + 4;

/// Errors from decoding (or building) a map header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StateError {
    /// Not a Ferry map file.
    #[error("bad map magic {0:02x?}, expected \"FERRYMAP\"")]
    BadMagic([u8; 8]),
    /// Written by a format version we do not read.
    #[error("unsupported map format version {0}, this side reads {MAP_VERSION}")]
    UnsupportedVersion(u16),
    /// The header crc does not match its fields.
    #[error("map header checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// The crc stored in the header.
        expected: u32,
        /// The crc computed over the header fields.
        actual: u32,
    },
    /// Fewer than [`MAP_HEADER_LEN`] bytes were given.
    #[error("map header truncated: {len} bytes, need {MAP_HEADER_LEN}")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// A field is inconsistent.
    #[error("invalid map header: {what}")]
    Invalid {
        /// What is wrong.
        what: &'static str,
    },
}

/// The fields of a map header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapHeader {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Volume size in bytes.
    pub volume_size: u64,
    /// Chunks in the volume: `ceil(volume_size / chunk_size)`.
    pub chunk_count: u64,
}

impl MapHeader {
    /// A header for a volume, with `chunk_count` computed; fails on a bad chunk size.
    pub fn new(chunk_size: u32, volume_size: u64) -> Result<MapHeader, StateError> {
        check_chunk_size(chunk_size)?;
        Ok(MapHeader {
            chunk_size,
            volume_size,
            chunk_count: chunk_count(volume_size, chunk_size),
        })
    }

    /// Checks the invariants [`MapHeader::decode`] enforces.
    pub fn validate(&self) -> Result<(), StateError> {
        check_chunk_size(self.chunk_size)?;
        if self.chunk_count != chunk_count(self.volume_size, self.chunk_size) {
            return Err(StateError::Invalid {
                what: "chunk_count != ceil(volume_size / chunk_size)",
            });
        }
        Ok(())
    }

    /// The 4 KiB header block. Does not validate (use [`MapHeader::new`] or
    /// [`MapHeader::validate`]); an invalid header encodes but will not decode.
    pub fn encode(&self) -> [u8; MAP_HEADER_LEN] {
        debug_assert!(
            self.validate().is_ok(),
            "encoding invalid map header {self:?}"
        );
        let mut b = [0u8; MAP_HEADER_LEN];
        b[0..8].copy_from_slice(&MAP_MAGIC);
        b[8..10].copy_from_slice(&MAP_VERSION.to_be_bytes());
        b[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[16..24].copy_from_slice(&self.volume_size.to_be_bytes());
        b[24..32].copy_from_slice(&self.chunk_count.to_be_bytes());
        let crc = crate::checksum::crc32c(&b[..MAP_CRC_COVERED]);
        b[MAP_CRC_COVERED..MAP_USED].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes the first [`MAP_HEADER_LEN`] bytes of `b` (more may follow: the body).
    /// Checks magic, version, crc, the zero tail, the chunk size and the chunk count.
    pub fn decode(b: &[u8]) -> Result<MapHeader, StateError> {
        let Some(b) = b.first_chunk::<MAP_HEADER_LEN>() else {
            return Err(StateError::Truncated { len: b.len() });
        };
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic != MAP_MAGIC {
            return Err(StateError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != MAP_VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        let expected = be32(MAP_CRC_COVERED);
        let actual = crate::checksum::crc32c(&b[..MAP_CRC_COVERED]);
        if expected != actual {
            return Err(StateError::ChecksumMismatch { expected, actual });
        }
        if b[10..12] != [0, 0] || b[MAP_USED..].iter().any(|&x| x != 0) {
            return Err(StateError::Invalid {
                what: "reserved bytes are not zero",
            });
        }
        let h = MapHeader {
            chunk_size: be32(12),
            volume_size: be64(16),
            chunk_count: be64(24),
        };
        h.validate()?;
        Ok(h)
    }
}

/// Bytes of the map body for `chunk_count` chunks at 2 bits each: `ceil(chunk_count / 4)`.
pub fn map_bytes(chunk_count: u64) -> u64 {
    chunk_count.div_ceil(4)
}

fn chunk_count(volume_size: u64, chunk_size: u32) -> u64 {
    // chunk_size was validated non-zero by the callers.
    volume_size.div_ceil(u64::from(chunk_size.max(1)))
}

fn check_chunk_size(chunk_size: u32) -> Result<(), StateError> {
    if crate::is_valid_chunk_size(chunk_size) {
        Ok(())
    } else {
        Err(StateError::Invalid {
            what: "chunk size is not a power of two in 4 KiB..=1 MiB",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_state_codes() {
        for c in 0..4 {
            assert_eq!(ChunkState::from_code(c).map(ChunkState::code), Some(c));
        }
        assert_eq!(ChunkState::from_code(4), None);
    }

    #[test]
    fn map_bytes_rounds_up() {
        assert_eq!(map_bytes(0), 0);
        assert_eq!(map_bytes(1), 1);
        assert_eq!(map_bytes(4), 1);
        assert_eq!(map_bytes(5), 2);
        assert_eq!(map_bytes(u64::MAX), u64::MAX / 4 + 1);
    }

    #[test]
    fn header_checks() {
        let h = MapHeader::new(65536, 65536 * 3 + 1).unwrap();
        assert_eq!(h.chunk_count, 4);
        let mut b = h.encode();
        assert_eq!(MapHeader::decode(&b), Ok(h));
        assert!(matches!(
            MapHeader::decode(&b[..4095]),
            Err(StateError::Truncated { len: 4095 })
        ));
        b[4000] = 1;
        assert!(matches!(
            MapHeader::decode(&b),
            Err(StateError::Invalid { .. })
        ));
        assert!(MapHeader::new(3000, 1).is_err());
        let bad = MapHeader {
            chunk_count: 5,
            ..h
        };
        assert!(bad.validate().is_err());
    }
}
