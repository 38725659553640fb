//! Property tests of the Ferry frame codec: round trips, corruption, truncation, bounds.

use proptest::prelude::*;
use wire_format::frame::*;

fn leak(s: String) -> &'static str {
    String::leak(s)
}

fn leak_bytes(v: Vec<u8>) -> &'static [u8] {
    Vec::leak(v)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![1u16..=8, any::<u16>()].prop_map(ErrorCode::from_code)
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![Just(Class::OnDemand), Just(Class::Background)]
}

fn chunk_size() -> impl Strategy<Value = u32> {
    (12u32..=20).prop_map(|s| 1 << s)
}

fn extent() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>()).prop_map(|(o, l)| (o, l.min(u64::MAX - o)))
}

/// Any valid frame, with bulk data up to `max_data` bytes.
fn frame(max_data: usize) -> impl Strategy<Value = Frame<'static>> {
    let data = move || proptest::collection::vec(any::<u8>(), 1..=max_data).prop_map(leak_bytes);
    prop_oneof![
        (any::<u8>(), any::<u8>(), any::<u64>(), "\\PC{0,16}").prop_map(|(a, b, c, s)| {
            Frame::Hello {
                version_min: a.min(b),
                version_max: a.max(b),
                capabilities: c,
                agent: leak(s),
            }
        }),
        (any::<u8>(), any::<u64>()).prop_map(|(version, capabilities)| Frame::HelloAck {
            version,
            capabilities
        }),
        (chunk_size(), "\\PC{0,63}").prop_map(|(chunk_size, s)| Frame::Open {
            chunk_size,
            name: leak(s)
        }),
        (any::<u32>(), any::<u64>(), chunk_size(), any::<u32>()).prop_map(|(h, s, c, e)| {
            Frame::OpenOk {
                handle: h,
                size: s,
                chunk_size: c,
                extent_frames: e,
            }
        }),
        (any::<u32>(), proptest::collection::vec(extent(), 0..64))
            .prop_map(|(handle, extents)| Frame::Extents { handle, extents }),
        (
            any::<u32>(),
            class(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u64>(), 1..64)
        )
            .prop_map(|(handle, class, no_refs, no_zstd, link_bound, chunks)| {
                Frame::Fetch {
                    handle,
                    class,
                    no_refs,
                    no_zstd,
                    link_bound,
                    chunks,
                }
            }),
        (
            any::<u32>(),
            any::<u64>(),
            1..=(1u32 << 20),
            any::<u32>(),
            data()
        )
            .prop_map(|(handle, chunk, raw_len, raw_crc, data)| Frame::ChunkZstd {
                handle,
                chunk,
                raw_len,
                raw_crc,
                data,
            }),
        (any::<u32>(), any::<u64>(), any::<[u8; 32]>(), data()).prop_map(
            |(handle, chunk, digest, data)| Frame::ChunkDataDigest {
                handle,
                chunk,
                digest,
                data,
            }
        ),
        pieces(max_data),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(handle, seeds)| {
            Frame::Have {
                handle,
                digests: leak_bytes(seeds.iter().flat_map(|&b| [b; 32]).collect()),
            }
        }),
        (any::<u32>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(handle, chunk, digest)| {
            Frame::ChunkRef {
                handle,
                chunk,
                digest,
            }
        }),
        (any::<u32>(), any::<u64>(), data()).prop_map(|(handle, chunk, data)| {
            Frame::ChunkData {
                handle,
                chunk,
                data,
            }
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(handle, chunk)| Frame::ChunkZero { handle, chunk }),
        (any::<u32>(), any::<u64>(), error_code(), "\\PC{0,200}").prop_map(
            |(handle, chunk, code, m)| Frame::ChunkError {
                handle,
                chunk,
                code,
                message: leak(m),
            }
        ),
        (any::<u32>(), 0..u64::MAX / 2, data()).prop_map(|(handle, offset, data)| {
            Frame::WriteBack {
                handle,
                offset,
                data,
            }
        }),
        (any::<u32>(), extent()).prop_map(|(handle, (offset, len))| Frame::WriteZeroes {
            handle,
            offset,
            len
        }),
        any::<u32>().prop_map(|handle| Frame::Sync { handle }),
        (any::<u32>(), any::<u64>()).prop_map(|(handle, floor)| Frame::Qos {
            handle,
            background_floor_bytes_per_s: floor
        }),
        Just(Frame::Ack),
        Just(Frame::Ping),
        Just(Frame::Pong),
        (error_code(), "\\PC{0,200}").prop_map(|(code, m)| Frame::Error {
            code,
            message: leak(m)
        }),
    ]
}

