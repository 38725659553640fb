//! The frontend's end of one backend connection.
//!
//! One reader task per connection decodes replies and routes them by request id to the task
//! that asked; senders share the stream through an async lock so frames never interleave.
//! When the link breaks (peer closed, corrupt frame, protocol violation) every pending request
//! sees its reply channel close, the link is marked dead, and callers reconnect and refetch:
//! nothing from a bad frame is ever handed on.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use wire_format::frame::{
    self, BlockRef, Class, ErrorCode, Frame, BLOCK_LEN, DIGEST_LEN, MAX_HAVE_DIGESTS,
};

use super::reader::FrameReader;
use super::unzstd::Unzstd;
use super::{refusal, LinkError, CAPABILITIES};
use crate::bufs::ChunkBufs;
use crate::dedup::{DedupIndex, DigestHint};
use crate::runtime::{self, AlignedBuf, ConnectOpts, Stream};

pub enum Reply {
    Data {
        chunk: u64,
        buf: AlignedBuf,
        /// The SHA-256 the backend sent with the data (`CAP_DIGESTS`), or what the frontend
        /// must do to learn it: a hint for the dedup index, never a check of the data (the
        /// frame's crc32c is that).
        digest: DigestHint,
    },
    Zero {
        chunk: u64,
    },
    /// The content with this SHA-256, which we said we hold.
    Ref {
        chunk: u64,
        digest: [u8; DIGEST_LEN],
    },
    /// The chunk's literal blocks in place in `buf` (its full length); the blocks `refs`
    /// names are to be copied from where the volume holds them (`CAP_BLOCK_REFS`).
    Pieces {
        chunk: u64,
        buf: AlignedBuf,
        refs: Vec<BlockRef>,
    },
    ChunkError {
        chunk: u64,
        code: ErrorCode,
        message: String,
    },
    Ack,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    /// Returns a reply's chunk buffer to the pool (a reply nobody takes).
    pub fn give_back(self, bufs: &ChunkBufs) {
        match self {
            Reply::Data { buf, .. } | Reply::Pieces { buf, .. } => bufs.give(buf),
            _ => {}
        }
    }
}

/// Puts the literal blocks of a `ChunkPieces` in place in `buf` (set to `raw_len`), named
/// blocks left for the caller. `None` (the buffer given back) if the literal does not
/// decompress to its length or match its crc; an error if the chunk does not fit `buf`.
#[allow(clippy::too_many_arguments)]
fn place_pieces(
    mut buf: AlignedBuf,
    raw_len: usize,
    refs: &[BlockRef],
    lit_crc: u32,
    unzstd: Option<&mut Unzstd>,
    data: &[u8],
    scratch: &mut Vec<u8>,
    bufs: &ChunkBufs,
) -> Result<Option<AlignedBuf>, LinkError> {
    if raw_len > buf.capacity() {
        bufs.give(buf);
        return Err(LinkError::Protocol(format!(
            "{raw_len} bytes of pieces for smaller chunks"
        )));
    }
    // The decoder checked that the named blocks fit raw_len.
    let literal_len = raw_len - refs.len() * BLOCK_LEN;
    let literal: &[u8] = match unzstd {
        None => data,
        Some(d) => {
            scratch.resize(literal_len, 0);
            match d.decompress(data, &mut scratch[..]) {
                Ok(n) if n == literal_len => scratch,
                _ => {
                    bufs.give(buf);
                    return Ok(None);
                }
            }
        }
    };
    if literal.len() != literal_len || wire_format::checksum::crc32c(literal) != lit_crc {
        bufs.give(buf);
        return Ok(None);
    }
    buf.set_len(raw_len);
    let mut named = refs.iter().map(|r| usize::from(r.block)).peekable();
    let mut from = 0;
    for (i, block) in buf.chunks_mut(BLOCK_LEN).enumerate() {
        if named.next_if_eq(&i).is_some() {
            continue;
        }
        block.copy_from_slice(&literal[from..from + block.len()]);
        from += block.len();
    }
    Ok(Some(buf))
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub addr: SocketAddr,
    pub volume: String,
    pub chunk_size_bytes: u32,
    /// IP TOS byte (DSCP << 2) for this connection, e.g. to mark background traffic.
    pub tos: Option<u8>,
    /// Capabilities to offer (`wire_format::frame::CAP_*`).
    pub capabilities: u64,
    /// With `CAP_REFS`: the index whose digests are announced when the link opens.
    pub dedup: Option<std::sync::Arc<DedupIndex>>,
    /// Both classes on this connection: the background floor the backend keeps (bytes/s).
    pub background_floor: Option<u64>,
}

