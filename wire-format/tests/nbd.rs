//! Property tests of the NBD codec: round trips both ways and garbage resistance.

use proptest::prelude::*;
use wire_format::nbd::*;

fn name() -> impl Strategy<Value = String> {
    // Spec strings: UTF-8 without NUL.
    "[^\\x00]{0,40}"
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = v.len().min(N);
    a[..n].copy_from_slice(&v[..n]);
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_round_trip(flags in any::<u16>(), cmd in any::<u16>(), cookie in any::<u64>(),
                          offset in any::<u64>(), length in any::<u32>()) {
        let req = Request { flags, command: Command::from_code(cmd), cookie, offset, length };
        let b = encode_request(&req);
        prop_assert_eq!(decode_request(&b), Ok(req));
        prop_assert_eq!(req.end(), offset.checked_add(length as u64));
    }

    #[test]
    fn simple_reply_round_trip(error in any::<u32>(), cookie in any::<u64>()) {
        prop_assert_eq!(decode_simple_reply(&encode_simple_reply(error, cookie)), Ok((error, cookie)));
    }

    #[test]
    fn greeting_and_flags_round_trip(flags in any::<u16>(), cflags in 0u32..4) {
        let flags = flags | FLAG_FIXED_NEWSTYLE;
        prop_assert_eq!(decode_server_greeting(&encode_server_greeting(flags)), Ok(flags));
        prop_assert_eq!(decode_client_flags(&encode_client_flags(cflags)), Ok(cflags));
    }

    #[test]
    fn unknown_client_flags_rejected(cflags in 4u32..) {
        prop_assert_eq!(decode_client_flags(&encode_client_flags(cflags)), Err(NbdError::UnknownClientFlags(cflags)));
    }

    #[test]
    fn option_round_trip(option in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        encode_option(option, &data, &mut out);
        let h = decode_option_header(&arr(&out)).unwrap();
        prop_assert_eq!(h, OptionHeader { option, len: data.len() as u32 });
        prop_assert_eq!(&out[OPTION_HEADER_LEN..], &data[..]);
    }

    #[test]
    fn option_len_bounded(option in any::<u32>(), len in MAX_OPTION_LEN + 1..) {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&option.to_be_bytes());
        b[12..].copy_from_slice(&len.to_be_bytes());
        prop_assert_eq!(decode_option_header(&b), Err(NbdError::OptionTooLong { len, max: MAX_OPTION_LEN }));
    }

    #[test]
    fn option_reply_round_trip(option in any::<u32>(), rt in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        encode_option_reply(option, rt, &data, &mut out);
        let h = decode_option_reply_header(&arr(&out)).unwrap();
        prop_assert_eq!(h, OptionReplyHeader { option, reply_type: rt, len: data.len() as u32 });
        prop_assert_eq!(h.is_error(), rt & REP_FLAG_ERROR != 0);
        prop_assert_eq!(&out[OPTION_REPLY_HEADER_LEN..], &data[..]);
    }

    #[test]
    fn info_request_round_trip(n in name(), info in proptest::collection::vec(any::<u16>(), 0..32)) {
        let data = encode_info_request(&n, &info);
        let r = decode_info_request(&data).unwrap();
        prop_assert_eq!(r.name, n.as_str());
        prop_assert_eq!(r.info, info);
    }

    #[test]
    fn info_round_trip(size in any::<u64>(), flags in any::<u16>(), min in any::<u32>(), pref in any::<u32>(),
                       max in any::<u32>(), n in name()) {
        prop_assert_eq!(decode_info(&encode_info_export(size, flags)), Ok(Info::Export { size, flags }));
        prop_assert_eq!(decode_info(&encode_info_block_size(min, pref, max)),
                        Ok(Info::BlockSize { min, preferred: pref, max }));
        prop_assert_eq!(decode_info(&encode_info_name(&n)), Ok(Info::Name(n.clone())));
        prop_assert_eq!(decode_info(&encode_info_description(&n)), Ok(Info::Description(n.clone())));
        let rep = encode_rep_server(&n);
        prop_assert_eq!(decode_rep_server(&rep), Ok(n.as_str()));
    }

    /// Whatever the decoders accept re-encodes to the same bytes; nothing panics.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
        let req: [u8; REQUEST_LEN] = arr(&data);
        if let Ok(r) = decode_request(&req) {
            prop_assert_eq!(encode_request(&r), req);
        }
        let _ = decode_option_header(&arr(&data));
        let _ = decode_option_reply_header(&arr(&data));
        let _ = decode_simple_reply(&arr(&data));
        let _ = decode_server_greeting(&arr(&data));
        let _ = decode_client_flags(&arr(&data));
        let _ = decode_export_name(&data);
        let _ = decode_rep_server(&data);
        if let Ok(r) = decode_info_request(&data) {
            prop_assert_eq!(encode_info_request(r.name, &r.info), data.clone());
        }
        match decode_info(&data) {
            Ok(Info::Export { size, flags }) => prop_assert_eq!(encode_info_export(size, flags), data.clone()),
            Ok(Info::BlockSize { min, preferred, max }) =>
                prop_assert_eq!(encode_info_block_size(min, preferred, max), data.clone()),
            Ok(Info::Name(n)) => prop_assert_eq!(encode_info_name(&n), data.clone()),
            Ok(Info::Description(d)) => prop_assert_eq!(encode_info_description(&d), data.clone()),
            Ok(Info::Unknown(t)) => prop_assert!(t > INFO_BLOCK_SIZE),
            Err(_) => {}
        }
        // With a valid request magic, every field combination decodes.
        let mut req = req;
        req[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        prop_assert!(decode_request(&req).is_ok());
    }
}

