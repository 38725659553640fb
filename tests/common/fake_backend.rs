//! A fake Ferry backend: speaks the wire protocol (`wire_format::frame`) correctly up to
//! the first `Fetch`, then answers with a deliberate fault. Every chunk of its volume is
//! data (one extent covering the volume), so every read must be fetched.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use sha2::{Digest, Sha256};
use wire_format::frame::{
    BlockRef, ErrorCode, Frame, Header, Pieces, BLOCK_LEN, CAP_BLOCK_REFS, HEADER_LEN,
};

/// What the fake does to `ChunkData` replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// ChunkData with its last payload byte flipped after the crc was computed.
    BadCrc,
    /// The first half of a ChunkData frame, then the connection is closed.
    Truncated,
    /// Agrees `CAP_BLOCK_REFS` and lies in `ChunkPieces`: every chunk but 0 comes with its
    /// block 0 named at a place that does not hold it — odd chunks at volume offset 0 (chunk
    /// 0's content, under the digest of the true block), even ones past the end of the
    /// volume. Chunk 0 and fetches with `no_refs` get the true data. Chunk `c` is filled with
    /// [`lying_fill`]`(c)`.
    LyingPieces,
}

/// Byte chunk `c` is filled with under [`Fault::LyingPieces`].
pub fn lying_fill(chunk: u64) -> u8 {
    (chunk % 251) as u8 + 1
}

/// Byte every fake chunk is filled with (before the fault).
pub const FILL: u8 = 0xab;

pub struct FakeBackend {
    pub addr: String,
    /// Chunks asked for in `Fetch` frames, over all connections.
    pub fetches: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
struct Cfg {
    fault: Fault,
    size: u64,
    chunk_size: u32,
}

impl FakeBackend {
    /// Listens on 127.0.0.1:0; serves each connection on its own thread until the
    /// process exits.
    pub fn start(fault: Fault, size: u64, chunk_size: u32) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fetches = Arc::new(AtomicUsize::new(0));
        let f2 = fetches.clone();
        let cfg = Cfg {
            fault,
            size,
            chunk_size,
        };
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let f3 = f2.clone();
                thread::spawn(move || serve(s, cfg, &f3));
            }
        });
        FakeBackend { addr, fetches }
    }
}

enum Reply {
    Bytes(Vec<u8>),
    BytesThenClose(Vec<u8>),
}

fn serve(mut s: TcpStream, cfg: Cfg, fetches: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        // Answer every whole frame in the buffer, then read more. (Not
        // `frame::decode_from`: it does not return the request id replies must echo.)
        while let Some(head) = buf.first_chunk::<HEADER_LEN>() {
            let h = match Header::decode(head) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("fake backend: bad frame header from the frontend: {e}");
                    return;
                }
            };
            let total = HEADER_LEN + h.payload_len as usize;
            if buf.len() < total {
                break;
            }
            let reply = match Frame::decode(&h, &buf[HEADER_LEN..total]) {
                Ok(f) => respond(h.id, &f, cfg, fetches),
                Err(e) => {
                    eprintln!("fake backend: bad frame from the frontend: {e}");
                    return;
                }
            };
            buf.drain(..total);
            match reply {
                Reply::Bytes(b) => {
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
                Reply::BytesThenClose(b) => {
                    let _ = s.write_all(&b);
                    return;
                }
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn chunk_data(id: u64, handle: u32, chunk: u64, data: &[u8], out: &mut Vec<u8>) {
    Frame::ChunkData {
        handle,
        chunk,
        data,
    }
    .encode(id, out)
    .unwrap();
}

fn respond(id: u64, f: &Frame<'_>, cfg: Cfg, fetches: &AtomicUsize) -> Reply {
    let mut out = Vec::new();
    match f {
        Frame::Hello { capabilities, .. } => {
            Frame::HelloAck {
                version: 1,
                capabilities: match cfg.fault {
                    Fault::LyingPieces => capabilities & CAP_BLOCK_REFS,
                    Fault::BadCrc | Fault::Truncated => 0,
                },
            }
            .encode(id, &mut out)
            .unwrap();
        }
        Frame::Open { chunk_size, .. } if *chunk_size == cfg.chunk_size => {
            Frame::OpenOk {
                handle: 1,
                size: cfg.size,
                chunk_size: cfg.chunk_size,
                extent_frames: 1,
            }
            .encode(id, &mut out)
            .unwrap();
            Frame::Extents {
                handle: 1,
                extents: vec![(0, cfg.size)],
            }
            .encode(id, &mut out)
            .unwrap();
        }
        Frame::Fetch {
            handle,
            chunks,
            no_refs,
            ..
        } if cfg.fault == Fault::LyingPieces => {
            fetches.fetch_add(chunks.len(), Ordering::SeqCst);
            for &chunk in chunks {
                let data = vec![lying_fill(chunk); cfg.chunk_size as usize];
                if chunk == 0 || *no_refs {
                    chunk_data(id, *handle, chunk, &data, &mut out);
                    continue;
                }
                let mut refs = Vec::new();
                BlockRef {
                    block: 0,
                    offset: if chunk % 2 == 1 { 0 } else { cfg.size },
                    digest: Sha256::digest(&data[..BLOCK_LEN]).into(),
                }
                .put(&mut refs);
                let literal = &data[BLOCK_LEN..];
                Frame::ChunkPieces {
                    handle: *handle,
                    chunk,
                    pieces: Pieces {
                        raw_len: cfg.chunk_size,
                        lit_crc: crc32c::crc32c(literal),
                        zstd: false,
                        refs: &refs,
                    },
                    data: literal,
                }
                .encode(id, &mut out)
                .unwrap();
            }
        }
        Frame::Fetch { handle, chunks, .. } => {
            fetches.fetch_add(chunks.len(), Ordering::SeqCst);
            let data = vec![FILL; cfg.chunk_size as usize];
            for &chunk in chunks {
                let start = out.len();
                chunk_data(id, *handle, chunk, &data, &mut out);
                match cfg.fault {
                    Fault::BadCrc => {
                        let last = out.len() - 1;
                        out[last] ^= 0x01;
                    }
                    Fault::Truncated => {
                        out.truncate(start + (out.len() - start) / 2);
                        return Reply::BytesThenClose(out);
                    }
                    Fault::LyingPieces => unreachable!("answered above"),
                }
            }
        }
        other => {
            eprintln!("fake backend: unexpected frame {other:?}");
            Frame::Error {
                code: ErrorCode::InvalidRequest,
                message: "fake backend: unexpected frame",
            }
            .encode(id, &mut out)
            .unwrap();
        }
    }
    Reply::Bytes(out)
}