/// Most digests announced per connection: 4M × 32 bytes = 128 MiB. Beyond that, content is
/// still deduplicated within the session, only not against the oldest part of the index.
const ANNOUNCE_MAX: usize = 4 << 20;

/// What came over the links of one shard, for status.
#[derive(Default)]
pub struct LinkCounters {
    /// Chunk payload bytes as they crossed the wire (compressed size, 32 for a reference).
    pub wire_bytes: Cell<u64>,
    /// Chunks that came zstd-compressed, and their size once decompressed.
    pub zstd_chunks: Cell<u64>,
    pub zstd_raw_bytes: Cell<u64>,
    /// Their size on the wire (compressed).
    pub zstd_wire_bytes: Cell<u64>,
    /// Chunks that came as a reference to content we hold.
    pub ref_chunks: Cell<u64>,
    /// Chunks that came as `ChunkPieces`, and the blocks they named instead of sending.
    pub piece_chunks: Cell<u64>,
    pub piece_blocks: Cell<u64>,
}

impl LinkCounters {
    fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
}

pub struct BackendLink {
    stream: Stream,
    send: async_lock::Mutex<Vec<u8>>,
    pending: RefCell<HashMap<u64, mpsc::UnboundedSender<Reply>>>,
    next_id: Cell<u64>,
    handle: u32,
    dead: Cell<bool>,
    backlog: Rc<super::reader::Backlog>,
    /// `CAP_LAZY_INDEX` was agreed: plain `ChunkData` is content the backend did not hash.
    lazy_index: bool,
    /// `CAP_BLOCK_REFS` was agreed: `ChunkPieces` may come.
    block_refs: bool,
    /// `CAP_ZSTD_STREAM` was agreed: zstd data continues one stream.
    zstd_stream: bool,
    /// The lowest round trip seen while connecting: Hello to HelloAck, and with `CAP_PING`
    /// each Ping to its Pong (no disk and no queued data in either).
    handshake_rtt: Duration,
}

/// Replies to one request; dropping it forgets the request id.
pub struct Replies {
    link: Rc<BackendLink>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Reply>,
}

impl Replies {
    /// The next reply; `None` when the link broke before it came.
    pub async fn next(&mut self) -> Option<Reply> {
        self.rx.next().await
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.link.pending.borrow_mut().remove(&self.id);
    }
}

