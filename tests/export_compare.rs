//! Mid-migration, the export is byte-identical to the source as seen by independent
//! clients (qemu-img compare, nbdcopy), advertises the capabilities a workload needs
//! (nbdinfo), and after cutover the target file equals the source.

mod common;
use common::*;
use std::process::Command;

const SIZE: u64 = 128 * MIB;

#[test]
fn export_equals_source_mid_migration_and_target_after_cutover() {
    require_tools(&["qemu-img", "nbdinfo", "nbdcopy"]);
    let dir = test_dir("export-compare");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 1);
    let pristine = dir.path().join("pristine.img");
    copy_sparse(&source, &pristine);

    // Slow background hydration keeps the migration in progress while we look.
    let mut h = Harness::start(dir.path(), &source, Opts::default().rate("4M"));
    let uri = h.uri();
    h.assert_mid_migration();

    // nbdinfo: size and capabilities.
    let info = nbdinfo_export(&uri);
    assert_eq!(info["export-size"], SIZE, "nbdinfo: {info}");
    assert_eq!(info["is_read_only"], false, "nbdinfo: {info}");
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(info[cap], true, "export must advertise {cap}: {info}");
    }

    // qemu-img compare reads every byte through the export (on-demand fetches).
    h.assert_mid_migration();
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&source)
        .arg(&uri));
    assert!(
        out.status.success(),
        "qemu-img compare: export differs from source ({}):\n{}{}\nfrontend stderr:\n{}",
        out.status,
        stdout_of(&out),
        stderr_of(&out),
        h.frontend_stderr()
    );
    assert!(
        stdout_of(&out).contains("Images are identical"),
        "{}",
        stdout_of(&out)
    );

    // nbdcopy (multi-connection, parallel requests) of the export to a file.
    let copy = dir.path().join("copy.img");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&copy));
    assert_files_equal(&source, &copy);

    if let Some(st) = h.status() {
        assert_eq!(get_u64(&st, "volume_size_bytes"), SIZE, "{st}");
        assert_eq!(get_u64(&st, "chunk_size_bytes"), 64 * KIB, "{st}");
        assert_eq!(get_u64(&st, "chunks_total"), SIZE / (64 * KIB), "{st}");
        assert_eq!(st["running"], true, "{st}");
        assert_eq!(st["volume"], "vol", "{st}");
        // Reads never make a chunk dirty.
        assert_eq!(get_u64(&st, "chunks_dirty"), 0, "{st}");
        let sum: u64 = [
            "chunks_untouched",
            "chunks_present",
            "chunks_dirty",
            "chunks_zero",
        ]
        .iter()
        .map(|k| get_u64(&st, k))
        .sum();
        assert_eq!(
            sum,
            get_u64(&st, "chunks_total"),
            "chunk states must add up: {st}"
        );
        assert!(
            get_u64(&st, "fetched_chunks_on_demand") > 0,
            "reading the whole export mid-migration must fetch on demand: {st}"
        );
    }

    h.cutover_wait();
    assert_files_equal(&pristine, &h.target);
    assert_files_equal(&pristine, &source);
    assert_eq!(sha256_file(&pristine), sha256_file(&h.target));
}
