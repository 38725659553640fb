//! Per core: this shard's class queues and counters, and the hook that sees every read this
//! core serves (sequence matching, neighbours, hit rate).

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use wire_format::state::ChunkState;

use super::plan::{Plan, NO_CLASS};
use super::queue::{Class, ClassQueues};
use super::sequence::Matcher;
use super::{DYNAMIC_CAP, NEIGHBOURS, SEQUENCE_AHEAD};
use crate::frontend::shard::Shard;
use crate::frontend::volume::{local_shard, Volume};
use crate::geometry::Geometry;

pub struct ShardPrefetch {
    plan: Arc<Plan>,
    core: usize,
    queues: RefCell<ClassQueues>,
    last_class: Cell<Option<Class>>,
    /// This shard found nothing left to hydrate (counted once in `plan.shards_hydrating`).
    finished: Cell<bool>,
    batches: [Cell<u64>; 5],
    /// Follows the reads served on this core (whatever shard owns them).
    matcher: RefCell<Matcher>,
    reads: Cell<u64>,
    hits: Cell<u64>,
    /// Misses of this shard's chunks that a background batch was already carrying.
    late: Cell<u64>,
    /// Last chunk of the previous read served on this core: neighbours are queued only for
    /// a read that continues it.
    last_read: Cell<Option<u64>>,
}

/// One shard's prefetch numbers, for status.
#[derive(Debug, Clone, Default)]
pub struct PrefetchNumbers {
    pub class: Option<Class>,
    pub finished: bool,
    pub reads: u64,
    pub hits: u64,
    pub late: u64,
    pub batches: [u64; 5],
    pub recording: Option<String>,
}

impl ShardPrefetch {
    pub fn new(plan: Arc<Plan>, geo: &Geometry, core: usize) -> ShardPrefetch {
        let queues = ClassQueues::new(geo, core, &plan.ranked, &plan.hot, DYNAMIC_CAP);
        ShardPrefetch {
            plan,
            core,
            queues: RefCell::new(queues),
            last_class: Cell::new(None),
            finished: Cell::new(false),
            batches: Default::default(),
            matcher: RefCell::new(Matcher::default()),
            reads: Cell::new(0),
            hits: Cell::new(0),
            late: Cell::new(0),
            last_read: Cell::new(None),
        }
    }

    /// Fills the next background batch (`batch` empty) with up to `max` chunks.
    pub fn fill(&self, shard: &Shard, batch: &mut Vec<u64>, max: usize) -> Option<Class> {
        let eligible = |c: u64| {
            shard.state(c) == ChunkState::Untouched
                && shard.existing_slot(c).is_none_or(|s| !s.fetching.get())
        };
        let class = self
            .queues
            .borrow_mut()
            .fill(&shard.geo, batch, max, eligible);
        let published = class.map_or(NO_CLASS, |c| c.index() as u8);
        self.plan.classes[self.core].store(published, Ordering::Relaxed);
        if let Some(class) = class {
            self.last_class.set(Some(class));
            let n = &self.batches[class.index()];
            n.set(n.get() + 1);
        } else if shard.counts()[ChunkState::Untouched.code() as usize] == 0
            && !self.finished.replace(true)
        {
            self.plan.shards_hydrating.fetch_sub(1, Ordering::Relaxed);
        }
        class
    }

    /// Another core is still fetching a higher class than `class`: this core's batch should
    /// wait, or its lower-priority chunks would take half the link from the workload's.
    pub fn outranked(&self, class: Class) -> bool {
        let mine = class.index() as u8;
        self.plan
            .classes
            .iter()
            .enumerate()
            .any(|(core, c)| core != self.core && c.load(Ordering::Relaxed) < mine)
    }

    /// A batch held back (`outranked`) is not this core's class any more: publish nothing,
    /// so cores never wait for each other's held batches.
    pub fn hold(&self) {
        self.plan.classes[self.core].store(NO_CLASS, Ordering::Relaxed);
    }

    /// A filled batch that was not sent goes out first next time.
    pub fn requeue(&self, batch: &[u64]) {
        let class = self.last_class.get().unwrap_or(Class::InOrder);
        self.queues.borrow_mut().requeue(batch, class);
    }

    /// In-order starts over (what is left was in flight or failed).
    pub fn restart(&self) {
        self.queues.borrow_mut().restart();
    }

