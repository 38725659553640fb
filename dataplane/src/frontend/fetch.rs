//! Fetching chunks from the backend and filling them into the target.
//!
//! * One fetch per chunk: `start_fetch` skips chunks already being fetched; `ensure_fetched`
//!   waits for the fetch in flight rather than asking again.
//! * A bad reply (wrong length, unknown chunk, corrupt frame — the link drops those) is never
//!   stored: the link is closed and the chunk is asked for again on a fresh connection, up to
//!   `FETCH_ATTEMPTS_MAX` times, then readers get EIO and the chunk stays `Untouched`.
//! * Late fetches lose: `fill` drops data for a chunk that was superseded or is no longer
//!   `Untouched`.
//! * Pieces (`CAP_BLOCK_REFS`): blocks the backend named by where it sent them before are read
//!   back from the target once that chunk is resident (any core's; it may still be on its way
//!   on another connection, so background fills wait up to [`BLOCK_REF_WAIT`], on-demand ones
//!   not at all) and used only if they hash to the digest sent; otherwise the chunk is fetched
//!   again as data.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wire_format::frame::{BlockRef, Class, BLOCK_LEN};
use wire_format::state::ChunkState;

use super::error::VolError;
use super::shard::Shard;
use crate::dedup::{Digest, DigestHint};
use crate::link::client::{BackendLink, Reply};
use crate::link::LinkError;
use crate::runtime::{self, AlignedBuf};

pub const FETCH_ATTEMPTS_MAX: u32 = 4;
/// Longest wait for the next reply of a fetch before the link is declared dead: a backend
/// that stops answering must not hang readers forever.
pub const FETCH_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the chunk holding a named block to land: it was sent before this one,
/// but maybe on another core's connection, behind that socket's buffer on a slow link.
pub const BLOCK_REF_WAIT: Duration = Duration::from_secs(10);
/// How often a wait for a named block's chunk looks again.
const BLOCK_REF_POLL: Duration = Duration::from_millis(2);

enum Fill {
    /// With what is known of the content's SHA-256: a `Known` digest (sent by the backend,
    /// or checked while resolving a reference) needs no hashing here.
    Data(AlignedBuf, DigestHint),
    Zero,
    /// Content this machine holds, named by digest (dedup).
    Ref(Digest),
    /// Literal blocks in place; the named ones still to be copied from the target.
    Pieces(AlignedBuf, Vec<BlockRef>),
}

/// Named blocks further apart than this on the target are read separately.
const SPAN_GAP: u64 = 64 * 1024;
/// Longest read of named blocks.
const SPAN_MAX: u64 = 256 * 1024;

/// A range of the target read once for the named blocks in it (`members`, indices into the
/// references).
struct Span {
    start: u64,
    end: u64,
    members: Vec<usize>,
}

/// Groups references by where they point: the copies of small files named by one chunk mostly
/// lie close together on the target, and one larger read costs about what one 4 KiB read does.
/// Offsets past `u64::MAX - BLOCK_LEN` (only a lying backend sends them; the decoder refuses
/// them) end a span where they are.
fn spans(refs: &[BlockRef]) -> Vec<Span> {
    let mut order: Vec<usize> = (0..refs.len()).collect();
    order.sort_by_key(|&i| refs[i].offset);
    let mut spans: Vec<Span> = Vec::new();
    for i in order {
        let start = refs[i].offset;
        let end = start.saturating_add(BLOCK_LEN as u64);
        match spans.last_mut() {
            Some(s) if start <= s.end.saturating_add(SPAN_GAP) && end - s.start <= SPAN_MAX => {
                s.end = s.end.max(end);
                s.members.push(i);
            }
            _ => spans.push(Span {
                start,
                end,
                members: vec![i],
            }),
        }
    }
    spans
}

