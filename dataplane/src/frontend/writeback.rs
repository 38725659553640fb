//! Abort: every `Dirty` chunk goes back to the source, every `Zero` range is zeroed there, and
//! a Sync makes it durable before abort reports success. Runs with the export drained and
//! hydration held, so no chunk changes underneath it.

use std::rc::Rc;

use futures::StreamExt;
use wire_format::state::ChunkState;

use super::shard::Shard;
use crate::runtime;

/// Write-backs in flight per shard: enough to fill a long link without flooding the backend.
const WRITE_BACKS_IN_FLIGHT: usize = 16;

enum Job {
    Data(u64),
    Zero { offset: u64, len: u64 },
}

impl Shard {
    /// Returns the number of chunks written back.
    pub async fn write_back_all(self: &Rc<Self>) -> Result<u64, String> {
        let link = self.on_demand.get().await.map_err(|e| e.to_string())?;
        let mut jobs = Vec::new();
        let mut zero_run: Option<(u64, u64)> = None;
        for c in self.geo.owned_chunks_from(self.id, 0) {
            let off = self.geo.chunk_offset(c);
            let len = u64::from(self.geo.chunk_len(c));
            match self.state(c) {
                ChunkState::Zero => match &mut zero_run {
                    Some((start, l)) if *start + *l == off => *l += len,
                    _ => {
                        if let Some((offset, len)) = zero_run.take() {
                            jobs.push(Job::Zero { offset, len });
                        }
                        zero_run = Some((off, len));
                    }
                },
                state => {
                    if let Some((offset, len)) = zero_run.take() {
                        jobs.push(Job::Zero { offset, len });
                    }
                    if state == ChunkState::Dirty {
                        jobs.push(Job::Data(c));
                    }
                }
            }
        }
        if let Some((offset, len)) = zero_run.take() {
            jobs.push(Job::Zero { offset, len });
        }
        let pool = runtime::buf_pool();
        let results: Vec<Result<u64, String>> = futures::stream::iter(jobs)
            .map(|job| {
                let link = link.clone();
                let pool = pool.clone();
                async move {
                    match job {
                        Job::Zero { offset, len } => {
                            link.write_zeroes(offset, len)
                                .await
                                .map_err(|e| e.to_string())?;
                            Ok(0)
                        }
                        Job::Data(c) => {
                            let offset = self.geo.chunk_offset(c);
                            let mut buf = pool.take().await;
                            buf.set_len(self.geo.chunk_len(c) as usize);
                            let (res, buf) = self.target.read_exact_at(buf, offset).await;
                            res.map_err(|e| format!("reading chunk {c} from the target: {e}"))?;
                            link.write_back(offset, &buf)
                                .await
                                .map_err(|e| format!("chunk {c}: {e}"))?;
                            Ok(1)
                        }
                    }
                }
            })
            .buffer_unordered(WRITE_BACKS_IN_FLIGHT)
            .collect()
            .await;
        let mut written = 0;
        for r in results {
            written += r?;
        }
        link.sync()
            .await
            .map_err(|e| format!("making the source durable: {e}"))?;
        self.stats.written_back_chunks.set(written);
        Ok(written)
    }
}
