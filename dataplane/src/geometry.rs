//! Volume geometry: how byte ranges map to chunks, and chunks to the core that owns them.
//!
//! Invariant (DESIGN.md, concurrency rule 1): every chunk has exactly one owner core, fixed for
//! the life of the process. Ownership is striped: `STRIPE_CHUNKS` consecutive chunks belong to
//! one core, so sequential IO stays on one core, and a stripe's 2-bit states fill exactly
//! `STRIPE_CHUNKS / 4` bytes of the map file, so two cores never write the same map bytes.

/// Chunks per ownership stripe. 1024 chunks = 256 bytes of map.
pub const STRIPE_CHUNKS: u64 = 1024;

/// Bytes of the map body covered by one stripe.
pub const STRIPE_MAP_BYTES: u64 = STRIPE_CHUNKS / 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub volume_size_bytes: u64,
    pub chunk_size_bytes: u32,
    pub chunk_count: u64,
    pub cores: usize,
}

/// One chunk's part of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub chunk: u64,
    /// Offset of the piece inside its chunk.
    pub offset_in_chunk: u32,
    pub len: u32,
}

impl Geometry {
    pub fn new(volume_size_bytes: u64, chunk_size_bytes: u32, cores: usize) -> Geometry {
        assert!(chunk_size_bytes.is_power_of_two() && cores > 0);
        let chunk_count = volume_size_bytes.div_ceil(u64::from(chunk_size_bytes));
        Geometry {
            volume_size_bytes,
            chunk_size_bytes,
            chunk_count,
            cores,
        }
    }

    pub fn chunk_offset(&self, chunk: u64) -> u64 {
        chunk * u64::from(self.chunk_size_bytes)
    }

    /// Length of `chunk`: the chunk size, except for a shorter last chunk.
    pub fn chunk_len(&self, chunk: u64) -> u32 {
        let start = self.chunk_offset(chunk);
        let end = (start + u64::from(self.chunk_size_bytes)).min(self.volume_size_bytes);
        (end - start) as u32
    }

    pub fn owner(&self, chunk: u64) -> usize {
        ((chunk / STRIPE_CHUNKS) % self.cores as u64) as usize
    }

    /// Splits `[offset, offset + len)` at chunk boundaries. The caller has checked the range.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let cs = u64::from(self.chunk_size_bytes);
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = pos / cs;
            let in_chunk = pos % cs;
            let take = (cs - in_chunk).min(end - pos);
            pos += take;
            Some(Piece {
                chunk,
                offset_in_chunk: in_chunk as u32,
                len: take as u32,
            })
        })
    }

    /// Splits `[offset, offset + len)` at multiples of `segment_bytes` (a power of two that
    /// divides a stripe), so every segment lies in one stripe and has one owner.
    pub fn segments(
        &self,
        offset: u64,
        len: u64,
        segment_bytes: u64,
    ) -> impl Iterator<Item = (u64, u32)> {
        debug_assert!(segment_bytes.is_power_of_two());
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let next = ((pos / segment_bytes + 1) * segment_bytes).min(end);
            let seg = (pos, (next - pos) as u32);
            pos = next;
            Some(seg)
        })
    }

    /// Chunks owned by `core`, in ascending order, starting at the first owned chunk >= `from`.
    pub fn owned_chunks_from(&self, core: usize, from: u64) -> impl Iterator<Item = u64> + '_ {
        let mut c = from;
        std::iter::from_fn(move || {
            while c < self.chunk_count {
                if self.owner(c) == core {
                    let out = c;
                    c += 1;
                    return Some(out);
                }
                // Skip to the start of the next stripe.
                c = (c / STRIPE_CHUNKS + 1) * STRIPE_CHUNKS;
            }
            None
        })
    }

    /// Chunks lying entirely outside the provisioned `extents` (sorted, non-overlapping
    /// `(offset, len)` pairs): those are holes in the source and need no transfer.
    pub fn hole_chunks(&self, extents: &[(u64, u64)]) -> Vec<u64> {
        let mut holes = Vec::new();
        let mut ext = extents.iter().peekable();
        for chunk in 0..self.chunk_count {
            let start = self.chunk_offset(chunk);
            let end = start + u64::from(self.chunk_len(chunk));
            while let Some(&&(o, l)) = ext.peek() {
                if o + l <= start {
                    ext.next();
                } else {
                    break;
                }
            }
            let touches_data = matches!(ext.peek(), Some(&&(o, _)) if o < end);
            if !touches_data {
                holes.push(chunk);
            }
        }
        holes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_chunk_boundaries() {
        let g = Geometry::new(10 * 65536 + 4096, 65536, 2);
        assert_eq!(g.chunk_count, 11);
        assert_eq!(g.chunk_len(10), 4096);
        let p: Vec<_> = g.pieces(65536 - 4096, 8192).collect();
        assert_eq!(
            p,
            vec![
                Piece {
                    chunk: 0,
                    offset_in_chunk: 61440,
                    len: 4096
                },
                Piece {
                    chunk: 1,
                    offset_in_chunk: 0,
                    len: 4096
                }
            ]
        );
    }

    #[test]
    fn segments_stay_inside_one_owner() {
        let g = Geometry::new(1 << 30, 4096, 2);
        let segs: Vec<_> = g
            .segments((4 << 20) - 8192, (1 << 20) + 16384, 1 << 20)
            .collect();
        assert_eq!(
            segs,
            vec![
                ((4 << 20) - 8192, 8192),
                (4 << 20, 1 << 20),
                (5 << 20, 8192)
            ]
        );
        for (o, l) in segs {
            let owners: Vec<_> = g
                .pieces(o, u64::from(l))
                .map(|p| g.owner(p.chunk))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] == w[1]));
        }
    }

    #[test]
    fn ownership_is_striped_and_complete() {
        let g = Geometry::new(5000 * 4096, 4096, 2);
        let a: Vec<_> = g.owned_chunks_from(0, 0).collect();
        let b: Vec<_> = g.owned_chunks_from(1, 0).collect();
        assert_eq!(a.len() + b.len(), 5000);
        assert!(a.iter().all(|&c| g.owner(c) == 0));
        assert!(b.iter().all(|&c| g.owner(c) == 1));
        assert_eq!(b[0], STRIPE_CHUNKS);
    }

    #[test]
    fn hole_chunks_skip_any_chunk_touching_data() {
        let g = Geometry::new(8 * 4096, 4096, 1);
        // data in [4096, 8192+1) touches chunks 1 and 2; and chunk 7.
        let holes = g.hole_chunks(&[(4096, 4097), (7 * 4096, 4096)]);
        assert_eq!(holes, vec![0, 3, 4, 5, 6]);
    }
}
