//! `ferry demo`: a whole migration on one machine, with a workload, checked at the end.
//!
//! It makes a sample volume unless `--source` is given: by default an ext4 image populated
//! like a VM disk (see [`crate::sample`]), or with `--sample random` random data, zero runs
//! and holes. It starts `ferry backend` and `ferry frontend` as child processes on loopback, runs a workload
//! that reads (and checks) and writes through the NBD export while the background migration
//! runs, shows progress, cuts over once every chunk is on the target, and verifies that the
//! target equals the source plus exactly the workload's writes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::nbd_client::NbdClient;
use crate::sample::make_ext4_sample;
use crate::size::{human, parse_size};

const BLOCK: u64 = 4096;
const VOLUME: &str = "demo";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Migrate this file or block device instead of a generated sample. It is only read
    /// (the demo cuts over, it never aborts).
    #[arg(long, conflicts_with = "sample")]
    source: Option<PathBuf>,
    /// What the generated sample volume holds.
    #[arg(long, value_enum, default_value_t = SampleKind::Ext4)]
    sample: SampleKind,
    /// Seed of the generated sample (same seed, same layout and content of generated files).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size of the generated sample volume.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Working directory (must not be tmpfs: the target is written with O_DIRECT).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Background migration rate (bytes/s), so the workload visibly runs during migration.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    rate: u64,
    /// Keep the working directory afterwards.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SampleKind {
    /// An ext4 file system like a VM disk: real files (some duplicated), random and zero
    /// files, deleted data in free blocks, about 35 % free.
    Ext4,
    /// Random data with runs of written zeros and holes, no file system.
    Random,
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `ferry ARGS`, waits for its readiness line, returns the rest of that line.
fn start(children: &mut Children, args: &[&str], prefix: &str, log: &Path) -> Result<String> {
    let exe = std::env::current_exe().context("finding the ferry binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(File::create(log)?)
        .spawn()
        .context("starting a ferry child process")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    children.0.push(child);
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
        anyhow!(
            "`ferry {}` did not become ready; see {}",
            args[0],
            log.display()
        )
    })
}

fn pattern(block: u64, seq: u32, out: &mut [u8]) {
    let mut rng = StdRng::seed_from_u64(block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(seq));
    rng.fill_bytes(out);
}

