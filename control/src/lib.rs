//! Ferry's control side: the `ferry` command line, the admin-socket client, a small blocking
//! NBD client, the demo driver and its sample volumes. Not in the data path.

pub mod admin_client;
pub mod cli;
pub mod config;
pub mod demo;
pub mod nbd_client;
pub mod record;
pub mod recording;
pub mod sample;
pub mod size;
