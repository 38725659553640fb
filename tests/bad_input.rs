//! Hostile or broken peers: garbage NBD handshakes, requests past the end of the
//! export, and a backend that sends corrupt or truncated frames. The frontend must
//! refuse, keep serving other clients, and never store or return bad data.
//!
//! The NBD client here is the hand-written one in `common::nbd`, deliberately not
//! `wire_format::nbd`: a test should not share its codec with the code under test.

mod common;
use common::fake_backend::{lying_fill, FakeBackend, Fault};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::RngCore;

const SIZE: u64 = 32 * MIB;

/// Reads until EOF or error; true if the server closed (EOF/reset) or answered something
/// and then closed within the timeout. False if it kept the connection open in silence.
fn server_closes_or_answers(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                // Answered with an error and now waits for a better option: acceptable.
                return got > 0;
            }
            Err(_) => return true, // reset
        }
    }
}

fn assert_still_serves(h: &mut Harness, source: &std::path::Path) {
    assert!(
        h.frontend_running(),
        "frontend died\nstderr:\n{}",
        h.frontend_stderr()
    );
    let info = nbdinfo_export(&h.uri());
    assert_eq!(info["export-size"], SIZE, "{info}");
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let got = c.read(MIB, 64 * KIB as u32).expect("valid read");
    assert!(
        got == read_at(source, MIB, 64 * KIB as usize),
        "export data differs from source"
    );
    c.disconnect();
}

#[test]
fn garbage_handshakes_are_refused_and_export_keeps_serving() {
    require_tools(&["nbdinfo"]);
    let dir = test_dir("bad-handshake");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 6);
    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("0"));
    let mut r = rng(66);

    // 1. Random bytes instead of the client flags.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    nbd::read_greeting(&mut s).unwrap();
    let mut junk = vec![0u8; 256];
    r.fill_bytes(&mut junk);
    let _ = s.write_all(&junk);
    assert!(
        server_closes_or_answers(&mut s),
        "server kept silent after random client flags"
    );
    drop(s);
    assert_still_serves(&mut h, &source);

    // 2. Valid client flags, then an option with a wrong IHAVEOPT magic.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    nbd::read_greeting(&mut s).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(&0x4948_4156_454F_5055u64.to_be_bytes()); // IHAVEOPT + 1
    opt.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&[0, 0, 0, 3, b'v', b'o', b'l']);
    let _ = s.write_all(&opt);
    assert!(
        server_closes_or_answers(&mut s),
        "server kept silent after a bad option magic"
    );
    drop(s);

    // 3. A huge option length (must not be allocated or waited for forever).
    let mut s = UnixStream::connect(&h.sock).unwrap();
    nbd::read_greeting(&mut s).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(&nbd::IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
    opt.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    let _ = s.write_all(&opt);
    assert!(
        server_closes_or_answers(&mut s),
        "server waited for a 4 GiB option"
    );
    drop(s);

    // 4. Connect and hang up at once, a few times.
    for _ in 0..5 {
        drop(UnixStream::connect(&h.sock).unwrap());
    }

    // 5. A good handshake, then a request with a bad magic.
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let mut req = vec![0u8; 28];
    r.fill_bytes(&mut req);
    let _ = c.s.write_all(&req);
    assert!(
        server_closes_or_answers(&mut c.s),
        "server kept silent after a bad request magic"
    );
    drop(c);

    // 6. An unknown export name.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    nbd::read_greeting(&mut s).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(&nbd::IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
    opt.extend_from_slice(&9u32.to_be_bytes());
    opt.extend_from_slice(&[0, 0, 0, 3, b'n', b'o', b'p', 0, 0]);
    s.write_all(&opt).unwrap();
    let mut hdr = [0u8; 20];
    s.read_exact(&mut hdr)
        .expect("reply to NBD_OPT_GO for an unknown export");
    let rtype = u32::from_be_bytes(hdr[12..16].try_into().unwrap());
    assert!(
        rtype & 0x8000_0000 != 0,
        "unknown export accepted (reply type {rtype:#x})"
    );
    drop(s);

    assert_still_serves(&mut h, &source);
}

