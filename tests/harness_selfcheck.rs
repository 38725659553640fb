//! Checks the harness itself against the reference server (qemu-nbd), independent of
//! Ferry: `cargo test --test harness_selfcheck -- --ignored`. To run the whole suite
//! against the reference server: `FERRY_TEST_SERVER=qemu-nbd cargo test`.

mod common;
use common::*;
use std::process::Command;

#[test]
#[ignore = "checks the test harness against qemu-nbd, not Ferry"]
fn harness_against_qemu_nbd() {
    require_tools(&["qemu-nbd", "qemu-img", "qemu-io", "nbdinfo"]);
    let dir = test_dir("selfcheck");
    let source = dir.path().join("source.img");
    make_source(&source, 16 * MIB, 9);
    // make_source leaves holes and zeros where it says it does.
    assert!(read_at(&source, 5 * MIB, MIB as usize)
        .iter()
        .all(|&b| b == 0));
    assert!(read_at(&source, 3 * MIB, MIB as usize)
        .iter()
        .all(|&b| b == 0));
    assert!(read_at(&source, 0, 4096).iter().any(|&b| b != 0));

    let mut h = Harness::start_kind(ServerKind::Reference, dir.path(), &source, Opts::default());
    let info = nbdinfo_export(&h.uri());
    assert_eq!(info["export-size"], 16 * MIB);
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&source)
            .arg(h.uri()),
    );

    let mut c = nbd::Client::connect(&h.sock, "vol");
    assert_eq!(c.size, 16 * MIB);
    assert_eq!(c.read(16 * MIB - 512, 4096), Err(nbd::EINVAL));
    // qemu-nbd 10 answers EINVAL here; the spec prefers ENOSPC. Both are accepted.
    let e = c.write(16 * MIB - 512, &[1u8; 4096]).unwrap_err();
    assert!(e == nbd::EINVAL || e == nbd::ENOSPC, "errno {e}");
    assert!(c.read(0, 4096).unwrap() == read_at(&source, 0, 4096));
    c.write(4096, &[7u8; 4096]).unwrap();
    c.flush().unwrap();
    c.disconnect();
    qemu_io_ok(&h.uri(), &["read -P 7 4k 4k"]);
    let bad = qemu_io(&h.uri(), &["read -P 8 4k 4k"]);
    assert!(
        !bad.status.success(),
        "qemu-io must fail on a pattern mismatch"
    );
    h.cutover_wait();
    assert!(read_at(&h.target, 4096, 4096).iter().all(|&b| b == 7));
}

/// The fake backend answers the handshake correctly and then faults as configured:
/// checked with `wire_format`'s own decoder, as the frontend would see it.
#[test]
fn fake_backend_speaks_the_protocol_then_faults() {
    use common::fake_backend::{FakeBackend, Fault};
    use std::io::{Read, Write};
    use wire_format::frame::{self, Class, Frame};

    for fault in [Fault::BadCrc, Fault::Truncated, Fault::LyingPieces] {
        let lying = fault == Fault::LyingPieces;
        let fake = FakeBackend::start(fault, 4 * MIB, 65536);
        let mut s = std::net::TcpStream::connect(&fake.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut out = Vec::new();
        Frame::Hello {
            version_min: 1,
            version_max: 1,
            capabilities: if lying { frame::CAP_BLOCK_REFS } else { 0 },
            agent: "selfcheck",
        }
        .encode(0, &mut out)
        .unwrap();
        Frame::Open {
            chunk_size: 65536,
            name: "vol",
        }
        .encode(1, &mut out)
        .unwrap();
        Frame::Fetch {
            handle: 1,
            class: Class::OnDemand,
            no_refs: false,
            no_zstd: false,
            link_bound: false,
            chunks: vec![2],
        }
        .encode(2, &mut out)
        .unwrap();
        s.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // BadCrc keeps the connection open: read times out
        let mut at = 0;
        let mut kinds = Vec::new();
        let end = loop {
            match frame::decode_from(&buf[at..]) {
                Ok(Some((f, n))) => {
                    kinds.push(format!("{:?}", f.kind()));
                    if let Frame::OpenOk {
                        size, chunk_size, ..
                    } = f
                    {
                        assert_eq!((size, chunk_size), (4 * MIB, 65536));
                    }
                    at += n;
                }
                Ok(None) => break "incomplete",
                Err(_) => break "error",
            }
        };
        let mut want_kinds = vec!["HelloAck", "OpenOk", "Extents"];
        if lying {
            // A well-formed frame: the lie is in what it names, for the frontend to catch.
            want_kinds.push("ChunkPieces");
        }
        assert_eq!(kinds, want_kinds, "{fault:?}");
        let want = match fault {
            Fault::BadCrc => "error",
            Fault::Truncated | Fault::LyingPieces => "incomplete",
        };
        assert_eq!(end, want, "{fault:?}: the reply must be {want}");
        assert_eq!(fake.fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
