//! NBD server (fixed newstyle handshake, simple replies), per the NBD protocol spec
//! (`doc/proto.md` of the NetworkBlockDevice project).
//!
//! * Handshake: NBD_OPT_GO / INFO / LIST / EXPORT_NAME / ABORT; everything else gets
//!   NBD_REP_ERR_UNSUP. The export name is the volume name ("" means the default export).
//! * Transmission: READ, WRITE (+FUA), FLUSH, TRIM, WRITE_ZEROES (+FUA), DISC. Requests on one
//!   connection are served concurrently (bounded), replies go out as each finishes.
//! * Bad input: a request with a bad magic desynchronises the stream, so the connection is
//!   closed; a well-framed but invalid request (out of range, misaligned, unknown command, too
//!   long) gets an NBD error reply and the connection stays usable. Write payloads are always
//!   consumed (or the connection closed if they are larger than we accept), so the stream stays
//!   in step. Nothing here panics on input.
//! * Multi-conn: FLUSH syncs every core, so it covers writes completed on any connection.

mod handshake;
mod input;
mod transmission;

use std::rc::Rc;

use crate::frontend::volume::Volume;
use crate::runtime::Stream;

/// Largest request payload we accept (and advertise as the maximum block size).
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Preferred block size advertised to clients.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// Requests served at once on one connection.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 128;

/// Serves one client connection until it disconnects.
pub async fn serve(stream: Stream, volume: Rc<Volume>) {
    let mut input = input::Input::new(stream.clone());
    match handshake::run(&stream, &mut input, &volume).await {
        Ok(Some(no_zeroes)) => {
            let _ = no_zeroes;
            if let Err(e) = transmission::run(stream.clone(), input, volume).await {
                tracing::info!(error = %e, "NBD connection closed");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "NBD handshake failed"),
    }
    stream.shutdown();
}

#[derive(Debug, thiserror::Error)]
pub enum NbdConnError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] wire_format::nbd::NbdError),
    #[error("client closed the connection")]
    Closed,
    #[error("{0}")]
    Refused(String),
}