#[test]
fn requests_past_the_end_get_errors_and_change_nothing() {
    let dir = test_dir("bad-range");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 7);
    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("0"));
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    assert_eq!(c.size, SIZE);

    // READ straddling the end: EINVAL (NBD spec: "SHOULD return EINVAL").
    assert_eq!(
        c.read(SIZE - 512, 4096),
        Err(nbd::EINVAL),
        "read past the end"
    );
    // READ entirely beyond the end.
    assert_eq!(
        c.read(SIZE + MIB, 512),
        Err(nbd::EINVAL),
        "read beyond the end"
    );
    // The connection stays usable.
    let got = c
        .read(SIZE - 4096, 4096)
        .expect("valid read after an error");
    assert!(got == read_at(&source, SIZE - 4096, 4096));

    // WRITE straddling the end: ENOSPC (spec) or EINVAL; nothing written.
    let pattern = vec![0x77u8; 4096];
    let e = c
        .write(SIZE - 512, &pattern)
        .expect_err("write past the end succeeded");
    assert!(
        e == nbd::ENOSPC || e == nbd::EINVAL,
        "write past the end: errno {e}"
    );
    // Connection still in sync (the write payload was consumed).
    c.flush().expect("flush after a refused write");
    let got = c.read(SIZE - 4096, 4096).expect("read after refused write");
    assert!(
        got == read_at(&source, SIZE - 4096, 4096),
        "refused write changed the export"
    );
    c.disconnect();

    h.cutover_wait();
    assert_eq!(size_of(&h.target), SIZE, "target size changed");
    assert_files_equal(&source, &h.target);
}

const FAKE_SIZE: u64 = 16 * MIB;
const FAKE_CHUNK: u32 = 64 * 1024;

fn corrupt_backend_case(fault: Fault) {
    require_tools(&["qemu-io"]);
    if ServerKind::from_env() == ServerKind::Reference {
        eprintln!("NOTE: FERRY_TEST_SERVER=qemu-nbd: fake-backend tests are Ferry-only; not run");
        return;
    }
    let dir = test_dir("bad-backend");
    let fake = FakeBackend::start(fault, FAKE_SIZE, FAKE_CHUNK);
    let addr = fake.addr.clone();
    let fetches = fake.fetches.clone();
    // Background paused: only the read below fetches.
    let mut h = Harness::start_frontend_only(dir.path(), &addr, Opts::default().rate("0"));
    let st = h.status().unwrap();
    assert_eq!(get_u64(&st, "volume_size_bytes"), FAKE_SIZE, "{st}");

    let out = qemu_io(&h.uri(), &["read -v 128k 4k"]);
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(
        !out.status.success() || text.contains("failed"),
        "{fault:?}: read of a corrupt chunk succeeded:\n{text}\nfrontend stderr:\n{}",
        h.frontend_stderr()
    );
    assert!(
        !text.contains("ab ab ab ab"),
        "{fault:?}: corrupt data returned to the client"
    );
    assert!(
        fetches.load(Ordering::SeqCst) > 0,
        "frontend never fetched from the backend"
    );

    // The same via the raw client, to see the errno: EIO.
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    assert_eq!(
        c.read(128 * KIB, 4096),
        Err(nbd::EIO),
        "{fault:?}: NBD error for a corrupt chunk"
    );
    drop(c);

    assert!(
        h.frontend_running(),
        "frontend died on a bad backend\n{}",
        h.frontend_stderr()
    );
    let log = h.frontend_stderr_full().to_lowercase();
    let words: &[&str] = match fault {
        Fault::BadCrc => &["crc", "checksum"],
        Fault::Truncated => &["closed", "eof", "truncated", "connection", "reset"],
        Fault::LyingPieces => unreachable!("a lie in what pieces name is not a corrupt frame"),
    };
    assert!(
        words.iter().any(|w| log.contains(w)),
        "{fault:?}: frontend stderr does not explain the failure (looked for {words:?}):\n{log}"
    );
    let st = h.status().unwrap();
    assert_eq!(
        get_u64(&st, "chunks_present"),
        0,
        "{fault:?}: corrupt chunk stored: {st}"
    );
    assert_eq!(get_u64(&st, "chunks_dirty"), 0, "{st}");
    let region = read_at(&h.target, 128 * KIB, 64 * KIB as usize);
    assert!(
        region.iter().all(|&b| b == 0),
        "{fault:?}: corrupt data reached the target file"
    );
}

#[test]
fn backend_chunk_with_bad_crc_gives_eio_and_stores_nothing() {
    corrupt_backend_case(Fault::BadCrc);
}

#[test]
fn backend_truncated_frame_gives_eio_and_stores_nothing() {
    corrupt_backend_case(Fault::Truncated);
}

