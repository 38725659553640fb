//! The backend: owns source volumes and answers the frontend's fetches.
//!
//! One listener on core 0; each accepted connection is handed to a core round-robin and served
//! there entirely (reads of the source with O_DIRECT through that core's ring). Within a
//! connection many fetch requests are in flight at once (bounded), replies carry the request id
//! and go out as soon as each chunk is read. Holes (SEEK_DATA/SEEK_HOLE) and all-zero chunks
//! are answered with a `ChunkZero` frame and no data. The source is never written except by
//! write-back frames (abort), which are made durable by a `Sync` frame before it is acked.

mod blocks;
mod conn;
mod encode;
pub mod metrics;
mod sendq;
pub mod volume;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::runtime::{self, CoreSet, Listener, RuntimeConfig, Stream};
use volume::{SourceVolume, VolumeError};

pub struct BackendConfig {
    pub listen: SocketAddr,
    pub volumes: Vec<(String, PathBuf)>,
    pub cores: usize,
    /// Skip blocks the source's ext4 file system marks free (see `SourceVolume::skip_free_blocks`).
    pub fs_aware: bool,
    /// Where to serve Prometheus metrics (bound by the caller, who printed its address).
    pub metrics: Option<Arc<std::net::TcpListener>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("duplicate volume name {0}")]
    DuplicateName(String),
    #[error("no volume given: pass --volume NAME=PATH")]
    NoVolume,
}

/// Runs the backend until the process is killed. `ready` is called once with the listening
/// address.
pub fn run(
    cfg: BackendConfig,
    ready: impl FnOnce(String) + Send + 'static,
) -> Result<(), BackendError> {
    runtime::probe()?;
    if cfg.volumes.is_empty() {
        return Err(BackendError::NoVolume);
    }
    let mut volumes = Vec::new();
    for (name, path) in &cfg.volumes {
        if volumes.iter().any(|v: &SourceVolume| &v.name == name) {
            return Err(BackendError::DuplicateName(name.clone()));
        }
        let mut v = SourceVolume::open(name, path)?;
        if cfg.fs_aware {
            let skipped = v.skip_free_blocks()?;
            tracing::info!(volume = %v.name, skipped_bytes = skipped, "--fs-aware: free ext4 blocks will not be read or sent");
        }
        tracing::info!(volume = %v.name, path = %v.path.display(), size = v.size_bytes,
            extents = v.extents.len(), writable = v.writable, "serving volume");
        volumes.push(v);
    }
    let volumes = Arc::new(volumes);
    let counters = Arc::new(metrics::BackendMetrics::default());
    if let Some(l) = &cfg.metrics {
        let c = counters.clone();
        let names: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
        crate::metrics::http::serve_on(l.clone(), "ferry-metrics", move || c.render(&names))
            .map_err(|source| BackendError::Listen {
                addr: l.local_addr().unwrap_or(cfg.listen),
                source,
            })?;
    }
    // Bind before the cores start so a bad address fails the command at once.
    let std_listener =
        std::net::TcpListener::bind(cfg.listen).map_err(|source| BackendError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = std_listener
        .local_addr()
        .map_err(|source| BackendError::Listen {
            addr: cfg.listen,
            source,
        })?;
    drop(std_listener);
    let listen = addr;
    // 1 MiB buffers (one coalesced run of chunks each); 16 per core keep 16 reads in flight
    // per core, more than the disk needs, and bound memory.
    let rt = RuntimeConfig {
        cores: cfg.cores.max(1),
        buf_size: 1 << 20,
        bufs_per_core: 16,
        ..RuntimeConfig::default()
    };
    let ready = std::sync::Mutex::new(Some(ready));
    let set = CoreSet::start(rt, move |core| {
        let volumes = volumes.clone();
        let counters = counters.clone();
        let ready = if core == 0 {
            ready.lock().ok().and_then(|mut r| r.take())
        } else {
            None
        };
        async move {
            if core != 0 {
                return;
            }
            let listener = match Listener::bind_tcp(listen) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, %listen, "cannot listen");
                    runtime::core_handle().shutdown();
                    return;
                }
            };
            if let Some(ready) = ready {
                ready(listener.local_addr());
            }
            crate::accept::round_robin(
                listener,
                move |stream| {
                    reflect_tos(&stream);
                    conn::serve(stream, volumes.clone(), counters.clone())
                },
                || false,
            )
            .await;
        }
    })?;
    set.join()?;
    Ok(())
}

/// The two ECN bits of the TOS byte: TCP manages them itself, they are no mark.
const ECN_MASK: u8 = 0b11;

/// Marks our replies like the client marked its requests. The frontend puts DSCP CS1 on
/// its background connection, but the heavy direction is ours (chunk data): unmarked, it
/// would compete with on-demand replies in a network that honours DSCP. The mark comes
/// from the client's handshake, so the wire protocol does not change. Best effort: a
/// failure only costs the QoS, never the connection.
fn reflect_tos(stream: &Stream) {
    match stream.received_tos() {
        Ok(Some(tos)) if tos & !ECN_MASK != 0 => {
            let tos = tos & !ECN_MASK;
            match stream.set_tos(tos) {
                Ok(()) => tracing::debug!(
                    tos = format_args!("{tos:#04x}"),
                    dscp = tos >> 2,
                    "replies marked like the client's connection"
                ),
                Err(e) => tracing::debug!(error = %e, tos, "cannot mark replies"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the client's TOS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{block_on, spawn, ConnectOpts};

    /// The TOS the stream's packets go out with.
    fn sent_tos(s: &Stream) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an open socket; a writable c_int and its exact size.
        let rc = unsafe {
            libc::getsockopt(
                s.raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_TOS,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(
            rc,
            0,
            "getsockopt IP_TOS: {}",
            std::io::Error::last_os_error()
        );
        v
    }

    #[test]
    fn replies_carry_the_mark_of_the_clients_handshake() {
        let cfg = crate::runtime::small_cfg();
        block_on(cfg, async {
            for (mark, expect) in [(Some(0x20u8), 0x20), (None, 0)] {
                let l = Listener::bind_tcp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
                let addr: SocketAddr = l.local_addr().parse().expect("addr");
                let accept = spawn(async move { l.accept().await });
                let opts = ConnectOpts {
                    tos: mark,
                    ..ConnectOpts::default()
                };
                let _c = Stream::connect_tcp(addr, &opts).await.expect("connect");
                let s = accept.await.expect("accept");
                reflect_tos(&s);
                assert_eq!(sent_tos(&s), expect);
            }
        });
    }
}
