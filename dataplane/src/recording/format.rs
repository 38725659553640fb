//! The recording file format, version [`FORMAT_VERSION`]. Bump the version for any change a
//! reader of the previous version would misread; readers refuse versions they do not know.
//!
//! ```sql
//! CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value);
//! CREATE TABLE events (
//!     seq    INTEGER PRIMARY KEY,  -- 0, 1, 2 … in the order requests were admitted
//!     t_us   INTEGER NOT NULL,     -- microseconds since the recording started
//!     offset INTEGER NOT NULL,     -- bytes
//!     len    INTEGER NOT NULL,     -- bytes (0 for flush)
//!     kind   INTEGER NOT NULL);    -- EventKind code, below
//! ```
//!
//! `meta` keys (`format` and `format_version` keep their meaning in every version, so any
//! reader can say what a file is): `format` = "ferry-recording", `format_version` (integer),
//! `volume_size_bytes` (integer), `fs_uuid` (32 lower-case hex digits, or NULL when the volume
//! holds no ext2/3/4 file system), `chunk_size_bytes` (integer), `created_at_unix_s`
//! (integer), `ferry_version` (text), and, written when the recording is closed,
//! `events_dropped` (integer; events lost because the writer fell behind).
//!
//! Event kind codes (stable; never reuse one): 1 read, 2 write, 3 trim, 4 write_zeroes,
//! 5 flush.

pub const FORMAT_NAME: &str = "ferry-recording";
pub const FORMAT_VERSION: i64 = 1;

pub(crate) const SCHEMA: &str = "
    CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        t_us INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        len INTEGER NOT NULL,
        kind INTEGER NOT NULL);";

/// Columns a reader of this version needs in `events`.
pub(crate) const EVENT_COLUMNS: [&str; 5] = ["seq", "t_us", "offset", "len", "kind"];

/// What a recorded request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Read,
    Write,
    Trim,
    WriteZeroes,
    Flush,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Read,
        EventKind::Write,
        EventKind::Trim,
        EventKind::WriteZeroes,
        EventKind::Flush,
    ];

    /// The stable code stored in `events.kind`.
    pub fn code(self) -> u8 {
        match self {
            EventKind::Read => 1,
            EventKind::Write => 2,
            EventKind::Trim => 3,
            EventKind::WriteZeroes => 4,
            EventKind::Flush => 5,
        }
    }

    pub fn from_code(code: i64) -> Option<EventKind> {
        Some(match code {
            1 => EventKind::Read,
            2 => EventKind::Write,
            3 => EventKind::Trim,
            4 => EventKind::WriteZeroes,
            5 => EventKind::Flush,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Read => "read",
            EventKind::Write => "write",
            EventKind::Trim => "trim",
            EventKind::WriteZeroes => "write_zeroes",
            EventKind::Flush => "flush",
        }
    }
}

/// One recorded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub t_us: u64,
    pub offset_bytes: u64,
    pub len_bytes: u64,
    pub kind: EventKind,
}

/// The volume a recording belongs to, and how it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub format_version: i64,
    pub volume_size_bytes: u64,
    pub fs_uuid: Option<[u8; 16]>,
    pub chunk_size_bytes: u32,
    pub created_at_unix_s: u64,
    pub ferry_version: String,
}

impl Identity {
    /// The identity of a recording made now by this ferry.
    pub fn new(volume_size_bytes: u64, fs_uuid: Option<[u8; 16]>, chunk_size_bytes: u32) -> Self {
        Identity {
            format_version: FORMAT_VERSION,
            volume_size_bytes,
            fs_uuid,
            chunk_size_bytes,
            created_at_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    pub fn fs_uuid_hex(&self) -> Option<String> {
        self.fs_uuid.map(|u| uuid_hex(&u))
    }
}

/// 32 lower-case hex digits, as stored in `meta.fs_uuid`.
pub fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`uuid_hex`]; also accepts the dashed form `dumpe2fs` prints.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip_and_are_stable() {
        let codes: Vec<u8> = EventKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5]);
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_code(i64::from(k.code())), Some(k));
        }
        assert_eq!(EventKind::from_code(0), None);
        assert_eq!(EventKind::from_code(6), None);
    }

    #[test]
    fn uuid_hex_round_trips() {
        let u: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        let h = uuid_hex(&u);
        assert_eq!(h.len(), 32);
        assert_eq!(parse_uuid(&h), Some(u));
        let dashed = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        assert_eq!(parse_uuid(&dashed), Some(u));
        assert_eq!(parse_uuid("zz"), None);
    }
}