impl BackendLink {
    pub async fn connect(
        cfg: &LinkConfig,
        bufs: Rc<ChunkBufs>,
        counters: Rc<LinkCounters>,
    ) -> Result<Rc<BackendLink>, LinkError> {
        let opts = ConnectOpts {
            tos: cfg.tos,
            nodelay: true,
            // Requests are small. The receive buffer is left to the kernel's autotuning
            // (`net.ipv4.tcp_rmem`, up to 32 MiB here): a fixed SO_RCVBUF would turn it off
            // and cap the window of a long fat link.
            sndbuf: None,
            rcvbuf: None,
        };
        tracing::debug!(addr = %cfg.addr, tos = ?cfg.tos, "connecting to the backend");
        let stream = Stream::connect_tcp(cfg.addr, &opts).await?;
        let mut reader = FrameReader::new(stream.clone());
        let mut out = Vec::new();
        Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: cfg.capabilities & CAPABILITIES,
            agent: "ferry-frontend",
        }
        .encode(0, &mut out)?;
        Frame::Open {
            chunk_size: cfg.chunk_size_bytes,
            name: &cfg.volume,
        }
        .encode(1, &mut out)?;
        let out_len = out.len();
        let t_hello = Instant::now();
        let (res, _) = stream.send_all(out, 0..out_len).await;
        res?;
        let caps = match reader.next().await? {
            Some((_, Frame::HelloAck { capabilities, .. })) => {
                if capabilities & !(cfg.capabilities & CAPABILITIES) != 0 {
                    return Err(LinkError::Protocol(format!(
                        "backend accepted capabilities {capabilities:#x} that were not offered"
                    )));
                }
                capabilities
            }
            Some((_, f)) => return Err(refusal("HelloAck", &f)),
            None => return Err(LinkError::Closed),
        };
        // The backend answers Hello before it opens the volume, so no disk is in this; but
        // its accept and the start of the connection's task are (pings below are free of
        // both).
        let mut handshake_rtt = t_hello.elapsed();
        let (handle, extent_frames) = match reader.next().await? {
            Some((
                _,
                Frame::OpenOk {
                    handle,
                    chunk_size,
                    extent_frames,
                    ..
                },
            )) => {
                if chunk_size != cfg.chunk_size_bytes {
                    return Err(LinkError::Protocol(format!(
                        "asked for {} byte chunks, backend answered {chunk_size}",
                        cfg.chunk_size_bytes
                    )));
                }
                (handle, extent_frames)
            }
            Some((_, f)) => return Err(refusal("OpenOk", &f)),
            None => return Err(LinkError::Closed),
        };
        // The extents were already taken at start-up; this connection only skips them.
        for _ in 0..extent_frames {
            match reader.next().await? {
                Some((_, Frame::Extents { .. })) => {}
                Some((_, f)) => return Err(refusal("Extents", &f)),
                None => return Err(LinkError::Closed),
            }
        }
        let mut next_id = 2;
        if caps & frame::CAP_PING != 0 {
            for _ in 0..PINGS {
                let rtt = ping(&stream, &mut reader, next_id).await?;
                handshake_rtt = handshake_rtt.min(rtt);
                next_id += 1;
                if rtt >= PING_SURELY_WAN {
                    break;
                }
            }
        }
        if caps & frame::CAP_REFS != 0 {
            if let Some(index) = &cfg.dedup {
                announce(&stream, handle, index).await?;
            }
        }
        if let Some(floor) = cfg.background_floor {
            let mut out = Vec::new();
            Frame::Qos {
                handle,
                background_floor_bytes_per_s: floor,
            }
            .encode(0, &mut out)?;
            let out_len = out.len();
            let (res, _) = stream.send_all(out, 0..out_len).await;
            res?;
        }
        let link = Rc::new(BackendLink {
            stream,
            send: async_lock::Mutex::new(Vec::with_capacity(16 * 1024)),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(next_id),
            handle,
            dead: Cell::new(false),
            backlog: reader.backlog(),
            lazy_index: caps & frame::CAP_LAZY_INDEX != 0,
            block_refs: caps & frame::CAP_BLOCK_REFS != 0,
            zstd_stream: caps & frame::CAP_ZSTD_STREAM != 0,
            handshake_rtt,
        });
        let l = link.clone();
        runtime::spawn(async move {
            if let Err(e) = l.read_loop(&mut reader, &bufs, &counters).await {
                if l.is_dead() {
                    // We closed it (shutdown, or a bad reply already logged by the caller).
                    tracing::debug!(error = %e, "backend link closed");
                } else {
                    tracing::warn!(error = %e, "backend link failed; pending fetches will be retried");
                }
            }
            l.kill();
        })
        .detach();
        Ok(link)
    }

    /// The round trip of this link's handshake, free of the backend's disk time.
    pub fn handshake_rtt(&self) -> Duration {
        self.handshake_rtt
    }

    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    pub fn kill(&self) {
        self.dead.set(true);
        self.stream.shutdown();
        self.pending.borrow_mut().clear();
    }

    async fn read_loop(
        &self,
        reader: &mut FrameReader,
        bufs: &ChunkBufs,
        counters: &LinkCounters,
    ) -> Result<(), LinkError> {
        let mut unzstd = Unzstd::new(self.zstd_stream);
        let mut literal = Vec::new();
        loop {
            let Some((id, frame)) = reader.next().await? else {
                return Err(LinkError::Closed);
            };
            let (frame, digest) = match frame {
                Frame::ChunkDataDigest {
                    handle,
                    chunk,
                    digest,
                    data,
                } => (
                    Frame::ChunkData {
                        handle,
                        chunk,
                        data,
                    },
                    DigestHint::Known(digest),
                ),
                // A lazy-index backend sends plain data only for content it did not hash.
                f @ Frame::ChunkData { .. } if self.lazy_index => (f, DigestHint::Later),
                f => (f, DigestHint::Compute),
            };
            let reply = match frame {
                Frame::ChunkData {
                    handle,
                    chunk,
                    data,
                } => {
                    self.check_handle(handle)?;
                    let mut buf = bufs.take();
                    if data.len() > buf.len() {
                        return Err(LinkError::Protocol(format!(
                            "chunk {chunk}: {} bytes of data for {} byte chunks",
                            data.len(),
                            buf.len()
                        )));
                    }
                    buf.fill_streaming(data);
                    LinkCounters::add(&counters.wire_bytes, data.len() as u64);
                    Reply::Data { chunk, buf, digest }
                }
                Frame::ChunkZstd {
                    handle,
                    chunk,
                    raw_len,
                    raw_crc,
                    data,
                } => {
                    self.check_handle(handle)?;
                    let mut buf = bufs.take();
                    let raw_len = raw_len as usize;
                    if raw_len > buf.len() {
                        return Err(LinkError::Protocol(format!(
                            "chunk {chunk}: {raw_len} bytes of compressed content for {} byte chunks",
                            buf.len()
                        )));
                    }
                    // Decompress straight into the chunk buffer; never more than raw_len bytes.
                    let got = unzstd.decompress(data, &mut buf[..raw_len]);
                    let ok = matches!(got, Ok(n) if n == raw_len)
                        && wire_format::checksum::crc32c(&buf[..raw_len]) == raw_crc;
                    if !ok {
                        bufs.give(buf);
                        return Err(LinkError::Protocol(format!(
                            "chunk {chunk}: compressed content does not decompress to its checksum"
                        )));
                    }
                    buf.set_len(raw_len);
                    LinkCounters::add(&counters.wire_bytes, data.len() as u64);
                    LinkCounters::add(&counters.zstd_chunks, 1);
                    LinkCounters::add(&counters.zstd_raw_bytes, raw_len as u64);
                    LinkCounters::add(&counters.zstd_wire_bytes, data.len() as u64);
                    Reply::Data {
                        chunk,
                        buf,
                        digest: DigestHint::Compute,
                    }
                }
                Frame::ChunkPieces {
                    handle,
                    chunk,
                    pieces:
                        frame::Pieces {
                            raw_len,
                            lit_crc,
                            zstd,
                            refs,
                        },
                    data,
                } => {
                    self.check_handle(handle)?;
                    if !self.block_refs {
                        return Err(LinkError::Protocol(format!(
                            "chunk {chunk} came as pieces, which were not offered"
                        )));
                    }
                    let buf = bufs.take();
                    let refs: Vec<BlockRef> = frame::block_refs(refs).collect();
                    let Some(buf) = place_pieces(
                        buf,
                        raw_len as usize,
                        &refs,
                        lit_crc,
                        zstd.then_some(&mut unzstd),
                        data,
                        &mut literal,
                        bufs,
                    )?
                    else {
                        return Err(LinkError::Protocol(format!(
                            "chunk {chunk}: literal blocks do not match their checksum or length"
                        )));
                    };
                    let wire = (refs.len() * frame::BLOCK_REF_LEN + data.len()) as u64;
                    LinkCounters::add(&counters.wire_bytes, wire);
                    LinkCounters::add(&counters.piece_chunks, 1);
                    LinkCounters::add(&counters.piece_blocks, refs.len() as u64);
                    Reply::Pieces { chunk, buf, refs }
                }
                Frame::ChunkRef {
                    handle,
                    chunk,
                    digest,
                } => {
                    self.check_handle(handle)?;
                    LinkCounters::add(&counters.wire_bytes, DIGEST_LEN as u64);
                    LinkCounters::add(&counters.ref_chunks, 1);
                    Reply::Ref { chunk, digest }
                }
                Frame::ChunkZero { handle, chunk } => {
                    self.check_handle(handle)?;
                    Reply::Zero { chunk }
                }
                Frame::ChunkError {
                    handle,
                    chunk,
                    code,
                    message,
                } => {
                    self.check_handle(handle)?;
                    Reply::ChunkError {
                        chunk,
                        code,
                        message: message.to_string(),
                    }
                }
                Frame::Ack => Reply::Ack,
                Frame::Error { code, message } => Reply::Error {
                    code,
                    message: message.to_string(),
                },
                other => {
                    return Err(LinkError::Protocol(format!(
                        "unexpected {:?} from backend",
                        other.kind()
                    )));
                }
            };
            let pending = self.pending.borrow();
            match pending.get(&id) {
                // A dropped receiver means the asker gave up; its reply is simply discarded.
                Some(tx) => {
                    if let Err(e) = tx.unbounded_send(reply) {
                        e.into_inner().give_back(bufs);
                    }
                }
                None => reply.give_back(bufs),
            }
        }
    }

    fn check_handle(&self, handle: u32) -> Result<(), LinkError> {
        if handle == self.handle {
            Ok(())
        } else {
            Err(LinkError::Protocol(format!(
                "reply for handle {handle}, this link opened {}",
                self.handle
            )))
        }
    }

    /// Sends one request frame and returns the channel its replies arrive on.
    async fn request(
        self: &Rc<Self>,
        encode: impl FnOnce(u64, &mut Vec<u8>) -> Result<(), LinkError>,
    ) -> Result<Replies, LinkError> {
        if self.is_dead() {
            return Err(LinkError::Closed);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = mpsc::unbounded();
        self.pending.borrow_mut().insert(id, tx);
        let replies = Replies {
            link: self.clone(),
            id,
            rx,
        };
        let mut guard = self.send.lock().await;
        let mut out = std::mem::take(&mut *guard);
        out.clear();
        encode(id, &mut out)?;
        let out_len = out.len();
        let (res, out) = self.stream.send_all(out, 0..out_len).await;
        *guard = out;
        if let Err(e) = res {
            self.kill();
            return Err(e.into());
        }
        Ok(replies)
    }

    /// Asks for `chunks`; one reply per chunk arrives on the returned channel. With
    /// `no_refs` every chunk comes as data (a reference we were given could not be used).
    /// `link_bound`: our window of fetches, not the backend, limits them (the backend then
    /// compresses if that pays).
    pub async fn fetch(
        self: &Rc<Self>,
        class: Class,
        no_refs: bool,
        link_bound: bool,
        chunks: &[u64],
    ) -> Result<Replies, LinkError> {
        let handle = self.handle;
        self.request(|id, out| {
            Frame::Fetch {
                handle,
                class,
                no_refs,
                no_zstd: self.backlog.receiver_bound(),
                link_bound,
                chunks: chunks.to_vec(),
            }
            .encode(id, out)?;
            Ok(())
        })
        .await
    }

    async fn expect_ack(mut replies: Replies) -> Result<(), LinkError> {
        match replies.next().await {
            Some(Reply::Ack) => Ok(()),
            Some(Reply::Error { code, message }) => Err(LinkError::Remote { code, message }),
            Some(_) => Err(LinkError::Protocol("expected Ack".into())),
            None => Err(LinkError::Closed),
        }
    }

    /// Writes `data` at `offset` of the source and waits for the backend's Ack.
    pub async fn write_back(self: &Rc<Self>, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        let handle = self.handle;
        let replies = self
            .request(|id, out| {
                wire_format::frame::encode_write_back_prefix(id, handle, offset, data, out)?;
                out.extend_from_slice(data);
                Ok(())
            })
            .await?;
        Self::expect_ack(replies).await
    }

    pub async fn write_zeroes(self: &Rc<Self>, offset: u64, len: u64) -> Result<(), LinkError> {
        let handle = self.handle;
        let replies = self
            .request(|id, out| {
                Ok(Frame::WriteZeroes {
                    handle,
                    offset,
                    len,
                }
                .encode(id, out)?)
            })
            .await?;
        Self::expect_ack(replies).await
    }

    /// Makes every acknowledged write-back durable on the source.
    pub async fn sync(self: &Rc<Self>) -> Result<(), LinkError> {
        let handle = self.handle;
        let replies = self
            .request(|id, out| Ok(Frame::Sync { handle }.encode(id, out)?))
            .await?;
        Self::expect_ack(replies).await
    }
}

