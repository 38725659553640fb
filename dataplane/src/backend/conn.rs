//! One frontend connection on the backend.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use futures::StreamExt;
use wire_format::frame::{self, Class, ErrorCode, Frame, MAX_EXTENTS_PER_FRAME, MAX_FETCH_CHUNKS};

use super::encode::{Encoded, Encoder};
use super::metrics::{BackendMetrics, Form};
use super::sendq::SendLock;
use super::volume::SourceVolume;
use crate::link::reader::FrameReader;
use crate::link::LinkError;
use crate::runtime::{self, AlignedBuf, File, Gather, OpenOptions, Stream};

/// Fetch requests served at once per connection and class: bounds buffers and disk queue
/// depth. Per class, so background requests holding every permit never keep an on-demand
/// request from being read and served (seed §4.4.4: the backend limits executed requests).
const FETCHES_IN_FLIGHT_MAX: usize = 32;
/// On a connection that carries both classes, unsent bytes the kernel may hold: beyond this
/// a send waits in user space, where an on-demand reply can still go ahead of it.
const SHARED_NOTSENT_LOWAT: u32 = 32 * 1024;
/// Runs of one request read at once (the pool bounds the total per core).
const RUNS_IN_FLIGHT_PER_REQUEST: usize = 4;

struct Opened {
    volume: usize,
    chunk_size_bytes: u32,
    /// O_DIRECT reader of the source (buffered when the size defeats O_DIRECT alignment).
    reader: File,
    /// Buffered writer for write-back, opened on first use.
    writer: RefCell<Option<File>>,
    /// Counts this opening as a user of the volume's sent-blocks table.
    _user: VolumeUser,
}

/// One connection's use of a volume: when the last one ends (a frontend stopped, crashed or
/// restarts), what the table says was sent is forgotten, so a frontend that comes back is
/// never pointed at blocks it may have lost.
struct VolumeUser {
    volumes: Arc<Vec<SourceVolume>>,
    index: usize,
}

impl VolumeUser {
    fn new(volumes: &Arc<Vec<SourceVolume>>, index: usize) -> VolumeUser {
        volumes[index].sent.attach();
        VolumeUser {
            volumes: volumes.clone(),
            index,
        }
    }
}

impl Drop for VolumeUser {
    fn drop(&mut self) {
        self.volumes[self.index].sent.detach();
    }
}

struct Conn {
    stream: Stream,
    send: SendLock<Vec<u8>>,
    /// Classes seen in fetches (`[on-demand, background]`). Once both share this connection
    /// (the frontend's QoS-less mode), background runs go out a chunk per send and the
    /// kernel's unsent queue is kept short, so on-demand replies can overtake them.
    classes_seen: Cell<[bool; 2]>,
    volumes: Arc<Vec<SourceVolume>>,
    opened: RefCell<HashMap<u32, Rc<Opened>>>,
    next_handle: Cell<u32>,
    chunks_sent: Cell<u64>,
    zero_chunks_sent: Cell<u64>,
    bytes_sent: Cell<u64>,
    /// Chosen at Hello from the capabilities both sides have.
    encoder: RefCell<Encoder>,
    /// The frontend takes our digests with the data (`CAP_DIGESTS`) and need not hash.
    send_digests: Cell<bool>,
    metrics: Arc<BackendMetrics>,
}

/// Send buffer of a frontend connection: a WAN link of 1 Gbit/s and 40 ms round trip holds
/// 5 MB in flight; the kernel doubles this and caps it at `net.core.wmem_max`.
const SEND_BUFFER_BYTES: usize = 8 << 20;