/// A valid `ChunkPieces`: raw literal bytes only in a short tail (so frames stay small), or a
/// zstd frame (arbitrary bytes: the codec does not look inside) for a mix of blocks.
fn pieces(max_data: usize) -> impl Strategy<Value = Frame<'static>> {
    (
        any::<u32>(),
        any::<u64>(),
        1u16..=4,
        1u8..16,
        0..BLOCK_LEN as u32,
        any::<bool>(),
        any::<u32>(),
        proptest::collection::vec((any::<u64>(), any::<[u8; 32]>()), 4),
        proptest::collection::vec(any::<u8>(), 1..=max_data),
    )
        .prop_map(
            move |(handle, chunk, blocks, mask, tail, zstd, lit_crc, targets, bytes)| {
                let tail = tail % max_data.min(BLOCK_LEN - 1) as u32;
                let raw_len = u32::from(blocks) * BLOCK_LEN as u32 + tail;
                let mut refs = Vec::new();
                let mut named = 0u32;
                for b in 0..blocks {
                    // Without zstd every whole block is named, so the literal is the tail.
                    if !zstd || mask & (1 << b) != 0 {
                        let (offset, digest) = targets[usize::from(b)];
                        BlockRef {
                            block: b,
                            offset: (offset % (1 << 40)) * BLOCK_LEN as u64,
                            digest,
                        }
                        .put(&mut refs);
                        named += 1;
                    }
                }
                if named == 0 {
                    BlockRef {
                        block: 0,
                        offset: 0,
                        digest: targets[0].1,
                    }
                    .put(&mut refs);
                    named = 1;
                }
                let literal = raw_len - named * BLOCK_LEN as u32;
                let data: &'static [u8] = match (literal, zstd) {
                    (0, _) => &[],
                    (n, false) => {
                        leak_bytes(bytes.iter().copied().cycle().take(n as usize).collect())
                    }
                    (_, true) => leak_bytes(bytes),
                };
                Frame::ChunkPieces {
                    handle,
                    chunk,
                    pieces: Pieces {
                        raw_len,
                        lit_crc,
                        zstd: zstd && literal > 0,
                        refs: leak_bytes(refs),
                    },
                    data,
                }
            },
        )
}

fn encode(f: &Frame<'_>, id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(id, &mut out).expect("valid frame encodes");
    out
}

/// A frame with arbitrary payload bytes but a correct header and crc.
fn raw_frame(kind: Kind, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = Header {
        kind,
        id,
        payload_len: payload.len() as u32,
        crc: 0,
    };
    h.crc = h.compute_crc(payload);
    let mut out = h.encode().to_vec();
    out.extend_from_slice(payload);
    out
}

fn decode_all(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    decode_from(buf)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(f in frame(4096), id in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut buf = encode(&f, id);
        let len = buf.len();
        prop_assert_eq!(buf[5], f.kind().code());
        buf.extend_from_slice(&tail);
        let (g, consumed) = decode_all(&buf).unwrap().unwrap();
        prop_assert_eq!(consumed, len);
        prop_assert_eq!(&g, &f);
        let h = Header::decode(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        prop_assert_eq!(h.id, id);
        prop_assert_eq!(h.kind, f.kind());
        prop_assert_eq!(h.payload_len as usize, len - HEADER_LEN);
    }

    #[test]
    fn encode_appends(f in frame(64), id in any::<u64>(), pre in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut out = pre.clone();
        f.encode(id, &mut out).unwrap();
        prop_assert_eq!(&out[..pre.len()], &pre[..]);
        prop_assert_eq!(&out[pre.len()..], &encode(&f, id)[..]);
    }

    #[test]
    fn bulk_prefix_matches_encode(handle in any::<u32>(), pos in 0..u64::MAX / 2, id in any::<u64>(),
                                  data in proptest::collection::vec(any::<u8>(), 1..2048)) {
        let mut prefix = Vec::new();
        encode_chunk_data_prefix(id, handle, pos, &data, &mut prefix).unwrap();
        prop_assert_eq!(prefix.len(), HEADER_LEN + 12);
        prefix.extend_from_slice(&data);
        prop_assert_eq!(&prefix, &encode(&Frame::ChunkData { handle, chunk: pos, data: &data }, id));

        let mut prefix = Vec::new();
        encode_write_back_prefix(id, handle, pos, &data, &mut prefix).unwrap();
        prefix.extend_from_slice(&data);
        prop_assert_eq!(&prefix, &encode(&Frame::WriteBack { handle, offset: pos, data: &data }, id));
    }

    #[test]
    fn every_truncation_needs_more(f in frame(256), id in any::<u64>()) {
        let buf = encode(&f, id);
        for n in 0..buf.len() {
            prop_assert_eq!(decode_all(&buf[..n]), Ok(None), "prefix of {} bytes", n);
        }
    }

    #[test]
    fn every_single_byte_corruption_is_rejected(f in frame(128), id in any::<u64>(), mask in 1u8..=255) {
        let buf = encode(&f, id);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= mask;
            match decode_all(&bad) {
                Err(_) => {}
                Ok(Some(_)) => prop_assert!(false, "corrupt byte {} accepted", i),
                Ok(None) => {
                    // The length field grew: a stream decoder waits for more bytes. Once
                    // they arrive the crc (which covers the length) must reject the frame.
                    prop_assert!((16..20).contains(&i), "byte {} made the decoder wait", i);
                    let h = Header::decode(bad[..HEADER_LEN].try_into().unwrap()).unwrap();
                    bad.resize(HEADER_LEN + h.payload_len as usize, 0);
                    prop_assert!(decode_all(&bad).is_err(), "byte {} accepted after padding", i);
                }
            }
        }
    }

    /// A frame with a valid header and crc but arbitrary payload: the parser must not
    /// panic, and whatever it accepts must re-encode to the same bytes (one encoding).
    #[test]
    fn arbitrary_payload_is_parsed_safely(code in 1u8..=20, id in any::<u64>(),
                                          payload in proptest::collection::vec(any::<u8>(), 0..96)) {
        let kind = Kind::from_code(code).unwrap();
        let buf = raw_frame(kind, id, &payload);
        if let Ok(Some((f, n))) = decode_all(&buf) {
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(encode(&f, id), buf);
        }
    }

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_all(&buf);
        let mut fry = b"FRY1\x01".to_vec();
        fry.extend_from_slice(&buf);
        let _ = decode_all(&fry);
    }
}