impl Shard {
    /// Returns once `chunk` is no longer `Untouched`, fetching it on demand if nobody is.
    pub async fn ensure_fetched(self: &Rc<Self>, chunk: u64) -> Result<(), VolError> {
        loop {
            if self.state(chunk) != ChunkState::Untouched {
                return Ok(());
            }
            match self.existing_slot(chunk).filter(|s| s.fetching.get()) {
                Some(slot) => {
                    slot.changed.wait().await;
                    if !slot.fetching.get() && self.state(chunk) == ChunkState::Untouched {
                        if let Some(reason) = slot.fetch_error.borrow().clone() {
                            return Err(VolError::Fetch { chunk, reason });
                        }
                    }
                }
                None => {
                    self.start_fetch(&[chunk], Class::OnDemand, None);
                }
            }
        }
    }

    /// Starts one fetch request for those of `chunks` that are `Untouched` and not already
    /// being fetched. `done` runs when the request has finished (used to release a
    /// background permit). Returns how many chunks were asked for.
    pub fn start_fetch(
        self: &Rc<Self>,
        chunks: &[u64],
        class: Class,
        done: Option<Box<dyn FnOnce()>>,
    ) -> usize {
        let mut wanted = Vec::with_capacity(chunks.len());
        for &c in chunks {
            if self.state(c) != ChunkState::Untouched {
                continue;
            }
            let slot = self.slot(c);
            if slot.fetching.get() {
                continue;
            }
            slot.fetching.set(true);
            slot.background.set(class == Class::Background);
            slot.superseded.set(false);
            *slot.fetch_error.borrow_mut() = None;
            wanted.push(c);
        }
        let n = wanted.len();
        self.fetches_in_flight.set(self.fetches_in_flight.get() + n);
        let shard = self.clone();
        runtime::spawn(async move {
            if !wanted.is_empty() {
                shard.run_fetch(wanted, class).await;
            }
            if let Some(done) = done {
                done();
            }
        })
        .detach();
        n
    }

    /// The link for `class`, (re)connected if need be; its handshake teaches the window
    /// whether the path is a LAN.
    async fn link(&self, class: Class) -> Result<Rc<BackendLink>, LinkError> {
        let slot = match class {
            Class::OnDemand => &self.on_demand,
            Class::Background => &self.background,
        };
        let link = slot.get().await?;
        self.background_cap.path_rtt(link.handshake_rtt());
        Ok(link)
    }

