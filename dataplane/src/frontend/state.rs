//! The frontend's state directory.
//!
//! ```text
//! DIR/state.json   what is migrated where, and the phase (written atomically: tmp + fsync + rename)
//! DIR/map.bin      the volume map (see `map::file`)
//! DIR/admin.sock   the admin socket while the frontend runs
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Migrating,
    Completed,
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub format: u32,
    pub volume: String,
    pub volume_size_bytes: u64,
    pub chunk_size_bytes: u32,
    pub target: PathBuf,
    /// The target was created by this session, so chunks never written there read as zeros.
    pub target_fresh: bool,
    pub phase: Phase,
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn map_path(dir: &Path) -> PathBuf {
    dir.join("map.bin")
}

pub fn admin_path(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

pub fn load(dir: &Path) -> io::Result<Option<SessionState>> {
    let p = state_path(dir);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let s: SessionState = serde_json::from_str(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())))?;
    if s.format != STATE_FORMAT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: state format {} is not supported (this build reads {STATE_FORMAT})",
                p.display(),
                s.format
            ),
        ));
    }
    Ok(Some(s))
}

pub fn store(dir: &Path, s: &SessionState) -> io::Result<()> {
    let p = state_path(dir);
    let tmp = p.with_extension("json.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        let text = serde_json::to_string_pretty(s).map_err(io::Error::other)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &p)?;
    crate::map::file::sync_dir(&p)
}
