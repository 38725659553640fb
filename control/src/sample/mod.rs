//! A realistic sample volume: an ext4 image that looks like a VM disk, for the demo and tests.
//!
//! [`make_ext4_sample`] stages a directory tree and has `mkfs.ext4 -d` build the image from
//! it, then edits the image with `debugfs`; nothing is mounted. The image holds:
//! * copies of real host directories (`/etc`, `/usr/share/doc`, `/usr/bin`, ...) at their own
//!   paths; symlinks stay symlinks, unreadable files and `/etc` secrets are skipped;
//! * an application tree copied twice, `/srv/app-v1` and `/srv/app-v2` (duplicate data);
//! * large random files (`/var/lib/db`, seeded) and large all-zero files (`/var/lib/vm`)
//!   whose blocks are allocated and hold zeros, not holes;
//! * stale data: files under `/var/cache/old` deleted with `debugfs rm`, which frees their
//!   blocks without clearing them. Every such block starts with [`STALE_MARKER`].
//!
//! Rules that hold for every image it returns:
//! * the file is a regular file of exactly `size_bytes`;
//! * free space (per `dumpe2fs -h`) is between 30 % and 40 % of `size_bytes`, else it fails;
//! * the staging directory (next to the image) is removed, also on error, and so is the
//!   image on error;
//! * paths, sizes, UUID and generated content follow from the seed; which real files are
//!   copied depends on the host.
//!
//! Why staging + `mkfs -d` + `debugfs`: it needs neither root-only mounts nor loop devices, and
//! `mkfs -d` writes files nearly contiguously, the way a young file system looks. It makes
//! blocks of zeros sparse, so zero files are staged with a placeholder and zeroed in the image
//! afterwards (ext4 does not checksum file data, so this is a valid file system).

mod e2fs;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::size::human;
use tree::{CopyLimits, Staging};

/// The first bytes of every block of deleted data the sample leaves in free space.
pub const STALE_MARKER: &str = "FERRY-STALE-DATA";

/// Smallest image: below this the journal and metadata leave too little room for the mix.
pub const SIZE_MIN_BYTES: u64 = 64 << 20;

const FREE_TARGET_PERCENT: u64 = 35;
const FREE_MIN: f64 = 0.30;
const FREE_MAX: f64 = 0.40;

// Shares of the space the files will use after deletion, in percent. Real files: host copies
// plus two copies of the application tree. The rest is random and zero files; a host with
// too few real files gets more random data instead.
const SYSTEM_PERCENT: u64 = 36;
const APP_PERCENT: u64 = 12;
const ZERO_PERCENT: u64 = 18;
const RANDOM_AND_ZERO_PERCENT: u64 = 100 - SYSTEM_PERCENT - 2 * APP_PERCENT;
/// Deleted (stale) data, in percent of the image size; it is free space in the end.
const STALE_PERCENT: u64 = 7;

/// Host directories copied to the same paths, in this order, each with an equal share.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc",
    "/usr/share/zoneinfo",
    "/usr/share/doc",
    "/usr/bin",
    "/usr/sbin",
    "/usr/share/locale",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/include",
];
/// Host directories that make the application tree under `/srv/app-v1` (and its copy).
const APP_ROOTS: &[&str] = &[
    "/usr/lib/python3",
    "/usr/share/perl",
    "/usr/lib/gcc",
    "/usr/libexec",
    "/usr/share",
    "/usr/lib",
];

const APP_V1: &str = "srv/app-v1";
const APP_V2: &str = "srv/app-v2";

/// What a generated file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratedKind {
    /// Seeded random bytes (incompressible, unique).
    Random,
    /// Allocated blocks holding zeros.
    Zero,
    /// Deleted: its blocks are free but still hold its data.
    Deleted,
}

/// One generated (not copied) file, with its path inside the image.
#[derive(Debug, Clone)]
pub struct GeneratedFile {
    pub kind: GeneratedKind,
    pub path: String,
    pub len_bytes: u64,
}

