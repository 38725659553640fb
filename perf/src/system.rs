//! The machine the benchmark runs on: work directory checks, the page cache, and the
//! facts a result needs to be read later (kernel, CPU, tool versions).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::child::run_capture;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Longest unix socket path we create (`sun_path` holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 100;

fn statfs(p: &Path) -> Result<libc::statfs> {
    let c = CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut s) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("statfs {}", p.display()));
        }
        Ok(s)
    }
}

/// Creates the work directory and refuses what would make the numbers wrong or the run
/// fail late: tmpfs/ramfs (no O_DIRECT, and the "disk" would be RAM), too little space,
/// or a path too long for the unix sockets placed in it.
pub fn prepare_work_dir(dir: &Path, bytes_needed: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create work directory {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let s = statfs(&dir)?;
    let fs_type = s.f_type as i64;
    if fs_type == TMPFS_MAGIC || fs_type == RAMFS_MAGIC {
        bail!(
            "work directory {} is on tmpfs/ramfs: O_DIRECT fails there and the numbers would measure RAM; \
             pass --dir on a disk-backed file system (ext4, xfs, ...)",
            dir.display()
        );
    }
    let free = s.f_bavail as u64 * s.f_bsize as u64;
    if free < bytes_needed {
        bail!(
            "work directory {} has {} MiB free; this run needs about {} MiB (the source, the target and \
             fio's scratch file); free space or pass a smaller --size",
            dir.display(),
            free >> 20,
            bytes_needed >> 20
        );
    }
    if dir.join("ferry-nbd.sock").as_os_str().len() > SOCKET_PATH_MAX {
        bail!(
            "work directory path {} is too long for a unix socket in it; pass a shorter --dir",
            dir.display()
        );
    }
    Ok(dir)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`, so the next read of the source comes from
/// the disk. Returns false (and the report says so) when not allowed.
pub fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Finds a tool on PATH (and the sbin directories, for a root shell without them).
pub fn require_tool(name: &str, package: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is not installed: apt-get install {package} (or run ./scripts/test.sh as root)"))
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_mib: u64,
    pub fio_version: String,
    pub qemu_nbd_version: String,
    pub work_dir: String,
    pub work_dir_fs: String,
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The first line of `TOOL --version`, or why there is none.
pub fn version(tool: &str) -> String {
    run_capture(Command::new(tool).arg("--version"), Duration::from_secs(10))
        .map(|s| first_line(&s))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn fs_type_name(dir: &Path) -> String {
    // The mount whose mount point is the longest prefix of `dir`.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} ({dev} on {mnt})")))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    pub fn describe(work_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib >> 10);
        Machine {
            date_utc: run_capture(
                Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
                Duration::from_secs(5),
            )
            .map(|s| first_line(&s))
            .unwrap_or_else(|_| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| first_line(&s))
                .unwrap_or_default(),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_mib,
            fio_version: version("fio"),
            qemu_nbd_version: version("qemu-nbd"),
            work_dir: work_dir.display().to_string(),
            work_dir_fs: fs_type_name(work_dir),
        }
    }
}
