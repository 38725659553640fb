//! `ferry control`: the daemon. Owns the data dir (one daemon per data dir, held by an
//! flock on `DATA_DIR/control.lock`), the session store, the frontend supervisor, the
//! poller, and the API listeners: a unix socket (mode 0600) always, TCP only with a
//! bearer token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::api::{self, ApiError};
use crate::store::{Db, Store};
use crate::supervisor::Supervisor;

pub struct Daemon {
    pub db: Db,
    pub sup: Arc<Supervisor>,
    pub data_dir: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each session's frontend was last started again after dying, for the bound.
    restarts: Mutex<HashMap<String, Vec<std::time::Instant>>>,
}

/// A frontend that dies is started again on its state dir at most this many times per
/// [`RESTART_WINDOW`]; beyond that the session fails with the reason (a crash loop must
/// not hide behind restarts).
pub const RESTARTS_MAX: usize = 3;
pub const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

impl Daemon {
    pub fn new(db: Db, sup: Supervisor, data_dir: PathBuf) -> Daemon {
        Daemon {
            db,
            sup: Arc::new(sup),
            data_dir,
            locks: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the frontend of session `id` may be started again now (and counts it).
    pub fn may_restart(&self, id: &str) -> bool {
        let Ok(mut r) = self.restarts.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        let times = r.entry(id.to_string()).or_default();
        times.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if times.len() >= RESTARTS_MAX {
            return false;
        }
        times.push(now);
        true
    }

    /// Opens (creating) the store in `data_dir`; frontends are started from `exe`.
    pub fn open(data_dir: &Path, exe: PathBuf) -> Result<Daemon> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let store = Store::open(&data_dir.join("control.sqlite"))?;
        Ok(Daemon::new(
            Db::new(store),
            Supervisor::new(exe, data_dir.to_path_buf()),
            data_dir.to_path_buf(),
        ))
    }

    /// The lock serialising every change to session `id`.
    pub fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.locks.lock() {
            Ok(mut m) => m.entry(id.to_string()).or_default().clone(),
            // A panic while holding this map lock cannot leave it inconsistent (one insert).
            Err(p) => p.into_inner().entry(id.to_string()).or_default().clone(),
        }
    }
}

pub struct ControlConfig {
    pub socket: PathBuf,
    pub listen_tcp: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub poll_interval: Duration,
}

pub fn run(cfg: ControlConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(cfg))
}

/// Holds `DATA_DIR/control.lock` for the daemon's life.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("control.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another ferry control uses {} ({})",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

fn read_token(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        bail!(
            "the token in {} is shorter than 16 characters",
            path.display()
        );
    }
    Ok(t)
}

async fn serve(cfg: ControlConfig) -> Result<()> {
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let exe = std::env::current_exe().context("locating the ferry binary")?;
    let d = Arc::new(Daemon::open(&cfg.data_dir, exe)?);

    // We hold the data dir's lock, so a socket file left here is a dead daemon's.
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let unix = tokio::net::UnixListener::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", cfg.socket.display()))?;

    let tcp = match (cfg.listen_tcp, &cfg.token_file) {
        (Some(addr), Some(tf)) => {
            let token = read_token(tf)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            Some((l, token))
        }
        (Some(_), None) => bail!("--listen-tcp needs --token-file (the API has no other guard)"),
        (None, _) => None,
    };

    let mut banner = format!("ferry control listening on unix:{}", cfg.socket.display());
    if let Some((l, _)) = &tcp {
        banner.push_str(&format!(" and tcp:{}", l.local_addr()?));
    }
    println!("{banner}");
    tracing::info!(data_dir = %cfg.data_dir.display(), "{banner}");

    tokio::spawn(crate::ops::recover(d.clone()));
    tokio::spawn(crate::ops::poll(d.clone(), cfg.poll_interval));

    let app = api::router(d.clone());
    let unix_srv = axum::serve(unix, app.clone().into_make_service())
        .with_graceful_shutdown(shutdown_signal());
    match tcp {
        Some((l, token)) => {
            let guarded = app.layer(middleware::from_fn_with_state(Arc::new(token), auth));
            let tcp_srv = axum::serve(l, guarded.into_make_service())
                .with_graceful_shutdown(shutdown_signal());
            tokio::try_join!(async { unix_srv.await.context("unix listener") }, async {
                tcp_srv.await.context("tcp listener")
            })?;
        }
        None => unix_srv.await.context("unix listener")?,
    }
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("ferry control stopped; frontends keep running");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `Authorization: Bearer TOKEN`, compared in constant time.
async fn auth(AxState(token): AxState<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required on TCP (Authorization: Bearer TOKEN)",
        )
        .into_response();
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        r
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_compare() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