pub async fn serve(stream: Stream, volumes: Arc<Vec<SourceVolume>>, metrics: Arc<BackendMetrics>) {
    metrics.inc(&metrics.connections_total);
    metrics.inc(&metrics.connections_open);
    // Small replies (zero chunks, references, errors) must not wait for Nagle on a long link.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set (not a TCP socket?)");
    }
    if let Err(e) = stream.set_send_buffer(SEND_BUFFER_BYTES) {
        tracing::debug!(error = %e, "SO_SNDBUF not set");
    }
    let conn = Rc::new(Conn {
        stream: stream.clone(),
        send: SendLock::new(Vec::with_capacity(64 * 1024)),
        classes_seen: Cell::new([false; 2]),
        volumes,
        opened: RefCell::new(HashMap::new()),
        next_handle: Cell::new(1),
        chunks_sent: Cell::new(0),
        zero_chunks_sent: Cell::new(0),
        bytes_sent: Cell::new(0),
        encoder: RefCell::new(Encoder::new(false, false, false, false, false)),
        send_digests: Cell::new(false),
        metrics: metrics.clone(),
    });
    let mut reader = FrameReader::new(stream.clone());
    let permits = [(); 2].map(|_| Arc::new(async_lock::Semaphore::new(FETCHES_IN_FLIGHT_MAX)));
    let result = conn.read_loop(&mut reader, &permits).await;
    match result {
        Ok(()) => {
            let st = conn.encoder.borrow().stats();
            tracing::info!(
                core = runtime::current_core(),
                chunks = conn.chunks_sent.get(),
                zero_chunks = conn.zero_chunks_sent.get(),
                raw_chunks = st.raw_chunks,
                zstd_chunks = st.zstd_chunks,
                ref_chunks = st.ref_chunks,
                piece_chunks = st.piece_chunks,
                piece_blocks = st.piece_blocks,
                unhashed_chunks = st.unhashed_chunks,
                receiver_bound_chunks = st.receiver_bound_chunks,
                logical_bytes = st.logical_bytes,
                wire_bytes = st.wire_bytes,
                zstd_level = conn.encoder.borrow().level(),
                on_demand_overtakes = conn.send.overtakes(),
                floor_handoffs = conn.send.floor_handoffs(),
                "frontend disconnected"
            )
        }
        Err(e) => {
            metrics.inc(&metrics.connection_errors);
            tracing::warn!(error = %e, chunks = conn.chunks_sent.get(), "connection ended with an error");
            let msg = e.to_string();
            let _ = conn
                .send_frame(
                    0,
                    &Frame::Error {
                        code: ErrorCode::InvalidRequest,
                        message: &msg,
                    },
                )
                .await;
        }
    }
    stream.shutdown();
    metrics.dec(&metrics.connections_open);
}

