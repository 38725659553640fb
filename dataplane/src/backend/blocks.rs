//! What this backend already sent of a volume, block by block ([`CAP_BLOCK_REFS`]).
//!
//! Chunk-level dedup finds a repeated file only if both copies start at the same offset within
//! a chunk; a file system places files on block boundaries, so copies rarely line up with 64
//! KiB chunks (on the 4 GiB WAN sample, 28 MiB repeated as whole chunks but 602 MiB as 4 KiB
//! blocks). This table remembers, for each [`BLOCK_LEN`] block of content sent literally,
//! where in the volume it went; a later chunk then names such blocks by that offset and the
//! frontend copies them from its own target.
//!
//! * Shared by every connection to the volume (the frontend's cores fetch on connections of
//!   their own, and a copy of a file is as likely in another core's stripe).
//! * Bounded: a table of [`SLOTS`] entries (16 MiB, allocated on first use) in sets of
//!   [`WAYS`], a newer block taking the place of the oldest of its set. Direct-mapped (one
//!   way), a third of the slots in use already lost 23 MiB of the sample's 599 MiB of repeats
//!   to collisions; four ways lose none. A reference is a hint either way: the
//!   frontend uses the named block only if it hashes to the digest sent with it, so a stale or
//!   colliding entry costs a refetch, never wrong data.
//! * Offsets are of this volume as this backend sent it. When the last connection using the
//!   volume ends, the table is emptied: a frontend that restarts (after a crash, say) may have
//!   lost blocks it was sent, and would otherwise wait for them before refetching. One that
//!   does not hold a named block anyway finds a mismatch and refetches.
//!
//! [`CAP_BLOCK_REFS`]: wire_format::frame::CAP_BLOCK_REFS

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use wire_format::frame::{BLOCK_LEN, DIGEST_LEN};

/// Entries in the table: 1M blocks of 4 KiB, so the last 4 GiB or so of distinct content sent.
pub const SLOTS: usize = 1 << 20;
/// Entries per set: a block's digest chooses a set, and it may sit in any of its entries.
pub const WAYS: usize = 4;
const SETS: usize = SLOTS / WAYS;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Digest bits other than the ones that chose the slot.
    tag: u64,
    /// Volume offset + 1 (0: empty).
    at: u64,
}

#[derive(Default)]
pub struct SentBlocks {
    slots: Mutex<Vec<Slot>>,
    users: AtomicUsize,
}

impl std::fmt::Debug for SentBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SentBlocks")
    }
}

fn place(digest: &[u8; DIGEST_LEN]) -> (usize, u64) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&digest[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[8..16]);
    (
        (u64::from_le_bytes(a) % SETS as u64) as usize,
        u64::from_le_bytes(b),
    )
}

impl SentBlocks {
    /// A connection opened the volume.
    pub fn attach(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection that opened the volume ended; the last one empties the table (and gives
    /// its memory back).
    pub fn detach(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            *slots = Vec::new();
        }
    }

    /// For the blocks of one chunk at volume offset `chunk_offset` (`digests[i]` of block `i`,
    /// `None` for blocks not to be considered, e.g. all-zero ones): where the volume already
    /// sent the same content, outside this chunk. Blocks not found are remembered at their own
    /// offset, as the caller is about to send them literally.
    pub fn find_or_remember(
        &self,
        chunk_offset: u64,
        digests: &[Option<[u8; DIGEST_LEN]>],
    ) -> Vec<Option<u64>> {
        let chunk_end = chunk_offset + (digests.len() * BLOCK_LEN) as u64;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.is_empty() {
            slots.resize(SLOTS, Slot::default());
        }
        let mut found = vec![None; digests.len()];
        for (i, d) in digests.iter().enumerate() {
            let Some(d) = d else { continue };
            let (set, tag) = place(d);
            // Newest first: a new entry goes in front and the oldest falls off the end.
            let ways = &mut slots[set * WAYS..(set + 1) * WAYS];
            if let Some(slot) = ways.iter().find(|s| s.at != 0 && s.tag == tag) {
                let at = slot.at - 1;
                // Inside this chunk: the frontend is only now receiving it.
                if !(chunk_offset..chunk_end).contains(&at) {
                    found[i] = Some(at);
                }
            } else {
                ways.rotate_right(1);
                ways[0] = Slot {
                    tag,
                    at: chunk_offset + (i * BLOCK_LEN) as u64 + 1,
                };
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seed: u8) -> Option<[u8; DIGEST_LEN]> {
        Some(crate::dedup::digest(&[seed; BLOCK_LEN]))
    }

    #[test]
    fn a_block_sent_before_is_found_where_it_went_but_never_inside_its_own_chunk() {
        let t = SentBlocks::default();
        let c = 16 * BLOCK_LEN as u64;
        // Block 1 repeats block 0 of the same chunk: not a reference (the frontend is
        // writing that chunk right now), and remembered at its first place.
        assert_eq!(t.find_or_remember(0, &[d(1), d(1), None]), vec![None; 3]);
        assert_eq!(
            t.find_or_remember(c, &[d(2), None, d(1)]),
            vec![None, None, Some(0)]
        );
        assert_eq!(
            t.find_or_remember(2 * c, &[d(2), d(3)]),
            vec![Some(c), None]
        );
        // Sent again at its own chunk (a refetch): found only outside it.
        assert_eq!(t.find_or_remember(c, &[d(2)]), vec![None]);
    }

    #[test]
    fn a_set_keeps_its_newest_ways_blocks() {
        let t = SentBlocks::default();
        let c = 16 * BLOCK_LEN as u64;
        // Digests crafted into one set: the same first 8 bytes, different tags.
        let same_set = |tag: u8| {
            let mut d = [0u8; DIGEST_LEN];
            d[8] = tag;
            Some(d)
        };
        for k in 0..=WAYS as u8 {
            t.find_or_remember(u64::from(k) * c, &[same_set(k)]);
        }
        let far = 100 * c;
        // The first one fell out; the newest WAYS are all still found.
        assert_eq!(t.find_or_remember(far, &[same_set(0)]), vec![None]);
        for k in 2..=WAYS as u8 {
            assert_eq!(
                t.find_or_remember(far, &[same_set(k)]),
                vec![Some(u64::from(k) * c)]
            );
        }
    }

    #[test]
    fn the_last_user_leaving_forgets_everything() {
        let t = SentBlocks::default();
        let c = 16 * BLOCK_LEN as u64;
        t.attach();
        t.attach();
        t.find_or_remember(0, &[d(1)]);
        t.detach();
        assert_eq!(t.find_or_remember(c, &[d(1)]), vec![Some(0)]);
        t.detach();
        t.attach();
        assert_eq!(t.find_or_remember(2 * c, &[d(1)]), vec![None]);
    }
}
