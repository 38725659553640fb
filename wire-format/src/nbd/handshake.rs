//! Handshake phase: greeting, client flags, option haggling and option replies (spec:
//! "Newstyle negotiation", "Option types", "Option reply types").
//!
//! Server flow: send [`encode_server_greeting`]; read 4 bytes → [`decode_client_flags`];
//! then repeatedly read [`OPTION_HEADER_LEN`] bytes → [`decode_option_header`], read exactly
//! `len` more bytes (bounded by [`MAX_OPTION_LEN`]) and answer with
//! [`encode_option_reply`] (or [`encode_export_name_reply`] for `OPT_EXPORT_NAME`).

use super::consts::*;
use super::NbdError;
use crate::cursor::Reader;

/// Bytes of the server greeting: `NBDMAGIC`, `IHAVEOPT`, u16 handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option header: `IHAVEOPT`, u32 option, u32 data length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of an option reply header: magic u64, u32 option, u32 reply type, u32 length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Largest option data we accept from a client (the spec sets no limit; 64 KiB is far
/// more than any defined option needs: names are at most 4096 bytes).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Largest option reply data our client accepts.
pub const MAX_OPTION_REPLY_LEN: u32 = 64 * 1024;
/// Longest string (export name, description) per the spec's "Conventions".
pub const MAX_STRING_LEN: usize = 4096;
/// Zero bytes after the `OPT_EXPORT_NAME` reply unless both sides agreed to NO_ZEROES.
pub const EXPORT_NAME_ZEROES: usize = 124;

// ---------------------------------------------------------------- greeting and flags

/// Server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_server_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

/// Client side: checks both magics and that the server speaks fixed newstyle (the only
/// dialect we support); returns the handshake flags.
pub fn decode_server_greeting(b: &[u8; GREETING_LEN]) -> Result<u16, NbdError> {
    let mut r = Reader::new(b);
    let magic = r.u64().unwrap_or(0);
    if magic != NBDMAGIC {
        return Err(NbdError::BadMagic {
            what: "NBDMAGIC",
            got: magic,
        });
    }
    let opt = r.u64().unwrap_or(0);
    if opt != IHAVEOPT {
        // Oldstyle servers put the export size here.
        return Err(NbdError::BadMagic {
            what: "IHAVEOPT (oldstyle server?)",
            got: opt,
        });
    }
    let flags = r.u16().unwrap_or(0);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Invalid {
            what: "server does not speak fixed newstyle",
        });
    }
    Ok(flags)
}

/// Client flags as sent by the client.
pub fn encode_client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// Server side: decodes the client flags and rejects bits the spec does not define (the
/// server MUST then drop the connection). Whether `FLAG_C_NO_ZEROES` matches what the
/// server advertised is for the server to check.
pub fn decode_client_flags(b: &[u8; 4]) -> Result<u32, NbdError> {
    let flags = u32::from_be_bytes(*b);
    if flags & !KNOWN_CLIENT_FLAGS != 0 {
        return Err(NbdError::UnknownClientFlags(flags));
    }
    Ok(flags)
}

// ---------------------------------------------------------------- options (client → server)

/// Header of one option sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option type (`OPT_*`).
    pub option: u32,
    /// Bytes of option data that follow, `<= MAX_OPTION_LEN`.
    pub len: u32,
}

/// Checks `IHAVEOPT` and bounds `len` by [`MAX_OPTION_LEN`]. The caller must still read
/// exactly `len` bytes and not trust them beyond that.
pub fn decode_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, NbdError> {
    let mut r = Reader::new(b);
    let magic = r.u64().unwrap_or(0);
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic {
            what: "IHAVEOPT",
            got: magic,
        });
    }
    let option = r.u32().unwrap_or(0);
    let len = r.u32().unwrap_or(0);
    if len > MAX_OPTION_LEN {
        return Err(NbdError::OptionTooLong {
            len,
            max: MAX_OPTION_LEN,
        });
    }
    Ok(OptionHeader { option, len })
}

/// Client side: appends one option (header + data).
///
/// # Panics
/// If `data` is longer than [`MAX_OPTION_LEN`] (a server would refuse it anyway).
pub fn encode_option(option: u32, data: &[u8], out: &mut Vec<u8>) {
    assert!(
        data.len() <= MAX_OPTION_LEN as usize,
        "NBD option data of {} bytes over MAX_OPTION_LEN",
        data.len()
    );
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// `OPT_INFO` / `OPT_GO` request data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name ("" = default export).
    pub name: &'a str,
    /// Requested `INFO_*` types, as sent (the server ignores ones it does not know).
    pub info: Vec<u16>,
}