/// What [`make_ext4_sample`] put into the image.
#[derive(Debug, Clone)]
pub struct SampleSummary {
    pub size_bytes: u64,
    pub fs_uuid: String,
    pub block_size_bytes: u64,
    /// Regular files and symlinks present in the image (deleted ones not counted).
    pub files_written: u64,
    /// Bytes of copied host files, both application copies included.
    pub real_file_bytes: u64,
    /// Of `real_file_bytes`, the bytes that repeat other files in the image (`/srv/app-v2`).
    pub duplicated_bytes: u64,
    pub random_bytes: u64,
    pub zero_bytes: u64,
    /// Bytes of deleted files whose data remains in free blocks.
    pub deleted_bytes: u64,
    /// Free blocks × block size, per `dumpe2fs -h`.
    pub free_bytes: u64,
    /// `free_bytes / size_bytes`.
    pub free_fraction: f64,
    /// The random, zero and deleted files.
    pub generated: Vec<GeneratedFile>,
    /// Anything that departs from the usual mix (e.g. a host short of real files).
    pub notes: Vec<String>,
}

impl fmt::Display for SampleSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ext4, {}, {:.0}% free, {} files: {} real files ({} duplicated), {} random, {} zero, {} deleted data in free blocks",
            human(self.size_bytes),
            self.free_fraction * 100.0,
            self.files_written,
            human(self.real_file_bytes),
            human(self.duplicated_bytes),
            human(self.random_bytes),
            human(self.zero_bytes),
            human(self.deleted_bytes)
        )
    }
}