#[test]
fn max_sizes_round_trip() {
    let data = vec![0xA5u8; MAX_DATA_LEN];
    let extents: Vec<(u64, u64)> = (0..MAX_EXTENTS_PER_FRAME as u64)
        .map(|i| (i * 8, 4))
        .collect();
    let chunks: Vec<u64> = (0..MAX_FETCH_CHUNKS as u64).collect();
    let agent = "a".repeat(MAX_AGENT_LEN);
    let name = "n".repeat(MAX_NAME_LEN);
    let msg = "m".repeat(MAX_MESSAGE_LEN);
    let frames = [
        Frame::ChunkData {
            handle: 1,
            chunk: 2,
            data: &data,
        },
        Frame::WriteBack {
            handle: 1,
            offset: 2,
            data: &data,
        },
        Frame::Extents { handle: 1, extents },
        Frame::Fetch {
            handle: 1,
            class: Class::Background,
            no_refs: false,
            no_zstd: false,
            link_bound: false,
            chunks,
        },
        Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: 0,
            agent: &agent,
        },
        Frame::Open {
            chunk_size: 1 << 20,
            name: &name,
        },
        Frame::Error {
            code: ErrorCode::Io,
            message: &msg,
        },
        Frame::ChunkError {
            handle: 0,
            chunk: 0,
            code: ErrorCode::Other(999),
            message: &msg,
        },
    ];
    for f in frames {
        let buf = encode(&f, 9);
        assert!(buf.len() - HEADER_LEN <= MAX_PAYLOAD as usize);
        let (g, n) = decode_from(&buf).unwrap().unwrap();
        assert_eq!((g, n), (f, buf.len()));
    }
}