    /// A read of this shard's chunks missed, but every missing chunk was already on its way
    /// in a background batch: the prefetch chose right and was late (the read waits for that
    /// batch, not a round trip of its own).
    pub fn note_late(&self) {
        if self.plan.shards_hydrating.load(Ordering::Relaxed) > 0 {
            self.late.set(self.late.get() + 1);
        }
    }

    /// Queues chunks of this shard in a dynamic class.
    pub fn push(&self, class: Class, chunks: Vec<u64>) {
        self.queues.borrow_mut().push(class, chunks);
    }

    pub fn numbers(&self) -> PrefetchNumbers {
        PrefetchNumbers {
            class: self.last_class.get(),
            finished: self.finished.get(),
            reads: self.reads.get(),
            hits: self.hits.get(),
            late: self.late.get(),
            batches: std::array::from_fn(|i| self.batches[i].get()),
            recording: self
                .plan
                .recording
                .as_ref()
                .map(|p| p.display().to_string()),
        }
    }
}

/// The class `ferry status` shows: "done" once nothing is `Untouched`, else the highest class
/// any unfinished shard's last batch came from ("starting" before the first batch).
pub fn class_name(parts: &[PrefetchNumbers], untouched: u64) -> String {
    if untouched == 0 {
        return "done".into();
    }
    parts
        .iter()
        .filter(|p| !p.finished)
        .filter_map(|p| p.class)
        .min()
        .map_or("starting", Class::name)
        .into()
}

/// Called for every read this core serves (`Volume::read_range`), chunks `first..=last`,
/// `resident` when all of them were on the target already. Counts the hit rate while the
/// migration runs, moves the sequence matcher, and queues what it predicts and, after a miss
/// that continues the previous read, the neighbours — each chunk on its owner core.
pub fn on_read(vol: &Volume, first: u64, last: u64, resident: bool) {
    let shard = local_shard();
    let me = &shard.prefetch;
    if me.plan.shards_hydrating.load(Ordering::Relaxed) == 0 {
        return;
    }
    me.reads.set(me.reads.get() + 1);
    if resident {
        me.hits.set(me.hits.get() + 1);
    }
    let mut predicted = Vec::new();
    me.matcher
        .borrow_mut()
        .step(&me.plan, first, last, SEQUENCE_AHEAD, &mut predicted);
    send(vol, Class::Sequence, predicted);
    // Like kernel readahead: only a read that continues the previous one (a file read going
    // on) predicts its neighbours. After random reads they would be fetched for nothing, and
    // a later read of one of them would wait for the background batch carrying it.
    let continues = me
        .last_read
        .replace(Some(last))
        .is_some_and(|prev| first <= prev.saturating_add(1) && last >= prev);
    if !resident && continues {
        let end = last
            .saturating_add(NEIGHBOURS)
            .min(vol.geo.chunk_count.saturating_sub(1));
        send(vol, Class::Neighbours, (last + 1..=end).collect());
    }
}

/// Sends each non-resident chunk to its owner's queue: directly on this core, else posted
/// (fire and forget: a lost hint costs nothing).
fn send(vol: &Volume, class: Class, chunks: Vec<u64>) {
    if chunks.is_empty() {
        return;
    }
    let me = crate::runtime::current_core();
    let mut by_owner: Vec<Vec<u64>> = vec![Vec::new(); vol.geo.cores];
    for c in chunks {
        if c < vol.geo.chunk_count && !vol.resident.is_set(c) {
            by_owner[vol.geo.owner(c)].push(c);
        }
    }
    for (owner, list) in by_owner.into_iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        if owner == me {
            local_shard().prefetch.push(class, list);
        } else {
            vol.handle
                .post(owner, move || local_shard().prefetch.push(class, list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_class_is_the_highest_of_unfinished_shards() {
        let p = |class, finished| PrefetchNumbers {
            class,
            finished,
            ..Default::default()
        };
        let parts = [
            p(Some(Class::InOrder), false),
            p(Some(Class::Recording), true),
            p(Some(Class::FsMetadata), false),
        ];
        assert_eq!(class_name(&parts, 5), "fs-metadata");
        assert_eq!(class_name(&parts, 0), "done");
        assert_eq!(class_name(&[p(None, false)], 5), "starting");
    }
}
