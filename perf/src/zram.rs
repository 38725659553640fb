//! Benchmark (a2)'s second device: a zram RAM disk made for the run, holding a copy of the
//! source, so the source read no longer competes with the target writes on the one disk.
//!
//! The device is our own: made with `/sys/class/zram-control/hot_add` (never one of the
//! `/dev/zramN` that already exist, which may be someone else's) and removed with
//! `hot_remove` when [`Zram`] drops, also on error. It must drop after every process that
//! holds it open (the kernel refuses to remove an open device; the drop retries a while).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::source::PIECE_BYTES;

const CONTROL: &str = "/sys/class/zram-control";

/// RAM left free besides the device's own: the run must not push the machine into
/// reclaiming (or the OOM killer) while it measures.
const RAM_MARGIN_BYTES: u64 = 1 << 30;

/// How long `/dev/zramN` gets to appear after `hot_add`, and `hot_remove` to succeed.
const DEVICE_WAIT: Duration = Duration::from_secs(5);
const REMOVE_WAIT: Duration = Duration::from_secs(10);

/// A zram device this run made; removed on drop.
pub struct Zram {
    pub index: u32,
    pub path: PathBuf,
    /// How it was made, for the report.
    pub how: String,
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn mem_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
}

/// The selected algorithm of `comp_algorithm` (`lzo [lz4] zstd` -> `lz4`).
fn selected_algorithm(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|a| a.strip_prefix('[').and_then(|a| a.strip_suffix(']')))
}

impl Zram {
    /// Makes a new zram device of `size_bytes` holding a copy of `source` (checked at its
    /// first and last MiB). The error says why (a2) cannot run on this machine.
    pub fn with_copy_of(source: &Path, size_bytes: u64) -> Result<Zram> {
        if !crate::system::is_root() {
            bail!("not root: making a zram device needs root");
        }
        if !Path::new(CONTROL).join("hot_add").exists() {
            bail!("no {CONTROL}/hot_add: the zram module is not loaded (modprobe zram) or too old");
        }
        if let Some(avail) = mem_available_bytes() {
            if avail < size_bytes + RAM_MARGIN_BYTES {
                bail!(
                    "{} MiB of RAM available; a zram copy of the volume needs {} MiB plus {} MiB to spare",
                    avail >> 20,
                    size_bytes >> 20,
                    RAM_MARGIN_BYTES >> 20
                );
            }
        }
        let text = std::fs::read_to_string(Path::new(CONTROL).join("hot_add"))
            .with_context(|| format!("read {CONTROL}/hot_add (making a new zram device)"))?;
        let index: u32 = text
            .trim()
            .parse()
            .with_context(|| format!("{CONTROL}/hot_add answered {:?}", text.trim()))?;
        // From here on the device is ours and the guard removes it whatever happens.
        let mut z = Zram {
            index,
            path: PathBuf::from(format!("/dev/zram{index}")),
            how: String::new(),
        };
        let sys = PathBuf::from(format!("/sys/block/zram{index}"));
        let algorithm = std::fs::read_to_string(sys.join("comp_algorithm"))
            .ok()
            .and_then(|t| selected_algorithm(&t).map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        std::fs::write(sys.join("disksize"), size_bytes.to_string())
            .with_context(|| format!("write {size_bytes} to {}/disksize", sys.display()))?;
        z.wait_for_node()?;
        z.copy_from(source, size_bytes)?;
        z.how = format!(
            "made for this run with {CONTROL}/hot_add, disksize {size_bytes} bytes, compression {algorithm} \
             (random data does not compress: it holds about {} MiB of RAM); the source copied onto it in \
             1 MiB pieces and fsynced, its first and last MiB checked against the source; removed with \
             hot_remove at the end",
            size_bytes >> 20
        );
        Ok(z)
    }

    fn wait_for_node(&self) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if let Ok(m) = std::fs::metadata(&self.path) {
                if m.file_type().is_block_device() {
                    return Ok(());
                }
                bail!("{} exists but is not a block device", self.path.display());
            }
            if t0.elapsed() > DEVICE_WAIT {
                bail!(
                    "{} did not appear within {DEVICE_WAIT:?} of hot_add",
                    self.path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Copies `source` onto the device in 1 MiB pieces, fsyncs it, and checks the first
    /// and last MiB read back from the device (not from the page cache) against the source.
    fn copy_from(&self, source: &Path, size_bytes: u64) -> Result<()> {
        let dev_name = self.path.display();
        let mut src =
            File::open(source).with_context(|| format!("open source {}", source.display()))?;
        let mut dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .with_context(|| format!("open {dev_name}"))?;
        let dev_size = dev.seek(SeekFrom::End(0))?;
        if dev_size != size_bytes {
            bail!("{dev_name} is {dev_size} bytes after setting disksize {size_bytes}");
        }
        dev.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; PIECE_BYTES];
        let mut left = size_bytes;
        while left > 0 {
            let n = left.min(PIECE_BYTES as u64) as usize;
            src.read_exact(&mut buf[..n])
                .with_context(|| format!("read source {}", source.display()))?;
            dev.write_all(&buf[..n])
                .with_context(|| format!("write {dev_name}"))?;
            left -= n as u64;
        }
        dev.sync_all()
            .with_context(|| format!("fsync {dev_name}"))?;
        // SAFETY: posix_fadvise on an fd we own; only drops clean cached pages.
        unsafe { libc::posix_fadvise(dev.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let last = size_bytes.saturating_sub(PIECE_BYTES as u64);
        let mut other = vec![0u8; PIECE_BYTES];
        for off in [0, last] {
            let n = (size_bytes - off).min(PIECE_BYTES as u64) as usize;
            src.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("read source {}", source.display()))?;
            dev.read_exact_at(&mut other[..n], off)
                .with_context(|| format!("read {dev_name}"))?;
            if buf[..n] != other[..n] {
                bail!("{dev_name} differs from the source in the MiB at byte {off} right after the copy");
            }
        }
        Ok(())
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        let t0 = Instant::now();
        loop {
            match std::fs::write(
                Path::new(CONTROL).join("hot_remove"),
                self.index.to_string(),
            ) {
                Ok(()) => {
                    crate::progress(&format!("removed {}", self.path.display()));
                    return;
                }
                // Still open (a server just stopped, or udev probing it): try again shortly.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t0.elapsed() < REMOVE_WAIT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    crate::progress(&format!(
                        "warning: cannot remove {} ({e}); remove it with `echo {} > {CONTROL}/hot_remove`",
                        self.path.display(),
                        self.index
                    ));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm() {
        assert_eq!(selected_algorithm("lzo [lzo-rle] lz4\n"), Some("lzo-rle"));
        assert_eq!(selected_algorithm("[zstd]"), Some("zstd"));
        assert_eq!(selected_algorithm("lzo lz4"), None);
    }
}
