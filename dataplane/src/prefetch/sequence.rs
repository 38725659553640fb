//! Sequence prediction: follows live reads along the recorded read sequence and says which
//! chunks come next.
//!
//! Lock-on needs two reads that follow each other in the sequence (within [`WINDOW`]
//! entries), so one read of a popular chunk does not jump to a random place. Once locked,
//! a read matching an entry up to [`WINDOW`] ahead moves the position there (the workload
//! skipped a few recorded reads); a read matching nothing is tolerated [`MISSES_MAX`] times in
//! a row before the position is dropped (the workload did something else for a moment).
//! Each step costs at most one index lookup and a scan of [`WINDOW`] entries per candidate.

use super::plan::Plan;

/// How far ahead of the position a read may land and still count as following the sequence.
pub const WINDOW: usize = 32;

/// Reads in a row that match nothing before the position is given up.
pub const MISSES_MAX: u32 = 8;

/// Candidate positions kept while looking for a lock.
const CANDIDATES_MAX: usize = 64;

#[derive(Debug, Default)]
pub struct Matcher {
    /// Index of the next expected entry, when locked.
    pos: Option<usize>,
    misses: u32,
    /// Entries before this index have been predicted already.
    queued_until: usize,
    /// Positions the last read could have been at, when not locked.
    candidates: Vec<usize>,
}

impl Matcher {
    pub fn locked(&self) -> bool {
        self.pos.is_some()
    }

    /// One live read of chunks `first..=last`. Appends to `out` the chunks of the sequence
    /// now predicted (each entry at most once per lock), up to `ahead` entries past the
    /// position.
    pub fn step(&mut self, plan: &Plan, first: u64, last: u64, ahead: usize, out: &mut Vec<u64>) {
        let seq = &plan.sequence;
        if seq.is_empty() {
            return;
        }
        let hit = |i: usize| seq.get(i).is_some_and(|&c| (first..=last).contains(&c));
        // First entry at or after `from` (within the window) the read covers.
        let find = |from: usize| (from..(from + WINDOW).min(seq.len())).find(|&i| hit(i));
        match self.pos {
            Some(p) => {
                if p > 0 && hit(p - 1) {
                    // The same chunk again (a read split in pieces): no news.
                    self.misses = 0;
                } else if let Some(j) = find(p) {
                    self.advance(j, seq.len(), &hit);
                } else {
                    self.misses += 1;
                    if self.misses > MISSES_MAX {
                        self.pos = None;
                        self.candidates = self.positions_of(plan, first, last);
                    }
                    return;
                }
            }
            None => {
                let found = self.candidates.iter().find_map(|&c| find(c + 1));
                match found {
                    Some(j) => {
                        self.queued_until = 0;
                        self.advance(j, seq.len(), &hit);
                        self.candidates.clear();
                    }
                    None => {
                        self.candidates = self.positions_of(plan, first, last);
                        return;
                    }
                }
            }
        }
        let Some(p) = self.pos else { return };
        let from = self.queued_until.max(p);
        let to = p.saturating_add(ahead).min(seq.len());
        if from < to {
            out.extend_from_slice(&seq[from..to]);
            self.queued_until = to;
        }
    }

    /// Locks at entry `j` (covered by the read) and steps past every following entry the
    /// same read covers.
    fn advance(&mut self, j: usize, len: usize, hit: &impl Fn(usize) -> bool) {
        let mut p = j + 1;
        while p < len && hit(p) {
            p += 1;
        }
        self.pos = Some(p);
        self.misses = 0;
    }

    fn positions_of(&self, plan: &Plan, first: u64, last: u64) -> Vec<usize> {
        let mut out = Vec::new();
        // A long read is represented by its first chunks; enough to find where it was.
        for c in (first..=last).take(4) {
            if let Some(ps) = plan.positions.get(&c) {
                out.extend(ps.iter().map(|&p| p as usize));
            }
        }
        out.sort_unstable();
        out.dedup();
        out.truncate(CANDIDATES_MAX);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Geometry;

    fn plan(seq: &[u64]) -> Plan {
        let geo = Geometry::new(1 << 30, 4096, 1);
        let reads = seq.iter().map(|&c| (c * 4096, 4096));
        let (ranked, sequence) = super::super::plan::rank_and_sequence(reads, &geo);
        let mut p = Plan::build(None, Vec::new(), &geo);
        p.ranked = ranked;
        p.positions = {
            let mut m = std::collections::HashMap::<u64, Vec<u32>>::new();
            for (i, &c) in sequence.iter().enumerate() {
                m.entry(c).or_default().push(i as u32);
            }
            m
        };
        p.sequence = sequence;
        p
    }

    fn read(m: &mut Matcher, p: &Plan, c: u64, ahead: usize) -> Vec<u64> {
        let mut out = Vec::new();
        m.step(p, c, c, ahead, &mut out);
        out
    }

    #[test]
    fn locks_after_two_reads_and_predicts_ahead() {
        let seq: Vec<u64> = (0..50).map(|i| 1000 + i * 7).collect();
        let p = plan(&seq);
        let mut m = Matcher::default();
        assert!(read(&mut m, &p, 1000, 4).is_empty());
        assert!(!m.locked());
        assert_eq!(read(&mut m, &p, 1007, 4), [1014, 1021, 1028, 1035]);
        assert!(m.locked());
        // Next expected read: only the entry newly in reach is added.
        assert_eq!(read(&mut m, &p, 1014, 4), [1042]);
        // Same chunk again: nothing new, still locked.
        assert!(read(&mut m, &p, 1014, 4).is_empty());
    }

    #[test]
    fn tolerates_skips_and_foreign_reads() {
        let seq: Vec<u64> = (0..100).collect();
        let p = plan(&seq);
        let mut m = Matcher::default();
        read(&mut m, &p, 10, 8);
        read(&mut m, &p, 11, 8);
        assert!(m.locked());
        // A few reads the recording never saw: the position holds.
        for foreign in [5000, 6000, 7000] {
            assert!(read(&mut m, &p, foreign, 8).is_empty());
            assert!(m.locked());
        }
        // Skipping ahead within the window moves the position there.
        assert_eq!(
            read(&mut m, &p, 20, 8),
            (20..29).skip(1).collect::<Vec<_>>()
        );
        // Many foreign reads in a row lose it.
        for i in 0..=MISSES_MAX as u64 {
            read(&mut m, &p, 9000 + i, 8);
        }
        assert!(!m.locked());
        // ...and it locks again further on.
        read(&mut m, &p, 60, 8);
        assert_eq!(read(&mut m, &p, 61, 8), (62..70).collect::<Vec<_>>());
    }

    #[test]
    fn ambiguous_chunk_resolved_by_the_next_read() {
        // 7 appears twice; what follows it tells which one.
        let p = plan(&[7, 1, 2, 3, 7, 20, 21, 22, 23]);
        let mut m = Matcher::default();
        read(&mut m, &p, 7, 2);
        assert_eq!(read(&mut m, &p, 20, 2), [21, 22]);
    }

    #[test]
    fn empty_sequence_predicts_nothing() {
        let p = plan(&[]);
        let mut m = Matcher::default();
        assert!(read(&mut m, &p, 1, 8).is_empty());
        assert!(read(&mut m, &p, 2, 8).is_empty());
    }
}