/// Removes the staging directory however the generator ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Makes an ext4 image of exactly `size_bytes` at `path`, populated like a VM disk (see the
/// module docs). `progress` gets a line per step. Needs e2fsprogs >= 1.43 and, next to
/// `path`, room for a staging copy of about 70 % of `size_bytes`.
pub fn make_ext4_sample(
    path: &Path,
    size_bytes: u64,
    seed: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<SampleSummary> {
    if size_bytes < SIZE_MIN_BYTES {
        bail!(
            "an ext4 sample needs at least {}, asked for {}",
            human(SIZE_MIN_BYTES),
            human(size_bytes)
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(".staging");
    let staging = path.with_file_name(staging_name);
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("removing a leftover {}", staging.display()))?;
    }
    let _cleanup = RemoveOnDrop(staging.clone());
    match build(path, &staging, size_bytes, seed, progress) {
        Ok(summary) => {
            progress("removing the staging directory");
            Ok(summary)
        }
        Err(e) => {
            // A half-built image must not be mistaken for a sample.
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// A seed for one purpose (`kind`) and one file (`index`), so that adding a file of one kind
/// does not change the content of the others.
fn sub_seed(seed: u64, kind: u64, index: u64) -> u64 {
    seed ^ kind.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)
}

const SEED_UUID: u64 = 1;
const SEED_HASH: u64 = 2;
const SEED_LAYOUT: u64 = 3;
const SEED_RANDOM: u64 = 4;

/// A version-4 style UUID drawn from the seed.
fn uuid_from_seed(seed: u64, kind: u64) -> String {
    let mut b = [0u8; 16];
    StdRng::seed_from_u64(sub_seed(seed, kind, 0)).fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn random_fill(seed: u64, index: u64) -> impl FnMut(u64, &mut [u8]) {
    let mut rng = StdRng::seed_from_u64(sub_seed(seed, SEED_RANDOM, index));
    move |_, buf| rng.fill_bytes(buf)
}

/// Stale file content: every block starts with the marker and names its file and block, so
/// a search of the image finds it and tells where it came from.
fn stale_fill(seed: u64, index: u64, block_bytes: u64) -> impl FnMut(u64, &mut [u8]) {
    move |off, buf| {
        for (i, block) in buf.chunks_mut(block_bytes as usize).enumerate() {
            let n = (off / block_bytes) + i as u64;
            let line = format!("{STALE_MARKER} seed={seed} file={index} block={n}\n");
            for (dst, src) in block.iter_mut().zip(line.bytes().cycle()) {
                *dst = src;
            }
        }
    }
}

/// Splits `total` into `parts` random, roughly even lengths (not block multiples).
fn split(rng: &mut StdRng, total: u64, parts: u64) -> Vec<u64> {
    let weights: Vec<u64> = (0..parts).map(|_| rng.gen_range(60..=140)).collect();
    let sum: u64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| (total / sum * w).saturating_sub(rng.gen_range(0..4096)))
        .filter(|&len| len > 0)
        .collect()
}

fn fraction(bytes: u64, of: u64) -> f64 {
    bytes as f64 / of as f64
}

fn build(
    image: &Path,
    staging_root: &Path,
    size: u64,
    seed: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<SampleSummary> {
    let file = File::create(image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {}", image.display()))?;
    drop(file);
    let uuid = uuid_from_seed(seed, SEED_UUID);
    let hash_seed = uuid_from_seed(seed, SEED_HASH);

    // An empty file system first: its free space is what the files can have, metadata and
    // journal already taken out, without modelling mke2fs's layout rules here.
    e2fs::mkfs(image, &uuid, &hash_seed, None)?;
    let empty = e2fs::stats(image)?;
    let bs = empty.block_size_bytes;
    let capacity = empty.free_blocks * bs;
    let free_target = size / 100 * FREE_TARGET_PERCENT;
    if capacity < free_target + size / 4 {
        bail!(
            "{}: only {} of {} is usable for files",
            image.display(),
            human(capacity),
            human(size)
        );
    }
    let used_target = capacity - free_target;
    let inodes_max = empty.free_inodes / 10 * 8;
    let mut notes = Vec::new();
    let mut st = Staging::create(staging_root, bs)?;
    let all_roots: Vec<&str> = SYSTEM_ROOTS.iter().chain(APP_ROOTS).copied().collect();

    progress(&format!(
        "copying host files ({} for the system directories)",
        human(used_target / 100 * SYSTEM_PERCENT)
    ));
    let mut left = used_target / 100 * SYSTEM_PERCENT;
    copy_roots(
        &mut st,
        SYSTEM_ROOTS,
        Path::new(""),
        &mut left,
        inodes_max,
        &all_roots,
    )?;
    let system_bytes = st.file_bytes;

    progress(&format!(
        "copying an application tree twice ({} each) to /{APP_V1} and /{APP_V2}",
        human(used_target / 100 * APP_PERCENT)
    ));
    let mut app_left = used_target / 100 * APP_PERCENT;
    copy_roots(
        &mut st,
        APP_ROOTS,
        Path::new(APP_V1),
        &mut app_left,
        inodes_max,
        &all_roots,
    )?;
    let duplicated = st.clone_tree(Path::new(APP_V1), Path::new(APP_V2))?;
    let real_bytes = st.file_bytes;
    let real_files = st.files;
    let app_bytes = real_bytes - system_bytes - duplicated;
    st.write_text(&format!("{APP_V1}/VERSION"), "1.0.0\n")?;
    st.write_text(&format!("{APP_V2}/VERSION"), "2.0.0\n")?;
    if app_bytes == 0 {
        notes.push("no host files for the application tree: nothing is duplicated".into());
    }

    // Random and zero files take what is left, so the directories and rounding the real
    // files cost are already paid for; a shortfall of real files becomes random data.
    let remaining = used_target.saturating_sub(st.alloc_bytes);
    let planned = used_target / 100 * RANDOM_AND_ZERO_PERCENT;
    let zero_total =
        (remaining / RANDOM_AND_ZERO_PERCENT * ZERO_PERCENT).min(used_target / 100 * ZERO_PERCENT);
    let random_total = remaining - zero_total;
    if remaining > planned + planned / 10 {
        notes.push(format!(
            "the host directories sampled gave only {} of real files; {} more random data instead",
            human(real_bytes),
            human(remaining - planned)
        ));
    }

    let mut layout = StdRng::seed_from_u64(sub_seed(seed, SEED_LAYOUT, 0));
    let mut generated = Vec::new();
    progress(&format!("writing {} of random files", human(random_total)));
    let parts = layout
        .gen_range(2..=4u64)
        .min(random_total / (4 << 20))
        .max(1);
    for (i, len) in split(&mut layout, random_total, parts)
        .into_iter()
        .enumerate()
    {
        let path = format!("/var/lib/db/data-{i}.bin");
        st.write_file(&path, len, &mut random_fill(seed, i as u64))?;
        generated.push(GeneratedFile {
            kind: GeneratedKind::Random,
            path,
            len_bytes: len,
        });
    }
    progress(&format!("writing {} of zero files", human(zero_total)));
    let parts = layout.gen_range(1..=2u64);
    for (i, len) in split(&mut layout, zero_total, parts)
        .into_iter()
        .enumerate()
    {
        let path = format!("/var/lib/vm/prealloc-{i}.img");
        // mkfs -d would leave zero blocks unallocated; this placeholder is zeroed in the image.
        st.write_file(&path, len, &mut |_, buf| buf.fill(0xA5))?;
        generated.push(GeneratedFile {
            kind: GeneratedKind::Zero,
            path,
            len_bytes: len,
        });
    }
    let stale_total = size / 100 * STALE_PERCENT;
    progress(&format!(
        "writing {} of files to delete",
        human(stale_total)
    ));
    let parts = layout.gen_range(3..=6u64);
    for (i, len) in split(&mut layout, stale_total, parts)
        .into_iter()
        .enumerate()
    {
        let path = format!("/var/cache/old/stale-{i}.log");
        st.write_file(&path, len, &mut stale_fill(seed, i as u64, bs))?;
        generated.push(GeneratedFile {
            kind: GeneratedKind::Deleted,
            path,
            len_bytes: len,
        });
    }

    progress(&format!(
        "mkfs.ext4 -d: building the image from {} staged",
        human(st.alloc_bytes)
    ));
    e2fs::mkfs(image, &uuid, &hash_seed, Some(staging_root))?;
    progress(&format!(
        "zeroing the zero files' blocks ({})",
        human(zero_total)
    ));
    zero_files_in_image(image, bs, &generated)?;

    // Aim the free space before deleting, so nothing written here lands in stale blocks.
    let stats = e2fs::stats(image)?;
    let stale_blocks: u64 = kind_iter(&generated, GeneratedKind::Deleted)
        .map(|g| g.len_bytes.div_ceil(bs))
        .sum();
    let free_after = (stats.free_blocks + stale_blocks) * bs;
    correct_free_space(image, &mut st, seed, free_after, &mut generated, &mut notes)?;

    progress("deleting the stale files with debugfs (their blocks keep the data)");
    let rm: Vec<String> = kind_iter(&generated, GeneratedKind::Deleted)
        .map(|g| format!("rm {}", g.path))
        .collect();
    e2fs::write_script(image, &staging_root.join("rm.debugfs"), &rm)?;

    progress("checking free space");
    let stats = e2fs::stats(image)?;
    let free_bytes = stats.free_blocks * stats.block_size_bytes;
    let free_fraction = fraction(free_bytes, size);
    if !(FREE_MIN..=FREE_MAX).contains(&free_fraction) {
        bail!(
            "{}: {:.1}% free, outside {:.0}-{:.0}% (a bug in the space estimate)",
            image.display(),
            free_fraction * 100.0,
            FREE_MIN * 100.0,
            FREE_MAX * 100.0
        );
    }
    let len = fs::metadata(image)?.len();
    if len != size {
        bail!("{} is {len} bytes, expected {size}", image.display());
    }
    let total = |kind| kind_iter(&generated, kind).map(|g| g.len_bytes).sum();
    Ok(SampleSummary {
        size_bytes: size,
        fs_uuid: stats.uuid,
        block_size_bytes: stats.block_size_bytes,
        files_written: real_files
            + 2
            + kind_iter(&generated, GeneratedKind::Random).count() as u64
            + kind_iter(&generated, GeneratedKind::Zero).count() as u64,
        real_file_bytes: real_bytes,
        duplicated_bytes: duplicated,
        random_bytes: total(GeneratedKind::Random),
        zero_bytes: total(GeneratedKind::Zero),
        deleted_bytes: total(GeneratedKind::Deleted),
        free_bytes,
        free_fraction,
        generated,
        notes,
    })
}

fn kind_iter(files: &[GeneratedFile], kind: GeneratedKind) -> impl Iterator<Item = &GeneratedFile> {
    files.iter().filter(move |g| g.kind == kind)
}

/// Copies `roots` in order into `dest_rel`, each root getting an equal share of what is left.
fn copy_roots(
    st: &mut Staging,
    roots: &[&str],
    dest_rel: &Path,
    left: &mut u64,
    inodes_max: u64,
    skip: &[&str],
) -> Result<()> {
    for (i, root) in roots.iter().enumerate() {
        let share = *left / (roots.len() - i) as u64;
        let limits = CopyLimits {
            budget_bytes: share,
            file_max_bytes: (share / 4).max(1 << 20),
            inodes_max,
            skip,
        };
        let used = st.copy_host_tree(Path::new(root), dest_rel, &limits)?;
        *left = left.saturating_sub(used);
    }
    Ok(())
}

/// Overwrites the data blocks of the zero files with zeros, in the image.
fn zero_files_in_image(image: &Path, bs: u64, generated: &[GeneratedFile]) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for g in kind_iter(generated, GeneratedKind::Zero) {
        let extents = e2fs::extents(image, &g.path)?;
        let blocks: u64 = extents.iter().map(|e| e.blocks).sum();
        if blocks != g.len_bytes.div_ceil(bs) {
            bail!(
                "{} in {} has {blocks} blocks, expected {}",
                g.path,
                image.display(),
                g.len_bytes.div_ceil(bs)
            );
        }
        for e in extents {
            let (mut off, end) = (e.first_block * bs, (e.first_block + e.blocks) * bs);
            while off < end {
                let n = (zeros.len() as u64).min(end - off) as usize;
                f.write_all_at(&zeros[..n], off)
                    .with_context(|| format!("zeroing {} in {}", g.path, image.display()))?;
                off += n as u64;
            }
        }
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", image.display()))?;
    Ok(())
}

/// Brings the free space expected after deletion (`free_after`) to the target when the
/// estimate missed the 30-40 % band: adds a random file with debugfs, or deletes random
/// files (which then count as deleted data too).
fn correct_free_space(
    image: &Path,
    st: &mut Staging,
    seed: u64,
    free_after: u64,
    generated: &mut Vec<GeneratedFile>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let size = fs::metadata(image)?.len();
    let target = size / 100 * FREE_TARGET_PERCENT;
    let f = fraction(free_after, size);
    if f > FREE_MAX {
        let len = free_after - target;
        st.write_file("extra.bin", len, &mut random_fill(seed, u64::MAX))?;
        let script = [
            "cd /var/lib/db".to_string(),
            format!("write \"{}\" extra.bin", st.path("extra.bin").display()),
        ];
        e2fs::write_script(image, &st.path("extra.debugfs"), &script)?;
        generated.push(GeneratedFile {
            kind: GeneratedKind::Random,
            path: "/var/lib/db/extra.bin".into(),
            len_bytes: len,
        });
        notes.push(format!(
            "space estimate left {:.0}% free; added {} of random data",
            f * 100.0,
            human(len)
        ));
    } else if f < FREE_MIN {
        let mut need = target - free_after;
        let mut rm = Vec::new();
        for g in generated
            .iter_mut()
            .filter(|g| g.kind == GeneratedKind::Random)
        {
            if need == 0 {
                break;
            }
            g.kind = GeneratedKind::Deleted;
            need = need.saturating_sub(g.len_bytes);
            rm.push(format!("rm {}", g.path));
        }
        if need > 0 {
            bail!(
                "{}: the files leave only {:.0}% free and there is not enough random data to delete",
                image.display(),
                f * 100.0
            );
        }
        notes.push(format!(
            "space estimate left {:.0}% free; deleted {} random files",
            f * 100.0,
            rm.len()
        ));
        e2fs::write_script(image, &st.path("fix.debugfs"), &rm)?;
    }
    Ok(())
}