impl Conn {
    async fn read_loop(
        self: &Rc<Self>,
        reader: &mut FrameReader,
        permits: &[Arc<async_lock::Semaphore>; 2],
    ) -> Result<(), LinkError> {
        loop {
            let Some((id, frame)) = reader.next().await? else {
                return Ok(());
            };
            match frame {
                Frame::Hello {
                    version_min,
                    version_max,
                    capabilities,
                    ..
                } => {
                    if !(version_min..=version_max).contains(&frame::VERSION) {
                        let msg = format!("this backend speaks version {}, peer offers {version_min}..={version_max}", frame::VERSION);
                        self.send_frame(
                            id,
                            &Frame::Error {
                                code: ErrorCode::VersionMismatch,
                                message: &msg,
                            },
                        )
                        .await?;
                        return Err(LinkError::Protocol(msg));
                    }
                    let caps = capabilities & crate::link::CAPABILITIES;
                    *self.encoder.borrow_mut() = Encoder::new(
                        caps & frame::CAP_ZSTD != 0,
                        caps & frame::CAP_REFS != 0,
                        caps & frame::CAP_LAZY_INDEX != 0,
                        caps & frame::CAP_BLOCK_REFS != 0,
                        caps & frame::CAP_ZSTD_STREAM != 0,
                    );
                    self.send_digests.set(caps & frame::CAP_DIGESTS != 0);
                    self.send_frame(
                        id,
                        &Frame::HelloAck {
                            version: frame::VERSION,
                            capabilities: caps,
                        },
                    )
                    .await?;
                }
                Frame::Open { chunk_size, name } => self.open(id, name, chunk_size).await?,
                // Answered whether or not `CAP_PING` was agreed: it costs nothing, and a
                // frontend measures its round trip with it.
                Frame::Ping => self.send_frame(id, &Frame::Pong).await?,
                Frame::Have { handle, digests } => {
                    self.lookup(handle)?;
                    if !self.encoder.borrow().refs_enabled() {
                        return Err(LinkError::Protocol(
                            "Have without the refs capability".into(),
                        ));
                    }
                    self.encoder.borrow_mut().learn(digests);
                }
                Frame::Fetch {
                    handle,
                    class,
                    no_refs,
                    no_zstd,
                    link_bound,
                    chunks,
                } => {
                    let opened = self.lookup(handle)?;
                    if link_bound && !no_zstd {
                        self.encoder.borrow_mut().link_bound();
                    }
                    tracing::debug!(?class, n = chunks.len(), chunks = ?&chunks[..chunks.len().min(64)], "fetch request");
                    self.saw(class);
                    let permit = permits[class_slot(class)].acquire_arc().await;
                    let conn = self.clone();
                    let m = self.metrics.clone();
                    m.request(class);
                    m.inc(&m.fetches_in_flight);
                    runtime::spawn(async move {
                        if let Err(e) = conn
                            .fetch(id, handle, &opened, class, !no_refs, !no_zstd, &chunks)
                            .await
                        {
                            tracing::warn!(error = %e, "fetch reply failed; closing connection");
                            conn.stream.shutdown();
                        }
                        m.dec(&m.fetches_in_flight);
                        drop(permit);
                    })
                    .detach();
                }
                Frame::Qos {
                    handle,
                    background_floor_bytes_per_s,
                } => {
                    self.lookup(handle)?;
                    tracing::debug!(
                        floor = background_floor_bytes_per_s,
                        "background floor on this connection"
                    );
                    self.send.set_floor(background_floor_bytes_per_s);
                    // The frontend says both classes will share this connection: keep the
                    // kernel's queue short from the first reply, before a backlog forms.
                    self.saw(Class::OnDemand);
                    self.saw(Class::Background);
                }
                Frame::WriteBack {
                    handle,
                    offset,
                    data,
                } => {
                    let opened = self.lookup(handle)?;
                    let r = self.write_back(&opened, offset, data).await;
                    self.answer(id, r).await?;
                }
                Frame::WriteZeroes {
                    handle,
                    offset,
                    len,
                } => {
                    let opened = self.lookup(handle)?;
                    let r = self.write_zeroes(&opened, offset, len).await;
                    self.answer(id, r).await?;
                }
                Frame::Sync { handle } => {
                    let opened = self.lookup(handle)?;
                    let w = self.writer(&opened);
                    let r = match w {
                        Ok(w) => w
                            .fdatasync()
                            .await
                            .map_err(|e| (ErrorCode::Io, format!("fdatasync of the source: {e}"))),
                        Err(e) => Err(e),
                    };
                    self.answer(id, r).await?;
                }
                other => {
                    return Err(LinkError::Protocol(format!(
                        "unexpected {:?} from a frontend",
                        other.kind()
                    )));
                }
            }
        }
    }

    fn lookup(&self, handle: u32) -> Result<Rc<Opened>, LinkError> {
        self.opened
            .borrow()
            .get(&handle)
            .cloned()
            .ok_or_else(|| LinkError::Protocol(format!("unknown volume handle {handle}")))
    }

    /// Notes that `class` uses this connection; the first time both have, switches it to
    /// shared mode.
    fn saw(&self, class: Class) {
        let mut seen = self.classes_seen.get();
        if seen[class_slot(class)] {
            return;
        }
        seen[class_slot(class)] = true;
        self.classes_seen.set(seen);
        if seen == [true, true] {
            if let Err(e) = self.stream.set_notsent_lowat(SHARED_NOTSENT_LOWAT) {
                tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
            }
            tracing::debug!("on-demand and background share this connection: replies by priority");
        }
    }

    fn shared(&self) -> bool {
        self.classes_seen.get() == [true, true]
    }

    /// Sends one control or error frame; it goes ahead of queued background data.
    async fn send_frame(&self, id: u64, f: &Frame<'_>) -> Result<(), LinkError> {
        self.send_frame_as(id, f, Class::OnDemand).await
    }

    async fn send_frame_as(&self, id: u64, f: &Frame<'_>, class: Class) -> Result<(), LinkError> {
        let mut guard = self.send.lock(class).await;
        let mut out = std::mem::take(&mut *guard);
        out.clear();
        f.encode(id, &mut out)?;
        let out_len = out.len();
        let (res, out) = self.stream.send_all(out, 0..out_len).await;
        *guard = out;
        guard.sent(out_len as u64);
        Ok(res?)
    }

