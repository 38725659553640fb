//! Prefetch priority end to end (issue 5): a recording made with `--record` while a client
//! reads a scattered set of chunks orders a later migration of the same source: the backend
//! receives the recorded chunks (most read first) before anything else, then the first MiB
//! (fs-metadata class), then the rest in order. Status shows the class, the recording and the
//! hit rate. Corrupt, older-format and other-size recordings are refused at start-up.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SIZE: u64 = 128 * MIB;
const CHUNK: u64 = 64 * KIB;
/// Chunks read by the recorded workload, none in a hole of `make_source` nor in the first
/// MiB; 700 is read three times, so it ranks first.
const RECORDED: [u64; 8] = [700, 30, 333, 950, 77, 1200, 1450, 1900];
const STRIPE: u64 = 1024;

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Background fetch requests in the order the backend received them, per owner core (stripes
/// of 1024 chunks alternate between the 2 cores), from its debug log. A request lists its
/// chunks sorted, so order is only observable between requests.
fn wire_order(backend_log: &Path) -> [Vec<Vec<u64>>; 2] {
    let text = strip_ansi(&String::from_utf8_lossy(
        &std::fs::read(backend_log).unwrap_or_default(),
    ));
    let mut per_core = [Vec::new(), Vec::new()];
    for l in text.lines() {
        if !l.contains("fetch request") || !l.contains("class=Background") {
            continue;
        }
        let Some(list) = l
            .split_once("chunks=[")
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        let req: Vec<u64> = list
            .split(',')
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .collect();
        if let Some(&c) = req.first() {
            per_core[((c / STRIPE) % 2) as usize].push(req);
        }
    }
    per_core
}

/// Every chunk of `first` went out, and no other chunk in a request before the last one
/// holding a chunk of `first`.
fn assert_first(reqs: &[Vec<u64>], first: &[u64], what: &str) {
    let at = |c: u64| reqs.iter().position(|r| r.contains(&c));
    let last = first
        .iter()
        .map(|&c| at(c).unwrap_or_else(|| panic!("{what}: chunk {c} not on the wire: {reqs:?}")))
        .max()
        .unwrap_or(0);
    for (i, r) in reqs.iter().enumerate().take(last) {
        for c in r {
            assert!(
                first.contains(c),
                "{what}: chunk {c} went out in request {i}, before request {last}: {reqs:?}"
            );
        }
    }
}

fn read_cmd(chunk: u64) -> String {
    format!("read {} 64k", chunk * CHUNK)
}

fn frontend_refusal(dir: &Path, backend: &str, rec: &Path) -> (Option<i32>, String) {
    let name = rec.file_name().unwrap().to_string_lossy().into_owned();
    let out = run_timeout(
        Command::new(FERRY)
            .args(["frontend", "--backend", backend, "--volume", "vol"])
            .arg("--target")
            .arg(dir.join(format!("t-{name}")))
            .arg("--state-dir")
            .arg(dir.join(format!("s-{name}")))
            .arg("--nbd")
            .arg(format!(
                "unix:{}",
                dir.join(format!("{name}.sock")).display()
            ))
            .args(["--chunk-size", "64K", "--no-dedup", "--prefetch"])
            .arg(rec),
        Duration::from_secs(60),
    );
    (out.status.code(), stderr_of(&out))
}

/// Records, with `ferry frontend --record`, a workload reading `chunks` in this order (the
/// background paused, so every read is on demand); the migration is then cut over.
fn record_reads(dir: &Path, source: &Path, rec: &str, chunks: &[u64]) {
    let run1 = dir.join("run1");
    std::fs::create_dir_all(&run1).unwrap();
    let opts = Opts::default()
        .rate("0")
        .frontend_args(&["--record", rec, "--no-dedup"]);
    let mut h = Harness::start_kind(ServerKind::Ferry, &run1, source, opts);
    let cmds: Vec<String> = chunks.iter().map(|&c| read_cmd(c)).collect();
    let cmds: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
    qemu_io_ok(&h.uri(), &cmds);
    h.cutover_wait();
    h.stop_backend();
}

/// A fresh migration of `source` with `--prefetch rec` at background `rate`, in small
/// requests one at a time, its backend logging every fetch request (see `wire_order`).
fn start_prefetching(dir: &Path, source: &Path, rec: &str, rate: &str) -> Harness {
    let run2 = dir.join("run2");
    std::fs::create_dir_all(&run2).unwrap();
    let opts = Opts::default()
        .rate(rate)
        .frontend_args(&[
            "--prefetch",
            rec,
            "--no-dedup",
            "--batch-chunks",
            "4",
            "--background-in-flight",
            "1",
        ])
        .backend_args(&["--log-level", "info,dataplane::backend::conn=debug"]);
    Harness::start_kind(ServerKind::Ferry, &run2, source, opts)
}

#[test]
fn recording_orders_the_background_and_bad_recordings_are_refused() {
    require_tools(&["qemu-io", "sqlite3"]);
    let dir = test_dir("prefetch");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 7);
    let rec = dir.path().join("rec.sqlite");
    let rec_s = rec.to_str().unwrap();

    // (a) Record a workload reading scattered chunks (background paused: all on demand).
    let mut reads = RECORDED.to_vec();
    reads.extend([700, 700]);
    record_reads(dir.path(), &source, rec_s, &reads);

    // (b) A fresh migration of the same source with --prefetch: order on the wire.
    let mut h = start_prefetching(dir.path(), &source, rec_s, "1M");
    let log = h.dir.join("backend.stderr");
    let (mine0, mine1): (Vec<u64>, Vec<u64>) = RECORDED
        .iter()
        .partition(|&&c| (c / STRIPE).is_multiple_of(2));
    wait_until(
        "the recorded chunks and the first MiB on the wire",
        Duration::from_secs(60),
        || {
            let [c0, c1] = wire_order(&log);
            let n = |r: &[Vec<u64>]| r.iter().map(Vec::len).sum::<usize>();
            n(&c0) >= mine0.len() + 20 && n(&c1) > mine1.len() + 4
        },
    );
    let [c0, c1] = wire_order(&log);
    // Batches of 4: the most read chunk goes out in the first request.
    assert!(c0[0].contains(&700), "core 0 requests {c0:?}");
    assert_first(&c0, &mine0, "core 0, recorded chunks first");
    let then_mib: Vec<u64> = mine0.iter().copied().chain(0..16).collect();
    assert_first(&c0, &then_mib, "core 0, then the first MiB (fs-metadata)");
    assert!(
        c0.iter().flatten().any(|c| !then_mib.contains(c)),
        "core 0: in-order never reached: {c0:?}"
    );
    assert_first(&c1, &mine1, "core 1, recorded chunks first");
    assert!(
        c1.iter().take(2).any(|r| r.contains(&STRIPE)),
        "core 1, then in order: {c1:?}"
    );

    let st = h.status().unwrap();
    assert!(
        st["prefetch_recording"]
            .as_str()
            .is_some_and(|p| p.ends_with("rec.sqlite")),
        "{st}"
    );
    let classes = [
        "recording",
        "fs-metadata",
        "neighbours",
        "in-order",
        "sequence",
    ];
    assert!(
        classes.contains(&st["prefetch_class"].as_str().unwrap_or("")),
        "{st}"
    );
    assert!(get_u64(&st["prefetch_batches"], "recording") >= 2, "{st}");

    // Reads of prefetched chunks are hits.
    wait_until("recorded chunks present", Duration::from_secs(30), || {
        let st = h.status().unwrap();
        get_u64(&st, "fetched_chunks_background") >= (RECORDED.len() + 20) as u64
    });
    qemu_io_ok(&h.uri(), &[&read_cmd(700), &read_cmd(1450)]);
    let st = h.status().unwrap();
    assert!(get_u64(&st, "prefetch_hits") >= 2, "{st}");
    assert!(
        get_u64(&st, "prefetch_reads") >= get_u64(&st, "prefetch_hits"),
        "{st}"
    );
    // Late reads are a kind of miss.
    assert!(
        get_u64(&st, "prefetch_late")
            <= get_u64(&st, "prefetch_reads") - get_u64(&st, "prefetch_hits"),
        "{st}"
    );
    let human = stdout_of(&run_ok(
        Command::new(FERRY)
            .args(["status", "--state-dir"])
            .arg(&h.state_dir),
    ));
    assert!(
        human.lines().any(|l| l.starts_with("prefetch    class ")
            && l.contains("rec.sqlite")
            && l.contains("hits ")
            && l.contains(" late")),
        "{human}"
    );

    // (c) Refusals, against the running backend.
    let backend = h.backend_addr.clone().unwrap();
    let bad = dir.path().join("corrupt.sqlite");
    std::fs::write(&bad, b"this is not a recording, just some text").unwrap();
    let (code, err) = frontend_refusal(dir.path(), &backend, &bad);
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(err.contains("is not a ferry recording"), "{err}");

    let old = dir.path().join("old.sqlite");
    std::fs::copy(&rec, &old).unwrap();
    run_ok(
        Command::new("sqlite3")
            .arg(&old)
            .arg("UPDATE meta SET value = 0 WHERE key = 'format_version'"),
    );
    let (code, err) = frontend_refusal(dir.path(), &backend, &old);
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(err.contains("is older than this ferry reads"), "{err}");

    let other = dir.path().join("other-size.sqlite");
    std::fs::copy(&rec, &other).unwrap();
    run_ok(Command::new("sqlite3").arg(&other).arg(format!(
        "UPDATE meta SET value = {} WHERE key = 'volume_size_bytes'",
        2 * SIZE
    )));
    let (code, err) = frontend_refusal(dir.path(), &backend, &other);
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(
        err.contains(&format!("was made on a {} byte volume", 2 * SIZE)),
        "{err}"
    );

    // Everything hydrated: the class says so.
    run_ok(
        Command::new(FERRY)
            .args(["set-rate", "--background-rate", "unlimited", "--state-dir"])
            .arg(&h.state_dir),
    );
    h.wait_status("prefetch done", Duration::from_secs(120), |st| {
        st["prefetch_class"] == "done" && st["chunks_untouched"] == 0
    });
    h.cutover_wait();
    assert_files_equal(&source, &h.target);
}

