//! Transmission phase: requests in, simple replies out.
//!
//! The reading task validates each request and, for writes, reads the payload piece by piece
//! into pool buffers, starting each piece's write as soon as it has arrived (so a large write
//! never needs more buffers than the pool has). Each request then completes in its own task and
//! sends its reply under the connection's send lock.

use std::rc::Rc;

use wire_format::nbd::{self, Command, Request};

use super::input::Input;
use super::{NbdConnError, MAX_REQUEST_BYTES, REQUESTS_IN_FLIGHT_MAX};
use crate::frontend::error::VolError;
use crate::frontend::gate::Pass;
use crate::frontend::volume::{local_gate, Volume};
use crate::runtime::{self, AlignedBuf, Stream};

struct Conn {
    stream: Stream,
    send: async_lock::Mutex<Vec<u8>>,
    vol: Rc<Volume>,
}

pub async fn run(stream: Stream, mut input: Input, vol: Rc<Volume>) -> Result<(), NbdConnError> {
    let conn = Rc::new(Conn {
        stream,
        send: async_lock::Mutex::new(Vec::with_capacity(64)),
        vol,
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
        let head = nbd::encode_simple_reply(errno, cookie);
        let mut guard = self.send.lock().await;
        let mut out = std::mem::take(&mut *guard);
        out.clear();
        out.extend_from_slice(&head);
        let (res, out) = self.stream.send_all(out, 0..head.len()).await;
        *guard = out;
        Ok(res?)
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
        let len = u64::from(req.length);
        let pool = runtime::buf_pool();
        let mut pieces = self.vol.geo.pieces(req.offset, len);
        // Single-piece reads (the common small read) go straight to the owner; larger ones
        // first bring every chunk local in one request per owner, so a slow fetch never holds
        // the send lock.
        let first = pieces.next();
        let single = first.is_some() && pieces.next().is_none();
        let mut first_buf = None;
        let prepared = if single {
            let p = first.expect("checked above");
            match self.vol.read_piece(p, pool.take().await).await {
                Ok(b) => {
                    first_buf = Some(b);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else if len > 0 {
            self.vol.ensure_local(req.offset, len).await
        } else {
            Ok(())
        };
        if let Err(e) = prepared {
            self.complete(req.cookie, Err(e), pass).await;
            return;
        }
        let head = nbd::encode_simple_reply(0, req.cookie);
        let mut guard = self.send.lock().await;
        let mut out = std::mem::take(&mut *guard);
        out.clear();
        out.extend_from_slice(&head);
        let (res, out) = self.stream.send_all(out, 0..head.len()).await;
        *guard = out;
        if res.is_err() {
            self.stream.shutdown();
            return;
        }
        let result = if let Some(b) = first_buf {
            let n = b.len();
            let (res, _) = self.stream.send_all(b, 0..n).await;
            res.map_err(|e| e.to_string())
        } else {
            self.stream_pieces(&req).await
        };
        drop(guard);
        drop(pass);
        if let Err(e) = result {
            // The header is out; the only honest way to report a late failure is to close.
            tracing::warn!(error = %e, "read failed after its reply header was sent; closing the connection");
            self.stream.shutdown();
        }
    }

    async fn stream_pieces(&self, req: &Request) -> Result<(), String> {
        let pool = runtime::buf_pool();
        for p in self.vol.geo.pieces(req.offset, u64::from(req.length)) {
            let buf = self
                .vol
                .read_piece(p, pool.take().await)
                .await
                .map_err(|e| e.to_string())?;
            let n = buf.len();
            let (res, _) = self.stream.send_all(buf, 0..n).await;
            res.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