/// A link that reconnects on demand after it broke.
pub struct LinkSlot {
    cfg: LinkConfig,
    bufs: Rc<ChunkBufs>,
    counters: Rc<LinkCounters>,
    current: RefCell<Option<Rc<BackendLink>>>,
    connecting: async_lock::Mutex<()>,
}

impl LinkSlot {
    pub fn new(cfg: LinkConfig, bufs: Rc<ChunkBufs>, counters: Rc<LinkCounters>) -> LinkSlot {
        LinkSlot {
            cfg,
            bufs,
            counters,
            current: RefCell::new(None),
            connecting: async_lock::Mutex::new(()),
        }
    }

    pub async fn get(&self) -> Result<Rc<BackendLink>, LinkError> {
        if let Some(l) = self.live() {
            return Ok(l);
        }
        let _g = self.connecting.lock().await;
        if let Some(l) = self.live() {
            return Ok(l);
        }
        let l = BackendLink::connect(&self.cfg, self.bufs.clone(), self.counters.clone()).await?;
        *self.current.borrow_mut() = Some(l.clone());
        Ok(l)
    }

    fn live(&self) -> Option<Rc<BackendLink>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|l| !l.is_dead())
            .cloned()
    }

    pub fn close(&self) {
        if let Some(l) = self.current.borrow_mut().take() {
            l.kill();
        }
    }
}

