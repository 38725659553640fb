//! Errors of volume operations, with their NBD error code.

use wire_format::nbd;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VolError {
    #[error("chunk {chunk}: fetch from the backend failed: {reason}")]
    Fetch { chunk: u64, reason: String },
    #[error("target {op} at offset {offset} failed: {message}")]
    Target {
        op: &'static str,
        offset: u64,
        errno: i32,
        message: String,
    },
    #[error("the export is shutting down")]
    Shutdown,
}

impl VolError {
    pub fn target(op: &'static str, offset: u64, e: &std::io::Error) -> VolError {
        VolError::Target {
            op,
            offset,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: e.to_string(),
        }
    }

    /// The single place where volume errors become NBD error codes.
    pub fn nbd_errno(&self) -> u32 {
        match self {
            VolError::Fetch { .. } => nbd::EIO,
            VolError::Target { errno, .. } => {
                nbd::errno_from_io(&std::io::Error::from_raw_os_error(*errno))
            }
            VolError::Shutdown => nbd::ESHUTDOWN,
        }
    }
}