/// Decodes `OPT_INFO` / `OPT_GO` data: u32 name length, name, u16 count, u16 × count.
/// The name length is checked against the bytes present and [`MAX_STRING_LEN`]; the
/// count must fill the rest of the data exactly.
pub fn decode_info_request(data: &[u8]) -> Result<InfoRequest<'_>, NbdError> {
    let mut r = Reader::new(data);
    let name_len = r.u32().ok_or(NbdError::Truncated {
        what: "export name length",
    })?;
    // Spec: "MUST be no larger than the option data length - 6".
    if name_len as usize > r.remaining().saturating_sub(2) {
        return Err(NbdError::Truncated {
            what: "export name",
        });
    }
    let name = r.bytes(name_len as usize).ok_or(NbdError::Truncated {
        what: "export name",
    })?;
    let name = decode_string(name)?;
    let count = r.u16().ok_or(NbdError::Truncated {
        what: "information request count",
    })? as usize;
    let need = count * 2;
    if r.remaining() < need {
        return Err(NbdError::Truncated {
            what: "information requests",
        });
    }
    if r.remaining() > need {
        return Err(NbdError::Invalid {
            what: "trailing bytes after information requests",
        });
    }
    let mut info = Vec::with_capacity(count);
    for _ in 0..count {
        info.push(r.u16().ok_or(NbdError::Truncated {
            what: "information request",
        })?);
    }
    Ok(InfoRequest { name, info })
}

/// Client side: `OPT_INFO` / `OPT_GO` data.
///
/// # Panics
/// If `name` is longer than [`MAX_STRING_LEN`] or the result exceeds [`MAX_OPTION_LEN`].
pub fn encode_info_request(name: &str, info: &[u16]) -> Vec<u8> {
    assert!(name.len() <= MAX_STRING_LEN, "NBD export name too long");
    assert!(
        6 + name.len() + 2 * info.len() <= MAX_OPTION_LEN as usize,
        "NBD info request too long"
    );
    let mut v = Vec::with_capacity(6 + name.len() + 2 * info.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(info.len() as u16).to_be_bytes());
    for i in info {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// Decodes `OPT_EXPORT_NAME` data: the whole option data is the name.
pub fn decode_export_name(data: &[u8]) -> Result<&str, NbdError> {
    decode_string(data)
}

/// A spec string: at most [`MAX_STRING_LEN`] bytes of UTF-8 without NUL ("Conventions").
fn decode_string(b: &[u8]) -> Result<&str, NbdError> {
    if b.len() > MAX_STRING_LEN {
        return Err(NbdError::Invalid {
            what: "string longer than 4096 bytes",
        });
    }
    let s = std::str::from_utf8(b).map_err(|_| NbdError::Invalid {
        what: "string is not valid UTF-8",
    })?;
    if s.contains('\0') {
        return Err(NbdError::Invalid {
            what: "string contains NUL",
        });
    }
    Ok(s)
}

// ---------------------------------------------------------------- option replies (server → client)

/// Appends one option reply: magic, option, reply type, length, data.
///
/// # Panics
/// If `data` is longer than `u32::MAX` bytes (replies we build are a few bytes).
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(data.len()).expect("NBD option reply data over 4 GiB");
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// `REP_INFO` data for `INFO_EXPORT`: type, size u64, transmission flags u16 (12 bytes).
pub fn encode_info_export(size: u64, transmission_flags: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&transmission_flags.to_be_bytes());
    v
}

/// `REP_INFO` data for `INFO_BLOCK_SIZE`: type, min, preferred, max (14 bytes).
/// The spec's "Size constraints" apply (powers of two, min <= preferred <= max); they are
/// the caller's to respect.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    v.extend_from_slice(&min.to_be_bytes());
    v.extend_from_slice(&preferred.to_be_bytes());
    v.extend_from_slice(&max.to_be_bytes());
    v
}

/// `REP_INFO` data for `INFO_NAME`: type, name.
pub fn encode_info_name(name: &str) -> Vec<u8> {
    encode_info_string(INFO_NAME, name)
}

/// `REP_INFO` data for `INFO_DESCRIPTION`: type, description.
pub fn encode_info_description(description: &str) -> Vec<u8> {
    encode_info_string(INFO_DESCRIPTION, description)
}

fn encode_info_string(info: u16, s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + s.len());
    v.extend_from_slice(&info.to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

/// `REP_SERVER` data for `OPT_LIST`: u32 name length, name.
pub fn encode_rep_server(name: &str) -> Vec<u8> {
    let len = u32::try_from(name.len()).expect("export name over 4 GiB");
    let mut v = Vec::with_capacity(4 + name.len());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

/// Client side: the export name in `REP_SERVER` data (any trailing description ignored).
pub fn decode_rep_server(data: &[u8]) -> Result<&str, NbdError> {
    let mut r = Reader::new(data);
    let len = r.u32().ok_or(NbdError::Truncated {
        what: "REP_SERVER name length",
    })?;
    let name = r.bytes(len as usize).ok_or(NbdError::Truncated {
        what: "REP_SERVER name",
    })?;
    decode_string(name)
}

/// Reply to `OPT_EXPORT_NAME`: size u64, transmission flags u16, then 124 zero bytes
/// unless the client set `FLAG_C_NO_ZEROES` (after the server offered `FLAG_NO_ZEROES`).
pub fn encode_export_name_reply(
    size: u64,
    transmission_flags: u16,
    no_zeroes: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES]);
    }
}