    async fn answer(&self, id: u64, r: Result<(), (ErrorCode, String)>) -> Result<(), LinkError> {
        match r {
            Ok(()) => self.send_frame(id, &Frame::Ack).await,
            Err((code, message)) => {
                tracing::warn!(?code, %message, "write-back request failed");
                self.send_frame(
                    id,
                    &Frame::Error {
                        code,
                        message: &message,
                    },
                )
                .await
            }
        }
    }

    async fn open(&self, id: u64, name: &str, chunk_size: u32) -> Result<(), LinkError> {
        let Some(index) = self.volumes.iter().position(|v| v.name == name) else {
            let msg = format!("no volume named {name:?} on this backend");
            return self
                .send_frame(
                    id,
                    &Frame::Error {
                        code: ErrorCode::NotFound,
                        message: &msg,
                    },
                )
                .await;
        };
        let vol = &self.volumes[index];
        let reader = match open_reader(vol) {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("cannot open {}: {e}", vol.path.display());
                return self
                    .send_frame(
                        id,
                        &Frame::Error {
                            code: ErrorCode::Io,
                            message: &msg,
                        },
                    )
                    .await;
            }
        };
        let handle = self.next_handle.get();
        self.next_handle.set(handle + 1);
        self.opened.borrow_mut().insert(
            handle,
            Rc::new(Opened {
                volume: index,
                chunk_size_bytes: chunk_size,
                reader,
                writer: RefCell::new(None),
                _user: VolumeUser::new(&self.volumes, index),
            }),
        );
        let frames = vol.extents.chunks(MAX_EXTENTS_PER_FRAME);
        let extent_frames = frames.len() as u32;
        self.send_frame(
            id,
            &Frame::OpenOk {
                handle,
                size: vol.size_bytes,
                chunk_size,
                extent_frames,
            },
        )
        .await?;
        for part in vol.extents.chunks(MAX_EXTENTS_PER_FRAME) {
            self.send_frame(
                id,
                &Frame::Extents {
                    handle,
                    extents: part.to_vec(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Answers one fetch request. Consecutive chunks form runs read with one O_DIRECT read
    /// each (up to a pool buffer, 1 MiB) and sent with one gather send; the runs of a request
    /// are read concurrently so the device sees a deep queue. Holes and all-zero chunks go out
    /// as `ChunkZero` without data. Replies may come in any order (the frontend matches them
    /// by chunk).
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        id: u64,
        handle: u32,
        opened: &Opened,
        class: Class,
        allow_refs: bool,
        allow_zstd: bool,
        chunks: &[u64],
    ) -> Result<(), LinkError> {
        debug_assert!(chunks.len() <= MAX_FETCH_CHUNKS);
        let vol = &self.volumes[opened.volume];
        let cs = u64::from(opened.chunk_size_bytes);
        let run_max = (runtime::buf_pool().buf_size() as u64 / cs).max(1);
        let in_range = |c: u64| c.checked_mul(cs).filter(|&o| o < vol.size_bytes);
        let chunk_len = |o: u64| cs.min(vol.size_bytes - o);
        let mut runs = Vec::new();
        let mut i = 0;
        while i < chunks.len() {
            let chunk = chunks[i];
            let Some(offset) = in_range(chunk) else {
                self.metrics.inc(&self.metrics.chunk_errors);
                let msg = format!("chunk {chunk} is past the end of the volume");
                let f = Frame::ChunkError {
                    handle,
                    chunk,
                    code: ErrorCode::OutOfRange,
                    message: &msg,
                };
                self.send_frame_as(id, &f, class).await?;
                i += 1;
                continue;
            };
            if vol.is_hole(offset, chunk_len(offset)) {
                self.send_zero(id, handle, chunk, class).await?;
                i += 1;
                continue;
            }
            let mut n = 1u64;
            while (i + n as usize) < chunks.len()
                && n < run_max
                && chunks[i + n as usize] == chunk + n
                && in_range(chunk + n).is_some_and(|o| !vol.is_hole(o, chunk_len(o)))
            {
                n += 1;
            }
            runs.push((chunk, n, offset));
            i += n as usize;
        }
        let results: Vec<Result<(), LinkError>> = futures::stream::iter(runs)
            .map(|(chunk, n, offset)| {
                self.serve_run(
                    id, handle, opened, class, chunk, n, offset, allow_refs, allow_zstd,
                )
            })
            .buffer_unordered(RUNS_IN_FLIGHT_PER_REQUEST)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Reads `n` chunks from `offset` and sends them in one gather send.
    #[allow(clippy::too_many_arguments)]
    async fn serve_run(
        &self,
        id: u64,
        handle: u32,
        opened: &Opened,
        class: Class,
        chunk: u64,
        n: u64,
        offset: u64,
        allow_refs: bool,
        allow_zstd: bool,
    ) -> Result<(), LinkError> {
        let vol = &self.volumes[opened.volume];
        let cs = u64::from(opened.chunk_size_bytes);
        let pool = runtime::buf_pool();
        let run_len = (n * cs).min(vol.size_bytes - offset) as usize;
        let mut buf = if run_len <= pool.buf_size() {
            match (class, pool.try_take()) {
                (_, Some(b)) => b,
                // Background runs waiting for the link may hold every pool buffer; an
                // on-demand run must not wait behind them for memory.
                (Class::OnDemand, None) => AlignedBuf::new(run_len),
                (Class::Background, None) => pool.take().await,
            }
        } else {
            AlignedBuf::new(run_len)
        };
        buf.set_len(run_len);
        let t_read = std::time::Instant::now();
        let (res, mut buf) = opened.reader.read_exact_at(buf, offset).await;
        let read_us = t_read.elapsed().as_micros();
        if res.is_ok() && !vol.free.is_empty() {
            vol.zero_free(offset, &mut buf[..run_len]);
        }
        if let Err(e) = res {
            let msg = format!("reading {} at {offset}: {e}", vol.path.display());
            tracing::warn!(%msg, "source read failed");
            for c in chunk..chunk + n {
                self.metrics.inc(&self.metrics.chunk_errors);
                let f = Frame::ChunkError {
                    handle,
                    chunk: c,
                    code: ErrorCode::Io,
                    message: &msg,
                };
                self.send_frame_as(id, &f, class).await?;
            }
            return Ok(());
        }
        // Encode under the send lock: the encoder's choice (compress or not, how hard) then
        // follows what the link is doing now, not when the run was read, and content goes on
        // the wire in the order the encoder saw it — a reference never overtakes the data it
        // names. Compressing under the lock costs no link time: the kernel keeps sending what
        // the socket buffer holds meanwhile.
        // On a shared connection a background run goes out one chunk per send, each taking
        // the lock anew, so an on-demand reply waits for one chunk at most, not a whole run.
        // While compressing, every chunk goes out as soon as it is encoded. A run sent in one
        // piece reaches the frontend only once all of it is compressed (64 chunks at level 9:
        // about 80 ms), which its window rule takes for queueing on the link: it then keeps
        // too few chunks outstanding and a slow link idles (measured at 100 Mbit/s).
        let compressing = self.encoder.borrow().level() > 0;
        let group = if (class == Class::Background && self.shared()) || compressing {
            1
        } else {
            n
        };
        let mut first = 0u64;
        while first < n {
            let last = (first + group).min(n);
            let guard = self.send.lock(class).await;
            // All frames of the group in one gather send: headers (and compressed data) from
            // `head`, raw data straight from the read buffer.
            let mut head = Vec::with_capacity((last - first) as usize * 64);
            let mut parts = Vec::with_capacity(2 * (last - first) as usize);
            let mut data_bytes = 0u64;
            {
                let mut encoder = self.encoder.borrow_mut();
                for k in first..last {
                    let start = (k * cs) as usize;
                    let end = (start + cs as usize).min(run_len);
                    let h0 = head.len();
                    if is_zero(&buf[start..end]) {
                        self.zero_chunks_sent.set(self.zero_chunks_sent.get() + 1);
                        self.metrics.chunk(class, Form::Zero, 0, 0);
                        Frame::ChunkZero {
                            handle,
                            chunk: chunk + k,
                        }
                        .encode(id, &mut head)?;
                        parts.push((false, h0..head.len()));
                    } else {
                        let raw = &buf[start..end];
                        let logical = raw.len() as u64;
                        // Named blocks may still be on their way on a background
                        // connection: an on-demand reply must never wait for those.
                        let sent = (class == Class::Background)
                            .then_some((&vol.sent, offset + start as u64));
                        match encoder.encode(raw, sent, allow_refs, allow_zstd) {
                            Encoded::Raw(digest) => {
                                self.metrics.chunk(class, Form::Raw, logical, logical);
                                match digest.filter(|_| self.send_digests.get()) {
                                    Some(d) => frame::encode_chunk_data_digest_prefix(
                                        id,
                                        handle,
                                        chunk + k,
                                        &d,
                                        raw,
                                        &mut head,
                                    )?,
                                    None => frame::encode_chunk_data_prefix(
                                        id,
                                        handle,
                                        chunk + k,
                                        raw,
                                        &mut head,
                                    )?,
                                }
                                parts.push((false, h0..head.len()));
                                parts.push((true, start..end));
                                data_bytes += (end - start) as u64;
                            }
                            Encoded::Zstd { data, raw_crc } => {
                                self.metrics
                                    .chunk(class, Form::Zstd, logical, data.len() as u64);
                                // Within MAX_DATA_LEN: a chunk is at most 1 MiB and raw_len is its size.
                                frame::encode_chunk_zstd_prefix(
                                    id,
                                    handle,
                                    chunk + k,
                                    raw.len() as u32,
                                    raw_crc,
                                    data,
                                    &mut head,
                                )?;
                                head.extend_from_slice(data);
                                parts.push((false, h0..head.len()));
                                data_bytes += data.len() as u64;
                            }
                            Encoded::Pieces { pieces, data } => {
                                self.metrics.chunk(
                                    class,
                                    Form::Pieces,
                                    logical,
                                    (pieces.refs.len() + data.len()) as u64,
                                );
                                frame::encode_chunk_pieces_prefix(
                                    id,
                                    handle,
                                    chunk + k,
                                    &pieces,
                                    data,
                                    &mut head,
                                )?;
                                head.extend_from_slice(data);
                                parts.push((false, h0..head.len()));
                                data_bytes += data.len() as u64;
                            }
                            Encoded::Ref(digest) => {
                                self.metrics.chunk(
                                    class,
                                    Form::Ref,
                                    logical,
                                    frame::DIGEST_LEN as u64,
                                );
                                Frame::ChunkRef {
                                    handle,
                                    chunk: chunk + k,
                                    digest,
                                }
                                .encode(id, &mut head)?;
                                parts.push((false, h0..head.len()));
                            }
                        }
                        self.chunks_sent.set(self.chunks_sent.get() + 1);
                    }
                }
            }
            let wire: u64 = parts.iter().map(|(_, r)| r.len() as u64).sum();
            let gather = Gather::new(head, buf, parts);
            let t_send = std::time::Instant::now();
            let (res, gather) = self.stream.send_gather_all(gather).await;
            self.encoder.borrow_mut().sent(t_send.elapsed());
            guard.sent(wire);
            drop(guard);
            buf = gather.body;
            tracing::trace!(
                chunk = chunk + first,
                n = last - first,
                read_us,
                send_us = t_send.elapsed().as_micros(),
                "run timing"
            );
            res?;
            self.bytes_sent.set(self.bytes_sent.get() + data_bytes);
            first = last;
        }
        Ok(())
    }

    async fn send_zero(
        &self,
        id: u64,
        handle: u32,
        chunk: u64,
        class: Class,
    ) -> Result<(), LinkError> {
        self.zero_chunks_sent.set(self.zero_chunks_sent.get() + 1);
        self.metrics.chunk(class, Form::Zero, 0, 0);
        self.send_frame_as(id, &Frame::ChunkZero { handle, chunk }, class)
            .await
    }

    fn writer(&self, opened: &Opened) -> Result<File, (ErrorCode, String)> {
        let vol = &self.volumes[opened.volume];
        if !vol.writable {
            return Err((
                ErrorCode::ReadOnly,
                format!("{} was opened read-only", vol.path.display()),
            ));
        }
        if let Some(w) = opened.writer.borrow().as_ref() {
            return Ok(w.clone());
        }
        // Buffered on purpose: write-back happens once, at abort, in chunk-sized pieces that may
        // not meet the source's O_DIRECT alignment at its end; Sync makes it durable.
        let opts = OpenOptions {
            read: true,
            write: true,
            create: false,
            direct: false,
        };
        let w = File::open(&vol.path, &opts)
            .map_err(|e| (ErrorCode::Io, format!("open {}: {e}", vol.path.display())))?;
        *opened.writer.borrow_mut() = Some(w.clone());
        Ok(w)
    }

    fn check_range(vol: &SourceVolume, offset: u64, len: u64) -> Result<(), (ErrorCode, String)> {
        match offset.checked_add(len) {
            Some(end) if end <= vol.size_bytes => Ok(()),
            _ => Err((
                ErrorCode::OutOfRange,
                format!("range {offset}+{len} is past the end ({})", vol.size_bytes),
            )),
        }
    }

    async fn write_back(
        &self,
        opened: &Opened,
        offset: u64,
        data: &[u8],
    ) -> Result<(), (ErrorCode, String)> {
        let vol = &self.volumes[opened.volume];
        Self::check_range(vol, offset, data.len() as u64)?;
        let w = self.writer(opened)?;
        let mut buf = AlignedBuf::new(data.len());
        buf.set_len(data.len());
        buf.copy_from_slice(data);
        let (res, _) = w.write_all_at(buf, offset).await;
        if res.is_ok() {
            self.metrics
                .written_back_bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        res.map_err(|e| {
            (
                ErrorCode::Io,
                format!("write-back to {} at {offset}: {e}", vol.path.display()),
            )
        })
    }

    async fn write_zeroes(
        &self,
        opened: &Opened,
        offset: u64,
        len: u64,
    ) -> Result<(), (ErrorCode, String)> {
        let vol = &self.volumes[opened.volume];
        Self::check_range(vol, offset, len)?;
        let w = self.writer(opened)?;
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match w.fallocate(mode, offset, len).await {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => {
                return Err((
                    ErrorCode::Io,
                    format!("zeroing {} at {offset}: {e}", vol.path.display()),
                ))
            }
        }
        // No ZERO_RANGE here: write zeros.
        let piece = 1u64 << 20;
        let mut buf = AlignedBuf::new(piece as usize);
        let mut pos = offset;
        while pos < offset + len {
            let n = piece.min(offset + len - pos);
            buf.set_len(n as usize);
            let (res, b) = w.write_all_at(buf, pos).await;
            buf = b;
            res.map_err(|e| {
                (
                    ErrorCode::Io,
                    format!("zeroing {} at {pos}: {e}", vol.path.display()),
                )
            })?;
            pos += n;
        }
        Ok(())
    }
}

fn open_reader(vol: &SourceVolume) -> std::io::Result<File> {
    let opts = OpenOptions {
        read: true,
        write: false,
        create: false,
        direct: true,
    };
    let f = File::open(&vol.path, &opts)?;
    if vol.size_bytes.is_multiple_of(f.dio_align().offset as u64) {
        return Ok(f);
    }
    tracing::warn!(path = %vol.path.display(), "size is not a multiple of the O_DIRECT alignment; reading it buffered");
    File::open(
        &vol.path,
        &OpenOptions {
            direct: false,
            ..opts
        },
    )
}

/// All-zero test in 64-byte blocks: stops at the first non-zero block, which for real data
/// is almost always the first.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let blocks = data.chunks_exact(64);
    let tail = blocks.remainder();
    blocks
        .into_iter()
        .all(|b| b.iter().fold(0u8, |a, &x| a | x) == 0)
        && tail.iter().all(|&b| b == 0)
}

fn class_slot(class: Class) -> usize {
    match class {
        Class::OnDemand => 0,
        Class::Background => 1,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 65536 + 3];
        assert!(super::is_zero(&v));
        v[65536 + 2] = 1;
        assert!(!super::is_zero(&v));
        v[65536 + 2] = 0;
        v[12345] = 0x80;
        assert!(!super::is_zero(&v));
    }
}
