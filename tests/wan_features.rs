//! The WAN features end to end: zstd chunks, the shared dedup index, `--fs-aware`, and a
//! slow, long or faulty link (the WAN emulator of `ferry-perf` between frontend and backend).
//!
//! Whatever a feature does to the bytes on the wire, the target after cutover must be the
//! source, byte for byte (with `--fs-aware`: the same file system, file for file). The
//! traffic counters are read from the live status once nothing is untouched, because the
//! frontend exits at cutover and the status it leaves behind has only the chunk counts.
//!
//! Most migrations use an ext4 sample volume ([`control::sample`]) made once per test binary.
//! Migrations whose assertions depend on timing (the throughput bound, the encoder deciding
//! that the link is the bottleneck) run alone ([`Share::Alone`]): this binary's test threads
//! share 2 cores, and a starved backend is CPU-bound, not link-bound.

mod common;
use common::*;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use control::sample::{make_ext4_sample, SampleSummary, STALE_MARKER};
use ferry_perf::wan::{Direction, FaultAt, RandomFaults, WanConfig, WanCounters, WanProxy};

const SAMPLE_SIZE: u64 = 256 * MIB;
const SAMPLE_SEED: u64 = 7;
const BLOCK: u64 = 4 * KIB;

// ---------------------------------------------------------------------------------------
// The shared sample volume
// ---------------------------------------------------------------------------------------

struct Sample {
    path: PathBuf,
    summary: SampleSummary,
}

/// Where the sample lives; removed when the test binary exits (statics are never dropped).
static SAMPLE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_sample_dir() {
    if let Some(d) = SAMPLE_DIR.get() {
        let _ = fs::remove_dir_all(d);
    }
}

/// The 256 MiB ext4 sample, made by the first test that asks (~9 s in a debug build).
/// Read-only for everyone: tests that change it work on a copy.
fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        require_tools(&["mkfs.ext4", "debugfs", "dumpe2fs"]);
        // CPU-heavy: not while a timed migration runs.
        let _shared = CPU.read().unwrap_or_else(|e| e.into_inner());
        let dir = SAMPLE_DIR.get_or_init(|| {
            // SAFETY: registers a plain extern "C" fn with no captured state.
            unsafe { libc::atexit(remove_sample_dir) };
            test_dir("wan-sample").keep()
        });
        let path = dir.join("sample.img");
        let t = Instant::now();
        let summary = make_ext4_sample(&path, SAMPLE_SIZE, SAMPLE_SEED, &mut |_| {})
            .unwrap_or_else(|e| panic!("making the ext4 sample: {e:#}"));
        println!("sample: {summary} (made in {:.1?})", t.elapsed());
        Sample { path, summary }
    })
}

/// A private copy of the sample in `dir`: a backend locks its source, so tests running at the
/// same time cannot serve the same file.
fn sample_copy(dir: &Path) -> PathBuf {
    let p = dir.join("sample.img");
    copy_sparse(&sample().path, &p);
    p
}

// ---------------------------------------------------------------------------------------
// One migration
// ---------------------------------------------------------------------------------------

/// Migrations that time things hold this exclusively; all others share it.
static CPU: RwLock<()> = RwLock::new(());

#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    Shared,
    Alone,
}

struct Migration {
    h: Harness,
    /// Status right after the frontend came up (only when started paused: `--background-rate 0`).
    start: Option<serde_json::Value>,
    /// Live status once no chunk was untouched.
    done: serde_json::Value,
    /// From spawning the frontend until no chunk was untouched.
    elapsed: Duration,
    /// The emulator's counters after cutover.
    wan: Option<WanCounters>,
}

impl Migration {
    fn n(&self, key: &str) -> u64 {
        get_u64(&self.done, key)
    }

    /// Bytes of chunk content the migration moved (data chunks, whatever their wire form).
    fn logical_bytes(&self) -> u64 {
        self.n("fetched_bytes_on_demand") + self.n("fetched_bytes_background")
    }

