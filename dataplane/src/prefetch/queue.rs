//! One shard's class queues, and the batch filler background hydration calls.
//!
//! Static classes (recording, fs-metadata) are the plan's lists cut to the chunks this shard
//! owns, consumed by a cursor; dynamic classes (sequence, neighbours) are bounded FIFOs that
//! drop their oldest entries; in-order is a cursor over the owned chunks. An entry is only a
//! hint: `fill` asks `eligible` (still `Untouched`, not being fetched) before taking it.

use std::collections::VecDeque;

use crate::geometry::Geometry;

/// Priority classes, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Sequence,
    Recording,
    FsMetadata,
    Neighbours,
    InOrder,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Sequence,
        Class::Recording,
        Class::FsMetadata,
        Class::Neighbours,
        Class::InOrder,
    ];

    /// The name in `ferry status` and metrics (stable).
    pub fn name(self) -> &'static str {
        match self {
            Class::Recording => "recording",
            Class::Sequence => "sequence",
            Class::FsMetadata => "fs-metadata",
            Class::Neighbours => "neighbours",
            Class::InOrder => "in-order",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
pub struct ClassQueues {
    core: usize,
    recording: Vec<u64>,
    recording_at: usize,
    hot: Vec<u64>,
    hot_at: usize,
    sequence: VecDeque<u64>,
    neighbours: VecDeque<u64>,
    cap: usize,
    in_order: u64,
    /// A batch that was filled but not sent (paused while it waited for its tokens): it goes
    /// out first, as the class it was taken from.
    retry: Vec<u64>,
    retry_class: Class,
}

impl ClassQueues {
    /// `recording` and `hot` are whole-volume lists in priority order; only `core`'s chunks
    /// are kept.
    pub fn new(geo: &Geometry, core: usize, recording: &[u64], hot: &[u64], cap: usize) -> Self {
        let mine = |l: &[u64]| -> Vec<u64> {
            l.iter()
                .copied()
                .filter(|&c| c < geo.chunk_count && geo.owner(c) == core)
                .collect()
        };
        ClassQueues {
            core,
            recording: mine(recording),
            recording_at: 0,
            hot: mine(hot),
            hot_at: 0,
            sequence: VecDeque::new(),
            neighbours: VecDeque::new(),
            cap: cap.max(1),
            in_order: 0,
            retry: Vec::new(),
            retry_class: Class::InOrder,
        }
    }

    /// Queues predicted or neighbouring chunks (dynamic classes only; the caller sends only
    /// this shard's chunks).
    pub fn push(&mut self, class: Class, chunks: impl IntoIterator<Item = u64>) {
        let (q, cap) = match class {
            Class::Sequence => (&mut self.sequence, self.cap),
            Class::Neighbours => (&mut self.neighbours, self.cap),
            _ => return,
        };
        for c in chunks {
            if q.len() == cap {
                q.pop_front();
            }
            q.push_back(c);
        }
    }

    pub fn queued(&self, class: Class) -> usize {
        match class {
            Class::Recording => self.recording.len() - self.recording_at,
            Class::Sequence => self.sequence.len(),
            Class::FsMetadata => self.hot.len() - self.hot_at,
            Class::Neighbours => self.neighbours.len(),
            Class::InOrder => 0,
        }
    }

    /// Puts a batch back to be taken first next time.
    pub fn requeue(&mut self, batch: &[u64], class: Class) {
        self.retry.clear();
        self.retry.extend_from_slice(batch);
        self.retry_class = class;
    }

    /// In-order starts over from the first chunk (what is left was in flight or failed).
    pub fn restart(&mut self) {
        self.in_order = 0;
    }

    /// Fills `batch` (empty) with up to `max` eligible chunks, highest class first, going on
    /// to lower classes while there is room. Returns the class of the first chunk taken.
    pub fn fill(
        &mut self,
        geo: &Geometry,
        batch: &mut Vec<u64>,
        max: usize,
        eligible: impl Fn(u64) -> bool,
    ) -> Option<Class> {
        let mut first: Option<Class> = None;
        let mut take = |c: u64, class: Class, batch: &mut Vec<u64>| {
            // Classes overlap; a batch is small (≤ 1024), so a scan is cheaper than a set.
            if eligible(c) && !batch.contains(&c) {
                batch.push(c);
                first.get_or_insert(class);
            }
            batch.len() == max
        };
        if !self.retry.is_empty() {
            let class = self.retry_class;
            for c in std::mem::take(&mut self.retry) {
                if take(c, class, batch) {
                    return first;
                }
            }
        }
        for class in Class::ALL {
            match class {
                Class::Recording | Class::FsMetadata => {
                    let (list, at) = if class == Class::Recording {
                        (&self.recording, &mut self.recording_at)
                    } else {
                        (&self.hot, &mut self.hot_at)
                    };
                    while let Some(&c) = list.get(*at) {
                        *at += 1;
                        if take(c, class, batch) {
                            return first;
                        }
                    }
                }
                Class::Sequence | Class::Neighbours => {
                    let q = if class == Class::Sequence {
                        &mut self.sequence
                    } else {
                        &mut self.neighbours
                    };
                    while let Some(c) = q.pop_front() {
                        if take(c, class, batch) {
                            return first;
                        }
                    }
                }
                Class::InOrder => {
                    for c in geo.owned_chunks_from(self.core, self.in_order) {
                        self.in_order = c + 1;
                        if take(c, class, batch) {
                            return first;
                        }
                    }
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    fn geo() -> Geometry {
        // 3000 chunks, 2 cores: core 0 owns 0..1024 and 2048..3000.
        Geometry::new(3000 * 4096, 4096, 2)
    }

    #[test]
    fn classes_in_priority_order_with_cascade_and_skip() {
        let g = geo();
        let mut q = ClassQueues::new(&g, 0, &[50, 1500, 7, 2100], &[0, 1, 50], 100);
        q.push(Class::Neighbours, [900, 901]);
        q.push(Class::Sequence, [300, 7]);
        let done: RefCell<HashSet<u64>> = RefCell::new([1].into_iter().collect());
        let eligible = |c: u64| !done.borrow().contains(&c);
        let mut b = Vec::new();
        // Sequence, then recording (1500 is core 1's, 7 taken already), fs-metadata (1 is
        // not Untouched, 50 taken), neighbours, in-order.
        assert_eq!(q.fill(&g, &mut b, 10, eligible), Some(Class::Sequence));
        assert_eq!(b, [300, 7, 50, 2100, 0, 900, 901, 2, 3, 4]);
        done.borrow_mut().extend(b.iter().copied());
        b.clear();
        assert_eq!(q.fill(&g, &mut b, 3, eligible), Some(Class::InOrder));
        assert_eq!(b, [5, 6, 8]);
    }

    #[test]
    fn batch_full_stops_within_a_class_and_resumes_there() {
        let g = geo();
        let mut q = ClassQueues::new(&g, 0, &[10, 11, 12, 13, 14], &[], 100);
        let mut b = Vec::new();
        assert_eq!(q.fill(&g, &mut b, 2, |_| true), Some(Class::Recording));
        assert_eq!(b, [10, 11]);
        b.clear();
        q.fill(&g, &mut b, 2, |_| true);
        assert_eq!(b, [12, 13]);
        // Not sent: it comes back first, as its class.
        q.requeue(&b, Class::Recording);
        b.clear();
        assert_eq!(q.fill(&g, &mut b, 3, |_| true), Some(Class::Recording));
        assert_eq!(b, [12, 13, 14]);
    }

    #[test]
    fn dynamic_queues_are_bounded_oldest_dropped() {
        let g = geo();
        let mut q = ClassQueues::new(&g, 0, &[], &[], 4);
        q.push(Class::Sequence, 100..110);
        assert_eq!(q.queued(Class::Sequence), 4);
        let mut b = Vec::new();
        assert_eq!(q.fill(&g, &mut b, 4, |_| true), Some(Class::Sequence));
        assert_eq!(b, [106, 107, 108, 109]);
        // Static classes ignore pushes.
        q.push(Class::Recording, [1]);
        assert_eq!(q.queued(Class::Recording), 0);
    }

    #[test]
    fn in_order_skips_other_cores_stripes_and_restarts() {
        let g = geo();
        let mut q = ClassQueues::new(&g, 1, &[], &[], 8);
        let mut b = Vec::new();
        q.fill(&g, &mut b, 2, |_| true);
        assert_eq!(b, [1024, 1025]);
        b.clear();
        // Nothing eligible: empty batch, cursor at the end.
        assert_eq!(q.fill(&g, &mut b, 2, |_| false), None);
        assert!(b.is_empty());
        q.restart();
        q.fill(&g, &mut b, 1, |c| c == 1500);
        assert_eq!(b, [1500]);
    }
}