/// A backend that names blocks in `ChunkPieces` where their content is not (its table of
/// what it sent is wrong, or it lies): the frontend copies nothing it cannot check, fetches
/// the chunk again as data, and serves and stores the true content.
#[test]
fn named_blocks_that_are_not_where_named_are_fetched_as_data() {
    require_tools(&["qemu-io"]);
    if ServerKind::from_env() == ServerKind::Reference {
        eprintln!("NOTE: FERRY_TEST_SERVER=qemu-nbd: fake-backend tests are Ferry-only; not run");
        return;
    }
    let dir = test_dir("lying-pieces");
    let fake = FakeBackend::start(Fault::LyingPieces, FAKE_SIZE, FAKE_CHUNK);
    // Background paused: the reads below fetch, one chunk at a time, in this order.
    let mut h = Harness::start_frontend_only(dir.path(), &fake.addr, Opts::default().rate("0"));
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let chunk = u64::from(FAKE_CHUNK);
    // Chunk 0 first, so what chunk 1's lie names (volume offset 0) is on the target.
    assert_eq!(c.read(0, 4096), Ok(vec![lying_fill(0); 4096]));
    for n in [1u64, 2] {
        let got = c
            .read(n * chunk, FAKE_CHUNK)
            .expect("read of a chunk that came as pieces");
        assert!(
            got.iter().all(|&b| b == lying_fill(n)),
            "chunk {n}: served something other than its true content (first bytes {:?})\n{}",
            &got[..8],
            h.frontend_stderr()
        );
    }
    drop(c);
    let st = h.status().unwrap();
    assert_eq!(get_u64(&st, "block_ref_misses"), 2, "{st}");
    assert_eq!(get_u64(&st, "deduped_blocks"), 0, "{st}");
    assert_eq!(get_u64(&st, "chunks_present"), 3, "{st}");
    for n in 0..3u64 {
        let stored = read_at(&h.target, n * chunk, FAKE_CHUNK as usize);
        assert!(
            stored.iter().all(|&b| b == lying_fill(n)),
            "chunk {n}: the target holds something other than its true content"
        );
    }
    assert!(h.frontend_running(), "{}", h.frontend_stderr());
}

/// The admin socket is an entry point too: malformed JSON, wrong types, unknown commands and
/// an oversized line get a clear `ok: false` answer (or a closed connection), and the
/// frontend keeps running and serving.
#[test]
fn malformed_admin_requests_get_clear_errors() {
    let dir = test_dir("bad-admin");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 11);
    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("0"));
    let admin = h.state_dir.join("admin.sock");
    let ask = |line: &[u8]| -> String {
        let mut s = UnixStream::connect(&admin).expect("connect admin socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A peer that stops reading our oversized line may reset the connection: fine.
        let _ = s.write_all(line);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    for (line, want) in [
        (&b"this is not json\n"[..], "bad admin request"),
        (&b"{\"cmd\": 42}\n"[..], "bad admin request"),
        (
            &b"{\"cmd\":\"set-rate\",\"background_rate_bytes_per_s\":\"fast\"}\n"[..],
            "bad admin request",
        ),
        (
            &b"{\"cmd\":\"self-destruct\"}\n"[..],
            "unknown admin command",
        ),
        (&b"\xff\xfe\x00\n"[..], "bad admin request"),
    ] {
        let answer = ask(line);
        let v: serde_json::Value = serde_json::from_str(answer.trim())
            .unwrap_or_else(|e| panic!("answer to {line:?} is not JSON ({e}): {answer:?}"));
        assert_eq!(v["ok"], false, "{line:?} -> {answer}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(want),
            "{line:?} -> {answer}"
        );
    }
    // A client that connects and says nothing is timed out instead of holding the socket.
    let _silent = UnixStream::connect(&admin).expect("connect admin socket");
    // A line far past the bound is cut off, not buffered without limit.
    let huge = vec![b'x'; 4 << 20];
    let _ = ask(&huge);
    // Still alive and answering.
    let st = h.status().expect("status after bad admin requests");
    assert_eq!(st["running"], true, "{st}");
    assert_still_serves(&mut h, &source);
}

/// A client that keeps sending reads but never reads a reply: the frontend stops taking its
/// requests once its replies back up (NBD replies queue for a shared send), instead of
/// holding every reply in memory, and keeps serving others.
#[test]
fn a_client_that_never_reads_replies_cannot_grow_the_frontend() {
    let dir = test_dir("no-reader");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 8);
    let mut h = Harness::start(dir.path(), &source, Opts::default());
    h.wait_status("hydrated", Duration::from_secs(60), |st| {
        st["chunks_untouched"] == 0
    });
    let before = h.frontend_rss_kib();
    let c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let mut s = c.s;
    // 4096 reads of 64 KiB: 256 MiB of replies that are never read.
    const READS: u64 = 4096;
    let mut reqs = Vec::with_capacity(READS as usize * 28);
    for i in 0..READS {
        reqs.extend_from_slice(&nbd::encode_request(
            nbd::CMD_READ,
            i,
            (i * 64 * KIB) % SIZE,
            (64 * KIB) as u32,
        ));
    }
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The frontend stops reading requests at some point: the write times out then.
    let _ = s.write_all(&reqs);
    std::thread::sleep(Duration::from_secs(2));
    let after = h.frontend_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "frontend grew from {before} to {after} KiB for replies nobody reads"
    );
    drop(s);
    assert_still_serves(&mut h, &source);
}
