//! Decodes the input as a stream of Ferry frames, as a connection would; then once more
//! with the first byte as the kind and the rest as a payload behind a header whose crc is
//! made to match, so mutations reach the payload parsers instead of dying at the crc.
//! Oracle: no panic, progress on every frame, and every accepted frame re-encodes to
//! exactly the bytes it was decoded from (one encoding per frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire_format::frame::{decode_from, Header, Kind, HEADER_LEN, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((_, consumed))) = decode_from(buf) {
        assert!(consumed >= HEADER_LEN && consumed <= HEADER_LEN + MAX_PAYLOAD as usize);
        check_reencode(&buf[..consumed]);
        buf = &buf[consumed..];
    }

    if let Some((&code, payload)) = data.split_first() {
        if let (Some(kind), Ok(payload_len)) =
            (Kind::from_code(code % 16), u32::try_from(payload.len()))
        {
            let mut h = Header {
                kind,
                id: 7,
                payload_len,
                crc: 0,
            };
            h.crc = h.compute_crc(payload);
            let mut framed = h.encode().to_vec();
            framed.extend_from_slice(payload);
            if let Ok(Some((_, consumed))) = decode_from(&framed) {
                assert_eq!(consumed, framed.len());
                check_reencode(&framed);
            }
        }
    }
});

fn check_reencode(bytes: &[u8]) {
    let (frame, _) = decode_from(bytes).unwrap().unwrap();
    let id = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
    let mut out = Vec::new();
    frame
        .encode(id, &mut out)
        .expect("a decoded frame must re-encode");
    assert_eq!(out, bytes);
}