/// Most pings sent while connecting: the lowest round trip of a few is the path's, free of
/// a busy core's scheduling delay at either end (a loopback handshake measured 0.7-1.9 ms on
/// a loaded 2-core machine, close to the 2 ms that separates a LAN from a WAN).
const PINGS: u64 = 3;
/// A round trip scheduling delay cannot explain: the path is surely a WAN, and its start-up
/// pays one ping's round trip, not three (on a LAN three cost well under a millisecond; a
/// first ping there was seen at 76-534 µs, later ones at 8-10 µs).
const PING_SURELY_WAN: Duration = Duration::from_millis(5);

/// One Ping, answered by its Pong before anything else on the connection (nothing else is
/// outstanding while connecting).
async fn ping(stream: &Stream, reader: &mut FrameReader, id: u64) -> Result<Duration, LinkError> {
    let mut out = Vec::with_capacity(frame::HEADER_LEN);
    Frame::Ping.encode(id, &mut out)?;
    let out_len = out.len();
    let t = Instant::now();
    let (res, _) = stream.send_all(out, 0..out_len).await;
    res?;
    match reader.next().await? {
        Some((got, Frame::Pong)) if got == id => Ok(t.elapsed()),
        Some((got, Frame::Pong)) => Err(LinkError::Protocol(format!(
            "Pong for request {got}, expected {id}"
        ))),
        Some((_, f)) => Err(refusal("Pong", &f)),
        None => Err(LinkError::Closed),
    }
}