    fn print(&self, name: &str) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{name}: {:.2} s, logical {} B ({} present, {} zero of {} chunks), wire {} B ({:.1}%), \
             zstd {} chunks ({} B raw), deduped {} chunks ({} B) and {} blocks, ref_misses {}, fetch_failures {}, {:.1} MB/s logical",
            secs,
            self.logical_bytes(),
            self.n("chunks_present"),
            self.n("chunks_zero"),
            self.n("chunks_total"),
            self.n("wire_bytes"),
            100.0 * self.n("wire_bytes") as f64 / self.logical_bytes().max(1) as f64,
            self.n("zstd_chunks"),
            self.n("zstd_raw_bytes"),
            self.n("deduped_chunks"),
            self.n("deduped_bytes"),
            self.n("deduped_blocks"),
            self.n("ref_misses"),
            self.n("fetch_failures"),
            self.logical_bytes() as f64 / secs / 1e6,
        );
        if let Some(w) = &self.wan {
            println!("{name}: wan {w}");
        }
    }
}

/// Migrates `source` into `dir/target.img` (state in `dir/state`), through a WAN emulator
/// with `wan` if given, and cuts over. The caller checks the target.
fn migrate(
    dir: &Path,
    source: &Path,
    opts: Opts,
    wan: Option<WanConfig>,
    share: Share,
) -> Migration {
    let (_shared, _alone) = match share {
        Share::Shared => (Some(CPU.read().unwrap_or_else(|e| e.into_inner())), None),
        Share::Alone => (None, Some(CPU.write().unwrap_or_else(|e| e.into_inner()))),
    };
    fs::create_dir_all(dir).unwrap();
    let paused = opts.background_rate.as_deref() == Some("0");
    let mut h = Harness::start_backend_only(dir, source, opts);
    let proxy = wan.map(|cfg| {
        let upstream: SocketAddr = h.backend_addr.as_deref().unwrap().parse().unwrap();
        let p = WanProxy::start(upstream, SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
            .expect("start the WAN emulator");
        h.backend_addr = Some(p.local_addr().to_string());
        p
    });
    let t0 = Instant::now();
    h.start_frontend();
    let start = paused.then(|| {
        let st = h.status().unwrap();
        let sd = h.state_dir.to_str().unwrap().to_string();
        let out = ferry(&[
            "set-rate",
            "--state-dir",
            &sd,
            "--background-rate",
            "unlimited",
        ]);
        assert!(out.status.success(), "set-rate: {}", stderr_of(&out));
        st
    });
    let done = h.wait_status("no chunk untouched", MIGRATION_TIMEOUT, |s| {
        get_u64(s, "chunks_untouched") == 0
    });
    let elapsed = t0.elapsed();
    h.cutover_wait();
    // The backend locks its source: the next migration of the same file needs it gone.
    h.stop_backend();
    Migration {
        h,
        start,
        done,
        elapsed,
        wan: proxy.map(|p| p.counters()),
    }
}

fn wan_link(one_way_delay_ms: u64, mbit_per_s: u64) -> WanConfig {
    WanConfig {
        one_way_delay: Duration::from_millis(one_way_delay_ms),
        rate_bytes_per_s: Some(mbit_per_s * 1_000_000 / 8),
        ..WanConfig::default()
    }
}

/// A fully random (incompressible, nowhere zero) file.
fn make_random_file(path: &Path, size: u64, seed: u64) {
    let mut f = File::create(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..size / MIB {
        // splitmix64, as in `make_source`: a CSPRNG is slow in a debug build.
        for w in buf.chunks_exact_mut(8) {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}

/// 4 KiB blocks of `path` that start with the sample's stale-data marker.
fn stale_blocks(path: &Path) -> u64 {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            return n;
        }
        assert_eq!(k % BLOCK as usize, 0, "short read of {}", path.display());
        n += buf[..k]
            .chunks(BLOCK as usize)
            .filter(|b| b.starts_with(STALE_MARKER.as_bytes()))
            .count() as u64;
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// (a) defaults, (b) no compression and no dedup, (c) defaults over a 200 Mbit/s link with
/// 10 ms one-way delay, where compression must engage: the same target every time.
/// (d), dedup within one volume, is the first migration of
/// `a_clone_crosses_the_wire_as_references` (it needs 4K chunks, see there).
#[test]
fn same_target_with_and_without_each_feature() {
    let root = test_dir("wan-same");
    let src = sample_copy(root.path());

    let a = migrate(
        &root.path().join("a"),
        &src,
        Opts::default(),
        None,
        Share::Shared,
    );
    a.print("(a) defaults");
    assert_files_equal(&src, &a.h.target);
    let index = root.path().join("a").join("ferry-dedup.sqlite");
    assert!(
        index.is_file(),
        "dedup is on by default with its index at {}, which does not exist",
        index.display()
    );

    let b = migrate(
        &root.path().join("b"),
        &src,
        Opts::default().frontend_args(&["--compress", "off", "--no-dedup"]),
        None,
        Share::Shared,
    );
    b.print("(b) --compress off --no-dedup");
    assert_files_equal(&src, &b.h.target);
    assert_eq!(
        b.n("zstd_chunks"),
        0,
        "zstd with --compress off: {}",
        b.done
    );
    assert_eq!(
        b.n("deduped_chunks"),
        0,
        "dedup with --no-dedup: {}",
        b.done
    );
    assert_eq!(
        b.n("wire_bytes"),
        b.logical_bytes(),
        "raw chunks only, so wire bytes = logical bytes: {}",
        b.done
    );
    assert_eq!(
        a.n("chunks_present"),
        b.n("chunks_present"),
        "the same source gave different present counts"
    );

    let c = migrate(
        &root.path().join("c"),
        &src,
        Opts::default(),
        Some(wan_link(10, 200)),
        Share::Alone,
    );
    c.print("(c) defaults, 200 Mbit/s, 10 ms one way");
    assert_files_equal(&src, &c.h.target);
    assert!(
        c.n("zstd_chunks") > 0,
        "a link-bound migration of compressible data sent no zstd chunk: {}",
        c.done
    );
    assert!(
        c.n("wire_bytes") < c.logical_bytes(),
        "compression did not shrink the transfer: wire {} >= logical {}",
        c.n("wire_bytes"),
        c.logical_bytes()
    );
    let w = c.wan.unwrap();
    assert!(
        w.downstream_bytes >= c.n("wire_bytes"),
        "the emulated link carried {} B downstream, less than the {} B of chunk payload: \
         did the frontend bypass it?",
        w.downstream_bytes,
        c.n("wire_bytes")
    );
    assert!(
        w.downstream_bytes < c.logical_bytes(),
        "the emulated link carried {} B downstream, not less than the {} B of content",
        w.downstream_bytes,
        c.logical_bytes()
    );
}

/// Volume B is a clone of volume A with ~1% of its 4 KiB blocks rewritten: migrated after A
/// with the same dedup index, almost all of it must cross the wire as references.
///
/// A goes over loopback with the defaults, where the backend does not hash (the link is
/// faster than SHA-256) and A's frontend indexes its target after hydration, before it exits
/// at cutover: B finding A's content is what shows that indexing happened.
///
/// 4K chunks: at 64K the sample's duplicated tree gives no hit at all (its files are 4K- but
/// not 64K-aligned), and 1% of blocks rewritten at random touch ~25% of B's 64K data chunks,
/// so even perfect dedup would send more than 5% of B.
#[test]
fn a_clone_crosses_the_wire_as_references() {
    let root = test_dir("wan-clone");
    let src = sample_copy(root.path());
    let index = root.path().join("ferry-dedup.sqlite");
    let index_arg = index.to_str().unwrap();
    let opts = Opts::default()
        .chunk("4K")
        .frontend_args(&["--dedup-index", index_arg]);

    let a = migrate(
        &root.path().join("a"),
        &src,
        opts.clone(),
        None,
        Share::Shared,
    );
    a.print("A (fresh index, 4K chunks, indexed after hydration)");
    assert_files_equal(&src, &a.h.target);

    // B: A with 1% of its blocks (anywhere, free space included) rewritten.
    let b_src = root.path().join("b.img");
    copy_sparse(&src, &b_src);
    let blocks = SAMPLE_SIZE / BLOCK;
    let mut r = rng(42);
    let mut picked =
        rand::seq::index::sample(&mut r, blocks as usize, blocks as usize / 100).into_vec();
    picked.sort_unstable();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&b_src).unwrap();
        for (i, &blk) in picked.iter().enumerate() {
            let data = random_bytes(BLOCK as usize, 1_000_000 + i as u64);
            f.write_all_at(&data, blk as u64 * BLOCK).unwrap();
        }
        f.sync_all().unwrap();
    }
    let mut chunks_64k: Vec<u64> = picked
        .iter()
        .map(|&b| b as u64 * BLOCK / (64 * KIB))
        .collect();
    chunks_64k.dedup();
    println!(
        "B: {} of {blocks} blocks rewritten, in {} distinct 64K chunks",
        picked.len(),
        chunks_64k.len()
    );

    let b = migrate(&root.path().join("b"), &b_src, opts, None, Share::Shared);
    b.print("B (A's index, 4K chunks)");
    assert_files_equal(&b_src, &b.h.target);
    let cs = b.n("chunk_size_bytes");
    let logical = (b.n("chunks_total") - b.n("chunks_zero")) * cs;
    let wire = b.n("wire_bytes");
    println!(
        "B: wire {wire} B of logical {logical} B = {:.2}% (bound 5%); deduped {} of {} present chunks",
        100.0 * wire as f64 / logical as f64,
        b.n("deduped_chunks"),
        b.n("chunks_present")
    );
    assert!(
        wire * 20 < logical,
        "B sent {wire} B on the wire for {logical} B of content (>= 5%): {}",
        b.done
    );
    assert!(
        b.n("deduped_chunks") * 10 >= b.n("chunks_present") * 9,
        "fewer than 90% of B's data chunks came from the index: {}",
        b.done
    );
}

/// Chunks that arrived unhashed are indexed only after hydration, and that queue is not
/// persisted: a frontend killed mid-migration must queue them again from the map when it
/// restarts. A second migration of the same content with that index must then find it all.
#[test]
fn a_restart_queues_again_what_was_not_indexed() {
    let root = test_dir("wan-reindex");
    let src = root.path().join("source.img");
    make_source(&src, 64 * MIB, 11);
    let index = root.path().join("ferry-dedup.sqlite");
    let opts = Opts::default()
        .rate("8M")
        .frontend_args(&["--dedup-index", index.to_str().unwrap()]);

    let dir_a = root.path().join("a");
    fs::create_dir_all(&dir_a).unwrap();
    let mut a = Harness::start_backend_only(&dir_a, &src, opts);
    a.start_frontend();
    let before = a.wait_status("a third of the chunks present", MIGRATION_TIMEOUT, |s| {
        get_u64(s, "chunks_present") * 3 >= get_u64(s, "chunks_total")
    });
    a.kill9_frontend();
    a.start_frontend();
    a.wait_status("no chunk untouched", MIGRATION_TIMEOUT, |s| {
        get_u64(s, "chunks_untouched") == 0
    });
    // Cutover: the frontend indexes what is left before it exits.
    a.cutover_wait();
    a.stop_backend();
    assert_files_equal(&src, &a.target);

    let b = migrate(
        &root.path().join("b"),
        &src,
        Opts::default().frontend_args(&["--dedup-index", index.to_str().unwrap()]),
        None,
        Share::Shared,
    );
    b.print("B (A's index, A killed and restarted)");
    assert_files_equal(&src, &b.h.target);
    assert!(
        b.n("deduped_chunks") * 10 >= b.n("chunks_present") * 9,
        "B found fewer than 90% of its chunks in A's index: the chunks A had before its \
         kill -9 ({} present then) were not indexed after the restart. {}",
        get_u64(&before, "chunks_present"),
        b.done
    );
}

/// `--eager-dedup`: the backend hashes every chunk even over loopback, so content repeated
/// inside one volume (the sample's duplicated tree) crosses the wire once and is referenced
/// after; without it, over loopback, every chunk travels as data and nothing is referenced.
#[test]
fn eager_dedup_references_repeats_within_a_volume_on_a_fast_link() {
    let s = sample();
    let root = test_dir("wan-eager");
    let src = sample_copy(root.path());
    let run = |name: &str, extra: &[&str]| {
        let index = root.path().join(format!("{name}.sqlite"));
        let mut args = vec!["--dedup-index", index.to_str().unwrap()];
        args.extend_from_slice(extra);
        let opts = Opts::default().chunk("4K").frontend_args(&args);
        let m = migrate(&root.path().join(name), &src, opts, None, Share::Shared);
        m.print(name);
        assert_files_equal(&src, &m.h.target);
        m
    };
    let eager = run("eager", &["--eager-dedup"]);
    assert!(
        eager.n("deduped_chunks") > 0,
        "the sample's duplicated tree (/srv/app-v2, {} B) gave no dedup hit: {}",
        s.summary.duplicated_bytes,
        eager.done
    );
    let lazy = run("lazy", &[]);
    assert!(
        lazy.n("deduped_chunks") < eager.n("deduped_chunks"),
        "over loopback the default hashed as much as --eager-dedup ({} >= {} hits): {}",
        lazy.n("deduped_chunks"),
        eager.n("deduped_chunks"),
        lazy.done
    );
}

/// The sample's duplicated tree lies at block, not chunk, offsets: with 64 KiB chunks whole
/// chunks rarely repeat, but its 4 KiB blocks do. With hashing on (`--eager-dedup`, so a fast
/// link hashes too), the backend names blocks it sent before and the frontend copies them from
/// its target, checking each against its digest; the target is the source, byte for byte.
#[test]
fn blocks_repeated_off_chunk_boundaries_are_copied_not_sent() {
    let s = sample();
    let root = test_dir("wan-blocks");
    let src = sample_copy(root.path());
    let index = root.path().join("index.sqlite");
    let opts = Opts::default().chunk("64K").frontend_args(&[
        "--dedup-index",
        index.to_str().unwrap(),
        "--eager-dedup",
    ]);
    let m = migrate(&root.path().join("m"), &src, opts, None, Share::Shared);
    m.print("blocks");
    assert_files_equal(&src, &m.h.target);
    let blocks = m.n("deduped_blocks") * 4096;
    let chunks = m.n("deduped_bytes");
    assert!(
        blocks >= s.summary.duplicated_bytes / 2 && blocks > 2 * chunks,
        "{blocks} B of blocks and {chunks} B of whole chunks copied, for {} B duplicated: {}",
        s.summary.duplicated_bytes,
        m.done
    );
    assert_eq!(m.n("block_ref_misses"), 0, "{}", m.done);
    // What the blocks saved shows on the wire: the logical bytes minus what was copied
    // bounds the wire bytes from above (raw sends, no compression here).
    assert!(
        m.n("wire_bytes")
            <= m.logical_bytes() - blocks - chunks + m.n("chunks_total") * 64 * 1024 / 100,
        "wire {} B for {} B logical with {blocks} B of blocks copied: {}",
        m.n("wire_bytes"),
        m.logical_bytes(),
        m.done
    );
}

/// Seeded corruption downstream: every bad frame is caught (crc), the link is replaced, the
/// chunks are fetched again, and nothing corrupt reaches the target.
#[test]
fn corruption_in_flight_is_caught_and_refetched() {
    let root = test_dir("wan-corrupt");
    let src = sample_copy(root.path());
    let random = root.path().join("random.img");
    make_random_file(&random, 64 * MIB, 3);

    // Random corruption on every connection and direction, plus one sure hit a little into
    // connection 1 (the first after start-up: a background connection).
    let faulty = |seed: u64| {
        let mut cfg = wan_link(1, 200);
        cfg.seed = seed;
        cfg.faults.random = Some(RandomFaults {
            corrupt_per_mib: 0.04,
            cut_per_mib: 0.0,
        });
        cfg.faults.corrupt.push(FaultAt {
            direction: Direction::Downstream,
            connection: 1,
            offset: MIB + 12_345,
        });
        cfg
    };
    // Dedup off to keep the test short (SHA-256 is slow in a debug build); compression is what
    // matters here: raw and zstd frames both get hit.
    let cases: [(&str, &Path, &[&str], Share); 3] = [
        (
            "random, compress auto",
            &random,
            &["--no-dedup"],
            Share::Shared,
        ),
        (
            "ext4 sample, compress auto",
            &src,
            &["--no-dedup"],
            Share::Alone,
        ),
        (
            "random, compress off",
            &random,
            &["--no-dedup", "--compress", "off"],
            Share::Shared,
        ),
    ];
    for (i, (name, source, args, share)) in cases.into_iter().enumerate() {
        let m = migrate(
            &root.path().join(format!("m{i}")),
            source,
            Opts::default().frontend_args(args),
            Some(faulty(11 + i as u64)),
            share,
        );
        m.print(name);
        let w = m.wan.unwrap();
        assert!(w.corrupted_bytes > 0, "{name}: nothing was corrupted: {w}");
        assert_files_equal(source, &m.h.target);
        let log = m.h.frontend_stderr_full().to_lowercase();
        let caught = log
            .lines()
            .filter(|l| l.contains("checksum mismatch") || l.contains("corrupt"))
            .count();
        println!(
            "{name}: {} bytes corrupted, {} connections, {caught} frontend log lines on bad frames",
            w.corrupted_bytes, w.connections
        );
        assert!(
            caught > 0,
            "{name}: the frontend log says nothing about a checksum mismatch or corrupt frame:\n{}",
            m.h.frontend_stderr()
        );
        if name.starts_with("ext4") {
            assert!(
                m.n("zstd_chunks") > 0,
                "{name}: no zstd chunk, so no zstd frame was exposed to corruption: {}",
                m.done
            );
        }
    }
}

/// `--fs-aware`: refused on a source that is not ext4; on the sample, free blocks (with the
/// deleted files' stale data) are not migrated and the target is the same file system.
#[test]
fn fs_aware_skips_free_blocks() {
    require_root();
    require_tools(&["e2fsck", "losetup", "mount", "umount", "diff", "find"]);
    let s = sample();
    let root = test_dir("wan-fsaware");
    let src = sample_copy(root.path());

    // (a) Not ext4: the backend exits with the reason.
    let random = root.path().join("random.img");
    make_random_file(&random, 16 * MIB, 5);
    let t = Instant::now();
    let out = run_timeout(
        Command::new(FERRY).args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--volume",
            &format!("v={}", random.display()),
            "--fs-aware",
        ]),
        Duration::from_secs(20),
    );
    let took = t.elapsed();
    println!(
        "--fs-aware on random data: {} after {took:.2?}: {}",
        out.status,
        stderr_of(&out).trim()
    );
    assert!(
        !out.status.success(),
        "ferry backend --fs-aware accepted random data"
    );
    assert!(
        stderr_of(&out).contains("not ext4"),
        "stderr does not say `not ext4`: {}",
        stderr_of(&out)
    );
    assert!(took < Duration::from_secs(10), "refusal took {took:?}");

    // (b) The sample with and without --fs-aware, paused at first to read the start counts.
    let opts = Opts::default()
        .rate("0")
        .frontend_args(&["--compress", "off", "--no-dedup"]);
    let plain = migrate(
        &root.path().join("plain"),
        &src,
        opts.clone(),
        None,
        Share::Shared,
    );
    plain.print("without --fs-aware");
    assert_files_equal(&src, &plain.h.target);
    let aware = migrate(
        &root.path().join("aware"),
        &src,
        opts.backend_args(&["--fs-aware"]),
        None,
        Share::Shared,
    );
    aware.print("with --fs-aware");

    let cs = aware.n("chunk_size_bytes");
    let deleted_chunks = s.summary.deleted_bytes / cs;
    let zero_at_start = |m: &Migration| get_u64(m.start.as_ref().unwrap(), "chunks_zero");
    let skipped_at_start = zero_at_start(&aware) as i64 - zero_at_start(&plain) as i64;
    let skipped_bytes = plain.logical_bytes() as i64 - aware.logical_bytes() as i64;
    println!(
        "--fs-aware: zero chunks at start {} vs {} (+{skipped_at_start}), moved {} B vs {} B \
         (-{skipped_bytes} B = {:.1} chunks); deleted data {} B = {deleted_chunks} chunks, free {} B",
        zero_at_start(&aware),
        zero_at_start(&plain),
        aware.logical_bytes(),
        plain.logical_bytes(),
        skipped_bytes as f64 / cs as f64,
        s.summary.deleted_bytes,
        s.summary.free_bytes
    );
    // Some deleted blocks share a chunk with used ones: those chunks still move.
    assert!(
        skipped_at_start as u64 * 4 >= deleted_chunks * 3,
        "--fs-aware marked only {skipped_at_start} more chunks zero at start; the deleted data \
         alone fills ~{deleted_chunks}"
    );
    assert!(
        skipped_bytes as u64 * 4 >= s.summary.deleted_bytes * 3,
        "--fs-aware moved only {skipped_bytes} B less; the deleted data is {} B",
        s.summary.deleted_bytes
    );
    let (stale_src, stale_dst) = (stale_blocks(&src), stale_blocks(&aware.h.target));
    println!("stale-data blocks: source {stale_src}, --fs-aware target {stale_dst}");
    assert!(
        stale_src > 0,
        "the sample should hold stale data in free blocks"
    );
    // Free blocks in partly used chunks travel as zeros: no stale data reaches the target.
    assert_eq!(
        stale_dst, 0,
        "stale data of deleted files reached the target"
    );

    // The target is a clean file system holding the same files.
    let fsck = run(Command::new("e2fsck").arg("-fn").arg(&aware.h.target));
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the --fs-aware target ({}):\n{}{}",
        fsck.status,
        stdout_of(&fsck),
        stderr_of(&fsck)
    );
    let src_lo = LoopDev::attach(&src, true);
    let dst_lo = LoopDev::attach(&aware.h.target, true);
    let src_mnt = Mount::new(&src_lo.dev, &root.path().join("mnt-src"), Some("ro,noload"));
    let dst_mnt = Mount::new(&dst_lo.dev, &root.path().join("mnt-dst"), Some("ro,noload"));
    let files = run_ok(Command::new("find").arg(&dst_mnt.dir).args(["-type", "f"]));
    let n_files = stdout_of(&files).lines().count() as u64;
    println!("--fs-aware target: {n_files} regular files");
    assert!(
        n_files * 2 >= s.summary.files_written,
        "the mounted target shows {n_files} files; the sample has {}",
        s.summary.files_written
    );
    let diff = run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src_mnt.dir)
        .arg(&dst_mnt.dir));
    let text = stdout_of(&diff);
    assert!(
        diff.status.success(),
        "files differ between the source and the --fs-aware target ({}):\n{}{}",
        diff.status,
        text.chars().take(4000).collect::<String>(),
        stderr_of(&diff)
    );
    drop((dst_mnt, src_mnt, dst_lo, src_lo));
}

