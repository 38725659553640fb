//! Transmission phase: requests and simple replies (spec: "Transmission", "Request types",
//! "Error values").

use super::consts::*;
use super::NbdError;
use crate::cursor::Reader;

/// Bytes of a request header (a WRITE's data follows it).
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header (a successful READ's data follows it).
pub const SIMPLE_REPLY_LEN: usize = 16;

/// Request type. Unknown types are kept as [`Command::Other`] so the server can answer
/// them with `EINVAL` instead of dropping the connection. `Other` should hold an
/// unassigned type; build values from numbers with [`Command::from_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `CMD_READ` (0).
    Read,
    /// `CMD_WRITE` (1).
    Write,
    /// `CMD_DISC` (2).
    Disc,
    /// `CMD_FLUSH` (3).
    Flush,
    /// `CMD_TRIM` (4).
    Trim,
    /// `CMD_CACHE` (5).
    Cache,
    /// `CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// Anything else, including the experimental `CMD_RESIZE` (8).
    Other(u16),
}

impl Command {
    /// The wire type.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Other(c) => c,
        }
    }

    /// The command for wire type `code`; never fails (unknown → `Other`).
    pub fn from_code(code: u16) -> Command {
        match code {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            c => Command::Other(c),
        }
    }
}

/// One request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`), not validated here.
    pub flags: u16,
    /// Request type.
    pub command: Command,
    /// Opaque cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length (for WRITE: bytes of data that follow). Unbounded here: check it
    /// against the export size and buffer limits *before* reading a WRITE's data.
    pub length: u32,
}

impl Request {
    /// `offset + length`, or `None` if it overflows u64 (answer such a request `EINVAL`
    /// or `EOVERFLOW`; never wrap).
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.length))
    }
}

/// Server side: decodes a request header, checking only the magic. Flag/command/range
/// validity is the server's to judge (it knows the export and what it negotiated).
pub fn decode_request(b: &[u8; REQUEST_LEN]) -> Result<Request, NbdError> {
    let mut r = Reader::new(b);
    // Reads cannot fail on a 28-byte array; `unwrap_or` keeps the decoder panic-free.
    let magic = r.u32().unwrap_or(0);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::BadMagic {
            what: "request",
            got: magic.into(),
        });
    }
    Ok(Request {
        flags: r.u16().unwrap_or(0),
        command: Command::from_code(r.u16().unwrap_or(0)),
        cookie: r.u64().unwrap_or(0),
        offset: r.u64().unwrap_or(0),
        length: r.u32().unwrap_or(0),
    })
}

/// Client side: encodes a request header.
pub fn encode_request(req: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&req.flags.to_be_bytes());
    b[6..8].copy_from_slice(&req.command.code().to_be_bytes());
    b[8..16].copy_from_slice(&req.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&req.offset.to_be_bytes());
    b[24..28].copy_from_slice(&req.length.to_be_bytes());
    b
}

/// Server side: a simple reply header (`error` is an NBD error value, 0 = success).
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Client side: decodes a simple reply header into `(error, cookie)`.
pub fn decode_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<(u32, u64), NbdError> {
    let mut r = Reader::new(b);
    let magic = r.u32().unwrap_or(0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            what: "simple reply",
            got: magic.into(),
        });
    }
    Ok((r.u32().unwrap_or(0), r.u64().unwrap_or(0)))
}

/// Linux errno numbers we translate. Hard-coded because this crate has no libc dependency
/// (no IO); they are part of the Linux ABI and never change.
#[cfg(target_os = "linux")]
mod linux {
    pub const EPERM: i32 = 1;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EOVERFLOW: i32 = 75;
    pub const EOPNOTSUPP: i32 = 95; // == ENOTSUP on Linux
    pub const ESHUTDOWN: i32 = 108;
    pub const EDQUOT: i32 = 122;
}

/// Maps a host IO error to the NBD error value to put in a reply.
///
/// The NBD error values are the spec's, not the host's: the client's kernel turns them
/// back into its own errno, so everything without an NBD equivalent becomes `EIO`. Raw OS
/// errors are mapped on Linux; elsewhere (and for errors without an OS code) the
/// [`std::io::ErrorKind`] decides.
pub fn errno_from_io(e: &std::io::Error) -> u32 {
    #[cfg(target_os = "linux")]
    if let Some(raw) = e.raw_os_error() {
        use linux as l;
        return match raw {
            l::ENOSPC | l::EDQUOT => ENOSPC,
            l::EINVAL => EINVAL,
            l::EPERM | l::EACCES | l::EROFS => EPERM,
            l::ENOMEM => ENOMEM,
            l::EOVERFLOW => EOVERFLOW,
            l::EOPNOTSUPP => ENOTSUP,
            l::ESHUTDOWN => ESHUTDOWN,
            _ => EIO,
        };
    }
    use std::io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied => EPERM,
        K::InvalidInput => EINVAL,
        K::OutOfMemory => ENOMEM,
        K::Unsupported => ENOTSUP,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn request_bytes() {
        let req = Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0x1122_3344_5566_7788,
            offset: 4096,
            length: 512,
        };
        let b = encode_request(&req);
        assert_eq!(&b[..8], &[0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1]);
        assert_eq!(decode_request(&b), Ok(req));
        let mut bad = b;
        bad[0] ^= 1;
        assert!(matches!(
            decode_request(&bad),
            Err(NbdError::BadMagic { .. })
        ));
    }

    #[test]
    fn end_is_checked() {
        let mut req = decode_request(&encode_request(&Request {
            flags: 0,
            command: Command::Read,
            cookie: 1,
            offset: u64::MAX - 10,
            length: 10,
        }))
        .unwrap();
        assert_eq!(req.end(), Some(u64::MAX));
        req.length = 11;
        assert_eq!(req.end(), None);
    }

    #[test]
    fn command_codes() {
        for c in 0..=20u16 {
            assert_eq!(Command::from_code(c).code(), c);
        }
        assert_eq!(Command::from_code(7), Command::BlockStatus);
        assert_eq!(Command::from_code(CMD_RESIZE), Command::Other(8));
    }

    #[test]
    fn simple_reply_bytes() {
        let b = encode_simple_reply(EIO, 42);
        assert_eq!(&b[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5]);
        assert_eq!(decode_simple_reply(&b), Ok((EIO, 42)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn errno_mapping() {
        let m = |raw| errno_from_io(&io::Error::from_raw_os_error(raw));
        assert_eq!(m(28), ENOSPC);
        assert_eq!(m(122), ENOSPC);
        assert_eq!(m(22), EINVAL);
        assert_eq!(m(1), EPERM);
        assert_eq!(m(13), EPERM);
        assert_eq!(m(30), EPERM);
        assert_eq!(m(12), ENOMEM);
        assert_eq!(m(75), EOVERFLOW);
        assert_eq!(m(95), ENOTSUP);
        assert_eq!(m(108), ESHUTDOWN);
        assert_eq!(m(5), EIO);
        assert_eq!(m(2), EIO); // ENOENT has no NBD equivalent
    }

    #[test]
    fn errno_from_kind() {
        assert_eq!(
            errno_from_io(&io::Error::from(io::ErrorKind::InvalidInput)),
            EINVAL
        );
        assert_eq!(errno_from_io(&io::Error::other("x")), EIO);
    }
}
