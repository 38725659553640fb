//! The two checksums ext4 metadata carries: crc32c (`metadata_csum`) and the older crc16
//! (`uninit_bg`, a.k.a. `gdt_csum`).

/// The kernel's `crc32c(seed, data)`: no inversion on the way in or out, unlike the
/// `crc32c` crate's standard CRC, which inverts both.
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The kernel's `lib/crc16.c`: CRC-16/ARC polynomial 0x8005, bit-reflected, no final XOR.
pub(crate) fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsaware_crc_check_values() {
        // CRC-16/ARC and CRC-32C check values of "123456789" (init 0 resp. !0, final XOR).
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }
}
