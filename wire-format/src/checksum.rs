//! crc32c (Castagnoli): the checksum of every Ferry frame, of the map header, and of chunk
//! content the receiver rebuilds (decompressed chunks, literal blocks).
//!
//! Computed with `crc-fast`, which folds with carry-less multiplication (VPCLMULQDQ where the
//! CPU has it, PCLMULQDQ otherwise) instead of the SSE4.2 `crc32` instruction loop of the
//! `crc32c` crate. Measured on the project's 2-core AMD EPYC machine: 57 against 25 GB/s on a
//! cached 64 KiB buffer, 37 against 14 GB/s on buffers out of cache, the same 14 ns on a
//! 36-byte frame. Every byte Ferry moves is checksummed by the sender and by the receiver;
//! with the old loop that was about a tenth of the CPU of a loopback hydration.

use crc_fast::{CrcAlgorithm, Digest};

/// crc32c of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_parts(&[data])
}

/// crc32c of the concatenation of `parts`.
pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    let mut d = Digest::new(CrcAlgorithm::Crc32Iscsi);
    for p in parts {
        d.update(p);
    }
    // A 32-bit crc in the low half of the u64.
    d.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value_and_another_implementation() {
        // The catalogued check value of CRC-32/ISCSI (crc32c) over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 15, 16, 63, 64, 255, 4096, 65_536, 70_000] {
            assert_eq!(
                crc32c(&data[..len]),
                ::crc32c::crc32c(&data[..len]),
                "len {len}"
            );
        }
        for cut in [0, 1, 20, 33, 4097, 70_000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_parts(&[a, b]), crc32c(&data), "cut {cut}");
        }
    }
}
