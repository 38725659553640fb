//! Runs of clear bits in an on-disk block bitmap.
//!
//! ext4 bitmaps are little-endian bit strings (`ext4_set_bit` = `__set_bit_le`): bit `n` is bit
//! `n % 8` of byte `n / 8`, which is `bitvec`'s `Lsb0` order over bytes.

use bitvec::prelude::*;

/// Calls `free(start, end)` for each maximal run of clear bits among the first `nbits` bits of
/// `bitmap` (fewer if `bitmap` is shorter), in ascending order.
pub(crate) fn clear_runs(bitmap: &[u8], nbits: u64, mut free: impl FnMut(u64, u64)) {
    let all = BitSlice::<u8, Lsb0>::from_slice(bitmap);
    let n = usize::try_from(nbits).map_or(all.len(), |n| n.min(all.len()));
    let bits = &all[..n];
    let mut at = 0;
    while let Some(zero) = bits[at..].first_zero() {
        let start = at + zero;
        let end = bits[start..].first_one().map_or(n, |one| start + one);
        free(start as u64, end as u64);
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(bitmap: &[u8], nbits: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        clear_runs(bitmap, nbits, |a, b| v.push((a, b)));
        v
    }

    #[test]
    fn fsaware_bitmap_runs_are_lsb_first() {
        assert_eq!(runs(&[0xFF, 0xFF], 16), []);
        assert_eq!(runs(&[0x00, 0x00], 16), [(0, 16)]);
        // 0b1000_0001: bits 0 and 7 used.
        assert_eq!(runs(&[0x81, 0xFE], 16), [(1, 7), (8, 9)]);
        assert_eq!(runs(&[0x00, 0x00], 12), [(0, 12)]);
        assert_eq!(runs(&[0x00], 64), [(0, 8)]);
        assert_eq!(runs(&[], 8), []);
    }
}
