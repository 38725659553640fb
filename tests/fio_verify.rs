//! fio writes through the export during migration and verifies every block it wrote
//! (crc32c headers); after cutover fio's verify-only pass over the target file finds
//! the same data with direct IO.

mod common;
use common::*;

const SIZE: u64 = 128 * MIB;

/// Three workloads in disjoint regions of the volume: 4 KiB random writes (partial
/// writes of untouched chunks), 64 KiB..256 KiB sequential writes (whole chunks), and 4 KiB
/// and 1 MiB random writes mixed at queue depth 32 on one connection, so small replies
/// queued for a shared send meet large replies streamed under the send lock.
fn jobs() -> [(&'static str, Vec<String>); 3] {
    [
        (
            "rand",
            [
                "--name=rand",
                "--rw=randwrite",
                "--bs=4k",
                "--offset=8M",
                "--size=24M",
                "--iodepth=16",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "seq",
            [
                "--name=seq",
                "--rw=write",
                "--bsrange=64k-256k",
                "--offset=64M",
                "--size=32M",
                "--iodepth=4",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "mixed",
            [
                "--name=mixed",
                "--rw=randwrite",
                "--bssplit=4k/80:1m/20",
                "--offset=96M",
                "--size=32M",
                "--iodepth=32",
            ]
            .map(String::from)
            .to_vec(),
        ),
    ]
}

#[test]
fn fio_verify_during_migration_and_on_target_after_cutover() {
    require_tools(&["fio"]);
    let dir = test_dir("fio-verify");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 3);
    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("4M"));
    let uri = format!("--uri={}", h.uri());
    h.assert_mid_migration();

    for (tag, job) in jobs() {
        let mut args: Vec<&str> = job.iter().map(String::as_str).collect();
        args.extend([
            "--ioengine=nbd",
            &uri,
            "--direct=1",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // fio would otherwise leave `*-verify.state` files in the working directory
            "--verify_state_save=0",
        ]);
        let j = fio(dir.path(), tag, &args);
        let written = j["write"]["io_bytes"].as_u64().unwrap();
        let read = j["read"]["io_bytes"].as_u64().unwrap();
        assert!(
            written > 0 && read >= written,
            "fio {tag}: wrote {written}, verified {read}: {j}"
        );
    }
    if let Some(st) = h.status() {
        assert!(get_u64(&st, "chunks_dirty") > 0, "{st}");
    }
    // The region between the jobs was not written: it must still read as the source.
    let mut c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let got = c
        .read(40 * MIB, MIB as u32)
        .expect("read between fio regions");
    assert!(
        got == read_at(&source, 40 * MIB, MIB as usize),
        "export differs from source at 40M"
    );
    c.disconnect();

    h.cutover_wait();

    for (tag, job) in jobs() {
        let mut args: Vec<&str> = job.iter().map(String::as_str).collect();
        let file = format!("--filename={}", h.target.display());
        args.extend([
            "--ioengine=libaio",
            &file,
            "--direct=1",
            "--verify=crc32c",
            "--verify_only",
            "--verify_fatal=1",
        ]);
        let j = fio(dir.path(), &format!("{tag}-target"), &args);
        assert!(j["read"]["io_bytes"].as_u64().unwrap() > 0, "{j}");
    }
    // Outside the fio regions the target equals the source.
    for (off, len) in [(0, 8 * MIB), (32 * MIB, 32 * MIB)] {
        assert!(
            read_at(&source, off, len as usize) == read_at(&h.target, off, len as usize),
            "target differs from source in untouched range {off}+{len}"
        );
    }
}
