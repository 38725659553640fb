//! How one chunk goes on the wire: zero, a reference to content the frontend holds, zstd, or
//! raw — per connection, chosen for what the link and the CPU can do right now.
//!
//! **Compression pays only when the link, not the CPU, is the bottleneck.** The sender is
//! pipelined (chunks are compressed while earlier ones are on the wire), so compressing at a
//! level makes migration faster exactly when the link is what limits it and that level
//! compresses faster than data is flowing. The encoder measures both, per window of sends
//! (like `zstd --adapt`): how much of the wall time the connection's socket was busy taking
//! a send (a link-bound sender is always blocked in send; a fast link is mostly idle), and
//! each level's speed on this data. Link-bound: one level up, if that level keeps
//! [`SPEED_MARGIN`] × ahead of the flow (the bytes given to the compressor, not the chunks
//! that went as zero, references or raw). Not link-bound: one level down, to none — so on a
//! fast link (loopback) compression switches itself off within a window. Chunks that do not
//! shrink go raw, and after a run of them the encoder only probes each chunk (two 4 KiB
//! samples at level 1) until one looks compressible: incompressible data must not cost CPU
//! for nothing, and the text after a large random file must not travel raw. (Skipping
//! chunks blindly sent ~200 MiB of compressible data raw on the 4 GiB WAN sample.)
//!
//! References ([`wire_format::frame::CAP_REFS`]): a chunk whose SHA-256 the frontend
//! announced, or that this connection already carried, goes out as a 32-byte `ChunkRef`.
//! With [`wire_format::frame::CAP_BLOCK_REFS`], a chunk that is not repeated whole is looked
//! at block by block ([`super::blocks`]): if some of its 4 KiB blocks went out before, it goes
//! as `ChunkPieces`, those blocks named by where they went and the rest literal (compressed
//! on the same terms as a whole chunk).
//!
//! **Hashing pays on the same terms as compression.** SHA-256 runs at about 1.5 GB/s a core
//! (SHA-NI), slower than a loopback or 10 Gbit/s link carries the chunk. With a frontend that
//! indexes unhashed content later ([`wire_format::frame::CAP_LAZY_INDEX`]) the encoder hashes
//! only while the link is the bottleneck or compression is still on (the same windows as
//! compression; it steps down a level per idle window, so a short lull does not leave blocks
//! unremembered), or the frontend announced content it holds (a reference can hit from the
//! first chunk). Unhashed chunks go
//! out raw without a digest and are not remembered, so they are never referenced later.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use wire_format::frame::{BlockRef, BLOCK_LEN, DIGEST_LEN};

use super::blocks::SentBlocks;

/// Most digests remembered per connection (announced plus carried): 4M × 32 bytes, about
/// 200 MiB with the set's overhead. Beyond it new content is still sent, only not referenced;
/// a frontend cannot make the backend grow without bound.
const REFS_MAX: usize = 4 << 20;
/// Levels tried, weakest first. Nothing above 9: on 64 KiB blocks of system files level 15
/// saves 4 % of the bytes of 9 at a sixth of its speed (`zstd -b -B65536` on 120 MB of /usr:
/// level 9 3.48x at 52 MB/s, 15 3.62x at 9 MB/s, 19 3.67x at 3 MB/s), and a backend's cores
/// also serve other connections (on the issue-5 replay, with 15 in reach the two connections
/// held a core between them and the workload ran 60% longer).
const LEVELS: [i32; 4] = [1, 3, 6, 9];
/// Starting guesses of each level's speed (bytes/s of input per core), replaced by
/// measurements as soon as a level is used.
const SPEED_GUESS: [f64; 4] = [400e6, 250e6, 90e6, 50e6];
/// A level is used only if it compresses this many times faster than the link drains.
const SPEED_MARGIN: f64 = 3.0;
/// A compressed chunk must be at most this fraction of the raw size to be sent compressed.
const WORTH_RATIO: f64 = 0.95;
/// Incompressible chunks in a row before the encoder only probes, and the probing bounds.
const INCOMPRESSIBLE_STREAK: u32 = 8;
const BACKOFF_MIN: u32 = 64;
const BACKOFF_MAX: u32 = 4096;
/// A probe compresses this much of a chunk at its start and at its middle, at level 1.
const PROBE_BYTES: usize = 4096;
/// A sample this compressible makes the chunk worth a full attempt (small samples compress
/// worse than the whole chunk, so the bar is lower than `WORTH_RATIO`).
const PROBE_RATIO: f64 = 0.9;
/// Weight of history in the speed averages.
const EWMA_KEEP: f64 = 0.8;
/// A window closes after this long (and at least WINDOW_SENDS sends).
const WINDOW: Duration = Duration::from_millis(100);
const WINDOW_SENDS: u32 = 4;
/// Share of the window the socket was busy above which the link is the bottleneck, and below
/// which it clearly is not.
const BUSY_HIGH: f64 = 0.8;
const BUSY_LOW: f64 = 0.4;