#[test]
fn encoder_refuses_out_of_bounds() {
    let long = |n| "x".repeat(n);
    let (agent, name, msg) = (
        long(MAX_AGENT_LEN + 1),
        long(MAX_NAME_LEN + 1),
        long(MAX_MESSAGE_LEN + 1),
    );
    let big = vec![0u8; MAX_DATA_LEN + 1];
    let bad = [
        Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: 0,
            agent: &agent,
        },
        Frame::Hello {
            version_min: 2,
            version_max: 1,
            capabilities: 0,
            agent: "",
        },
        Frame::Open {
            chunk_size: 65536,
            name: &name,
        },
        Frame::Open {
            chunk_size: 3 << 12,
            name: "v",
        },
        Frame::Open {
            chunk_size: 2048,
            name: "v",
        },
        Frame::Open {
            chunk_size: 2 << 20,
            name: "v",
        },
        Frame::OpenOk {
            handle: 0,
            size: 0,
            chunk_size: 0,
            extent_frames: 0,
        },
        Frame::Extents {
            handle: 0,
            extents: vec![(0, 0); MAX_EXTENTS_PER_FRAME + 1],
        },
        Frame::Extents {
            handle: 0,
            extents: vec![(u64::MAX, 1)],
        },
        Frame::Fetch {
            handle: 0,
            class: Class::OnDemand,
            no_refs: false,
            no_zstd: false,
            link_bound: false,
            chunks: vec![],
        },
        Frame::Fetch {
            handle: 0,
            class: Class::OnDemand,
            no_refs: false,
            no_zstd: false,
            link_bound: false,
            chunks: vec![0; MAX_FETCH_CHUNKS + 1],
        },
        Frame::Have {
            handle: 0,
            digests: &[],
        },
        Frame::Have {
            handle: 0,
            digests: &[1; 33],
        },
        Frame::ChunkZstd {
            handle: 0,
            chunk: 0,
            raw_len: 0,
            raw_crc: 0,
            data: &[1],
        },
        Frame::ChunkZstd {
            handle: 0,
            chunk: 0,
            raw_len: (1 << 20) + 1,
            raw_crc: 0,
            data: &[1],
        },
        Frame::ChunkData {
            handle: 0,
            chunk: 0,
            data: &[],
        },
        Frame::ChunkDataDigest {
            handle: 0,
            chunk: 0,
            digest: [0; 32],
            data: &[],
        },
        Frame::ChunkDataDigest {
            handle: 0,
            chunk: 0,
            digest: [0; 32],
            data: &big,
        },
        Frame::ChunkData {
            handle: 0,
            chunk: 0,
            data: &big,
        },
        Frame::WriteBack {
            handle: 0,
            offset: 0,
            data: &[],
        },
        Frame::WriteBack {
            handle: 0,
            offset: u64::MAX,
            data: &[1],
        },
        Frame::WriteZeroes {
            handle: 0,
            offset: u64::MAX,
            len: 1,
        },
        Frame::ChunkError {
            handle: 0,
            chunk: 0,
            code: ErrorCode::Io,
            message: &msg,
        },
        Frame::Error {
            code: ErrorCode::Io,
            message: &msg,
        },
    ];
    for f in bad {
        let mut out = vec![7u8];
        let r = f.encode(1, &mut out);
        assert!(
            matches!(r, Err(WireError::Invalid { .. })),
            "{:?} gave {r:?}",
            f.kind()
        );
        assert_eq!(out, vec![7u8], "{:?} left bytes behind", f.kind());
    }
    let mut out = Vec::new();
    assert!(encode_chunk_data_prefix(1, 0, 0, &[], &mut out).is_err());
    assert!(encode_write_back_prefix(1, 0, 0, &big, &mut out).is_err());
    assert!(out.is_empty());
}

fn fetch_payload(class: u8, count: u32, chunks: usize) -> Vec<u8> {
    let mut p = 5u32.to_be_bytes().to_vec();
    p.push(class);
    p.extend_from_slice(&count.to_be_bytes());
    for c in 0..chunks as u64 {
        p.extend_from_slice(&c.to_be_bytes());
    }
    p
}

#[test]
fn fetch_count_bounds_on_decode() {
    let decode =
        |p: &[u8]| decode_from(&raw_frame(Kind::Fetch, 1, p)).map(|r| r.map(|(f, _)| f.kind()));
    assert_eq!(decode(&fetch_payload(1, 1, 1)), Ok(Some(Kind::Fetch)));
    assert_eq!(decode(&fetch_payload(2, 1024, 1024)), Ok(Some(Kind::Fetch)));
    assert!(matches!(
        decode(&fetch_payload(1, 0, 0)),
        Err(WireError::Invalid { .. })
    ));
    assert!(matches!(
        decode(&fetch_payload(1, 1025, 1025)),
        Err(WireError::Invalid { .. })
    ));
    // Count and payload disagree either way.
    assert!(matches!(
        decode(&fetch_payload(1, 3, 2)),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        decode(&fetch_payload(1, 2, 3)),
        Err(WireError::TrailingBytes { kind: Kind::Fetch })
    ));
    // Unknown class.
    assert!(matches!(
        decode(&fetch_payload(0, 1, 1)),
        Err(WireError::Invalid { .. })
    ));
    assert!(matches!(
        decode(&fetch_payload(3, 1, 1)),
        Err(WireError::Invalid { .. })
    ));
}