/// Tells the backend every digest the index holds, in `Have` frames, before any fetch.
async fn announce(stream: &Stream, handle: u32, index: &DedupIndex) -> Result<(), LinkError> {
    let all = index.announce(ANNOUNCE_MAX);
    for part in all.chunks(MAX_HAVE_DIGESTS * DIGEST_LEN) {
        let mut out = Vec::with_capacity(part.len() + 64);
        Frame::Have {
            handle,
            digests: part,
        }
        .encode(0, &mut out)?;
        let out_len = out.len();
        let (res, _) = stream.send_all(out, 0..out_len).await;
        res?;
    }
    if !all.is_empty() {
        tracing::debug!(digests = all.len() / DIGEST_LEN, "announced held content");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use wire_format::frame::{Header, HEADER_LEN};

    use super::*;
    use crate::runtime::block_on;

    const SLOW_HELLO: Duration = Duration::from_millis(150);

    /// A backend whose HelloAck comes `SLOW_HELLO` late (a busy core's accept) and that
    /// agrees `agree` of what is offered; it answers Pings `pong_delay` late and counts them.
    fn slow_hello_backend(agree: u64, pong_delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let pings = Arc::new(AtomicUsize::new(0));
        let seen = pings.clone();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            loop {
                while let Some(head) = buf.first_chunk::<HEADER_LEN>() {
                    let h = Header::decode(head).expect("header from the frontend");
                    let total = HEADER_LEN + h.payload_len as usize;
                    if buf.len() < total {
                        break;
                    }
                    let mut out = Vec::new();
                    match Frame::decode(&h, &buf[HEADER_LEN..total]).expect("frame") {
                        Frame::Hello { capabilities, .. } => {
                            std::thread::sleep(SLOW_HELLO);
                            Frame::HelloAck {
                                version: 1,
                                capabilities: capabilities & agree,
                            }
                            .encode(h.id, &mut out)
                            .expect("encode");
                        }
                        Frame::Open { chunk_size, .. } => Frame::OpenOk {
                            handle: 1,
                            size: 1 << 20,
                            chunk_size,
                            extent_frames: 0,
                        }
                        .encode(h.id, &mut out)
                        .expect("encode"),
                        Frame::Ping => {
                            seen.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(pong_delay);
                            Frame::Pong.encode(h.id, &mut out).expect("encode");
                        }
                        other => panic!("unexpected {:?}", other.kind()),
                    }
                    buf.drain(..total);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
        });
        (addr, pings)
    }

    fn connect_rtt(agree: u64, pong_delay: Duration) -> (Duration, usize) {
        let (addr, pings) = slow_hello_backend(agree, pong_delay);
        let cfg = crate::runtime::small_cfg();
        let rtt = block_on(cfg, async move {
            let link_cfg = LinkConfig {
                addr,
                volume: "vol".into(),
                chunk_size_bytes: 64 << 10,
                tos: None,
                capabilities: frame::CAP_PING,
                dedup: None,
                background_floor: None,
            };
            let bufs = Rc::new(ChunkBufs::new(64 << 10, 1));
            let link = BackendLink::connect(&link_cfg, bufs, Rc::default())
                .await
                .expect("connect");
            let rtt = link.handshake_rtt();
            link.kill();
            rtt
        });
        (rtt, pings.load(Ordering::SeqCst))
    }

    #[test]
    fn pings_measure_the_round_trip_a_slow_handshake_hides() {
        let ms = Duration::from_millis;
        // A LAN, or a busy one: every ping is taken, the lowest kept; the pings' round trip,
        // not the handshake's.
        for delay in [Duration::ZERO, ms(2)] {
            let (rtt, pings) = connect_rtt(frame::CAP_PING, delay);
            assert_eq!(pings, PINGS as usize);
            assert!(rtt >= delay && rtt < SLOW_HELLO, "{rtt:?}");
        }
        // Surely a WAN: one round trip of start-up, not three.
        let (rtt, pings) = connect_rtt(frame::CAP_PING, ms(20));
        assert_eq!(pings, 1);
        assert!(rtt >= ms(20) && rtt < SLOW_HELLO, "{rtt:?}");
        // A backend that does not agree CAP_PING gets none, and the handshake is all there is.
        let (rtt, pings) = connect_rtt(0, Duration::ZERO);
        assert_eq!(pings, 0);
        assert!(rtt >= SLOW_HELLO, "{rtt:?}");
    }
}
