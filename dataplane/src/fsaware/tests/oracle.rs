//! Real images and the oracle they are judged by: `mkfs.ext*` makes them in /var/tmp (sparse
//! files), `dumpe2fs` says which blocks are free.

use rand::{Rng, SeedableRng};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds a tool on PATH or in the sbin directories (cargo test may not have them on PATH).
pub(super) fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn need(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| {
        panic!("missing test tool {name}: install e2fsprogs (run `sudo ./scripts/test.sh`)")
    })
}

/// Runs `cmd`, panics with its output on failure, returns stdout.
pub(super) fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch image in its own directory under /var/tmp, removed on drop.
pub(super) struct Image {
    pub path: PathBuf,
    /// Removes the image on drop.
    _dir: tempfile::TempDir,
}

pub(super) fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ferry-fsaware-{name}-"))
        .tempdir_in("/var/tmp")
        .expect("scratch directory in /var/tmp")
}

/// A sparse file of `size_bytes` (zeros).
pub(super) fn sparse_file(dir: &Path, name: &str, size_bytes: u64) -> PathBuf {
    let path = dir.join(name);
    File::create(&path)
        .and_then(|f| f.set_len(size_bytes))
        .expect("create sparse image");
    path
}

/// Files to put into an image with `mkfs -d`: one of several MiB (`/f`, to delete later), a
/// nested directory, small and inline-sized files.
fn populate(dir: &Path, seed: u64) -> PathBuf {
    let root = dir.join("content");
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = |n: usize| -> Vec<u8> {
        let mut v = vec![0u8; n];
        r.fill(&mut v[..]);
        v
    };
    fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    for (name, len) in [
        ("f", 5_000_000),
        ("keep", 1_300_000),
        ("sub/a", 70_000),
        ("sub/deeper/b", 2_500_000),
        ("tiny", 40),
        ("sub/empty", 0),
    ] {
        fs::write(root.join(name), bytes(len)).expect("write content");
    }
    root
}

/// Makes an image: a sparse file of `size_mib`, then `mkfs` with `args` (and `-d` content when
/// `populate`). `fs_size` limits the file system to fewer bytes than the file.
pub(super) fn make(
    name: &str,
    size_mib: u64,
    mkfs: &str,
    args: &[&str],
    populate_it: bool,
    fs_size: Option<&str>,
) -> Image {
    let dir = scratch(name);
    let path = sparse_file(dir.path(), "fs.img", size_mib << 20);
    let mut cmd = Command::new(need(mkfs));
    cmd.args(["-F", "-q"]).args(args);
    if populate_it {
        cmd.arg("-d").arg(populate(dir.path(), size_mib));
    }
    cmd.arg(&path);
    if let Some(s) = fs_size {
        cmd.arg(s);
    }
    run(&mut cmd);
    Image { path, _dir: dir }
}

/// Deletes `file` inside the image with `debugfs -w`: frees its blocks in the bitmaps.
pub(super) fn debugfs_rm(image: &Path, file: &str) {
    run(Command::new(need("debugfs"))
        .arg("-w")
        .arg("-R")
        .arg(format!("rm {file}"))
        .arg(image));
}

/// What `dumpe2fs` says about an image.
#[derive(Debug)]
pub(super) struct Oracle {
    pub uuid: String,
    pub block_size: u64,
    pub blocks_count: u64,
    pub free_blocks_superblock: u64,
    /// Free byte ranges from the per-group "Free blocks:" lines, merged.
    pub free: Vec<(u64, u64)>,
    pub groups: usize,
    pub uninit_groups: usize,
}

fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim_start_matches(':').trim())
}

fn num(text: &str, key: &str) -> u64 {
    header(text, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dumpe2fs: no numeric '{key}'"))
}

pub(super) fn dumpe2fs(image: &Path) -> Oracle {
    let text = run(Command::new(need("dumpe2fs")).arg(image));
    let block_size = num(&text, "Block size");
    // With bigalloc a range "a-b" runs from the cluster of a to the end of b's cluster.
    let cluster_blocks = header(&text, "Cluster size")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(1, |c| c / block_size);
    let blocks_count = num(&text, "Block count");
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for line in text.lines() {
        // Group lines are indented; the header's "Free blocks:" (a count) is not.
        let Some(list) = line.strip_prefix("  Free blocks:") else {
            continue;
        };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let a: u64 = a.parse().expect("free block number");
            let b: u64 = b.parse().expect("free block number");
            let end = ((b / cluster_blocks + 1) * cluster_blocks).min(blocks_count);
            match blocks.last_mut() {
                Some((_, e)) if *e == a => *e = end,
                _ => blocks.push((a, end)),
            }
        }
    }
    Oracle {
        uuid: header(&text, "Filesystem UUID")
            .expect("dumpe2fs: UUID")
            .to_string(),
        block_size,
        blocks_count,
        free_blocks_superblock: num(&text, "Free blocks"),
        free: blocks
            .into_iter()
            .map(|(a, e)| (a * block_size, (e - a) * block_size))
            .collect(),
        groups: text
            .lines()
            .filter(|l| l.starts_with("Group ") && l.contains("(Blocks "))
            .count(),
        uninit_groups: text.lines().filter(|l| l.contains("BLOCK_UNINIT")).count(),
    }
}

/// `uuid` as `dumpe2fs` prints it.
pub(super) fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// A loop mount of an image, unmounted on drop. `None` (with a note) when not root: mounting
/// needs root and a loop device.
pub(super) struct Mounted {
    pub dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    pub(super) fn new(image: &Path, dir: &Path) -> Option<Mounted> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("fsaware: not root, the loop-mount case is skipped");
            return None;
        }
        fs::create_dir_all(dir).expect("mount point");
        run(Command::new(need("mount"))
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir));
        Some(Mounted {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    pub(super) fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            run(Command::new(need("umount")).arg(&self.dir));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}
