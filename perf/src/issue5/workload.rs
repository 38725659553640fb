//! The replayed workload: the NBD export as a kernel file system, the way a VM or a
//! container host would use it, then a metadata walk and reading a fixed set of files.
//!
//! export → `nbdfuse` (a file) → `losetup -r` (a block device) → `mount -o ro` → `find
//! MNT -type f | wc -l` → read the files (whole, in order) → `umount` → `losetup -d` →
//! `fusermount3 -u`. Every step is undone on drop, also on error, innermost first.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::child::{run_capture, Proc};

const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Directories (relative to the file system's root) whose files the workload reads, in
/// this order, each in sorted path order, until the byte budget is reached: system files
/// a boot or an application start reads (configuration, binaries, libraries, data).
pub const WORKLOAD_DIRS: [&str; 5] = ["etc", "usr/bin", "usr/sbin", "usr/lib", "usr/share"];

/// What one workload run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Done {
    /// `find MNT -type f | wc -l`.
    pub files_found: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    /// Export attached → files read (mount, find and reads; not the detach).
    pub seconds: f64,
    pub find_seconds: f64,
}

/// FUSE mount of nbdfuse: `fusermount3 -u`, then the process is stopped.
struct Fuse {
    dir: PathBuf,
    proc_: Option<Proc>,
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.dir)
                .status();
        }
        if let Some(mut p) = self.proc_.take() {
            if p.wait_exit(Duration::from_secs(10)).is_err() {
                p.stop();
            }
        }
    }
}

struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Chooses the files: those under [`WORKLOAD_DIRS`] in order, sorted within each, until
/// `budget` bytes (the file that crosses it is included). Paths relative to `root`.
pub fn choose_files(root: &Path, budget: u64) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut total = 0;
    for d in WORKLOAD_DIRS {
        let mut files = Vec::new();
        walk(root, &root.join(d), &mut files)?;
        files.sort();
        for (rel, len) in files {
            if total >= budget {
                return Ok(out);
            }
            total += len;
            out.push((rel, len));
        }
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(()); // a directory the host did not have
    };
    for e in rd {
        let e = e?;
        let ft = e.file_type()?;
        let p = e.path();
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else if ft.is_file() {
            let rel = p
                .strip_prefix(root)
                .expect("walked under root")
                .to_path_buf();
            out.push((rel, e.metadata()?.len()));
        }
    }
    Ok(())
}

/// Attaches `uri` as a read-only ext4 mount under `dir`, runs `find`, reads `files`
/// (relative paths; `None`: choose them with [`choose_files`] and `budget`), detaches.
/// Returns what it did and the files it read.
pub fn run(
    uri: &str,
    dir: &Path,
    logs: &Path,
    tag: &str,
    files: Option<&[PathBuf]>,
    budget: u64,
) -> Result<(Done, Vec<PathBuf>)> {
    let fuse_dir = dir.join("fuse");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&fuse_dir)?;
    std::fs::create_dir_all(&mnt)?;
    let pidfile = dir.join("nbdfuse.pid");
    let _ = std::fs::remove_file(&pidfile);
    let disk = fuse_dir.join("disk");
    let t0 = Instant::now();
    let p = Proc::spawn(
        "nbdfuse",
        Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(&disk)
            .arg(uri),
        &logs.join(format!("nbdfuse-{tag}.log")),
        false,
    )?;
    let mut fuse = Fuse {
        dir: fuse_dir.clone(),
        proc_: Some(p),
    };
    while !(pidfile.exists() && disk.exists()) {
        if let Some(p) = fuse.proc_.as_mut() {
            p.check_alive()?;
        }
        if t0.elapsed() > STEP_TIMEOUT {
            bail!("nbdfuse did not come up within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dev = run_capture(
        Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&disk),
        STEP_TIMEOUT,
    )?
    .trim()
    .to_string();
    let lo = Loop(dev.clone());
    run_capture(
        Command::new("mount")
            .args(["-o", "ro,noload", "-t", "ext4"])
            .arg(&dev)
            .arg(&mnt),
        STEP_TIMEOUT,
    )
    .with_context(|| format!("mount {dev}"))?;
    let mounted = Mounted(mnt.clone());
    let tf = Instant::now();
    let out = run_capture(
        Command::new("sh")
            .arg("-c")
            .arg("find \"$1\" -type f | wc -l")
            .arg("sh")
            .arg(&mnt),
        STEP_TIMEOUT * 5,
    )?;
    let find_seconds = tf.elapsed().as_secs_f64();
    let files_found: u64 = out
        .trim()
        .parse()
        .with_context(|| format!("find | wc -l printed {out:?}"))?;
    let list: Vec<PathBuf> = match files {
        Some(f) => f.to_vec(),
        None => choose_files(&mnt, budget)?
            .into_iter()
            .map(|(p, _)| p)
            .collect(),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes_read = 0;
    for rel in &list {
        let path = mnt.join(rel);
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            bytes_read += n as u64;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    drop(mounted);
    drop(lo);
    drop(fuse);
    Ok((
        Done {
            files_found,
            files_read: list.len() as u64,
            bytes_read,
            seconds,
            find_seconds,
        },
        list,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_chosen_in_directory_then_path_order_up_to_the_budget() -> Result<()> {
        let d = tempfile::tempdir()?;
        let r = d.path();
        for (p, len) in [
            ("usr/bin/b", 10),
            ("usr/bin/a", 10),
            ("etc/z/conf", 5),
            ("etc/a", 5),
            ("usr/share/x", 100),
            ("var/lib/db", 1000),
        ] {
            std::fs::create_dir_all(r.join(p).parent().unwrap())?;
            std::fs::write(r.join(p), vec![1u8; len])?;
        }
        let names = |v: Vec<(PathBuf, u64)>| -> Vec<String> {
            v.into_iter()
                .map(|(p, _)| p.display().to_string())
                .collect()
        };
        assert_eq!(
            names(choose_files(r, 15)?),
            ["etc/a", "etc/z/conf", "usr/bin/a"]
        );
        assert_eq!(
            names(choose_files(r, 1 << 20)?),
            [
                "etc/a",
                "etc/z/conf",
                "usr/bin/a",
                "usr/bin/b",
                "usr/share/x"
            ]
        );
        assert!(choose_files(r, 0)?.is_empty());
        Ok(())
    }
}
