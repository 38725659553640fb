//! Transmission phase: requests in, simple replies out.
//!
//! The reading task validates each request and, for writes, reads the payload piece by piece
//! into pool buffers, starting each piece's write as soon as it has arrived (so a large write
//! never needs more buffers than the pool has). Each request then completes in its own task.
//! A small reply is queued and sent by whoever holds the connection's send lock, together
//! with every other reply queued meanwhile: under load many replies share one send, and one
//! wake-up of the client (measured: a wake-up per 4 KiB reply was a fifth of the frontend's
//! CPU at queue depth 32). A large reply is streamed under the lock.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::stream::{FuturesOrdered, StreamExt};

use wire_format::nbd::{self, Command, Request};

use super::input::Input;
use super::{NbdConnError, MAX_REQUEST_BYTES, REQUESTS_IN_FLIGHT_MAX};
use crate::frontend::error::VolError;
use crate::frontend::gate::Pass;
use crate::frontend::volume::{local_gate, Volume};
use crate::recording::EventKind;
use crate::runtime::{self, AlignedBuf, Gather, Stream};

/// Largest read segment: one owner, one target read, one pipelined send.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Replies up to this size are copied behind their header and sent in one go.
const SMALL_REPLY_BYTES: usize = 64 * 1024;
/// Replies up to this size are read whole (in parallel segments) before they are sent.
const MEDIUM_REPLY_BYTES: u64 = 4 << 20;
/// Queued reply bytes past which a request waits for its reply to be sent. The request
/// permit goes back when the reply is queued, so without this a client that stops reading
/// replies but keeps sending requests would grow the queue without end; with it the queue
/// holds at most this plus one small reply per request in flight.
const QUEUED_MAX_BYTES: usize = 4 << 20;
/// Segments read ahead while a large reply is being sent.
const SEGMENTS_IN_FLIGHT: usize = 4;

struct Conn {
    stream: Stream,
    /// The send side: only its holder sends. Its buffer is the holder's scratch. Every holder
    /// lets it go through [`Conn::release`], which sends what is queued first.
    send: async_lock::Mutex<Vec<u8>>,
    /// Whole small replies (header and data) waiting for the holder of `send`.
    queued: RefCell<Vec<u8>>,
    /// Large replies waiting for `send`: a holder that sees one hands the lock, and the queue,
    /// over instead of sending the queue, so a steady stream of small replies cannot keep a
    /// large one waiting.
    large_waiting: Cell<usize>,
    vol: Rc<Volume>,
    /// Buffers for large replies, used only by the holder of the send lock.
    segment_bufs: RefCell<Vec<AlignedBuf>>,
}

