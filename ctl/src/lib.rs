//! Ferry's control plane: the `ferry control` daemon (sessions in SQLite, an HTTP/JSON API
//! on a unix socket or token-guarded TCP, one `ferry frontend` process per active session)
//! and the `ferry migrate` client. Never in the data path: it speaks to frontends only
//! through their admin sockets. Tokio and axum live here, never in `dataplane`.

pub mod admin;
pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod mapview;
pub mod metrics;
pub mod ops;
pub mod session;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod watch;