/// One chunk's wire form.
pub enum Encoded<'a> {
    /// Send as is; with the content's SHA-256 when it was computed (refs enabled).
    Raw(Option<[u8; DIGEST_LEN]>),
    /// Send `data` (a zstd frame) with the crc of the raw content.
    Zstd { data: &'a [u8], raw_crc: u32 },
    /// Send only the digest.
    Ref([u8; DIGEST_LEN]),
    /// Send named blocks (`pieces.refs`, in wire form) and the literal rest (`data`, zstd
    /// or not).
    Pieces {
        pieces: wire_format::frame::Pieces<'a>,
        data: &'a [u8],
    },
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EncodeStats {
    pub raw_chunks: u64,
    pub zstd_chunks: u64,
    pub ref_chunks: u64,
    pub piece_chunks: u64,
    /// Blocks that `ChunkPieces` named instead of sending.
    pub piece_blocks: u64,
    pub logical_bytes: u64,
    pub wire_bytes: u64,
    /// Chunks sent without hashing (lazy, link not the bottleneck): never referenced later.
    pub unhashed_chunks: u64,
    /// Chunks the frontend asked for while it said it was the bottleneck itself.
    pub receiver_bound_chunks: u64,
}

pub struct Encoder {
    zstd: Option<Zstd>,
    /// Digests the frontend holds or this connection already carried; `None` without refs.
    refs: Option<HashSet<[u8; DIGEST_LEN]>>,
    /// The frontend indexes unhashed chunks later: hash only while it pays.
    lazy: bool,
    /// The frontend takes `ChunkPieces`.
    block_refs: bool,
    /// Scratch for `ChunkPieces`: the references and the literal blocks.
    piece_refs: Vec<u8>,
    literal: Vec<u8>,
    /// The frontend announced content it holds.
    announced: bool,
    /// The last window found the link the bottleneck (hysteresis: BUSY_HIGH on, BUSY_LOW off).
    bound: bool,
    window: Window,
    stats: EncodeStats,
}

struct Zstd {
    ctx: zstd::bulk::Compressor<'static>,
    /// With [`wire_format::frame::CAP_ZSTD_STREAM`]: the connection's one compression
    /// stream, made on first use; `None` otherwise.
    stream: Option<Stream>,
    /// The frontend takes chunks as one stream.
    streaming: bool,
    /// Level 1, for probes while backing off.
    probe: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
    /// Index into LEVELS, or None: not compressing.
    level: Option<usize>,
    speed: [f64; LEVELS.len()],
    streak: u32,
    skip: u32,
    backoff: u32,
    /// Bytes given to the compressor in this window (probes aside).
    fed: u64,
}

/// A connection's compression stream: each chunk is one flush, so it can be decoded as it
/// arrives, with everything sent before as its history. zstd changes the level only at a frame
/// start, so a level change ends the frame (its last bytes go out with the next chunk).
struct Stream {
    cctx: zstd::zstd_safe::CCtx<'static>,
    level: i32,
}

/// History a stream keeps: 8 MiB (the frontend's decoder needs as much per connection). On
/// the WAN sample's compressible blocks, level 9 on 64 KiB blocks alone gives 960 MB, as one
/// stream with this window 893 MB (4 MiB: 907, 16 MiB: 889).
pub const STREAM_WINDOW_LOG: u32 = 23;

/// One measuring window of sends.
struct Window {
    start: Instant,
    sends: u32,
    busy: Duration,
    raw_bytes: u64,
    /// The frontend said in this window that the link limits its fetches.
    link_bound: bool,
    /// Chunks encoded in this window, and how many of them the frontend asked for while it
    /// said it was the bottleneck itself.
    chunks: u32,
    receiver_bound: u32,
}

impl Window {
    fn new() -> Window {
        Window {
            start: Instant::now(),
            sends: 0,
            busy: Duration::ZERO,
            raw_bytes: 0,
            link_bound: false,
            chunks: 0,
            receiver_bound: 0,
        }
    }
}

impl Encoder {
    /// `lazy`: the frontend offered [`wire_format::frame::CAP_LAZY_INDEX`], `block_refs`
    /// [`wire_format::frame::CAP_BLOCK_REFS`] (both meaningful with `refs`); `stream`:
    /// [`wire_format::frame::CAP_ZSTD_STREAM`] (with `zstd`).
    pub fn new(zstd: bool, refs: bool, lazy: bool, block_refs: bool, stream: bool) -> Encoder {
        let zstd = if zstd {
            match zstd::bulk::Compressor::new(LEVELS[0])
                .and_then(|ctx| Ok((ctx, zstd::bulk::Compressor::new(1)?)))
            {
                Ok((ctx, probe)) => Some(Zstd {
                    ctx,
                    stream: None,
                    streaming: stream,
                    probe,
                    out: Vec::new(),
                    // Off until a window shows the link is the bottleneck.
                    level: None,
                    speed: SPEED_GUESS,
                    streak: 0,
                    skip: 0,
                    backoff: BACKOFF_MIN,
                    fed: 0,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "zstd unavailable; sending raw");
                    None
                }
            }
        } else {
            None
        };
        Encoder {
            zstd,
            refs: refs.then(HashSet::new),
            lazy,
            block_refs,
            piece_refs: Vec::new(),
            literal: Vec::new(),
            announced: false,
            bound: false,
            window: Window::new(),
            stats: EncodeStats::default(),
        }
    }

    /// The frontend's fetches are limited by the link, not by this backend: the socket,
    /// paced by the frontend's window of requests, does not show it, so this window counts as
    /// link-bound.
    pub fn link_bound(&mut self) {
        self.window.link_bound = true;
    }

    pub fn refs_enabled(&self) -> bool {
        self.refs.is_some()
    }

    /// Digests announced by the frontend (`Have`), `digests.len()` a multiple of 32.
    pub fn learn(&mut self, digests: &[u8]) {
        if let Some(set) = self.refs.as_mut() {
            for d in digests.chunks_exact(DIGEST_LEN) {
                self.announced = true;
                if set.len() >= REFS_MAX {
                    break;
                }
                let mut k = [0u8; DIGEST_LEN];
                k.copy_from_slice(d);
                set.insert(k);
            }
        }
    }

    pub fn stats(&self) -> EncodeStats {
        self.stats
    }

    /// The level in use (0 = not compressing), for logs.
    pub fn level(&self) -> i32 {
        self.zstd
            .as_ref()
            .and_then(|z| z.level)
            .map(|i| LEVELS[i])
            .unwrap_or(0)
    }

    /// Chooses the wire form of one non-zero chunk. `allow_ref` is false when the frontend
    /// asked for data (it could not use a reference), `allow_zstd` false when it said it is
    /// the bottleneck itself (its receive buffer is full), so compression cannot help.
    /// `sent`: the volume's table of blocks sent before, and this chunk's volume offset.
    pub fn encode(
        &mut self,
        raw: &[u8],
        sent: Option<(&SentBlocks, u64)>,
        allow_ref: bool,
        allow_zstd: bool,
    ) -> Encoded<'_> {
        self.stats.logical_bytes += raw.len() as u64;
        self.window.raw_bytes += raw.len() as u64;
        let mut digest = None;
        // A frontend that is itself the bottleneck (`!allow_zstd`) makes the socket look busy
        // too; hashing for it would only slow both sides.
        // Compressing means some window found the link the bottleneck: the level steps down
        // only a window at a time after the link stops being it, and a block sent unhashed in
        // a lull is never named later (on the WAN sample, 912 chunks of one connection went
        // out so between busy windows).
        let compressing = self.zstd.as_ref().is_some_and(|z| z.level.is_some());
        let hash = !self.lazy || self.announced || ((self.bound || compressing) && allow_zstd);
        self.stats.unhashed_chunks += u64::from(!hash);
        self.stats.receiver_bound_chunks += u64::from(!allow_zstd);
        self.window.chunks += 1;
        self.window.receiver_bound += u32::from(!allow_zstd);
        if let Some(set) = self.refs.as_mut().filter(|_| hash) {
            let d = crate::dedup::digest(raw);
            digest = Some(d);
            if allow_ref && set.contains(&d) {
                self.stats.ref_chunks += 1;
                self.stats.wire_bytes += DIGEST_LEN as u64;
                return Encoded::Ref(d);
            }
            if set.len() < REFS_MAX {
                set.insert(d);
            }
            if let Some((table, offset)) = sent.filter(|_| allow_ref && self.block_refs) {
                if self.split(raw, table, offset) {
                    return self.pieces(raw.len(), allow_zstd);
                }
            }
        }
        let Some(z) = self.zstd.as_mut().filter(|_| allow_zstd) else {
            self.stats.raw_chunks += 1;
            self.stats.wire_bytes += raw.len() as u64;
            return Encoded::Raw(digest);
        };
        match z.compress(raw) {
            Some(n) => {
                self.stats.zstd_chunks += 1;
                self.stats.wire_bytes += n as u64;
                Encoded::Zstd {
                    data: &z.out[..n],
                    raw_crc: wire_format::checksum::crc32c(raw),
                }
            }
            None => {
                self.stats.raw_chunks += 1;
                self.stats.wire_bytes += raw.len() as u64;
                Encoded::Raw(digest)
            }
        }
    }

    /// Looks the chunk's blocks up in `table`: true, with `piece_refs` and `literal` filled,
    /// if any of them was sent before.
    fn split(&mut self, raw: &[u8], table: &SentBlocks, offset: u64) -> bool {
        let whole = raw.len() / BLOCK_LEN;
        let digests: Vec<Option<[u8; DIGEST_LEN]>> = raw
            .chunks_exact(BLOCK_LEN)
            .map(|b| (!super::conn::is_zero(b)).then(|| crate::dedup::digest(b)))
            .collect();
        let found = table.find_or_remember(offset, &digests);
        if found.iter().all(Option::is_none) {
            return false;
        }
        self.piece_refs.clear();
        self.literal.clear();
        for (i, (at, d)) in found.iter().zip(&digests).enumerate() {
            let block = &raw[i * BLOCK_LEN..(i + 1) * BLOCK_LEN];
            match (at, d) {
                (Some(at), Some(digest)) => BlockRef {
                    // A chunk has at most MAX_BLOCK_REFS (256) blocks.
                    block: i as u16,
                    offset: *at,
                    digest: *digest,
                }
                .put(&mut self.piece_refs),
                _ => self.literal.extend_from_slice(block),
            }
        }
        self.literal.extend_from_slice(&raw[whole * BLOCK_LEN..]);
        true
    }

    /// The `ChunkPieces` that `split` prepared, its literal compressed when that pays.
    fn pieces(&mut self, raw_len: usize, allow_zstd: bool) -> Encoded<'_> {
        let named = self.piece_refs.len() / wire_format::frame::BLOCK_REF_LEN;
        self.stats.piece_chunks += 1;
        self.stats.piece_blocks += named as u64;
        let lit_crc = wire_format::checksum::crc32c(&self.literal);
        // A chunk is at most MAX_DATA_LEN (1 MiB).
        let raw_len = raw_len as u32;
        if let Some(z) = self
            .zstd
            .as_mut()
            .filter(|_| allow_zstd && !self.literal.is_empty())
        {
            if let Some(n) = z.compress(&self.literal) {
                self.stats.wire_bytes += (self.piece_refs.len() + n) as u64;
                return Encoded::Pieces {
                    pieces: wire_format::frame::Pieces {
                        raw_len,
                        lit_crc,
                        zstd: true,
                        refs: &self.piece_refs,
                    },
                    data: &z.out[..n],
                };
            }
        }
        self.stats.wire_bytes += (self.piece_refs.len() + self.literal.len()) as u64;
        Encoded::Pieces {
            pieces: wire_format::frame::Pieces {
                raw_len,
                lit_crc,
                zstd: false,
                refs: &self.piece_refs,
            },
            data: &self.literal,
        }
    }

    /// Feeds one send: how long the socket took to accept it (sends of one connection are
    /// serialised, so these add up to the time the socket was busy).
    pub fn sent(&mut self, busy: Duration) {
        let w = &mut self.window;
        w.sends += 1;
        w.busy += busy;
        let wall = w.start.elapsed();
        if wall >= WINDOW && w.sends >= WINDOW_SENDS {
            // A window mostly asked for by a frontend that was itself the bottleneck says
            // nothing about the link: its full receive buffer is what kept our socket busy.
            // Counted as link-bound, it walked the level up to 9 on loopback, unused until
            // the frontend's backlog dipped, and then chunks went out at 50 MB/s. Counted as
            // idle, it stepped the level down on a 1 Gbit/s link whose emulator hands data
            // over in bursts (the 4 GiB WAN sample: 15.7 s in one round, 13.3-14.5 s in four
            // with the level held). So it changes nothing.
            let says_nothing = !w.link_bound && w.receiver_bound * 2 > w.chunks;
            if !says_nothing {
                let util = if w.link_bound {
                    1.0
                } else {
                    w.busy.as_secs_f64() / wall.as_secs_f64()
                };
                let raw_flow = w.raw_bytes as f64 / wall.as_secs_f64();
                if util >= BUSY_HIGH {
                    self.bound = true;
                } else if util < BUSY_LOW {
                    self.bound = false;
                }
                if let Some(z) = self.zstd.as_mut() {
                    // What the compressor must keep up with: the bytes it was given, not the
                    // chunks sent as zero, references or probed-raw (those made the flow look
                    // several times larger in windows full of repeats, and the level
                    // see-sawed, each change ending the stream's frame and its history).
                    // Before compressing at all, every chunk might be.
                    let fed = std::mem::take(&mut z.fed) as f64 / wall.as_secs_f64();
                    let flow = if z.level.is_some() { fed } else { raw_flow };
                    z.adapt(util, flow);
                }
            } else if let Some(z) = self.zstd.as_mut() {
                z.fed = 0;
            }
            self.window = Window::new();
        }
    }
}

