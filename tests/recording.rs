//! Access-pattern recording end to end: a backend serves a small ext4 image, the frontend runs
//! with `--record`, qemu-io reads and writes through the export, cutover closes the recording,
//! and `ferry recording info --json --events` shows those requests in order, tied to the
//! image's size and file-system UUID.

mod common;
use common::*;
use std::process::Command;

const SIZE: u64 = 64 * MIB;

#[test]
fn frontend_records_requests_with_volume_identity() {
    require_tools(&["mkfs.ext4", "dumpe2fs", "qemu-io"]);
    let dir = test_dir("recording");
    let image = dir.path().join("source-ext4.img");
    run_ok(
        Command::new("truncate")
            .args(["-s", &SIZE.to_string()])
            .arg(&image),
    );
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-E", "nodiscard"])
            .arg(&image),
    );
    let dump = stdout_of(&run_ok(Command::new("dumpe2fs").arg("-h").arg(&image)));
    let uuid: String = dump
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .expect("dumpe2fs printed no UUID")
        .trim()
        .replace('-', "");

    let rec = dir.path().join("trace.sqlite");
    let rec_s = rec.to_str().unwrap();
    // Background paused: every read goes on demand, and nothing but the workload is recorded.
    let opts = Opts::default()
        .rate("0")
        .frontend_args(&["--record", rec_s, "--no-dedup"]);
    // Recording is a ferry feature: no qemu-nbd reference run.
    let mut h = Harness::start_kind(ServerKind::Ferry, dir.path(), &image, opts);
    qemu_io_ok(
        &h.uri(),
        &["read 0 64k", "write -P 0xab 1M 64k", "read 4M 8k"],
    );
    h.cutover_wait();
    assert!(
        h.frontend_stderr_full().contains("recording written"),
        "frontend log:\n{}",
        h.frontend_stderr_full()
    );

    let out = run_ok(Command::new(FERRY).args(["recording", "info", rec_s, "--json", "--events"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = &v["identity"];
    assert_eq!(id["format"], "ferry-recording", "{v}");
    assert_eq!(id["format_version"], 1, "{v}");
    assert_eq!(id["volume_size_bytes"], SIZE, "{v}");
    assert_eq!(id["fs_uuid"], uuid.as_str(), "{v}");
    assert_eq!(id["chunk_size_bytes"], 65536, "{v}");
    // qemu may add flushes (e.g. on close); the reads and writes are exactly the workload's.
    let events = v["events"].as_array().unwrap();
    let rw = requests_of(events);
    assert_eq!(
        rw,
        [
            ("read".to_string(), 0, 64 * KIB),
            ("write".to_string(), MIB, 64 * KIB),
            ("read".to_string(), 4 * MIB, 8 * KIB)
        ],
        "{v}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "{v}");
    let ts: Vec<u64> = events.iter().map(|e| e["t_us"].as_u64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{v}");
    let s = &v["summary"];
    assert_eq!(s["bytes_read"], 72 * KIB, "{v}");
    assert_eq!(s["bytes_written"], 64 * KIB, "{v}");
    assert_eq!(s["chunks_touched"], 3, "{v}");
    assert_eq!(s["events_dropped"], 0, "{v}");

    // Refusals: exit code 1 and the reason.
    let bogus = dir.path().join("bogus");
    std::fs::write(&bogus, b"not a database at all, just some text").unwrap();
    let out = ferry(&["recording", "info", bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("is not a ferry recording: it is not an SQLite database"),
        "{}",
        stderr_of(&out)
    );
}
