//! The answer: which bytes of the volume the file system marks free, and which chunks of the
//! volume are free from end to end.

/// The free space of a file system, as read from its allocation bitmaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSpace {
    pub fs_uuid: [u8; 16],
    pub block_size: u32,
    /// Blocks in the file system; it occupies the first `blocks_total * block_size` bytes.
    pub blocks_total: u64,
    /// Free blocks counted from the bitmaps: exactly the blocks covered by `free`.
    pub blocks_free: u64,
    /// The superblock's own free count. Updated lazily while mounted, so it may differ from
    /// `blocks_free`; on a cleanly unmounted file system the two agree.
    pub blocks_free_superblock: u64,
    /// Free byte ranges `(offset, len)` of the volume: sorted, merged (no two touch), all
    /// inside the file system.
    pub free: Vec<(u64, u64)>,
}

impl FreeSpace {
    /// Runs `(first_chunk, count)` of chunks that are free from end to end: no byte of them is
    /// used or outside the file system. Chunk `c` is `[c * chunk_size, (c + 1) * chunk_size)`
    /// cut at `volume_size`, so the last chunk may be short. Sorted and merged when `free` is.
    pub fn free_chunks(&self, chunk_size: u64, volume_size: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        if chunk_size == 0 || volume_size == 0 {
            return runs;
        }
        let chunk_count = volume_size.div_ceil(chunk_size);
        for &(offset, len) in &self.free {
            let end = offset.saturating_add(len).min(volume_size);
            if offset >= end {
                continue;
            }
            let first = offset.div_ceil(chunk_size);
            // The short last chunk ends at the volume's end, not at a chunk boundary.
            let end_chunk = if end == volume_size {
                chunk_count
            } else {
                end / chunk_size
            };
            if first >= end_chunk {
                continue;
            }
            match runs.last_mut() {
                Some((f, n)) if *f + *n == first => *n += end_chunk - first,
                _ => runs.push((first, end_chunk - first)),
            }
        }
        runs
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|&(_, len)| len).sum()
    }
}

/// Collects free block ranges in ascending order, merging neighbours.
#[derive(Debug, Default)]
pub(crate) struct FreeBlocks {
    /// `(first_block, block_count)`.
    runs: Vec<(u64, u64)>,
    blocks: u64,
}

impl FreeBlocks {
    /// Adds `[first, first + count)`; callers add in ascending, non-overlapping order.
    pub(crate) fn push(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.blocks += count;
        match self.runs.last_mut() {
            Some((f, n)) if *f + *n == first => *n += count,
            Some((f, n)) => {
                debug_assert!(*f + *n < first, "free runs out of order");
                self.runs.push((first, count));
            }
            None => self.runs.push((first, count)),
        }
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Byte ranges. The caller has checked that the file system fits the source, so every
    /// block number times the block size fits in a u64.
    pub(crate) fn into_bytes(self, block_size: u64) -> Vec<(u64, u64)> {
        self.runs
            .into_iter()
            .map(|(f, n)| (f * block_size, n * block_size))
            .collect()
    }
}