#[test]
fn constants_match_the_spec() {
    assert_eq!(NBDMAGIC.to_be_bytes(), *b"NBDMAGIC");
    assert_eq!(IHAVEOPT.to_be_bytes(), *b"IHAVEOPT");
    assert_eq!(OPTION_REPLY_MAGIC, 0x3e889045565a9);
    assert_eq!(
        (REQUEST_MAGIC, SIMPLE_REPLY_MAGIC),
        (0x25609513, 0x67446698)
    );
    assert_eq!(
        [
            OPT_EXPORT_NAME,
            OPT_ABORT,
            OPT_LIST,
            OPT_STARTTLS,
            OPT_INFO,
            OPT_GO,
            OPT_STRUCTURED_REPLY,
            OPT_LIST_META_CONTEXT,
            OPT_SET_META_CONTEXT,
            OPT_EXTENDED_HEADERS
        ],
        [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    );
    assert_eq!(
        [REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT],
        [1, 2, 3, 4]
    );
    assert_eq!(REP_ERR_UNSUP, 0x8000_0001);
    assert_eq!(REP_ERR_TOO_BIG, 0x8000_0009);
    assert_eq!(
        [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
        [0, 1, 2, 3]
    );
    assert_eq!(FLAG_SEND_FAST_ZERO, 1 << 11);
    assert_eq!(CMD_FLAG_FAST_ZERO, 1 << 4);
    assert_eq!(
        [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN],
        [1, 5, 12, 22, 28, 75, 95, 108]
    );
    assert_eq!((GREETING_LEN, OPTION_HEADER_LEN, REQUEST_LEN), (18, 16, 28));
}

#[test]
fn info_lengths_are_exact() {
    let mut e = encode_info_export(1, 1);
    e.push(0);
    assert!(matches!(decode_info(&e), Err(NbdError::Invalid { .. })));
    assert!(matches!(
        decode_info(&e[..10]),
        Err(NbdError::Truncated { .. })
    ));
    assert!(matches!(
        decode_info(&encode_info_block_size(1, 2, 3)[..13]),
        Err(NbdError::Truncated { .. })
    ));
    assert!(matches!(decode_info(&[0]), Err(NbdError::Truncated { .. })));
    assert_eq!(decode_info(&[0, 9, 1, 2, 3]), Ok(Info::Unknown(9)));
    let long = "x".repeat(MAX_STRING_LEN + 1);
    assert!(matches!(
        decode_info(&encode_info_name(&long)),
        Err(NbdError::Invalid { .. })
    ));
}
