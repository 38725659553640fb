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

use futures::channel::mpsc;
use futures::StreamExt;
use wire_format::frame::{Class, ErrorCode, Frame};

use super::reader::FrameReader;
use super::{refusal, LinkError, CAPABILITIES};
use crate::bufs::ChunkBufs;
use crate::runtime::{self, AlignedBuf, ConnectOpts, Stream};

pub enum Reply {
    Data {
        chunk: u64,
        buf: AlignedBuf,
    },
    Zero {
        chunk: u64,
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

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub addr: SocketAddr,
    pub volume: String,
    pub chunk_size_bytes: u32,
    /// IP TOS byte (DSCP << 2) for this connection, e.g. to mark background traffic.
    pub tos: Option<u8>,
}

pub struct BackendLink {
    stream: Stream,
    send: async_lock::Mutex<Vec<u8>>,
    pending: RefCell<HashMap<u64, mpsc::UnboundedSender<Reply>>>,
    next_id: Cell<u64>,
    handle: u32,
    dead: Cell<bool>,
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
    ) -> Result<Rc<BackendLink>, LinkError> {
        let opts = ConnectOpts {
            tos: cfg.tos,
            nodelay: true,
            sndbuf: Some(4 << 20),
            rcvbuf: Some(4 << 20),
        };
        tracing::debug!(addr = %cfg.addr, tos = ?cfg.tos, "connecting to the backend");
        let stream = Stream::connect_tcp(cfg.addr, &opts).await?;
        let mut reader = FrameReader::new(stream.clone());
        let mut out = Vec::new();
        Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: CAPABILITIES,
            agent: "ferry-frontend",
        }
        .encode(0, &mut out)?;
        Frame::Open {
            chunk_size: cfg.chunk_size_bytes,
            name: &cfg.volume,
        }
        .encode(1, &mut out)?;
        let out_len = out.len();
        let (res, _) = stream.send_all(out, 0..out_len).await;
        res?;
        match reader.next().await? {
            Some((_, Frame::HelloAck { .. })) => {}
            Some((_, f)) => return Err(refusal("HelloAck", &f)),
            None => return Err(LinkError::Closed),
        }
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
        let link = Rc::new(BackendLink {
            stream,
            send: async_lock::Mutex::new(Vec::with_capacity(16 * 1024)),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(2),
            handle,
            dead: Cell::new(false),
        });
        let l = link.clone();
        runtime::spawn(async move {
            if let Err(e) = l.read_loop(&mut reader, &bufs).await {
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

    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    pub fn kill(&self) {
        self.dead.set(true);
        self.stream.shutdown();
        self.pending.borrow_mut().clear();
    }

    async fn read_loop(&self, reader: &mut FrameReader, bufs: &ChunkBufs) -> Result<(), LinkError> {
        loop {
            let Some((id, frame)) = reader.next().await? else {
                return Err(LinkError::Closed);
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
                    buf.set_len(data.len());
                    buf.copy_from_slice(data);
                    Reply::Data { chunk, buf }
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
                        if let Reply::Data { buf, .. } = e.into_inner() {
                            bufs.give(buf);
                        }
                    }
                }
                None => {
                    if let Reply::Data { buf, .. } = reply {
                        bufs.give(buf);
                    }
                }
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

    /// Asks for `chunks`; one reply per chunk arrives on the returned channel.
    pub async fn fetch(
        self: &Rc<Self>,
        class: Class,
        chunks: &[u64],
    ) -> Result<Replies, LinkError> {
        let handle = self.handle;
        self.request(|id, out| {
            Frame::Fetch {
                handle,
                class,
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
    current: RefCell<Option<Rc<BackendLink>>>,
    connecting: async_lock::Mutex<()>,
}

impl LinkSlot {
    pub fn new(cfg: LinkConfig, bufs: Rc<ChunkBufs>) -> LinkSlot {
        LinkSlot {
            cfg,
            bufs,
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
        let l = BackendLink::connect(&self.cfg, self.bufs.clone()).await?;
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