#[test]
fn header_field_checks() {
    let good = encode(&Frame::Ack, 5);
    let hdr = |b: &[u8]| Header::decode(b[..HEADER_LEN].try_into().unwrap());
    assert!(hdr(&good).is_ok());
    let mut b = good.clone();
    b[0] = b'G';
    assert!(matches!(hdr(&b), Err(WireError::BadMagic(_))));
    let mut b = good.clone();
    b[4] = 2;
    assert_eq!(hdr(&b), Err(WireError::UnsupportedVersion(2)));
    let mut b = good.clone();
    b[7] = 1;
    assert_eq!(hdr(&b), Err(WireError::BadFlags(1)));
    let mut b = good.clone();
    b[5] = 0x17;
    assert_eq!(hdr(&b), Err(WireError::UnknownKind(0x17)));
    let mut b = good.clone();
    b[16..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
    // Refused from the header alone: the caller never buffers the announced length.
    assert!(matches!(
        decode_from(&b[..HEADER_LEN]),
        Err(WireError::PayloadTooLarge { .. })
    ));
    let mut b = good;
    b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode_from(&b),
        Err(WireError::PayloadTooLarge { .. })
    ));
}

#[test]
fn frame_decode_checks_length_and_crc() {
    let buf = encode(&Frame::Sync { handle: 3 }, 1);
    let h = Header::decode(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    let p = &buf[HEADER_LEN..];
    assert_eq!(Frame::decode(&h, p), Ok(Frame::Sync { handle: 3 }));
    assert!(matches!(
        Frame::decode(&h, &p[..3]),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        Frame::decode(&h, &buf[HEADER_LEN - 1..]),
        Err(WireError::TrailingBytes { .. })
    ));
    let other_id = Header { id: 2, ..h };
    assert!(matches!(
        Frame::decode(&other_id, p),
        Err(WireError::ChecksumMismatch { .. })
    ));
}

#[test]
fn payload_level_rejections() {
    let bad = |kind, p: &[u8]| decode_from(&raw_frame(kind, 1, p)).unwrap_err();
    // bool-free v1, but strings: too long, bad UTF-8.
    let mut hello = vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    hello.extend_from_slice(&65u16.to_be_bytes());
    hello.extend_from_slice(&[b'a'; 65]);
    assert!(matches!(
        bad(Kind::Hello, &hello),
        WireError::Invalid { .. }
    ));
    let mut err = 3u16.to_be_bytes().to_vec();
    err.extend_from_slice(&[0, 2, 0xC3, 0x28]);
    assert!(matches!(bad(Kind::Error, &err), WireError::Invalid { .. }));
    // version_min > version_max.
    assert!(matches!(
        bad(Kind::Hello, &[2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        WireError::Invalid { .. }
    ));
    // Chunk size not a power of two.
    assert!(matches!(
        bad(Kind::Open, &[0, 0, 0x30, 0, 0, 0]),
        WireError::Invalid { .. }
    ));
    // Extents: absurd count refused before looking for the bytes.
    let mut ext = 1u32.to_be_bytes().to_vec();
    ext.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        bad(Kind::Extents, &ext),
        WireError::Invalid { .. }
    ));
    let mut ext = 1u32.to_be_bytes().to_vec();
    ext.extend_from_slice(&65536u32.to_be_bytes());
    assert!(matches!(
        bad(Kind::Extents, &ext),
        WireError::Truncated { .. }
    ));
    // Empty bulk data.
    assert!(matches!(
        bad(Kind::ChunkData, &[0; 12]),
        WireError::Invalid { .. }
    ));
    assert!(matches!(
        bad(Kind::WriteBack, &[0; 12]),
        WireError::Invalid { .. }
    ));
    // Ack, Ping and Pong must be empty; Sync must be exactly 4 bytes.
    assert!(matches!(
        bad(Kind::Ack, &[0]),
        WireError::TrailingBytes { kind: Kind::Ack }
    ));
    assert!(matches!(
        bad(Kind::Ping, &[0; 8]),
        WireError::TrailingBytes { kind: Kind::Ping }
    ));
    assert!(matches!(
        bad(Kind::Pong, &[0]),
        WireError::TrailingBytes { kind: Kind::Pong }
    ));
    assert!(matches!(
        bad(Kind::Sync, &[0; 5]),
        WireError::TrailingBytes { kind: Kind::Sync }
    ));
    assert!(matches!(
        bad(Kind::Sync, &[0; 3]),
        WireError::Truncated { .. }
    ));
}

#[test]
fn error_messages_are_readable() {
    let e = WireError::ChecksumMismatch {
        expected: 1,
        actual: 2,
    };
    assert_eq!(
        e.to_string(),
        "frame checksum mismatch: header says 0x00000001, bytes give 0x00000002"
    );
    assert_eq!(
        WireError::BadMagic(0x4745_5420).to_string(),
        "bad frame magic 0x47455420, expected 0x46525931 (\"FRY1\")"
    );
}