/// Blocks `(first, count)` of an ext4 image's bitmaps, inode tables and journal, from
/// `dumpe2fs` (the oracle; ferry parses them itself).
fn ext4_metadata_blocks(img: &Path) -> (u64, Vec<(u64, u64)>) {
    let text = stdout_of(&run_ok(Command::new("dumpe2fs").arg(img)));
    let mut bs = 0;
    let mut runs = Vec::new();
    let mut journal_len = 0;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("Block size:") {
            bs = v.trim().parse().unwrap();
        }
        if let Some(v) = l.strip_prefix("Total journal blocks:") {
            journal_len = v.trim().parse().unwrap();
        }
        for part in l.split(',') {
            for key in ["Block bitmap at ", "Inode bitmap at ", "Inode table at "] {
                if let Some(rest) = part.trim().strip_prefix(key) {
                    let nums = rest.split_whitespace().next().unwrap();
                    let mut it = nums.split('-').map(|n| n.parse::<u64>().unwrap());
                    let a = it.next().unwrap();
                    let b = it.next().unwrap_or(a);
                    runs.push((a, b - a + 1));
                }
            }
        }
    }
    let out = run_ok(Command::new("debugfs").args(["-R", "bmap <8> 0"]).arg(img));
    let journal: u64 = stdout_of(&out).trim().parse().unwrap();
    assert!(journal_len > 0, "{text}");
    runs.push((journal, journal_len));
    (bs, runs)
}

