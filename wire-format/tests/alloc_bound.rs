//! "Never allocate from a wire length without a bound", checked with a counting allocator:
//! hostile counts and lengths must be refused without allocating anything near their size.
//! One test in this binary, so no other thread's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use wire_format::frame::{decode_from, Header, Kind};
use wire_format::nbd;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn raw_frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut h = Header {
        kind,
        id: 1,
        payload_len: payload.len() as u32,
        crc: 0,
    };
    h.crc = h.compute_crc(payload);
    let mut out = h.encode().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn hostile_lengths_allocate_nothing_large() {
    // Build all inputs first, then measure only the decoding.
    let mut ext_huge = 1u32.to_be_bytes().to_vec();
    ext_huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut ext_max_short = 1u32.to_be_bytes().to_vec();
    ext_max_short.extend_from_slice(&65536u32.to_be_bytes());
    ext_max_short.extend_from_slice(&[0; 16]);
    let mut fetch_huge = 1u32.to_be_bytes().to_vec();
    fetch_huge.push(1);
    fetch_huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let frames = [
        raw_frame(Kind::Extents, &ext_huge),
        raw_frame(Kind::Extents, &ext_max_short),
        raw_frame(Kind::Fetch, &fetch_huge),
    ];
    let mut big_header = frames[0][..24].to_vec();
    big_header[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    let info_req = [0xff, 0xff, 0xff, 0xff, 0, 0];
    let info_count = [0, 0, 0, 0, 0xff, 0xff, 0, 1];
    let mut opt = [0u8; 16];
    opt[..8].copy_from_slice(&nbd::IHAVEOPT.to_be_bytes());
    opt[12..].copy_from_slice(&u32::MAX.to_be_bytes());

    LARGEST.store(0, Ordering::Relaxed);
    for f in &frames {
        assert!(decode_from(f).is_err());
    }
    assert!(decode_from(&big_header).is_err());
    assert!(nbd::decode_info_request(&info_req).is_err());
    assert!(nbd::decode_info_request(&info_count).is_err());
    assert!(nbd::decode_option_header(&opt).is_err());
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < 4096,
        "a hostile length led to a {largest}-byte allocation"
    );
    // The counter itself works.
    let v = std::hint::black_box(vec![0u8; 1 << 20]);
    assert!(LARGEST.load(Ordering::Relaxed) >= v.len());
}