    async fn run_fetch(self: &Rc<Self>, chunks: Vec<u64>, class: Class) {
        let mut remaining: BTreeSet<u64> = chunks.into_iter().collect();
        let mut fills = Vec::with_capacity(remaining.len());
        let t0 = std::time::Instant::now();
        let first_chunk = remaining.first().copied();
        let mut first_reply_us = 0u128;
        let mut attempt = 0u32;
        let mut last_error = String::new();
        while !remaining.is_empty() {
            if attempt > 0 {
                self.count_retry();
                runtime::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            attempt += 1;
            let link = match self.link(class).await {
                Ok(l) => l,
                Err(e) => {
                    last_error = e.to_string();
                    if attempt >= FETCH_ATTEMPTS_MAX {
                        break;
                    }
                    continue;
                }
            };
            let want: Vec<u64> = remaining.iter().copied().collect();
            let before = remaining.len();
            let link_bound = self.background_cap.link_bound();
            let mut replies = match link.fetch(class, false, link_bound, &want).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    if attempt >= FETCH_ATTEMPTS_MAX {
                        break;
                    }
                    continue;
                }
            };
            while !remaining.is_empty() {
                let reply = match runtime::timeout(FETCH_REPLY_TIMEOUT, replies.next()).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        last_error = "backend link broke before all chunks arrived".into();
                        break;
                    }
                    Err(_) => {
                        last_error =
                            format!("no reply from the backend for {FETCH_REPLY_TIMEOUT:?}");
                        link.kill();
                        break;
                    }
                };
                let (chunk, fill) = match reply {
                    Reply::Data { chunk, buf, digest } => (chunk, Fill::Data(buf, digest)),
                    Reply::Pieces { chunk, buf, refs } => (chunk, Fill::Pieces(buf, refs)),
                    Reply::Zero { chunk } => (chunk, Fill::Zero),
                    Reply::Ref { chunk, digest } if self.dedup.is_some() => {
                        (chunk, Fill::Ref(digest))
                    }
                    Reply::Ref { chunk, .. } => {
                        last_error = format!(
                            "backend answered chunk {chunk} by reference, which was not offered"
                        );
                        link.kill();
                        break;
                    }
                    Reply::ChunkError {
                        chunk,
                        code,
                        message,
                    } if remaining.contains(&chunk) => {
                        remaining.remove(&chunk);
                        self.answered(class);
                        self.fetch_failed(chunk, format!("backend: {code:?}: {message}"));
                        continue;
                    }
                    Reply::ChunkError { chunk, .. } => {
                        last_error =
                            format!("backend answered for chunk {chunk}, which was not asked for");
                        link.kill();
                        break;
                    }
                    Reply::Error { code, message } => {
                        last_error = format!("backend: {code:?}: {message}");
                        link.kill();
                        break;
                    }
                    Reply::Ack => {
                        last_error = "backend answered a fetch with Ack".into();
                        link.kill();
                        break;
                    }
                };
                let expected_len = self.geo.chunk_len(chunk) as usize;
                let bad = if !remaining.contains(&chunk) {
                    Some(format!(
                        "backend sent chunk {chunk}, which was not asked for"
                    ))
                } else if let Fill::Data(b, _) | Fill::Pieces(b, _) = &fill {
                    (b.len() != expected_len).then(|| {
                        format!("chunk {chunk}: {} bytes, expected {expected_len}", b.len())
                    })
                } else {
                    None
                };
                if let Some(reason) = bad {
                    tracing::warn!(%reason, "bad reply from backend; closing the link and refetching");
                    if let Fill::Data(b, _) | Fill::Pieces(b, _) = fill {
                        self.bufs.give(b);
                    }
                    last_error = reason;
                    link.kill();
                    break;
                }
                if first_reply_us == 0 {
                    let first = t0.elapsed();
                    first_reply_us = first.as_micros().max(1);
                    // Only a first attempt measures the path: a retry's time includes the
                    // back-off and the reconnect.
                    if attempt == 1 {
                        self.background_cap
                            .sample(first, class == Class::Background);
                    }
                }
                remaining.remove(&chunk);
                self.answered(class);
                // Fills of one request run concurrently: the target sees many writes in
                // flight instead of one 64 KiB write at a time.
                let shard = self.clone();
                fills.push(runtime::spawn(async move {
                    shard.fill(chunk, fill, class).await
                }));
            }
            if !remaining.is_empty() {
                tracing::warn!(attempt, remaining = remaining.len(), error = %last_error, "fetch incomplete; retrying");
                if remaining.len() < before {
                    // The link broke but this attempt made progress: only attempts that
                    // bring nothing count toward giving up (a long request behind a link
                    // that breaks now and then must not fail chunks that would arrive).
                    attempt = 0;
                } else if attempt >= FETCH_ATTEMPTS_MAX {
                    break;
                }
            }
        }
        for chunk in remaining {
            self.answered(class);
            self.fetch_failed(chunk, format!("{last_error} (after {attempt} attempts)"));
        }
        let got_us = t0.elapsed().as_micros();
        for f in fills {
            f.await;
        }
        let took_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency.borrow_mut().record(class, took_us);
        tracing::trace!(
            ?first_chunk,
            first_reply_us,
            got_us,
            filled_us = t0.elapsed().as_micros(),
            "fetch timing"
        );
    }

    /// One chunk of a request is answered (or given up): in the shared QoS mode its room
    /// under the background cap opens at once, not when the whole batch is stored, so the
    /// link stays full with a window of only a few chunks. The cap also learns what chunks
    /// cost on the wire.
    fn answered(&self, class: Class) {
        if class == Class::Background {
            self.background_cap.release(1);
            self.background_cap
                .answered(self.link_counters.wire_bytes.get());
        }
    }

    fn fetch_failed(&self, chunk: u64, reason: String) {
        tracing::error!(chunk, %reason, "fetch failed");
        self.stats
            .fetch_failures
            .set(self.stats.fetch_failures.get() + 1);
        let slot = self.slot(chunk);
        *slot.fetch_error.borrow_mut() = Some(reason);
        self.end_fetch(chunk, &slot);
    }

    fn end_fetch(&self, chunk: u64, slot: &super::shard::ChunkSlot) {
        slot.fetching.set(false);
        self.fetches_in_flight
            .set(self.fetches_in_flight.get().saturating_sub(1));
        self.fetches_changed.notify_all();
        slot.changed.notify_all();
        self.release(chunk);
    }

    /// Turns a reference into the content it names: read from where this machine holds it
    /// (checked against the digest), else fetched again as data.
    async fn resolve(
        self: &Rc<Self>,
        chunk: u64,
        fill: Fill,
        class: Class,
    ) -> Result<Fill, String> {
        let digest = match fill {
            Fill::Ref(digest) => digest,
            Fill::Pieces(buf, refs) => return self.resolve_pieces(chunk, buf, &refs, class).await,
            other => return Ok(other),
        };
        let len = self.geo.chunk_len(chunk);
        if let Some(d) = &self.dedup {
            if let Some(buf) = d.resolve(&digest, len, &self.bufs).await {
                self.stats
                    .deduped_chunks
                    .set(self.stats.deduped_chunks.get() + 1);
                self.stats
                    .deduped_bytes
                    .set(self.stats.deduped_bytes.get() + u64::from(len));
                return Ok(Fill::Data(buf, DigestHint::Known(digest)));
            }
        }
        self.stats.ref_misses.set(self.stats.ref_misses.get() + 1);
        self.fetch_as_data(chunk, class).await
    }

    /// Copies the named blocks of a `ChunkPieces` from the target; fetches the chunk again as
    /// data if any is not there as named.
    async fn resolve_pieces(
        self: &Rc<Self>,
        chunk: u64,
        mut buf: AlignedBuf,
        refs: &[BlockRef],
        class: Class,
    ) -> Result<Fill, String> {
        // A workload waits on an on-demand fill: a refetch costs it one round trip, a wait
        // for background data behind a full socket buffer could cost much more.
        let wait = match class {
            Class::OnDemand => Duration::ZERO,
            Class::Background => BLOCK_REF_WAIT,
        };
        let spans = spans(refs);
        let reads = spans.iter().map(|span| self.read_span(span, refs, wait));
        let got = futures::future::join_all(reads).await;
        let mut ok = true;
        for (span, data) in spans.iter().zip(&got) {
            let Some(data) = data else {
                ok = false;
                break;
            };
            for &i in &span.members {
                let r = &refs[i];
                let at = (r.offset - span.start) as usize;
                let block = &data[at..at + BLOCK_LEN];
                if crate::dedup::digest(block) != r.digest {
                    ok = false;
                    break;
                }
                let to = usize::from(r.block) * BLOCK_LEN;
                buf[to..to + BLOCK_LEN].copy_from_slice(block);
            }
        }
        if !ok {
            self.bufs.give(buf);
            self.stats
                .block_ref_misses
                .set(self.stats.block_ref_misses.get() + 1);
            return self.fetch_as_data(chunk, class).await;
        }
        self.stats
            .deduped_blocks
            .set(self.stats.deduped_blocks.get() + refs.len() as u64);
        Ok(Fill::Data(buf, DigestHint::Compute))
    }

    /// Reads one span of the target once the chunks of its named blocks are resident
    /// (waiting up to `wait`); `None` if it is out of the volume, a chunk does not arrive in
    /// time, or the read fails.
    async fn read_span(
        &self,
        span: &Span,
        refs: &[BlockRef],
        wait: Duration,
    ) -> Option<AlignedBuf> {
        if span.end > self.geo.volume_size_bytes {
            return None;
        }
        let cs = u64::from(self.geo.chunk_size_bytes);
        let asked = Instant::now();
        let deadline = asked + wait;
        while !span
            .members
            .iter()
            .all(|&i| self.resident.is_set(refs[i].offset / cs))
        {
            if Instant::now() >= deadline {
                return None;
            }
            runtime::sleep(BLOCK_REF_POLL).await;
        }
        let len = (span.end - span.start) as usize;
        let mut scratch = AlignedBuf::new(len);
        scratch.set_len(len);
        let t = Instant::now();
        let (res, scratch) = self.target.read_exact_at(scratch, span.start).await;
        tracing::trace!(
            from = span.start,
            len,
            blocks = span.members.len(),
            waited_us = asked.elapsed().saturating_sub(t.elapsed()).as_micros() as u64,
            read_us = t.elapsed().as_micros() as u64,
            "named blocks read"
        );
        res.ok().map(|()| scratch)
    }

    /// One chunk asked for again with `no_refs`, on the same retry terms as any fetch.
    async fn fetch_as_data(self: &Rc<Self>, chunk: u64, class: Class) -> Result<Fill, String> {
        let mut last_error = String::new();
        for attempt in 0..FETCH_ATTEMPTS_MAX {
            if attempt > 0 {
                self.count_retry();
                runtime::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            let link = match self.link(class).await {
                Ok(l) => l,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let link_bound = self.background_cap.link_bound();
            let mut replies = match link.fetch(class, true, link_bound, &[chunk]).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            match runtime::timeout(FETCH_REPLY_TIMEOUT, replies.next()).await {
                Ok(Some(Reply::Data {
                    chunk: c,
                    buf,
                    digest,
                })) if c == chunk && buf.len() == self.geo.chunk_len(chunk) as usize => {
                    return Ok(Fill::Data(buf, digest))
                }
                Ok(Some(Reply::Zero { chunk: c })) if c == chunk => return Ok(Fill::Zero),
                Ok(Some(Reply::ChunkError { code, message, .. })) => {
                    return Err(format!("backend: {code:?}: {message}"))
                }
                Ok(Some(r @ (Reply::Data { .. } | Reply::Pieces { .. }))) => {
                    r.give_back(&self.bufs);
                    last_error = format!("bad reply to a data fetch of chunk {chunk}");
                    link.kill();
                }
                Ok(Some(_)) => {
                    last_error = format!("bad reply to a data fetch of chunk {chunk}");
                    link.kill();
                }
                Ok(None) => last_error = "backend link broke".into(),
                Err(_) => {
                    last_error = format!("no reply from the backend for {FETCH_REPLY_TIMEOUT:?}");
                    link.kill();
                }
            }
        }
        Err(format!(
            "{last_error} (after {FETCH_ATTEMPTS_MAX} attempts)"
        ))
    }

    /// Stores a fetched chunk in the target unless the workload changed it meanwhile.
    async fn fill(self: &Rc<Self>, chunk: u64, fill: Fill, class: Class) {
        let slot = self.slot(chunk);
        // Resolving may wait (another fill, a read, a refetch): check staleness after it.
        let fill = match self.resolve(chunk, fill, class).await {
            Ok(f) => f,
            Err(reason) => {
                self.fetch_failed(chunk, reason);
                return;
            }
        };
        let stale = slot.superseded.get() || self.state(chunk) != ChunkState::Untouched;
        let offset = self.geo.chunk_offset(chunk);
        let len = u64::from(self.geo.chunk_len(chunk));
        let mut error = None;
        match fill {
            Fill::Data(buf, _) if stale => self.bufs.give(buf),
            Fill::Zero if stale => {}
            Fill::Ref(_) | Fill::Pieces(..) => error = Some("unresolved reference".to_string()),
            Fill::Data(buf, hint) => {
                let digest = self.dedup.as_ref().and_then(|d| {
                    let digest = match hint {
                        DigestHint::Known(digest) => digest,
                        DigestHint::Compute => crate::dedup::digest(&buf),
                        // Nobody can reference it before it is indexed.
                        DigestHint::Later => return None,
                    };
                    d.begin(digest);
                    Some(digest)
                });
                // Background writes in flight are bounded (the device queue stays short for
                // on-demand fills, which never wait). Taken after `begin`, so a reference to
                // this content waits for this write instead of missing, and never while
                // resolving, so a fill waiting here never holds what another fill needs.
                // While it waits, the chunk counts against the background window: a target
                // slower than the link then slows the fetches instead of filling our memory.
                let _permit = match class {
                    Class::Background => {
                        let _held = self.background_cap.hold_one();
                        Some(self.fill_permits.acquire_arc().await)
                    }
                    Class::OnDemand => None,
                };
                // The workload may have written this chunk while we waited for room.
                let res = if slot.superseded.get() || self.state(chunk) != ChunkState::Untouched {
                    self.bufs.give(buf);
                    None
                } else {
                    slot.filling.set(true);
                    let res = match class {
                        Class::Background => self.coalescer.write(buf, offset).await,
                        Class::OnDemand => {
                            let (res, buf) = self.target.write_all_at(buf, offset).await;
                            self.bufs.give(buf);
                            res
                        }
                    };
                    slot.filling.set(false);
                    Some(res)
                };
                if let Some(d) = &self.dedup {
                    let stored = matches!(res, Some(Ok(()))).then_some((offset, len as u32));
                    match digest {
                        Some(digest) => d.end(digest, stored),
                        None if stored.is_some() => d.later(chunk),
                        None => {}
                    }
                }
                match res {
                    None => {}
                    Some(Ok(())) => {
                        self.map.borrow_mut().set_live(chunk, ChunkState::Present);
                        self.resident.set(chunk);
                        self.sync.push(chunk, ChunkState::Present);
                        self.count_fetch(class, len);
                    }
                    Some(Err(e)) => error = Some(VolError::target("write", offset, &e).to_string()),
                }
            }
            Fill::Zero => {
                self.stats
                    .zero_replies
                    .set(self.stats.zero_replies.get() + 1);
                let res = if self.target_fresh {
                    Ok(())
                } else {
                    slot.filling.set(true);
                    let r = self.zero_target(offset, len, self.bufs_len()).await;
                    slot.filling.set(false);
                    r
                };
                match res {
                    Ok(()) => {
                        self.map.borrow_mut().set_live(chunk, ChunkState::Zero);
                        self.resident.set(chunk);
                        self.sync.push(chunk, ChunkState::Zero);
                        self.count_fetch(class, 0);
                    }
                    Err(e) => error = Some(VolError::target("zero", offset, &e).to_string()),
                }
            }
        }
        if let Some(reason) = error {
            self.fetch_failed(chunk, reason);
        } else {
            self.end_fetch(chunk, &slot);
        }
    }

    fn count_retry(&self) {
        let r = &self.stats.fetch_retries;
        r.set(r.get() + 1);
    }

    fn bufs_len(&self) -> usize {
        self.geo.chunk_size_bytes as usize
    }

    fn count_fetch(&self, class: Class, bytes: u64) {
        let s = &self.stats;
        match class {
            Class::OnDemand => {
                s.fetched_chunks_on_demand
                    .set(s.fetched_chunks_on_demand.get() + 1);
                s.fetched_bytes_on_demand
                    .set(s.fetched_bytes_on_demand.get() + bytes);
            }
            Class::Background => {
                s.fetched_chunks_background
                    .set(s.fetched_chunks_background.get() + 1);
                s.fetched_bytes_background
                    .set(s.fetched_bytes_background.get() + bytes);
            }
        }
    }

    /// Waits until no fetch of this shard is in flight.
    pub async fn fetches_idle(&self) {
        while self.fetches_in_flight.get() > 0 {
            self.fetches_changed.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(block: u16, offset_blocks: u64) -> BlockRef {
        BlockRef {
            block,
            offset: offset_blocks * BLOCK_LEN as u64,
            digest: [0; 32],
        }
    }

    #[test]
    fn named_blocks_close_together_are_read_at_once() {
        let b = BLOCK_LEN as u64;
        // Blocks 0..3 name scattered small files near 100, one block far away, and one twice.
        let refs = [r(0, 107), r(1, 100), r(2, 5000), r(3, 103), r(4, 100)];
        let s = spans(&refs);
        let got: Vec<(u64, u64, Vec<usize>)> = s
            .iter()
            .map(|s| (s.start / b, s.end / b, s.members.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(100, 108, vec![1, 4, 3, 0]), (5000, 5001, vec![2])]
        );
        // A span stops at SPAN_MAX even without gaps.
        let run: Vec<BlockRef> = (0..100).map(|i| r(i, 1000 + u64::from(i))).collect();
        let s = spans(&run);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].end - s[0].start, SPAN_MAX);
        assert!(s.iter().all(|s| s.end - s.start <= SPAN_MAX));
        assert_eq!(s.iter().map(|s| s.members.len()).sum::<usize>(), 100);
    }
}