#[test]
fn without_a_matching_recording_ext4_metadata_goes_first() {
    require_tools(&["mkfs.ext4", "dumpe2fs", "debugfs"]);
    let dir = test_dir("prefetch-ext4");
    let image = dir.path().join("source-ext4.img");
    run_ok(
        Command::new("truncate")
            .args(["-s", &SIZE.to_string()])
            .arg(&image),
    );
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-b", "4096", "-E", "nodiscard"])
            .arg(&image),
    );
    let (bs, runs) = ext4_metadata_blocks(&image);
    let mut hot: Vec<u64> = (0..16).collect();
    for (first, count) in &runs {
        hot.extend(first * bs / CHUNK..=((first + count) * bs - 1) / CHUNK);
    }
    // A directory whose only recording is of another volume size: nothing matches.
    let recs = dir.path().join("recordings");
    std::fs::create_dir_all(&recs).unwrap();
    std::fs::write(recs.join("notes.txt"), b"not a recording").unwrap();
    let recs_s = recs.to_str().unwrap();
    let opts = Opts::default()
        .rate("4M")
        .frontend_args(&[
            "--prefetch",
            recs_s,
            "--no-dedup",
            "--batch-chunks",
            "16",
            "--background-in-flight",
            "1",
        ])
        .backend_args(&["--log-level", "info,dataplane::backend::conn=debug"]);
    let mut h = Harness::start_kind(ServerKind::Ferry, dir.path(), &image, opts);
    let log = dir.path().join("backend.stderr");
    let journal_chunk = runs.last().unwrap().0 * bs / CHUNK;
    wait_until("the journal on the wire", Duration::from_secs(120), || {
        wire_order(&log)[0]
            .iter()
            .flatten()
            .any(|&c| c == journal_chunk)
    });
    let [c0, _] = wire_order(&log);
    // Only ext4 metadata (and the first MiB) before the journal's first chunk goes out.
    let at = c0.iter().position(|r| r.contains(&journal_chunk)).unwrap();
    for r in &c0[..at] {
        for c in r {
            assert!(hot.contains(c), "chunk {c} before the journal: {c0:?}");
        }
    }
    assert!(
        h.frontend_stderr_full()
            .contains("no recording matches this volume"),
        "{}",
        h.frontend_stderr_full()
    );
    let st = h.status().unwrap();
    assert!(st["prefetch_recording"].is_null(), "{st}");
    assert!(get_u64(&st["prefetch_batches"], "fs-metadata") >= 1, "{st}");
    h.cutover_wait();
    assert_files_equal(&image, &h.target);
}