/// Header of one option reply, as read by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: u32,
    /// `REP_*`.
    pub reply_type: u32,
    /// Bytes of reply data that follow, `<= MAX_OPTION_REPLY_LEN`.
    pub len: u32,
}

impl OptionReplyHeader {
    /// True for the `REP_ERR_*` family (bit 31).
    pub fn is_error(&self) -> bool {
        self.reply_type & REP_FLAG_ERROR != 0
    }
}

/// Client side: checks the reply magic and bounds `len` by [`MAX_OPTION_REPLY_LEN`].
pub fn decode_option_reply_header(
    b: &[u8; OPTION_REPLY_HEADER_LEN],
) -> Result<OptionReplyHeader, NbdError> {
    let mut r = Reader::new(b);
    let magic = r.u64().unwrap_or(0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            what: "option reply",
            got: magic,
        });
    }
    let option = r.u32().unwrap_or(0);
    let reply_type = r.u32().unwrap_or(0);
    let len = r.u32().unwrap_or(0);
    if len > MAX_OPTION_REPLY_LEN {
        return Err(NbdError::OptionTooLong {
            len,
            max: MAX_OPTION_REPLY_LEN,
        });
    }
    Ok(OptionReplyHeader {
        option,
        reply_type,
        len,
    })
}

/// One `REP_INFO` item, as decoded by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `INFO_EXPORT`.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload size.
        max: u32,
    },
    /// `INFO_NAME`.
    Name(String),
    /// `INFO_DESCRIPTION`.
    Description(String),
    /// Any other type; the spec says the client MUST ignore it.
    Unknown(u16),
}

/// Client side: decodes `REP_INFO` data (u16 type + payload whose length the type fixes).
pub fn decode_info(data: &[u8]) -> Result<Info, NbdError> {
    let mut r = Reader::new(data);
    let info = r.u16().ok_or(NbdError::Truncated { what: "info type" })?;
    let exact = |r: &Reader<'_>, n: usize, what: &'static str| match r.remaining() {
        x if x < n => Err(NbdError::Truncated { what }),
        x if x > n => Err(NbdError::Invalid { what }),
        _ => Ok(()),
    };
    match info {
        INFO_EXPORT => {
            exact(&r, 10, "INFO_EXPORT length (must be 12)")?;
            Ok(Info::Export {
                size: r.u64().unwrap_or(0),
                flags: r.u16().unwrap_or(0),
            })
        }
        INFO_BLOCK_SIZE => {
            exact(&r, 12, "INFO_BLOCK_SIZE length (must be 14)")?;
            Ok(Info::BlockSize {
                min: r.u32().unwrap_or(0),
                preferred: r.u32().unwrap_or(0),
                max: r.u32().unwrap_or(0),
            })
        }
        INFO_NAME => Ok(Info::Name(decode_string(r.rest())?.to_owned())),
        INFO_DESCRIPTION => Ok(Info::Description(decode_string(r.rest())?.to_owned())),
        other => Ok(Info::Unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes() {
        let g = encode_server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
        assert_eq!(decode_server_greeting(&g), Ok(3));
        assert!(decode_server_greeting(&encode_server_greeting(0)).is_err());
    }

    #[test]
    fn client_flags() {
        assert_eq!(decode_client_flags(&encode_client_flags(3)), Ok(3));
        assert_eq!(
            decode_client_flags(&encode_client_flags(4)),
            Err(NbdError::UnknownClientFlags(4))
        );
    }

    #[test]
    fn option_reply_magic_bytes() {
        let mut out = Vec::new();
        encode_option_reply(OPT_GO, REP_ACK, &[], &mut out);
        assert_eq!(
            out,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn export_name_reply_zeroes() {
        let mut out = Vec::new();
        encode_export_name_reply(1 << 30, FLAG_HAS_FLAGS, false, &mut out);
        assert_eq!(out.len(), 8 + 2 + 124);
        out.clear();
        encode_export_name_reply(1 << 30, FLAG_HAS_FLAGS, true, &mut out);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn info_request_bounds() {
        // Name length pointing past the data.
        assert!(decode_info_request(&[0, 0, 0, 9, b'a', 0, 0]).is_err());
        // Name length so large it would leave no room for the count.
        assert!(decode_info_request(&[0, 0, 0, 1, b'a']).is_err());
        // Count larger than what follows.
        assert!(decode_info_request(&[0, 0, 0, 0, 0xff, 0xff, 0, 1]).is_err());
        // Trailing byte.
        assert!(decode_info_request(&[0, 0, 0, 0, 0, 1, 0, 3, 9]).is_err());
        assert_eq!(
            decode_info_request(&[0, 0, 0, 1, b'a', 0, 1, 0, 3]),
            Ok(InfoRequest {
                name: "a",
                info: vec![INFO_BLOCK_SIZE]
            })
        );
        // NUL in a name.
        assert!(decode_info_request(&[0, 0, 0, 1, 0, 0, 0]).is_err());
    }
}
