//! What a session is: the operator's request to create one, the record the store keeps,
//! and where its files live under the daemon's data dir.
//!
//! ```text
//! DATA_DIR/sessions/ID/state/      the frontend's state dir (map, state.json, admin.sock)
//! DATA_DIR/sessions/ID/nbd.sock    the NBD export the workload uses
//! DATA_DIR/sessions/ID/frontend.log  the frontend's stdout and stderr
//! ```

use std::path::{Path, PathBuf};

use dataplane::frontend::status::Status;
use serde::{Deserialize, Serialize};

use crate::state::State;

/// `POST /v1/sessions`. Unknown fields are refused so a typo does not silently fall back
/// to a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A name for people; defaults to the volume name.
    #[serde(default)]
    pub name: Option<String>,
    /// The backend serving the source volume, HOST:PORT.
    pub backend: String,
    /// The volume's name on the backend.
    pub volume: String,
    /// Absolute path of the target file or block device.
    pub target: String,
    #[serde(default = "default_chunk")]
    pub chunk_size_bytes: u32,
    /// Background migration rate; `null` is unlimited.
    #[serde(default)]
    pub background_rate_bytes_per_s: Option<u64>,
    #[serde(default)]
    pub compress: Compress,
    #[serde(default = "yes")]
    pub dedup: bool,
    /// io_uring cores of the frontend; `null`: all.
    #[serde(default)]
    pub cores: Option<u32>,
}

fn default_chunk() -> u32 {
    64 * 1024
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compress {
    #[default]
    Auto,
    Off,
}

impl Compress {
    pub fn name(self) -> &'static str {
        match self {
            Compress::Auto => "auto",
            Compress::Off => "off",
        }
    }
}

impl CreateRequest {
    /// Checks what types cannot; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend.trim().is_empty() || !self.backend.contains(':') {
            return Err(format!(
                "backend {:?}: expected HOST:PORT of a ferry backend",
                self.backend
            ));
        }
        if self.volume.is_empty() || self.volume.len() > 255 {
            return Err("volume: expected a name of 1 to 255 bytes".into());
        }
        if !Path::new(&self.target).is_absolute() {
            return Err(format!(
                "target {:?}: expected an absolute path",
                self.target
            ));
        }
        let c = self.chunk_size_bytes;
        if !(4096..=1 << 20).contains(&c) || !c.is_power_of_two() {
            return Err(format!(
                "chunk_size_bytes {c}: expected a power of two from 4096 to 1048576"
            ));
        }
        if self.cores == Some(0) {
            return Err("cores: expected at least 1".into());
        }
        if self.name.as_ref().is_some_and(|n| n.len() > 255) {
            return Err("name: at most 255 bytes".into());
        }
        Ok(())
    }
}

/// A session as the store keeps it and the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub source: Source,
    pub target: String,
    pub chunk_size_bytes: u32,
    pub options: Options,
    pub state: State,
    /// Why the session failed (state `failed`), or why the last cutover was refused.
    pub failure_reason: Option<String>,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    /// The frontend's state dir and NBD socket (the workload connects here).
    pub state_dir: String,
    pub nbd_socket: String,
    pub nbd_uri: String,
    /// The frontend process, while one runs.
    pub frontend_pid: Option<u32>,
    /// The frontend's last status, as the poller saw it.
    pub progress: Option<Status>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    pub backend: String,
    pub volume: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub background_rate_bytes_per_s: Option<u64>,
    pub compress: Compress,
    pub dedup: bool,
    pub cores: Option<u32>,
}

pub fn session_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("sessions").join(id)
}

pub fn log_path(data_dir: &Path, id: &str) -> PathBuf {
    session_dir(data_dir, id).join("frontend.log")
}

impl Session {
    pub fn new(id: String, req: CreateRequest, data_dir: &Path, now_ms: u64) -> Session {
        let dir = session_dir(data_dir, &id);
        let nbd = dir.join("nbd.sock");
        Session {
            name: req.name.unwrap_or_else(|| req.volume.clone()),
            nbd_uri: format!("nbd+unix:///{}?socket={}", req.volume, nbd.display()),
            source: Source {
                backend: req.backend,
                volume: req.volume,
            },
            target: req.target,
            chunk_size_bytes: req.chunk_size_bytes,
            options: Options {
                background_rate_bytes_per_s: req.background_rate_bytes_per_s,
                compress: req.compress,
                dedup: req.dedup,
                cores: req.cores,
            },
            state: State::Created,
            failure_reason: None,
            created_unix_ms: now_ms,
            updated_unix_ms: now_ms,
            state_dir: dir.join("state").display().to_string(),
            nbd_socket: nbd.display().to_string(),
            frontend_pid: None,
            progress: None,
            id,
        }
    }

    pub fn state_dir(&self) -> &Path {
        Path::new(&self.state_dir)
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh session id: 16 hex digits from the clock and the process's randomness.
pub fn new_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(now_unix_ms());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> CreateRequest {
        CreateRequest {
            name: None,
            backend: "127.0.0.1:10810".into(),
            volume: "v".into(),
            target: "/tmp/t".into(),
            chunk_size_bytes: 65536,
            background_rate_bytes_per_s: None,
            compress: Compress::Auto,
            dedup: true,
            cores: None,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(req().validate().is_ok());
        let bad = [
            CreateRequest {
                chunk_size_bytes: 3000,
                ..req()
            },
            CreateRequest {
                target: "rel/path".into(),
                ..req()
            },
            CreateRequest {
                backend: "nohost".into(),
                ..req()
            },
            CreateRequest {
                volume: String::new(),
                ..req()
            },
            CreateRequest {
                cores: Some(0),
                ..req()
            },
        ];
        for (r, field) in
            bad.iter()
                .zip(["chunk_size_bytes", "target", "backend", "volume", "cores"])
        {
            let e = r.validate().expect_err(field);
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn ids_differ() {
        assert_ne!(new_id(), new_id());
    }
}