/// Sequence prediction: a recording reads a sequence of scattered chunks once, then two other
/// chunks many times (so the frequency order puts those two first). On a fresh migration the
/// workload's first two reads follow the sequence: the next background requests carry the
/// rest of the sequence, in its order, ahead of the frequency list.
#[test]
fn live_reads_that_follow_the_recorded_sequence_fetch_what_comes_next() {
    require_tools(&["qemu-io"]);
    let dir = test_dir("prefetch-seq");
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, 9);
    // Core 0's stripe, past the first MiB, away from make_source's holes and zero MiBs.
    let seq: Vec<u64> = (0..)
        .map(|i| 40 + i * 67)
        .filter(|c| ![3, 5].contains(&((c / 16) % 8)))
        .take(12)
        .collect();
    let hot = [1005u64, 1010];
    let rec = dir.path().join("rec.sqlite");
    let rec_s = rec.to_str().unwrap();
    let mut reads = seq.clone();
    for _ in 0..4 {
        reads.extend(hot);
    }
    record_reads(dir.path(), &source, rec_s, &reads);
    let mut h = start_prefetching(dir.path(), &source, rec_s, "0");
    // The workload starts the way the recording did; background is still paused.
    qemu_io_ok(&h.uri(), &[&read_cmd(seq[0]), &read_cmd(seq[1])]);
    run_ok(
        Command::new(FERRY)
            .args(["set-rate", "--background-rate", "1M", "--state-dir"])
            .arg(&h.state_dir),
    );
    let log = h.dir.join("backend.stderr");
    let rest = &seq[2..];
    wait_until(
        "the predicted chunks on the wire",
        Duration::from_secs(60),
        || wire_order(&log)[0].iter().map(Vec::len).sum::<usize>() >= rest.len() + 4,
    );
    let [c0, _] = wire_order(&log);
    // The rest of the sequence first, in its order (a request lists its chunks sorted, and
    // the background window sizes requests: order shows between requests), then the
    // frequency list (the two hot chunks).
    let sent: Vec<u64> = c0.iter().flatten().copied().collect();
    let mut first: Vec<u64> = sent[..rest.len()].to_vec();
    first.sort_unstable();
    let mut want = rest.to_vec();
    want.sort_unstable();
    assert_eq!(first, want, "core 0 requests {c0:?}");
    let at = |c: &u64| rest.iter().position(|r| r == c);
    let mut last_pos = 0;
    for r in c0.iter().take_while(|r| r.iter().all(|c| at(c).is_some())) {
        let lo = r.iter().filter_map(at).min().unwrap_or(0);
        assert!(lo >= last_pos, "out of sequence order: {c0:?}");
        last_pos = r.iter().filter_map(at).max().unwrap_or(0);
    }
    let pos = |c: u64| sent.iter().position(|&s| s == c);
    for h in hot {
        assert!(
            pos(h).is_none_or(|p| p >= rest.len()),
            "hot chunk {h} went ahead of the predicted sequence: {c0:?}"
        );
    }
    let st = h.status().unwrap();
    assert!(get_u64(&st["prefetch_batches"], "sequence") >= 3, "{st}");
    run_ok(
        Command::new(FERRY)
            .args(["set-rate", "--background-rate", "unlimited", "--state-dir"])
            .arg(&h.state_dir),
    );
    h.cutover_wait();
    assert_files_equal(&source, &h.target);
}
