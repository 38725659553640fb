//! `ferry record` end to end: it serves a small ext4 image (the workload's own disk) over NBD,
//! qemu-io and a raw NBD client read and write through the export, SIGTERM stops it, and then
//! the recording holds exactly those requests in order, tied to the image's size and ext4
//! UUID, the write is in the image, and no other byte of the image changed.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const SIZE: u64 = 64 * MIB;
const WRITE_AT: u64 = 8 * MIB;
const WRITE_LEN: u64 = 64 * KIB;

#[test]
fn record_serves_the_source_and_records_every_request() {
    require_tools(&["mkfs.ext4", "dumpe2fs", "qemu-io"]);
    let dir = test_dir("record");
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("hello.txt"), b"hello from the workload\n").unwrap();
    std::fs::write(files.join("random.bin"), random_bytes(3 * MIB as usize, 7)).unwrap();
    let image = dir.path().join("disk.img");
    run_ok(
        Command::new("truncate")
            .args(["-s", &SIZE.to_string()])
            .arg(&image),
    );
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-E", "nodiscard", "-d"])
            .arg(&files)
            .arg(&image),
    );
    let dump = stdout_of(&run_ok(Command::new("dumpe2fs").arg("-h").arg(&image)));
    let uuid: String = dump
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .expect("dumpe2fs printed no UUID")
        .trim()
        .replace('-', "");
    let original = std::fs::read(&image).unwrap();

    let sock = dir.path().join("nbd.sock");
    let rec = dir.path().join("trace.sqlite");
    let (image_s, rec_s) = (image.to_str().unwrap(), rec.to_str().unwrap());
    let nbd = format!("unix:{}", sock.display());
    let mut p = Proc::spawn(
        "record",
        Command::new(FERRY).args([
            "record",
            "--source",
            image_s,
            "--nbd",
            &nbd,
            "--out",
            rec_s,
            "--chunk-size",
            "64K",
            "--cores",
            "2",
        ]),
        dir.path(),
    );
    let line = p.wait_line("ferry record serving", READY_TIMEOUT);
    assert_eq!(line, format!("ferry record serving disk.img on {nbd}"));
    p.wait_line("ferry record: recording every request into", READY_TIMEOUT);

    // The export name defaults to the source's file name; another name is refused.
    let bad = qemu_io(&nbd_uri(&sock, "other"), &["read 0 4k"]);
    assert!(
        !bad.status.success() || stderr_of(&bad).contains("failed"),
        "a wrong export name was accepted: {}",
        stdout_of(&bad)
    );
    let uri = nbd_uri(&sock, "disk.img");
    qemu_io_ok(
        &uri,
        &[
            "read 0 64k",
            "read 1M 4k",
            "read 20M 128k",
            "write -P 0xcd 8M 64k",
            "read -P 0xcd 8M 64k",
        ],
    );
    // The export serves the image's own bytes.
    let mut c = nbd::Client::connect(&sock, "disk.img");
    assert_eq!(c.size, SIZE);
    let head = c.read(0, MIB as u32).expect("read through the export");
    assert!(
        head == original[..MIB as usize],
        "the export's first MiB differs from the image"
    );
    let tail = c
        .read(SIZE - 256 * KIB, 256 * KIB as u32)
        .expect("read through the export");
    assert!(
        tail == original[(SIZE - 256 * KIB) as usize..],
        "the export's last 256 KiB differ from the image"
    );
    c.disconnect();

    p.signal(libc::SIGTERM);
    let st = p
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("ferry record did not stop on SIGTERM:\n{}", p.stderr()));
    assert!(st.success(), "ferry record exited {st}:\n{}", p.stderr());
    let summary = p
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("ferry record stopped: "))
        .unwrap_or_else(|| panic!("no summary line: {:?}", p.stdout_lines()));
    assert!(!sock.exists(), "the NBD socket is left behind");

    let out = run_ok(Command::new(FERRY).args(["recording", "info", rec_s, "--json", "--events"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = &v["identity"];
    assert_eq!(id["format"], "ferry-recording", "{v}");
    assert_eq!(id["volume_size_bytes"], SIZE, "{v}");
    assert_eq!(id["fs_uuid"], uuid.as_str(), "{v}");
    assert_eq!(id["chunk_size_bytes"], 65536, "{v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(
        summary,
        format!(
            "ferry record stopped: {} events recorded into {rec_s} (0 dropped); the source {image_s} is durable",
            events.len()
        )
    );
    // qemu may add flushes (e.g. on close); reads and writes are exactly the workload's.
    let rw = requests_of(events);
    let ev = |k: &str, o: u64, l: u64| (k.to_string(), o, l);
    assert_eq!(
        rw,
        [
            ev("read", 0, 64 * KIB),
            ev("read", MIB, 4 * KIB),
            ev("read", 20 * MIB, 128 * KIB),
            ev("write", WRITE_AT, WRITE_LEN),
            ev("read", WRITE_AT, WRITE_LEN),
            ev("read", 0, MIB),
            ev("read", SIZE - 256 * KIB, 256 * KIB),
        ],
        "{v}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "{v}");
    let ts: Vec<u64> = events.iter().map(|e| e["t_us"].as_u64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{v}");
    assert_eq!(v["summary"]["events_dropped"], 0, "{v}");

    // The write went straight to the source and nothing else in it changed: the source now
    // hashes like the original image with exactly that write applied.
    let expected = dir.path().join("expected.img");
    std::fs::write(&expected, &original).unwrap();
    write_at(&expected, WRITE_AT, &vec![0xcd; WRITE_LEN as usize]);
    assert_eq!(
        sha256_file(&image),
        sha256_file(&expected),
        "the source differs from the original plus the write, first at byte {:?}",
        first_difference(&image, &expected)
    );

    // A recording is never overwritten.
    let again = ferry(&["record", "--source", image_s, "--nbd", &nbd, "--out", rec_s]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr_of(&again));
    assert!(
        stderr_of(&again).contains("exists"),
        "{}",
        stderr_of(&again)
    );
}

/// Offset of the first data at or after `offset` (SEEK_DATA), or the file size if none.
fn next_data(p: &std::path::Path, offset: u64) -> u64 {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(p).unwrap();
    // SAFETY: lseek on an fd we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENXIO)
        );
        return size_of(p);
    }
    r as u64
}

#[test]
fn record_over_tcp_with_a_name_keeps_holes_and_applies_write_zeroes() {
    require_tools(&["qemu-io"]);
    const SIZE: u64 = 16 * MIB;
    let dir = test_dir("record-tcp");
    // Random data, allocated zeros, and holes at MiB 5, 13 and 15; no file system.
    let source = dir.path().join("raw.img");
    make_source(&source, SIZE, 3);
    let original = std::fs::read(&source).unwrap();
    let holes = [5 * MIB, 13 * MIB, 15 * MIB];
    for h in holes {
        assert!(next_data(&source, h) >= h + MIB, "no hole at {h}");
    }
    let rec = dir.path().join("trace.sqlite");
    let (source_s, rec_s) = (source.to_str().unwrap(), rec.to_str().unwrap());
    let mut p = Proc::spawn(
        "record-tcp",
        Command::new(FERRY).args([
            "record",
            "--source",
            source_s,
            "--nbd",
            "tcp:127.0.0.1:0",
            "--name",
            "vol",
            "--out",
            rec_s,
        ]),
        dir.path(),
    );
    let line = p.wait_line("ferry record serving vol on tcp:", READY_TIMEOUT);
    let addr = line
        .rsplit_once("tcp:")
        .map(|(_, a)| a.to_string())
        .unwrap();
    assert!(!addr.ends_with(":0"), "the real port is printed: {line}");
    qemu_io_ok(
        &format!("nbd://{addr}/vol"),
        &[
            "read -P 0 5M 64k",
            "write -z 2M 64k",
            "read -P 0 2M 64k",
            "write -P 0x5a 6M 4k",
        ],
    );
    p.signal(libc::SIGINT);
    let st = p
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("ferry record did not stop on SIGINT:\n{}", p.stderr()));
    assert!(st.success(), "ferry record exited {st}:\n{}", p.stderr());

    let out = run_ok(Command::new(FERRY).args(["recording", "info", rec_s, "--json", "--events"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identity"]["volume_size_bytes"], SIZE, "{v}");
    assert!(v["identity"]["fs_uuid"].is_null(), "{v}");
    let rw = requests_of(v["events"].as_array().unwrap());
    let ev = |k: &str, o: u64, l: u64| (k.to_string(), o, l);
    assert_eq!(
        rw,
        [
            ev("read", 5 * MIB, 64 * KIB),
            ev("write_zeroes", 2 * MIB, 64 * KIB),
            ev("read", 2 * MIB, 64 * KIB),
            ev("write", 6 * MIB, 4 * KIB),
        ],
        "{v}"
    );

    // Exactly the workload's changes, and set-up allocated or zeroed nothing: the holes are
    // still holes.
    let expected = dir.path().join("expected.img");
    std::fs::write(&expected, &original).unwrap();
    write_at(&expected, 2 * MIB, &vec![0; 64 * KIB as usize]);
    write_at(&expected, 6 * MIB, &vec![0x5a; 4 * KIB as usize]);
    assert_eq!(
        sha256_file(&source),
        sha256_file(&expected),
        "the source differs from the original plus the writes, first at byte {:?}",
        first_difference(&source, &expected)
    );
    for h in holes {
        assert!(
            next_data(&source, h) >= h + MIB,
            "the hole at {h} was filled"
        );
    }
}
