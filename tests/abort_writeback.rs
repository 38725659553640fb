//! `ferry abort` writes every change the workload made back to the source: afterwards
//! the source equals the original with the workload's writes applied.

mod common;
use common::*;

const SIZE: u64 = 64 * MIB;
const DISCARD: (u64, u64) = (20 * MIB, 128 * KIB);

enum Op {
    Write(u64, u64, u8),
    Zero(u64, u64),
}

fn ops() -> Vec<Op> {
    vec![
        Op::Write(2 * MIB, 256 * KIB, 0xa1),           // whole chunks
        Op::Write(10 * MIB + 8 * KIB, 4 * KIB, 0xb2),  // partial, untouched chunk
        Op::Write(11 * MIB + 60 * KIB, 8 * KIB, 0xb3), // straddles two chunks
        Op::Write(31 * MIB + 100, 300, 0xc4),          // sub-sector, unaligned
        Op::Write(SIZE - 4 * KIB, 4 * KIB, 0xd5),      // last 4K (a hole in the source)
        Op::Zero(12 * MIB, 192 * KIB),                 // write-zeroes over data
        Op::Zero(14 * MIB + 4 * KIB, 8 * KIB),         // partial write-zeroes
        Op::Write(12 * MIB + 64 * KIB, 4 * KIB, 0xe6), // data into a zeroed chunk
    ]
}

#[test]
fn abort_writes_changes_back_to_source() {
    require_tools(&["qemu-io"]);
    let dir = test_dir("abort");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 5);
    let original = dir.path().join("original.img");
    copy_sparse(&source, &original);
    let expected = dir.path().join("expected.img");
    copy_sparse(&source, &expected);

    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("4M"));
    let uri = h.uri();
    h.assert_mid_migration();

    let mut cmds = Vec::new();
    for op in ops() {
        match op {
            Op::Write(off, len, pat) => {
                cmds.push(format!("write -P {pat:#x} {off} {len}"));
                write_at(&expected, off, &vec![pat; len as usize]);
            }
            Op::Zero(off, len) => {
                cmds.push(format!("write -z {off} {len}"));
                write_at(&expected, off, &vec![0; len as usize]);
            }
        }
    }
    cmds.push(format!("discard {} {}", DISCARD.0, DISCARD.1));
    cmds.push("flush".into());
    let cmd_refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io_ok(&uri, &cmd_refs);

    // Read back through the export before aborting.
    qemu_io_ok(
        &uri,
        &[
            "read -P 0 12M 64k",
            "read -P 0xe6 12352k 4k",
            "read -P 0xa1 2M 256k",
        ],
    );
    if let Some(st) = h.status() {
        assert!(get_u64(&st, "chunks_dirty") > 0, "{st}");
        assert!(
            get_u64(&st, "chunks_untouched") > 0,
            "abort must happen mid-migration: {st}"
        );
    }

    h.abort();

    // Discarded data is unspecified by NBD; accept the old content or zeros per 4K.
    let (doff, dlen) = DISCARD;
    let got = read_at(&source, doff, dlen as usize);
    let old = read_at(&original, doff, dlen as usize);
    for (i, (g, o)) in got.chunks(4096).zip(old.chunks(4096)).enumerate() {
        assert!(
            g == o || g.iter().all(|&b| b == 0),
            "discarded block at {} is neither old data nor zeros after abort",
            doff + i as u64 * 4096
        );
    }
    write_at(&expected, doff, &got);
    assert_files_equal(&expected, &source);
    assert_eq!(size_of(&source), SIZE);
}
