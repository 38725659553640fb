//! Runs the NBD server-side decoders (and the client-side ones) over slices of the input.
//! Oracle: no panic; accepted requests and info requests re-encode to their input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire_format::nbd;

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.first_chunk::<{ nbd::REQUEST_LEN }>() {
        if let Ok(req) = nbd::decode_request(b) {
            assert_eq!(&nbd::encode_request(&req), b);
            let _ = req.end();
        }
    }
    if let Some(b) = data.first_chunk::<{ nbd::OPTION_HEADER_LEN }>() {
        if let Ok(h) = nbd::decode_option_header(b) {
            assert!(h.len <= nbd::MAX_OPTION_LEN);
            // The option data is whatever follows, up to the announced length.
            let rest = &data[nbd::OPTION_HEADER_LEN..];
            let opt = &rest[..rest.len().min(h.len as usize)];
            check_info_request(opt);
            let _ = nbd::decode_export_name(opt);
        }
    }
    if let Some(b) = data.first_chunk::<{ nbd::OPTION_REPLY_HEADER_LEN }>() {
        let _ = nbd::decode_option_reply_header(b);
    }
    if let Some(b) = data.first_chunk::<4>() {
        let _ = nbd::decode_client_flags(b);
    }
    check_info_request(data);
    let _ = nbd::decode_info(data);
    let _ = nbd::decode_rep_server(data);
});

fn check_info_request(data: &[u8]) {
    if let Ok(r) = nbd::decode_info_request(data) {
        assert_eq!(nbd::encode_info_request(r.name, &r.info), data);
    }
}
