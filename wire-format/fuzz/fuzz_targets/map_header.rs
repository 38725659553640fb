//! Decodes the input as a volume-map header, as given and zero-padded to a full block (so
//! short inputs reach the field checks). Oracle: no panic; an accepted header re-encodes to
//! exactly its block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire_format::state::{MapHeader, MAP_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut block = [0u8; MAP_HEADER_LEN];
    let n = data.len().min(MAP_HEADER_LEN);
    block[..n].copy_from_slice(&data[..n]);
    check(&block);
});

fn check(b: &[u8]) {
    if let Ok(h) = MapHeader::decode(b) {
        assert_eq!(&h.encode()[..], &b[..MAP_HEADER_LEN]);
    }
}