pub async fn run(stream: Stream, mut input: Input, vol: Rc<Volume>) -> Result<(), NbdConnError> {
    let conn = Rc::new(Conn {
        stream,
        send: async_lock::Mutex::new(Vec::with_capacity(64)),
        queued: RefCell::new(Vec::with_capacity(64)),
        large_waiting: Cell::new(0),
        vol,
        segment_bufs: RefCell::new(Vec::new()),
    });
    let permits = std::sync::Arc::new(async_lock::Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let gate = local_gate();
    loop {
        let mut rb = [0u8; nbd::REQUEST_LEN];
        match input.read_exact(&mut rb).await {
            Ok(()) => {}
            Err(NbdConnError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        }
        // A bad magic means we lost the framing: nothing after it can be trusted.
        let req = nbd::decode_request(&rb)?;
        if req.command == Command::Disc {
            // Spec: finish outstanding requests, then close.
            let mut all = Vec::with_capacity(REQUESTS_IN_FLIGHT_MAX);
            for _ in 0..REQUESTS_IN_FLIGHT_MAX {
                all.push(permits.acquire_arc().await);
            }
            return Ok(());
        }
        let permit = permits.acquire_arc().await;
        if let Err(errno) = conn.validate(&req) {
            if carries_payload(&req) {
                if req.length > MAX_REQUEST_BYTES {
                    return Err(NbdConnError::Refused(format!(
                        "write of {} bytes is over our {MAX_REQUEST_BYTES} byte limit",
                        req.length
                    )));
                }
                input.skip(u64::from(req.length)).await?;
            }
            conn.reply_error(req.cookie, errno).await?;
            continue;
        }
        let Some(pass) = gate.enter().await else {
            if carries_payload(&req) {
                input.skip(u64::from(req.length)).await?;
            }
            conn.reply_error(req.cookie, nbd::ESHUTDOWN).await?;
            continue;
        };
        if let Some(indexer) = &conn.vol.indexer {
            indexer.export_request();
        }
        if let (Some(r), Some(kind)) = (&conn.vol.recorder, event_kind(req.command)) {
            // Valid and admitted: this is what the workload asked for, in arrival order.
            r.record(kind, req.offset, req.length);
        }
        match req.command {
            Command::Write => {
                let pieces = conn.clone().start_write(&req, &mut input).await?;
                let c = conn.clone();
                runtime::spawn(async move {
                    let r = c.finish_write(&req, pieces).await;
                    c.complete(req.cookie, r, pass).await;
                    drop(permit);
                })
                .detach();
            }
            _ => {
                let c = conn.clone();
                runtime::spawn(async move {
                    c.serve(req, pass).await;
                    drop(permit);
                })
                .detach();
            }
        }
    }
}

/// The recording's name for a command that passed validation.
fn event_kind(c: Command) -> Option<EventKind> {
    Some(match c {
        Command::Read => EventKind::Read,
        Command::Write => EventKind::Write,
        Command::Trim => EventKind::Trim,
        Command::WriteZeroes => EventKind::WriteZeroes,
        Command::Flush => EventKind::Flush,
        _ => return None,
    })
}

fn carries_payload(req: &Request) -> bool {
    req.command == Command::Write
}

type PieceTask = async_task::Task<Result<AlignedBuf, VolError>>;

impl Conn {
    /// Checks a request before anything is done for it; the error is the NBD errno to reply.
    fn validate(&self, req: &Request) -> Result<(), u32> {
        let size = self.vol.geo.volume_size_bytes;
        let min = u64::from(self.vol.min_block);
        match req.command {
            Command::Read | Command::Write | Command::Trim | Command::WriteZeroes => {}
            Command::Flush => {
                return if req.offset == 0 && req.length == 0 {
                    Ok(())
                } else {
                    Err(nbd::EINVAL)
                }
            }
            // CACHE and BLOCK_STATUS were not negotiated; unknown commands per spec: EINVAL.
            _ => return Err(nbd::EINVAL),
        }
        let known = nbd::CMD_FLAG_FUA | nbd::CMD_FLAG_NO_HOLE;
        if req.flags & !known != 0 {
            return Err(nbd::EINVAL);
        }
        let end = req.end().ok_or(nbd::EINVAL)?;
        if end > size {
            // Spec: writes past the end SHOULD get ENOSPC; other requests EINVAL.
            return Err(
                if matches!(req.command, Command::Write | Command::WriteZeroes) {
                    nbd::ENOSPC
                } else {
                    nbd::EINVAL
                },
            );
        }
        if matches!(req.command, Command::Read | Command::Write) && req.length > MAX_REQUEST_BYTES {
            return Err(nbd::EINVAL);
        }
        if !req.offset.is_multiple_of(min) || u64::from(req.length) % min != 0 {
            return Err(nbd::EINVAL);
        }
        Ok(())
    }

    async fn reply_error(&self, cookie: u64, errno: u32) -> Result<(), NbdConnError> {
        Ok(self.reply_small(errno, cookie, &[]).await?)
    }

    /// Queues a reply with its data and sends the queue, unless a send is under way: then
    /// the holder of the lock sends it when that send is done.
    async fn reply_small(&self, errno: u32, cookie: u64, data: &[u8]) -> std::io::Result<()> {
        {
            let mut q = self.queued.borrow_mut();
            q.extend_from_slice(&nbd::encode_simple_reply(errno, cookie));
            q.extend_from_slice(data);
        }
        if let Some(guard) = self.send.try_lock() {
            return self.release(guard).await;
        }
        if self.queued.borrow().len() > QUEUED_MAX_BYTES {
            let guard = self.send.lock().await;
            return self.release(guard).await;
        }
        Ok(())
    }

    /// Takes the send lock for a large reply, ahead of any more rounds of queued replies.
    async fn lock_for_large(&self) -> async_lock::MutexGuard<'_, Vec<u8>> {
        struct Waiting<'a>(&'a Cell<usize>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.large_waiting.set(self.large_waiting.get() + 1);
        let _waiting = Waiting(&self.large_waiting);
        self.send.lock().await
    }

    /// Sends the queued replies, round after round until none is left or a large reply
    /// waits (it sends them when it lets go), then lets the lock go. Nothing can be queued
    /// between the last look at the queue and the unlock: no await lies between them.
    async fn release(&self, mut guard: async_lock::MutexGuard<'_, Vec<u8>>) -> std::io::Result<()> {
        while self.large_waiting.get() == 0 {
            let mut out = std::mem::take(&mut *guard);
            out.clear();
            std::mem::swap(&mut out, &mut *self.queued.borrow_mut());
            if out.is_empty() {
                *guard = out;
                break;
            }
            let n = out.len();
            let (r, out) = self.stream.send_all(out, 0..n).await;
            *guard = out;
            r?;
        }
        Ok(())
    }

    async fn complete(&self, cookie: u64, r: Result<(), VolError>, pass: Pass) {
        drop(pass);
        let errno = match &r {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "NBD request failed");
                e.nbd_errno()
            }
        };
        if let Err(e) = self.reply_error(cookie, errno).await {
            tracing::debug!(error = %e, "reply not sent; client gone");
            self.stream.shutdown();
        }
    }

    async fn start_write(
        self: Rc<Self>,
        req: &Request,
        input: &mut Input,
    ) -> Result<Vec<PieceTask>, NbdConnError> {
        let pool = runtime::buf_pool();
        let mut tasks = Vec::new();
        for p in self.vol.geo.pieces(req.offset, u64::from(req.length)) {
            let mut buf = pool.take().await;
            buf.set_len(p.len as usize);
            input.read_exact(&mut buf).await?;
            let vol = self.vol.clone();
            tasks.push(runtime::spawn(async move { vol.write_piece(p, buf).await }));
        }
        Ok(tasks)
    }

    async fn finish_write(&self, req: &Request, tasks: Vec<PieceTask>) -> Result<(), VolError> {
        let mut first_err = None;
        for t in tasks {
            if let Err(e) = t.await {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if req.flags & nbd::CMD_FLAG_FUA != 0 {
            self.vol
                .sync_owners_of(req.offset, u64::from(req.length))
                .await?;
        }
        Ok(())
    }

    async fn serve(&self, req: Request, pass: Pass) {
        match req.command {
            Command::Read => self.read(req, pass).await,
            Command::Flush => {
                let r = self.vol.flush().await;
                self.complete(req.cookie, r, pass).await;
            }
            Command::Trim | Command::WriteZeroes => {
                let r = self.zero(&req).await;
                self.complete(req.cookie, r, pass).await;
            }
            _ => {
                self.complete(req.cookie, Err(VolError::Shutdown), pass)
                    .await
            }
        }
    }

    async fn zero(&self, req: &Request) -> Result<(), VolError> {
        let trim = req.command == Command::Trim;
        let pool = runtime::buf_pool();
        let pieces = self.vol.geo.pieces(req.offset, u64::from(req.length));
        let mut tasks = Vec::new();
        for p in pieces {
            let scratch = pool.take().await;
            let vol = self.vol.clone();
            tasks.push(runtime::spawn(async move {
                vol.zero_piece(p, trim, scratch).await
            }));
        }
        for t in tasks {
            t.await?;
        }
        if req.flags & nbd::CMD_FLAG_FUA != 0 {
            self.vol
                .sync_owners_of(req.offset, u64::from(req.length))
                .await?;
        }
        Ok(())
    }

    async fn read(&self, req: Request, pass: Pass) {
        let (offset, len) = (req.offset, u64::from(req.length));
        let pool = runtime::buf_pool();
        let mut segments = self.vol.geo.segments(offset, len, SEGMENT_BYTES);
        let first = segments.next();
        let single =
            first.filter(|&(_, l)| segments.next().is_none() && l as usize <= pool.buf_size());
        // A small read goes straight to its owner and is sent when done.
        if let Some((o, l)) = single {
            match self.vol.read_range(o, l, pool.take().await).await {
                Ok(buf) => {
                    let r = if buf.len() <= SMALL_REPLY_BYTES {
                        // Copying a few KiB behind the header costs less than a send.
                        self.reply_small(0, req.cookie, &buf).await
                    } else {
                        let mut guard = self.lock_for_large().await;
                        let mut r = self.send_reply_head(&mut guard, 0, req.cookie).await;
                        if r.is_ok() {
                            let n = buf.len();
                            r = self.stream.send_all(buf, 0..n).await.0;
                        }
                        match r {
                            Ok(()) => self.release(guard).await,
                            Err(e) => Err(e),
                        }
                    };
                    drop(pass);
                    if r.is_err() {
                        self.stream.shutdown();
                    }
                }
                Err(e) => self.complete(req.cookie, Err(e), pass).await,
            }
            return;
        }
        // A medium one is read whole, segments in parallel, before taking the send lock.
        if len <= MEDIUM_REPLY_BYTES {
            self.read_medium(req, pass).await;
            return;
        }
        // A large one first brings every chunk local, without holding the send lock, so a slow
        // fetch never delays other replies; then streams segments in order under the lock.
        if let Err(e) = self.vol.ensure_local(offset, len).await {
            self.complete(req.cookie, Err(e), pass).await;
            return;
        }
        let mut guard = self.lock_for_large().await;
        let mut result = self
            .send_reply_head(&mut guard, 0, req.cookie)
            .await
            .map_err(|e| e.to_string());
        if result.is_ok() {
            result = self.stream_segments(offset, len).await;
        }
        if result.is_ok() {
            result = self.release(guard).await.map_err(|e| e.to_string());
        }
        drop(pass);
        if let Err(e) = result {
            // The header is out; the only honest way to report a late failure is to close.
            tracing::warn!(error = %e, "read failed after its reply header was sent; closing the connection");
            self.stream.shutdown();
        }
    }

    async fn read_medium(&self, req: Request, pass: Pass) {
        let (offset, len) = (req.offset, u64::from(req.length));
        let segs: Vec<(u64, u32)> = self.vol.geo.segments(offset, len, SEGMENT_BYTES).collect();
        let (_held, bufs) = segment_pool::take(segs.len()).await;
        let reads = segs
            .iter()
            .zip(bufs)
            .map(|(&(o, l), b)| self.vol.read_range(o, l, b));
        let results = futures::future::join_all(reads).await;
        let mut bufs = Vec::with_capacity(results.len());
        let mut error = None;
        for r in results {
            match r {
                Ok(b) => bufs.push(b),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            segment_pool::give(bufs);
            self.complete(req.cookie, Err(e), pass).await;
            return;
        }
        let mut guard = self.lock_for_large().await;
        if bufs.len() == 1 {
            // Header and data in one gather send.
            let Some(b) = bufs.pop() else { return };
            let n = b.len();
            let head = nbd::encode_simple_reply(0, req.cookie).to_vec();
            let hl = head.len();
            let gather = Gather::new(head, b, vec![(false, 0..hl), (true, 0..n)]);
            let (mut r, gather) = self.stream.send_gather_all(gather).await;
            if r.is_ok() {
                r = self.release(guard).await;
            }
            drop(pass);
            segment_pool::give(vec![gather.into_parts().1]);
            if r.is_err() {
                self.stream.shutdown();
            }
            return;
        }
        let mut r = self.send_reply_head(&mut guard, 0, req.cookie).await;
        let mut sent = Vec::with_capacity(bufs.len());
        for b in bufs {
            if r.is_err() {
                sent.push(b);
                continue;
            }
            let n = b.len();
            let (res, b) = self.stream.send_all(b, 0..n).await;
            r = res;
            sent.push(b);
        }
        if r.is_ok() {
            r = self.release(guard).await;
        }
        drop(pass);
        segment_pool::give(sent);
        if r.is_err() {
            self.stream.shutdown();
        }
    }

    /// Sends a reply header; `scratch` is the send lock's buffer, so the caller holds the lock.
    async fn send_reply_head(
        &self,
        scratch: &mut Vec<u8>,
        errno: u32,
        cookie: u64,
    ) -> std::io::Result<()> {
        let head = nbd::encode_simple_reply(errno, cookie);
        let mut out = std::mem::take(scratch);
        out.clear();
        out.extend_from_slice(&head);
        let (res, out) = self.stream.send_all(out, 0..head.len()).await;
        *scratch = out;
        res
    }

    /// Sends the data of `[offset, offset + len)`, reading up to `SEGMENTS_IN_FLIGHT` segments
    /// ahead into this connection's own buffers. Called with the send lock held, which is why
    /// these buffers are private: waiting for a shared pool while holding the lock could
    /// deadlock with requests that hold pool buffers and wait for the lock.
    async fn stream_segments(&self, offset: u64, len: u64) -> Result<(), String> {
        let mut bufs = std::mem::take(&mut *self.segment_bufs.borrow_mut());
        while bufs.len() < SEGMENTS_IN_FLIGHT {
            bufs.push(AlignedBuf::new(SEGMENT_BYTES as usize));
        }
        let mut segments = self.vol.geo.segments(offset, len, SEGMENT_BYTES);
        let mut in_flight = FuturesOrdered::new();
        let mut result = Ok(());
        loop {
            while in_flight.len() < SEGMENTS_IN_FLIGHT {
                let Some((o, l)) = segments.next() else { break };
                let Some(buf) = bufs.pop() else { break };
                in_flight.push_back(self.vol.read_range(o, l, buf));
            }
            match in_flight.next().await {
                None => break,
                Some(Ok(buf)) => {
                    let n = buf.len();
                    let (res, buf) = self.stream.send_all(buf, 0..n).await;
                    bufs.push(buf);
                    if let Err(e) = res {
                        result = Err(e.to_string());
                        break;
                    }
                }
                Some(Err(e)) => {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        *self.segment_bufs.borrow_mut() = bufs;
        result
    }
}

/// Per-core segment buffers for medium replies, bounded. Taken *before* the send lock, and
/// the lock holder never waits for them, so waiting here cannot deadlock.
mod segment_pool {
    use std::cell::RefCell;
    use std::sync::Arc;

    use super::SEGMENT_BYTES;
    use crate::runtime::AlignedBuf;

    /// Buffers per core: 16 MiB, e.g. four 4 MiB replies at once.
    pub const SEGMENTS_MAX: usize = 16;

    thread_local! {
        static FREE: RefCell<Vec<AlignedBuf>> = const { RefCell::new(Vec::new()) };
        static PERMITS: Arc<async_lock::Semaphore> = Arc::new(async_lock::Semaphore::new(SEGMENTS_MAX));
    }

    /// Permits for buffers in use; buffers go back to the free list with `give`.
    pub struct Held(#[allow(dead_code)] Vec<async_lock::SemaphoreGuardArc>);

    pub async fn take(n: usize) -> (Held, Vec<AlignedBuf>) {
        assert!(
            n <= SEGMENTS_MAX,
            "a medium reply spans at most {SEGMENTS_MAX} segments"
        );
        let permits = PERMITS.with(|p| p.clone());
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(permits.acquire_arc().await);
        }
        let bufs = (0..n)
            .map(|_| {
                FREE.with(|f| f.borrow_mut().pop())
                    .unwrap_or_else(|| AlignedBuf::new(SEGMENT_BYTES as usize))
            })
            .collect();
        (Held(held), bufs)
    }

    pub fn give(bufs: Vec<AlignedBuf>) {
        FREE.with(|f| f.borrow_mut().extend(bufs));
    }
}
