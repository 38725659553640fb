//! Seed corpora of the fuzz targets in `fuzz/corpus/<target>/`: a few valid encodings.
//!
//! `cargo test -p wire-format --test fuzz_seeds -- --ignored` rewrites them; the plain
//! test checks the committed seeds still decode, so a format change cannot leave the
//! fuzzers starting from stale inputs.

use std::fs;
use std::path::PathBuf;
use wire_format::frame::{self, Class, ErrorCode, Frame};
use wire_format::nbd;
use wire_format::state::{MapHeader, MAP_HEADER_LEN};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn frame_seeds() -> Seeds {
    let data = [0xA5u8; 64];
    let digests = [0x3Cu8; 64];
    let mut block_refs = Vec::new();
    frame::BlockRef {
        block: 0,
        offset: 1 << 20,
        digest: [0x77; 32],
    }
    .put(&mut block_refs);
    let frames = [
        (
            "hello",
            Frame::Hello {
                version_min: 1,
                version_max: 1,
                capabilities: 3,
                agent: "ferry/0.1",
            },
        ),
        (
            "hello_ack",
            Frame::HelloAck {
                version: 1,
                capabilities: 1,
            },
        ),
        (
            "open",
            Frame::Open {
                chunk_size: 65536,
                name: "vol0",
            },
        ),
        (
            "open_ok",
            Frame::OpenOk {
                handle: 1,
                size: 1 << 30,
                chunk_size: 65536,
                extent_frames: 1,
            },
        ),
        (
            "extents",
            Frame::Extents {
                handle: 1,
                extents: vec![(0, 4096), (1 << 20, 65536)],
            },
        ),
        (
            "fetch",
            Frame::Fetch {
                handle: 1,
                class: Class::OnDemand,
                no_refs: false,
                no_zstd: false,
                link_bound: false,
                chunks: vec![0, 7, 9],
            },
        ),
        (
            "chunk_data",
            Frame::ChunkData {
                handle: 1,
                chunk: 7,
                data: &data,
            },
        ),
        (
            "chunk_zero",
            Frame::ChunkZero {
                handle: 1,
                chunk: 9,
            },
        ),
        (
            "chunk_error",
            Frame::ChunkError {
                handle: 1,
                chunk: 0,
                code: ErrorCode::Io,
                message: "EIO",
            },
        ),
        (
            "write_back",
            Frame::WriteBack {
                handle: 1,
                offset: 512,
                data: &data,
            },
        ),
        (
            "write_zeroes",
            Frame::WriteZeroes {
                handle: 1,
                offset: 0,
                len: 4096,
            },
        ),
        (
            "chunk_zstd",
            Frame::ChunkZstd {
                handle: 1,
                chunk: 3,
                raw_len: 65536,
                raw_crc: 0x1234_5678,
                data: &data,
            },
        ),
        (
            "have",
            Frame::Have {
                handle: 1,
                digests: &digests,
            },
        ),
        (
            "chunk_ref",
            Frame::ChunkRef {
                handle: 1,
                chunk: 4,
                digest: [0x5A; 32],
            },
        ),
        (
            "chunk_data_digest",
            Frame::ChunkDataDigest {
                handle: 1,
                chunk: 5,
                digest: [0xA5; 32],
                data: &data,
            },
        ),
        (
            "chunk_pieces",
            Frame::ChunkPieces {
                handle: 1,
                chunk: 6,
                pieces: frame::Pieces {
                    raw_len: frame::BLOCK_LEN as u32 + 64,
                    lit_crc: 0,
                    zstd: false,
                    refs: &block_refs,
                },
                data: &data,
            },
        ),
        ("sync", Frame::Sync { handle: 1 }),
        (
            "qos",
            Frame::Qos {
                handle: 1,
                background_floor_bytes_per_s: 1 << 20,
            },
        ),
        ("ack", Frame::Ack),
        ("ping", Frame::Ping),
        ("pong", Frame::Pong),
        (
            "error",
            Frame::Error {
                code: ErrorCode::VersionMismatch,
                message: "need v1",
            },
        ),
    ];
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for (i, (name, f)) in frames.iter().enumerate() {
        let mut out = Vec::new();
        f.encode(i as u64, &mut out).unwrap();
        stream.extend_from_slice(&out);
        seeds.push((*name, out));
    }
    seeds.push(("stream", stream));
    seeds
}

fn nbd_seeds() -> Seeds {
    let req = |command, length| {
        nbd::encode_request(&nbd::Request {
            flags: 0,
            command,
            cookie: 1,
            offset: 4096,
            length,
        })
        .to_vec()
    };
    let mut go = Vec::new();
    nbd::encode_option(
        nbd::OPT_GO,
        &nbd::encode_info_request("vol0", &[nbd::INFO_BLOCK_SIZE]),
        &mut go,
    );
    let mut export_name = Vec::new();
    nbd::encode_option(nbd::OPT_EXPORT_NAME, b"vol0", &mut export_name);
    vec![
        ("read", req(nbd::Command::Read, 4096)),
        ("write", req(nbd::Command::Write, 512)),
        ("opt_go", go),
        ("opt_export_name", export_name),
        ("info_request", nbd::encode_info_request("", &[0, 1, 2, 3])),
        (
            "info_export",
            nbd::encode_info_export(1 << 30, nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH),
        ),
    ]
}

fn map_seeds() -> Seeds {
    // The target zero-pads short inputs to a full block, so the used bytes are enough.
    [("64k", 65536u32, 1u64 << 30), ("4k_odd", 4096, 12345)]
        .into_iter()
        .map(|(name, cs, vs)| {
            (
                name,
                MapHeader::new(cs, vs).unwrap().encode()[..36].to_vec(),
            )
        })
        .collect()
}

/// Named seed files of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn all() -> [(&'static str, Seeds); 3] {
    [
        ("frame_decode", frame_seeds()),
        ("nbd_request", nbd_seeds()),
        ("map_header", map_seeds()),
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand after a format change"]
fn write_fuzz_seeds() {
    for (target, seeds) in all() {
        let dir = corpus(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            fs::write(dir.join(format!("seed_{name}")), bytes).unwrap();
        }
    }
}

#[test]
fn committed_seeds_are_current() {
    for (target, seeds) in all() {
        for (name, bytes) in seeds {
            let path = corpus(target).join(format!("seed_{name}"));
            let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                on_disk,
                bytes,
                "{} is stale; rerun with --ignored",
                path.display()
            );
        }
    }
    // And they decode.
    for (_, bytes) in frame_seeds() {
        let mut buf = &bytes[..];
        while !buf.is_empty() {
            let (_, n) = frame::decode_from(buf).unwrap().unwrap();
            buf = &buf[n..];
        }
    }
    for (_, bytes) in map_seeds() {
        let mut block = [0u8; MAP_HEADER_LEN];
        block[..bytes.len()].copy_from_slice(&bytes);
        MapHeader::decode(&block).unwrap();
    }
}