fn make_sample(path: &Path, size: u64) -> Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let region = 4u64 << 20;
    let mut rng = StdRng::seed_from_u64(7);
    let mut buf = vec![0u8; region as usize];
    let mut off = 0;
    while off < size {
        let n = region.min(size - off) as usize;
        match (off / region) % 8 {
            0 => {}                                   // a hole: never written
            1 => f.write_all_at(&vec![0u8; n], off)?, // written zeros
            _ => {
                rng.fill_bytes(&mut buf[..n]);
                f.write_all_at(&buf[..n], off)?;
            }
        }
        off += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

struct Workload {
    writes: HashMap<u64, u32>,
    reads: u64,
    bytes_read: u64,
    bytes_written: u64,
    read_us: Histogram<u64>,
    write_us: Histogram<u64>,
    mismatches: u64,
}

fn run_workload(sock: &Path, source: &Path, size: u64, stop: &AtomicBool) -> Result<Workload> {
    let mut c = NbdClient::connect_unix(sock, VOLUME)?;
    if c.size != size {
        bail!("export says {} bytes, source has {size}", c.size);
    }
    let src = File::open(source)?;
    let mut w = Workload {
        writes: HashMap::new(),
        reads: 0,
        bytes_read: 0,
        bytes_written: 0,
        read_us: Histogram::new(3)?,
        write_us: Histogram::new(3)?,
        mismatches: 0,
    };
    let mut rng = StdRng::seed_from_u64(42);
    let blocks = size / BLOCK;
    let mut buf = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let n = rng.gen_range(1..=16u64).min(blocks);
        let first = rng.gen_range(0..=blocks - n);
        let len = (n * BLOCK) as usize;
        if rng.gen_bool(0.7) {
            let t = Instant::now();
            c.read(first * BLOCK, &mut buf[..len])?;
            w.read_us.record(t.elapsed().as_micros() as u64).ok();
            src.read_exact_at(&mut expect[..len], first * BLOCK)?;
            for b in 0..n {
                let slice = &mut expect[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
                if let Some(&s) = w.writes.get(&(first + b)) {
                    pattern(first + b, s, slice);
                }
            }
            if buf[..len] != expect[..len] {
                w.mismatches += 1;
            }
            w.reads += 1;
            w.bytes_read += len as u64;
        } else {
            seq += 1;
            for b in 0..n {
                pattern(
                    first + b,
                    seq,
                    &mut buf[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize],
                );
            }
            let t = Instant::now();
            c.write(first * BLOCK, &buf[..len], false)?;
            w.write_us.record(t.elapsed().as_micros() as u64).ok();
            for b in 0..n {
                w.writes.insert(first + b, seq);
            }
            w.bytes_written += len as u64;
            if seq.is_multiple_of(64) {
                c.flush()?;
            }
        }
    }
    c.flush()?;
    let _ = c.disconnect();
    Ok(w)
}

fn verify(target: &Path, source: &Path, size: u64, writes: &HashMap<u64, u32>) -> Result<u64> {
    let t = File::open(target)?;
    let s = File::open(source)?;
    let piece = 1u64 << 20;
    let mut a = vec![0u8; piece as usize];
    let mut b = vec![0u8; piece as usize];
    let mut off = 0;
    while off < size {
        let n = piece.min(size - off) as usize;
        t.read_exact_at(&mut a[..n], off)?;
        s.read_exact_at(&mut b[..n], off)?;
        for blk in 0..(n as u64 / BLOCK) {
            let block = off / BLOCK + blk;
            if let Some(&seq) = writes.get(&block) {
                pattern(
                    block,
                    seq,
                    &mut b[(blk * BLOCK) as usize..((blk + 1) * BLOCK) as usize],
                );
            }
        }
        if a[..n] != b[..n] {
            let first = (0..n).find(|&i| a[i] != b[i]).unwrap_or(0);
            bail!(
                "target differs from source + writes at byte {}",
                off + first as u64
            );
        }
        off += n as u64;
    }
    Ok(writes.len() as u64)
}

fn default_dir() -> PathBuf {
    PathBuf::from(format!("/var/tmp/ferry-demo-{}", std::process::id()))
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&args, &dir);
    if !args.keep && args.dir.is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(args: &DemoArgs, dir: &Path) -> Result<ExitCode> {
    let started = Instant::now();
    let source = match &args.source {
        Some(s) => s.clone(),
        None => {
            let p = dir.join("source.img");
            let size = args.size / BLOCK * BLOCK;
            match args.sample {
                SampleKind::Ext4 => {
                    println!(
                        "making a {} ext4 sample volume at {} (seed {})",
                        human(size),
                        p.display(),
                        args.seed
                    );
                    let t = Instant::now();
                    let s = make_ext4_sample(&p, size, args.seed, &mut |m| println!("  {m}"))?;
                    println!("sample: {s} ({:.1} s)", t.elapsed().as_secs_f64());
                    for note in &s.notes {
                        println!("  note: {note}");
                    }
                }
                SampleKind::Random => {
                    println!(
                        "making a {} sample volume at {} (random data, zero runs, holes)",
                        human(size),
                        p.display()
                    );
                    make_sample(&p, size)?;
                }
            }
            p
        }
    };
    let size = fs::metadata(&source)?.len();
    let target = dir.join("target.img");
    let _ = fs::remove_file(&target);
    let state = dir.join("state");
    let _ = fs::remove_dir_all(&state);
    let sock = dir.join("nbd.sock");
    let mut children = Children(Vec::new());
    let volume_arg = format!("{VOLUME}={}", source.display());
    let addr = start(
        &mut children,
        &[
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--volume",
            &volume_arg,
        ],
        "ferry backend listening on ",
        &dir.join("backend.log"),
    )?;
    println!(
        "backend  listening on {addr}, serving {} ({})",
        source.display(),
        human(size)
    );
    let rate = args.rate.to_string();
    let nbd = format!("unix:{}", sock.display());
    let (target_s, state_s) = (target.display().to_string(), state.display().to_string());
    let spec = start(
        &mut children,
        &[
            "frontend",
            "--backend",
            &addr,
            "--volume",
            VOLUME,
            "--target",
            &target_s,
            "--state-dir",
            &state_s,
            "--nbd",
            &nbd,
            "--background-rate",
            &rate,
        ],
        "ferry frontend serving demo on ",
        &dir.join("frontend.log"),
    )?;
    println!(
        "frontend exporting NBD on {spec}, migrating into {}",
        target.display()
    );
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let wl = {
        let (sock, source, stop) = (sock.clone(), source.clone(), stop.clone());
        std::thread::spawn(move || run_workload(&sock, &source, size, &stop))
    };
    println!("workload reading (and checking) and writing through the export...");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if wl.is_finished() {
            break;
        }
        let st = crate::cli::current_status(&state)?;
        let pct =
            (st.chunks_total - st.chunks_untouched) as f64 / st.chunks_total.max(1) as f64 * 100.0;
        println!(
            "[{:5.1}s] {pct:5.1}% on target | fetched on demand {:>10} | background {:>10} | dirty chunks {}",
            t0.elapsed().as_secs_f64(),
            human(st.fetched_bytes_on_demand),
            human(st.fetched_bytes_background),
            st.chunks_dirty
        );
        if st.state == "ready" {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let w = wl
        .join()
        .map_err(|_| anyhow!("workload thread panicked"))??;
    let migrate_secs = t0.elapsed().as_secs_f64();
    let st = crate::cli::current_status(&state)?;
    let req = dataplane::frontend::admin::AdminRequest {
        cmd: "cutover".into(),
        background_rate_bytes_per_s: None,
        ..Default::default()
    };
    let reply = crate::admin_client::request(&state, &req, None)?
        .ok_or_else(|| anyhow!("frontend is gone"))?;
    if !reply.ok {
        bail!("cutover failed: {}", reply.error.unwrap_or_default());
    }
    println!("{}", reply.message.unwrap_or_default());
    if let Some(fe) = children.0.get_mut(1) {
        let _ = fe.wait();
    }
    drop(children);
    if w.mismatches > 0 {
        bail!("{} workload reads returned wrong data", w.mismatches);
    }
    let n = verify(&target, &source, size, &w.writes)?;
    println!("verified: target equals the source plus the workload's writes ({n} blocks of 4 KiB), and {} reads during migration returned the right data", w.reads);
    let moved = st.fetched_bytes_on_demand + st.fetched_bytes_background;
    println!("summary:");
    println!(
        "  volume            {} ({} chunks: {} zero/holes never sent)",
        human(size),
        st.chunks_total,
        st.chunks_zero
    );
    println!(
        "  migration         {migrate_secs:.1} s to ready, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  transferred       on demand {} | background {} | {:.0} MiB/s",
        human(st.fetched_bytes_on_demand),
        human(st.fetched_bytes_background),
        moved as f64 / (1 << 20) as f64 / migrate_secs.max(0.001)
    );
    println!(
        "  on the wire       {} for {} of chunk data ({} chunks zstd-compressed, {} deduplicated from content already here)",
        human(st.wire_bytes),
        human(moved),
        st.zstd_chunks,
        st.deduped_chunks
    );
    println!(
        "  workload          {} reads ({}), {} writes ({}); read p50 {} us p99 {} us; write p50 {} us p99 {} us",
        w.reads,
        human(w.bytes_read),
        w.write_us.len(),
        human(w.bytes_written),
        w.read_us.value_at_quantile(0.5),
        w.read_us.value_at_quantile(0.99),
        w.write_us.value_at_quantile(0.5),
        w.write_us.value_at_quantile(0.99)
    );
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}