impl Zstd {
    /// Compresses into `self.out`; `Some(len)` if it is worth sending compressed.
    fn compress(&mut self, raw: &[u8]) -> Option<usize> {
        let level = self.level?;
        if self.skip > 0 {
            self.skip -= 1;
            if !self.looks_compressible(raw) {
                return None;
            }
            self.skip = 0;
        }
        self.fed += raw.len() as u64;
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        if self.out.len() < bound {
            self.out.resize(bound, 0);
        }
        let t = Instant::now();
        let n = if self.streaming {
            match self.stream_compress(raw, LEVELS[level]) {
                Ok(n) => n,
                Err(e) => {
                    // The frontend's decoder would no longer follow: no more compression here.
                    tracing::warn!(error = %e, "zstd stream failed; sending raw from now on");
                    self.level = None;
                    self.streaming = false;
                    self.stream = None;
                    self.ctx = zstd::bulk::Compressor::new(LEVELS[0]).ok()?;
                    return None;
                }
            }
        } else {
            self.ctx.compress_to_buffer(raw, &mut self.out[..]).ok()?
        };
        let secs = t.elapsed().as_secs_f64().max(1e-7);
        let speed = raw.len() as f64 / secs;
        self.speed[level] = self.speed[level] * EWMA_KEEP + speed * (1.0 - EWMA_KEEP);
        if n as f64 <= raw.len() as f64 * WORTH_RATIO && n > 0 {
            self.streak = 0;
            self.backoff = BACKOFF_MIN;
            return Some(n);
        }
        self.streak += 1;
        if self.streak >= INCOMPRESSIBLE_STREAK {
            self.streak = 0;
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        // In the stream it must go out anyway: the frontend's history must match ours.
        self.streaming.then_some(n)
    }

    /// Appends `raw` to the connection's stream at `level` and flushes: the chunk's bytes
    /// (after the end of the previous frame, if the level changed) into `self.out`.
    fn stream_compress(&mut self, raw: &[u8], level: i32) -> Result<usize, String> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective as EndDirective;
        use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};
        let err =
            |what: &str, code: usize| format!("{what}: {}", zstd::zstd_safe::get_error_name(code));
        let s = match self.stream.as_mut() {
            Some(s) => s,
            None => {
                let mut cctx = CCtx::try_create().ok_or("no memory for a zstd stream")?;
                cctx.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG))
                    .map_err(|c| err("window", c))?;
                cctx.set_parameter(CParameter::CompressionLevel(level))
                    .map_err(|c| err("level", c))?;
                self.stream.insert(Stream { cctx, level })
            }
        };
        // Room for the chunk plus a frame end.
        let need = zstd::zstd_safe::compress_bound(raw.len()) + 64;
        if self.out.len() < need {
            self.out.resize(need, 0);
        }
        let mut out = OutBuffer::around(&mut self.out[..]);
        if s.level != level {
            let mut empty = InBuffer::around(&[]);
            loop {
                let left = s
                    .cctx
                    .compress_stream2(&mut out, &mut empty, EndDirective::ZSTD_e_end)
                    .map_err(|c| err("frame end", c))?;
                if left == 0 {
                    break;
                }
            }
            s.cctx
                .set_parameter(CParameter::CompressionLevel(level))
                .map_err(|c| err("level", c))?;
            s.level = level;
        }
        let mut input = InBuffer::around(raw);
        loop {
            let left = s
                .cctx
                .compress_stream2(&mut out, &mut input, EndDirective::ZSTD_e_flush)
                .map_err(|c| err("flush", c))?;
            if left == 0 && input.pos() == raw.len() {
                break;
            }
            if out.pos() == out.capacity() {
                return Err("zstd stream output larger than its bound".into());
            }
        }
        Ok(out.pos())
    }

    /// Whether a sample at the start or the middle of `raw` shrinks at level 1.
    fn looks_compressible(&mut self, raw: &[u8]) -> bool {
        let mut out = [0u8; PROBE_BYTES + 256];
        let mid = (raw.len() / 2) & !(PROBE_BYTES - 1);
        [0, mid].into_iter().any(|at| {
            let sample = &raw[at.min(raw.len())..(at + PROBE_BYTES).min(raw.len())];
            !sample.is_empty()
                && self
                    .probe
                    .compress_to_buffer(sample, &mut out[..])
                    .is_ok_and(|n| n as f64 <= sample.len() as f64 * PROBE_RATIO)
        })
    }

    /// One step per window: up while the link is the bottleneck and the next level keeps
    /// ahead of the flow (bytes/s to compress), down while it is not.
    fn adapt(&mut self, util: f64, flow: f64) {
        let next = if util >= BUSY_HIGH {
            let up = self.level.map_or(0, |i| i + 1);
            if up < LEVELS.len() && self.speed[up] >= flow * SPEED_MARGIN {
                Some(up)
            } else if self.level.is_some_and(|i| self.speed[i] < flow) {
                // The current level is slower than the flow it must keep up with.
                self.level.and_then(|i| i.checked_sub(1))
            } else {
                self.level
            }
        } else if util < BUSY_LOW {
            self.level.and_then(|i| i.checked_sub(1))
        } else {
            self.level
        };
        tracing::trace!(util, flow_mb_s = flow / 1e6, ?next, "compression window");
        self.set_level(next);
    }

    fn set_level(&mut self, pick: Option<usize>) {
        if pick == self.level {
            return;
        }
        if let Some(i) = pick {
            if self
                .ctx
                .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(LEVELS[i]))
                .is_err()
            {
                return;
            }
        }
        tracing::debug!(
            level = pick.map(|i| LEVELS[i]).unwrap_or(0),
            "compression level changed"
        );
        self.level = pick;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog 0123456789\n"
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    /// Runs `windows` windows in which the socket is busy `busy` of the time.
    fn drive(e: &mut Encoder, raw: &[u8], windows: u32, busy: f64) -> Vec<u8> {
        let mut last = Vec::new();
        for _ in 0..windows {
            if let Encoded::Zstd { data, raw_crc } = e.encode(raw, None, false, true) {
                assert_eq!(raw_crc, crc32c::crc32c(raw));
                last = zstd::bulk::decompress(data, raw.len()).unwrap();
            }
            std::thread::sleep(WINDOW / 4);
            close_window(e, busy);
        }
        last
    }

    /// Ends the current window with the socket busy `busy` of it.
    fn close_window(e: &mut Encoder, busy: f64) {
        for _ in 0..WINDOW_SENDS {
            e.sent(WINDOW.mul_f64(busy / WINDOW_SENDS as f64 * 1.25));
        }
        e.window.start -= WINDOW;
        e.sent(Duration::ZERO);
    }

    #[test]
    fn a_frontend_that_says_link_bound_gets_compression_with_an_idle_socket() {
        let mut e = Encoder::new(true, false, false, false, false);
        let raw = text(65536);
        // The socket is never busy (the frontend's window paces the sends) ...
        drive(&mut e, &raw, 3, 0.0);
        assert_eq!(e.level(), 0);
        // ... but the frontend says its fetches are limited by the link.
        for _ in 0..3 {
            e.link_bound();
            drive(&mut e, &raw, 1, 0.0);
        }
        assert!(e.level() >= 3, "level {}", e.level());
    }

    #[test]
    fn a_busy_socket_behind_a_receiver_bound_frontend_does_not_raise_the_level() {
        let mut e = Encoder::new(true, false, false, false, false);
        let raw = text(65536);
        // The socket is busy all the time, but the frontend says it is the bottleneck.
        for _ in 0..5 {
            e.encode(&raw, None, false, false);
            close_window(&mut e, 1.0);
        }
        assert_eq!(e.level(), 0);
        assert!(!e.bound);
        // When its backlog dips, the chunk goes raw: there is no level to compress at.
        assert!(matches!(
            e.encode(&raw, None, false, true),
            Encoded::Raw(None)
        ));
        // Once it stops saying so, the same busy socket is the link's doing.
        drive(&mut e, &raw, 3, 1.0);
        let level = e.level();
        assert!(level >= 3, "level {level}");
        // Receiver-bound windows now and then, even idle ones, leave the level as it is.
        for _ in 0..5 {
            e.encode(&raw, None, false, false);
            close_window(&mut e, 0.0);
        }
        assert_eq!(e.level(), level);
        assert!(e.bound);
    }

    #[test]
    fn link_bound_sender_compresses_harder_and_decodes() {
        let mut e = Encoder::new(true, false, false, false, false);
        let raw = text(65536);
        let got = drive(&mut e, &raw, 5, 1.0);
        assert_eq!(got, raw);
        assert!(
            e.level() >= 6,
            "a link-bound sender should climb levels, got {}",
            e.level()
        );
    }

    #[test]
    fn chunks_that_need_no_compression_do_not_pull_the_level_down() {
        let mut e = Encoder::new(true, true, true, false, false);
        let raw = text(65536);
        drive(&mut e, &raw, 6, 1.0);
        assert_eq!(e.level(), 9);
        // A busy window: one chunk compressed, at a level measured at 50 MB/s, and 20 MB of
        // chunks that went as zero or references (200 MB/s of volume, no compression).
        let measured = [400e6, 250e6, 90e6, 50e6];
        e.encode(&raw, None, false, true);
        e.zstd.as_mut().unwrap().speed = measured;
        e.window.raw_bytes += 20_000_000;
        close_window(&mut e, 1.0);
        assert_eq!(
            e.level(),
            9,
            "the compressor kept up with what it was given"
        );
        // Given more than it can take, it steps down.
        e.zstd.as_mut().unwrap().fed = 20_000_000;
        e.zstd.as_mut().unwrap().speed = measured;
        close_window(&mut e, 1.0);
        assert_eq!(e.level(), 6);
    }

    #[test]
    fn a_lull_between_busy_windows_still_hashes_while_compressing() {
        let mut e = Encoder::new(true, true, true, false, false);
        drive(&mut e, &text(4096), 3, 1.0);
        // One idle window: not link-bound any more, but still compressing (a step down).
        drive(&mut e, &text(4096), 1, 0.0);
        assert!(!e.bound);
        assert!(e.level() > 0);
        // So content is still hashed and remembered, and its repeat goes as a reference.
        let b = words(5, 65536);
        assert!(!matches!(e.encode(&b, None, true, true), Encoded::Ref(_)));
        assert!(matches!(e.encode(&b, None, true, true), Encoded::Ref(_)));
    }

    /// Seeded "words": compresses in a chunk of its own, but not to nothing.
    fn words(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 3 + (x % 7) as usize;
            out.extend((0..len).map(|i| b'a' + ((x >> (i * 5)) % 26) as u8));
            out.push(b' ');
        }
        out.truncate(n);
        out
    }

    #[test]
    fn a_stream_refers_to_earlier_chunks_and_decodes_in_order_across_level_changes() {
        use crate::link::unzstd::Unzstd;
        let a = words(1, 65536);
        // The same text one line further on (a file seen again at another offset).
        let b = [&words(2, 100)[..], &a[..65436]].concat();
        let c = words(3, 65536);
        let sizes = |stream: bool| {
            let mut e = Encoder::new(true, false, false, false, stream);
            e.zstd.as_mut().unwrap().set_level(Some(0));
            let mut dec = Unzstd::new(stream);
            let mut sizes = Vec::new();
            for (i, raw) in [&a, &b, &c, &a].into_iter().enumerate() {
                if i == 2 {
                    // A level change ends the frame; the next chunk carries its end.
                    e.zstd.as_mut().unwrap().set_level(Some(2));
                }
                let Encoded::Zstd { data, raw_crc } = e.encode(raw, None, false, true) else {
                    panic!("chunk {i} not compressed");
                };
                sizes.push(data.len());
                let mut out = vec![0u8; raw.len()];
                assert_eq!(dec.decompress(data, &mut out), Ok(raw.len()), "chunk {i}");
                assert_eq!(&out, raw, "chunk {i}");
                assert_eq!(raw_crc, crc32c::crc32c(raw));
            }
            sizes
        };
        let bulk = sizes(false);
        let stream = sizes(true);
        assert!(
            stream[1] * 10 < bulk[1],
            "a chunk repeating the one before took {} B in the stream, {} B alone",
            stream[1],
            bulk[1]
        );
        // After a level change (a new frame) the history is gone: no gain, no loss.
        assert!(stream[3] > stream[1] * 10, "{stream:?}");
        // A chunk that does not belong to the stream is refused, not decoded to garbage.
        let mut e = Encoder::new(true, false, false, false, true);
        e.zstd.as_mut().unwrap().set_level(Some(0));
        let Encoded::Zstd { data, .. } = e.encode(&a, None, false, true) else {
            panic!("not compressed");
        };
        let mut bad = data.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let mut out = vec![0u8; a.len()];
        let got = Unzstd::new(true).decompress(&bad, &mut out);
        assert!(
            got != Ok(a.len()) || out != a,
            "a corrupt stream chunk decoded to its content"
        );
    }

    #[test]
    fn idle_socket_turns_compression_off() {
        let mut e = Encoder::new(true, false, false, false, false);
        let raw = text(65536);
        drive(&mut e, &raw, 2, 1.0);
        assert!(e.level() >= 1);
        drive(&mut e, &raw, 4, 0.01);
        assert_eq!(e.level(), 0);
        assert!(matches!(
            e.encode(&raw, None, false, true),
            Encoded::Raw(None)
        ));
    }

    #[test]
    fn incompressible_data_backs_off() {
        use rand::RngCore;
        let mut e = Encoder::new(true, false, false, false, false);
        e.zstd.as_mut().unwrap().set_level(Some(0));
        let mut raw = vec![0u8; 65536];
        rand::thread_rng().fill_bytes(&mut raw);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(matches!(
                e.encode(&raw, None, false, true),
                Encoded::Raw(None)
            ));
        }
        // Back-off: far fewer than 1000 compression attempts were made.
        assert!(e.zstd.as_ref().unwrap().backoff > BACKOFF_MIN);
        let _ = t;
        // Backing off, a chunk that is compressible in its second half is still found.
        assert!(e.zstd.as_ref().unwrap().skip > 0);
        let mut mixed = raw.clone();
        mixed[32768..].copy_from_slice(&text(32768));
        assert!(matches!(
            e.encode(&mixed, None, false, true),
            Encoded::Zstd { .. }
        ));
        assert_eq!(e.zstd.as_ref().unwrap().skip, 0);
    }

    #[test]
    fn refs_for_announced_and_repeated_content() {
        let mut e = Encoder::new(false, true, false, false, false);
        let a = text(4096);
        let mut b = text(4096);
        b[0] = b'X';
        e.learn(&crate::dedup::digest(&a));
        assert!(matches!(e.encode(&a, None, true, true), Encoded::Ref(_)));
        assert!(
            matches!(e.encode(&a, None, false, true), Encoded::Raw(Some(d)) if d == crate::dedup::digest(&a))
        );
        assert!(matches!(
            e.encode(&b, None, true, true),
            Encoded::Raw(Some(_))
        ));
        assert!(
            matches!(e.encode(&b, None, true, true), Encoded::Ref(d) if d == crate::dedup::digest(&b))
        );
    }

    #[test]
    fn a_lazy_frontend_gets_hashes_only_while_they_pay() {
        // No zstd: the link is measured for hashing all the same.
        let mut e = Encoder::new(false, true, true, false, false);
        let a = text(65536);
        let variant = |i: usize| {
            let mut v = text(65536);
            v[i] = b'#';
            v
        };
        // A fast link, nothing announced: no hashing, so no digest and no reference later.
        drive(&mut e, &a, 2, 0.0);
        assert!(matches!(e.encode(&a, None, true, true), Encoded::Raw(None)));
        assert!(matches!(e.encode(&a, None, true, true), Encoded::Raw(None)));
        // The link becomes the bottleneck: content is hashed, carried once, then referenced ...
        for _ in 0..2 {
            e.link_bound();
            drive(&mut e, &text(4096), 1, 0.0);
        }
        let b = variant(7);
        assert!(matches!(
            e.encode(&b, None, true, true),
            Encoded::Raw(Some(_))
        ));
        assert!(
            matches!(e.encode(&b, None, true, true), Encoded::Ref(d) if d == crate::dedup::digest(&b))
        );
        // ... unless the frontend says it is the bottleneck itself (its socket looks busy too).
        let c = variant(9);
        assert!(matches!(
            e.encode(&c, None, true, false),
            Encoded::Raw(None)
        ));
        assert!(matches!(
            e.encode(&c, None, true, false),
            Encoded::Raw(None)
        ));
        // Idle again: back to raw without digests.
        drive(&mut e, &a, 2, 0.0);
        let d = variant(11);
        assert!(matches!(e.encode(&d, None, true, true), Encoded::Raw(None)));
        assert!(matches!(e.encode(&d, None, true, true), Encoded::Raw(None)));

        // A frontend that announced content gets hashes from the first chunk, on any link.
        let mut e = Encoder::new(false, true, true, false, false);
        e.learn(&crate::dedup::digest(&a));
        assert!(matches!(e.encode(&a, None, true, true), Encoded::Ref(_)));
        assert!(matches!(
            e.encode(&c, None, true, true),
            Encoded::Raw(Some(_))
        ));
    }

    #[test]
    fn blocks_sent_before_go_as_named_pieces() {
        let blk = |seed: u8| {
            let mut b = vec![0u8; BLOCK_LEN];
            b.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i as u8) ^ seed ^ (i >> 8) as u8);
            b[0] = seed;
            b
        };
        let cs = 4 * BLOCK_LEN;
        let table = SentBlocks::default();
        let mut e = Encoder::new(false, true, false, true, false);
        let a: Vec<u8> = [1, 2, 3, 4].iter().flat_map(|&s| blk(s)).collect();
        assert!(matches!(
            e.encode(&a, Some((&table, 0)), true, true),
            Encoded::Raw(Some(_))
        ));
        // Blocks 3 and 4 of `a`, shifted by one block (a file copied at another block
        // offset), then new content and a zero block (never named).
        let b: Vec<u8> = [blk(3), blk(4), blk(9), vec![0; BLOCK_LEN]].concat();
        match e.encode(&b, Some((&table, cs as u64)), true, true) {
            Encoded::Pieces {
                pieces:
                    wire_format::frame::Pieces {
                        refs,
                        zstd,
                        lit_crc,
                        raw_len,
                    },
                data,
            } => {
                let refs: Vec<BlockRef> = wire_format::frame::block_refs(refs).collect();
                let want = |block: u16, at: usize, s: u8| BlockRef {
                    block,
                    offset: (at * BLOCK_LEN) as u64,
                    digest: crate::dedup::digest(&blk(s)),
                };
                assert_eq!(refs, vec![want(0, 2, 3), want(1, 3, 4)]);
                assert!(!zstd);
                assert_eq!(raw_len as usize, cs);
                assert_eq!(data, &b[2 * BLOCK_LEN..]);
                assert_eq!(lit_crc, crc32c::crc32c(&b[2 * BLOCK_LEN..]));
            }
            _ => panic!("expected pieces"),
        }
        // The new block is now known too; a frontend that asked for data gets data.
        let c: Vec<u8> = [blk(9), blk(9), blk(9), blk(9)].concat();
        assert!(matches!(
            e.encode(&c, Some((&table, 2 * cs as u64)), false, true),
            Encoded::Raw(Some(_))
        ));
        // Every block known (the chunk as a whole is not): all named, nothing literal.
        let d: Vec<u8> = [blk(9), blk(1), blk(9), blk(2)].concat();
        assert!(matches!(
            e.encode(&d, Some((&table, 3 * cs as u64)), true, true),
            Encoded::Pieces { pieces, data }
                if pieces.refs.len() == 4 * wire_format::frame::BLOCK_REF_LEN && data.is_empty()
        ));
        assert_eq!(e.stats().piece_chunks, 2);
        assert_eq!(e.stats().piece_blocks, 6);
    }
}
