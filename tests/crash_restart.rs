//! `kill -9` of the frontend mid-migration loses nothing acknowledged: every write that
//! was flushed reads back after a restart with the same state dir, chunks recorded
//! Present stay Present (not refetched), and the migration completes with the target
//! equal to the source plus the flushed writes.

mod common;
use common::*;
use std::time::Duration;

const SIZE: u64 = 64 * MIB;
/// The region of the write left in flight at the kill: its content is unspecified.
const INFLIGHT_OFF: u64 = 40 * MIB;
const INFLIGHT_LEN: u64 = 4 * MIB;
const INFLIGHT_PAT: u8 = 0xee;

/// (offset, length, pattern) writes, each followed by a flush.
fn flushed_writes() -> Vec<(u64, u64, u8)> {
    vec![
        (MIB, MIB, 0x5a),                    // 16 whole chunks
        (5 * MIB + 4 * KIB, 4 * KIB, 0x11),  // partial write of an untouched chunk
        (9 * MIB + 60 * KIB, 8 * KIB, 0x22), // straddles two chunks
        (17 * MIB, 64 * KIB, 0x33),          // exactly one chunk
        (24 * MIB + 512, 1536, 0x44),        // sub-4K, unaligned
        (SIZE - 64 * KIB, 64 * KIB, 0x55),   // last chunk (a hole in the source)
        (MIB + 128 * KIB, 4 * KIB, 0x66),    // rewrite inside an already-written range
    ]
}

#[test]
fn flushed_writes_survive_kill9_and_present_chunks_are_not_refetched() {
    require_tools(&["qemu-io"]);
    let dir = test_dir("crash-restart");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 4);
    let expected = dir.path().join("expected.img");
    copy_sparse(&source, &expected);

    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("2M"));
    let uri = h.uri();
    h.assert_mid_migration();

    for (off, len, pat) in flushed_writes() {
        qemu_io_ok(&uri, &[&format!("write -P {pat:#x} {off} {len}"), "flush"]);
        write_at(&expected, off, &vec![pat; len as usize]);
    }
    // Let background hydration record some chunks Present before the crash.
    let before = h.status().map(|_| {
        h.wait_status("some chunks present", Duration::from_secs(60), |st| {
            get_u64(st, "chunks_present") >= 4
        })
    });

    // A write left in flight (sent, reply not awaited, never flushed), then kill -9.
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    c.write_nowait(INFLIGHT_OFF, &vec![INFLIGHT_PAT; INFLIGHT_LEN as usize]);
    let present_before = h.status().map(|st| get_u64(&st, "chunks_present"));
    h.kill9_frontend();
    drop(c);

    if let Some(st) = h.status() {
        assert_eq!(st["running"], false, "status of a dead frontend: {st}");
        assert!(
            get_u64(&st, "chunks_present") >= present_before.unwrap(),
            "persisted map lost Present chunks: before kill {present_before:?}, now {st}"
        );
    }

    h.start_frontend();
    let untouched_after_restart = h.status().map(|st| {
        assert_eq!(st["running"], true, "{st}");
        assert_eq!(st["state"], "migrating", "{st}");
        let present = get_u64(&st, "chunks_present");
        assert!(
            present >= present_before.unwrap(),
            "chunks_present went down across the crash: {present_before:?} -> {present}; before: {before:?}, after: {st}"
        );
        assert!(get_u64(&st, "chunks_dirty") > 0, "flushed writes must stay Dirty: {st}");
        get_u64(&st, "chunks_untouched")
    });

    // Every flushed write reads back.
    for (off, len, pat) in flushed_writes() {
        if pat == 0x5a {
            // Overwritten in part by the 0x66 write: check the two sides.
            qemu_io_ok(&uri, &[&format!("read -P 0x5a {off} {}", 128 * KIB)]);
            let rest = off + 132 * KIB;
            qemu_io_ok(
                &uri,
                &[&format!("read -P 0x5a {rest} {}", off + len - rest)],
            );
        } else {
            qemu_io_ok(&uri, &[&format!("read -P {pat:#x} {off} {len}")]);
        }
    }

    if let Some(untouched) = untouched_after_restart {
        let st = h.wait_status("migration ready", MIGRATION_TIMEOUT, |st| {
            st["state"] == "ready"
        });
        let fetched =
            get_u64(&st, "fetched_chunks_on_demand") + get_u64(&st, "fetched_chunks_background");
        assert!(
            fetched <= untouched,
            "restarted frontend fetched {fetched} chunks but only {untouched} were untouched: Present chunks were refetched. {st}"
        );
    }
    h.cutover_wait();

    // The in-flight write may have landed in part, at any sector granularity.
    let src = read_at(&source, INFLIGHT_OFF, INFLIGHT_LEN as usize);
    let tgt = read_at(&h.target, INFLIGHT_OFF, INFLIGHT_LEN as usize);
    for (i, (s, t)) in src.chunks(512).zip(tgt.chunks(512)).enumerate() {
        assert!(
            s == t || t.iter().all(|&b| b == INFLIGHT_PAT),
            "sector {} of the in-flight write is neither old nor new data",
            INFLIGHT_OFF / 512 + i as u64
        );
    }
    write_at(&h.target, INFLIGHT_OFF, &src);
    assert_files_equal(&expected, &h.target);
}
