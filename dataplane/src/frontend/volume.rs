//! The volume as an NBD connection sees it, on whichever core the connection lives: byte
//! ranges split into chunk pieces, each piece sent to the core that owns its chunk.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;

use wire_format::frame::Class;

use super::error::VolError;
use super::gate::Gate;
use super::shard::Shard;
use crate::geometry::{Geometry, Piece};
use crate::runtime::{self, AlignedBuf, CoreHandle};

thread_local! {
    static SHARD: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
    static GATE: Rc<Gate> = Rc::new(Gate::default());
}

pub fn install_shard(shard: Rc<Shard>) {
    SHARD.with(|s| *s.borrow_mut() = Some(shard));
}

/// This core's shard. Panics if called on a thread that owns none (a bug, not input).
pub fn local_shard() -> Rc<Shard> {
    SHARD
        .with(|s| s.borrow().clone())
        .expect("no shard installed on this core")
}

pub fn local_gate() -> Rc<Gate> {
    GATE.with(|g| g.clone())
}

pub struct Volume {
    pub name: String,
    pub geo: Geometry,
    /// Smallest request granule (the target's O_DIRECT alignment), advertised over NBD.
    pub min_block: u32,
    pub handle: CoreHandle,
    pub resident: std::sync::Arc<crate::map::resident::ResidentMap>,
    /// This core's handle on the access-pattern recording, if one is being made.
    pub recorder: Option<crate::recording::RecordSink>,
    /// The dedup indexer, told of every request admitted so it yields to the workload.
    pub indexer: Option<std::sync::Arc<crate::dedup::backfill::Backfill>>,
}

impl Volume {
    /// Runs `f` with the shard that owns `chunk`: directly when that is this core, else as a
    /// message to the owner core.
    pub async fn on_owner<T, F, Fut>(&self, chunk: u64, f: F) -> T
    where
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let owner = self.geo.owner(chunk);
        if owner == runtime::current_core() {
            f(local_shard()).await
        } else {
            self.handle.call(owner, move || f(local_shard())).await
        }
    }

    /// Runs `f` on every core's shard and collects the results in core order.
    pub async fn on_all<T, F, Fut>(&self, f: F) -> Vec<T>
    where
        F: Fn(Rc<Shard>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let calls = (0..self.geo.cores).map(|core| {
            let f = f.clone();
            let handle = self.handle.clone();
            async move {
                if core == runtime::current_core() {
                    f(local_shard()).await
                } else {
                    handle.call(core, move || f(local_shard())).await
                }
            }
        });
        futures::future::join_all(calls).await
    }

    /// Reads a range that lies in one stripe (one owner), see [`Geometry::segments`]. When
    /// every chunk of it is resident the read needs no owner: this core reads its own target
    /// fd (a read changes no state). Otherwise the owner fetches what is missing.
    pub async fn read_range(
        &self,
        offset: u64,
        len: u32,
        mut buf: AlignedBuf,
    ) -> Result<AlignedBuf, VolError> {
        let cs = u64::from(self.geo.chunk_size_bytes);
        let first = offset / cs;
        let last = (offset + u64::from(len) - 1) / cs;
        let resident = self.resident.all_set(first, last);
        // Every read served here counts for the hit rate and drives the prediction.
        crate::prefetch::local::on_read(self, first, last, resident);
        if resident {
            buf.set_len(len as usize);
            let (res, buf) = local_shard().target.read_exact_at(buf, offset).await;
            res.map_err(|e| VolError::target("read", offset, &e))?;
            return Ok(buf);
        }
        self.on_owner(first, move |s| async move {
            s.read_range(offset, len, buf).await
        })
        .await
    }

    pub async fn write_piece(&self, p: Piece, buf: AlignedBuf) -> Result<AlignedBuf, VolError> {
        self.on_owner(p.chunk, move |s| async move { s.write_piece(p, buf).await })
            .await
    }

    pub async fn zero_piece(
        &self,
        p: Piece,
        trim: bool,
        scratch: AlignedBuf,
    ) -> Result<AlignedBuf, VolError> {
        self.on_owner(p.chunk, move |s| async move {
            s.zero_piece(p, trim, scratch).await
        })
        .await
    }

    /// Makes sure every chunk of the range is on the target: one on-demand request per owner
    /// for all missing chunks, then waits for them.
    pub async fn ensure_local(&self, offset: u64, len: u64) -> Result<(), VolError> {
        let cs = u64::from(self.geo.chunk_size_bytes);
        if len == 0 || self.resident.all_set(offset / cs, (offset + len - 1) / cs) {
            return Ok(());
        }
        let mut by_owner: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for p in self.geo.pieces(offset, len) {
            let list = by_owner.entry(self.geo.owner(p.chunk)).or_default();
            if list.last() != Some(&p.chunk) {
                list.push(p.chunk);
            }
        }
        let calls = by_owner.into_values().map(|chunks| {
            let first = chunks[0];
            self.on_owner(first, move |s| async move {
                s.start_fetch(&chunks, Class::OnDemand, None);
                for c in chunks {
                    s.ensure_fetched(c).await?;
                }
                Ok::<(), VolError>(())
            })
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// Makes every completed write durable, on every core (NBD FLUSH; multi-conn safe since
    /// it covers writes acknowledged on any connection).
    pub async fn flush(&self) -> Result<(), VolError> {
        for r in self.on_all(|s| async move { s.sync().await }).await {
            r?;
        }
        Ok(())
    }

    /// Makes the writes of the given chunks durable (FUA), syncing only their owners.
    pub async fn sync_owners_of(&self, offset: u64, len: u64) -> Result<(), VolError> {
        let mut owners: Vec<u64> = Vec::new();
        let mut seen = vec![false; self.geo.cores];
        for p in self.geo.pieces(offset, len) {
            let o = self.geo.owner(p.chunk);
            if !seen[o] {
                seen[o] = true;
                owners.push(p.chunk);
            }
        }
        let calls = owners
            .into_iter()
            .map(|c| self.on_owner(c, |s| async move { s.sync().await }));
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }
}

thread_local! {
    static VOLUME: RefCell<Option<Rc<Volume>>> = const { RefCell::new(None) };
}

pub fn install_volume(vol: Rc<Volume>) {
    VOLUME.with(|v| *v.borrow_mut() = Some(vol));
}

/// This core's view of the volume. Panics on a thread that is not a frontend core (a bug).
pub fn local_volume() -> Rc<Volume> {
    VOLUME
        .with(|v| v.borrow().clone())
        .expect("no volume installed on this core")
}
