//! Reading a recording back: everything is checked before it is believed (see
//! [`Recording::open`] for what is refused).

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::format::{
    parse_uuid, Event, EventKind, Identity, EVENT_COLUMNS, FORMAT_NAME, FORMAT_VERSION,
};
use super::RecordingError;

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A recording, read whole and checked.
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    identity: Identity,
    events_dropped: u64,
    events: Vec<Event>,
}

impl Recording {
    /// Opens and checks the recording at `path`. Refuses: a file that is not SQLite, an SQLite
    /// file that is not a ferry recording, a format version other than [`FORMAT_VERSION`],
    /// and a corrupt one (missing tables or columns, values of the wrong type, unknown event
    /// kinds, negative numbers, ranges past the volume's end or overflowing).
    pub fn open(path: &Path) -> Result<Recording, RecordingError> {
        let io = |source| RecordingError::Io {
            path: path.into(),
            source,
        };
        let mut head = Vec::with_capacity(16);
        std::fs::File::open(path)
            .map_err(io)?
            .take(16)
            .read_to_end(&mut head)
            .map_err(io)?;
        if head.is_empty() {
            return Err(not_recording(path, "the file is empty"));
        }
        if head.as_slice() != SQLITE_HEADER {
            return Err(RecordingError::NotSqlite { path: path.into() });
        }
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_err(path, e))?;
        let has_table = |name: &str| -> Result<bool, RecordingError> {
            c.query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| sqlite_err(path, e))
        };
        if !has_table("meta")? {
            return Err(not_recording(path, "it has no `meta` table"));
        }
        let meta = |key: &str| -> Result<Option<Value>, RecordingError> {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|e| sqlite_err(path, e))
        };
        match meta("format")? {
            Some(Value::Text(t)) if t == FORMAT_NAME => {}
            Some(Value::Text(t)) => {
                return Err(not_recording(path, format!("its format is {t:?}")));
            }
            _ => return Err(not_recording(path, "its `meta` names no format")),
        }
        let version = match meta("format_version")? {
            Some(Value::Integer(v)) => v,
            other => return Err(corrupt(path, format!("format_version is {other:?}"))),
        };
        if version < FORMAT_VERSION {
            return Err(RecordingError::TooOld {
                path: path.into(),
                found: version,
            });
        }
        if version > FORMAT_VERSION {
            return Err(RecordingError::TooNew {
                path: path.into(),
                found: version,
            });
        }
        let uint = |key: &str| -> Result<u64, RecordingError> {
            match meta(key)? {
                Some(Value::Integer(v)) if v >= 0 => Ok(v as u64),
                other => Err(corrupt(path, format!("meta {key} is {other:?}"))),
            }
        };
        let volume_size_bytes = uint("volume_size_bytes")?;
        let chunk_size_bytes = u32::try_from(uint("chunk_size_bytes")?)
            .ok()
            .filter(|c| c.is_power_of_two())
            .ok_or_else(|| corrupt(path, "chunk_size_bytes is not a 32-bit power of two"))?;
        let created_at_unix_s = uint("created_at_unix_s")?;
        let fs_uuid = match meta("fs_uuid")? {
            None | Some(Value::Null) => None,
            Some(Value::Text(t)) => Some(
                parse_uuid(&t)
                    .ok_or_else(|| corrupt(path, format!("fs_uuid {t:?} is not a UUID")))?,
            ),
            Some(other) => return Err(corrupt(path, format!("fs_uuid is {other:?}"))),
        };
        let ferry_version = match meta("ferry_version")? {
            Some(Value::Text(t)) => t,
            other => return Err(corrupt(path, format!("ferry_version is {other:?}"))),
        };
        let events_dropped = match meta("events_dropped")? {
            // Absent while the recording is being written (or after a crash of its writer).
            None => 0,
            Some(Value::Integer(v)) if v >= 0 => v as u64,
            Some(other) => return Err(corrupt(path, format!("events_dropped is {other:?}"))),
        };
        if !has_table("events")? {
            return Err(corrupt(path, "it has no `events` table"));
        }
        let columns: Vec<String> = {
            let mut st = c
                .prepare("SELECT name FROM pragma_table_info('events')")
                .map_err(|e| sqlite_err(path, e))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| sqlite_err(path, e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| sqlite_err(path, e))?
        };
        for want in EVENT_COLUMNS {
            if !columns.iter().any(|c| c == want) {
                return Err(corrupt(
                    path,
                    format!("the events table has no `{want}` column"),
                ));
            }
        }
        let identity = Identity {
            format_version: version,
            volume_size_bytes,
            fs_uuid,
            chunk_size_bytes,
            created_at_unix_s,
            ferry_version,
        };
        let events = read_events(&c, path, volume_size_bytes)?;
        Ok(Recording {
            path: path.into(),
            identity,
            events_dropped,
            events,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// In recording order (`seq` ascending).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Events the recorder had to drop (the writer fell behind); 0 in a complete recording.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Whether this recording was made on a volume of this identity: same size and same
    /// file-system UUID (or neither has one).
    pub fn matches(&self, volume_size_bytes: u64, fs_uuid: Option<[u8; 16]>) -> bool {
        self.identity.volume_size_bytes == volume_size_bytes && self.identity.fs_uuid == fs_uuid
    }
}

fn read_events(
    c: &Connection,
    path: &Path,
    volume_size_bytes: u64,
) -> Result<Vec<Event>, RecordingError> {
    let mut st = c
        .prepare("SELECT seq, t_us, offset, len, kind FROM events ORDER BY seq")
        .map_err(|e| sqlite_err(path, e))?;
    let mut rows = st.query([]).map_err(|e| sqlite_err(path, e))?;
    let mut events = Vec::new();
    while let Some(r) = rows.next().map_err(|e| sqlite_err(path, e))? {
        let field = |i: usize, name: &str| -> Result<u64, RecordingError> {
            let v: Value = r.get(i).map_err(|e| sqlite_err(path, e))?;
            match v {
                Value::Integer(n) if n >= 0 => Ok(n as u64),
                other => Err(corrupt(
                    path,
                    format!("event {} has {name} {other:?}", events.len()),
                )),
            }
        };
        let seq = field(0, "seq")?;
        let t_us = field(1, "t_us")?;
        let offset_bytes = field(2, "offset")?;
        let len_bytes = field(3, "len")?;
        let code = field(4, "kind")?;
        let kind = EventKind::from_code(code as i64)
            .ok_or_else(|| corrupt(path, format!("event {seq} has unknown kind {code}")))?;
        match offset_bytes.checked_add(len_bytes) {
            Some(end) if end <= volume_size_bytes => {}
            _ => {
                return Err(corrupt(
                    path,
                    format!(
                        "event {seq} ({offset_bytes}+{len_bytes}) is outside the {volume_size_bytes} byte volume"
                    ),
                ))
            }
        }
        events.push(Event {
            seq,
            t_us,
            offset_bytes,
            len_bytes,
            kind,
        });
    }
    Ok(events)
}

fn not_recording(path: &Path, why: impl Into<String>) -> RecordingError {
    RecordingError::NotRecording {
        path: path.into(),
        why: why.into(),
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> RecordingError {
    RecordingError::Corrupt {
        path: path.into(),
        what: what.into(),
    }
}

/// SQLite's own "this is not a database / is damaged" become `Corrupt`; the rest stay errors.
fn sqlite_err(path: &Path, e: rusqlite::Error) -> RecordingError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => corrupt(path, e.to_string()),
        _ => RecordingError::Sqlite {
            path: path.into(),
            source: e,
        },
    }
}