/// 64 MiB of random data over 100 Mbit/s with 20 ms one way (40 ms RTT): the migration must
/// run at >= 75% of the link rate, i.e. keep enough in flight to cover the round trips.
#[test]
fn throughput_on_a_long_link_is_bounded_by_the_link() {
    let root = test_dir("wan-throughput");
    let source = root.path().join("random.img");
    let size = 64 * MIB;
    make_random_file(&source, size, 9);
    let cfg = wan_link(20, 100);
    let rate = cfg.rate_bytes_per_s.unwrap() as f64;
    let m = migrate(
        &root.path().join("m"),
        &source,
        Opts::default().frontend_args(&["--compress", "off", "--no-dedup"]),
        Some(cfg),
        Share::Alone,
    );
    m.print("100 Mbit/s, 20 ms one way");
    assert_files_equal(&source, &m.h.target);
    let w = m.wan.unwrap();
    assert!(
        w.downstream_bytes >= size,
        "only {} B crossed the emulated link for a {size} B volume",
        w.downstream_bytes
    );
    let secs = m.elapsed.as_secs_f64();
    let throughput = size as f64 / secs;
    println!(
        "throughput: {size} B in {secs:.2} s = {:.2} MB/s = {:.2} x the link's {:.2} MB/s (bound 0.75); \
         ideal time {:.2} s",
        throughput / 1e6,
        throughput / rate,
        rate / 1e6,
        size as f64 / rate
    );
    assert!(
        throughput >= 0.75 * rate,
        "{:.2} MB/s is below 75% of the link's {:.2} MB/s",
        throughput / 1e6,
        rate / 1e6
    );
}
