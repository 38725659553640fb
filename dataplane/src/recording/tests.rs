//! Writer → reader round trip, and every refusal of the reader.

use std::path::Path;

use rusqlite::Connection;

use super::format::Event;
use super::*;

const SIZE: u64 = 64 << 20;
const UUID: [u8; 16] = [0xab; 16];

fn write_sample(path: &Path) {
    let r = Recorder::create(path, &Identity::new(SIZE, Some(UUID), 65536)).unwrap();
    let s = r.sink();
    s.record(EventKind::Read, 0, 65536);
    s.record(EventKind::Write, 1 << 20, 4096);
    s.record(EventKind::Flush, 0, 0);
    let w = r.finish().unwrap();
    assert_eq!(w.events, 3);
    assert_eq!(w.dropped, 0);
}

fn refusal(path: &Path) -> RecordingError {
    Recording::open(path).expect_err("the reader accepted a bad recording")
}

#[test]
fn round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("r.sqlite");
    write_sample(&p);
    let r = Recording::open(&p).unwrap();
    assert_eq!(r.identity().volume_size_bytes, SIZE);
    assert_eq!(r.identity().fs_uuid, Some(UUID));
    assert_eq!(r.identity().chunk_size_bytes, 65536);
    assert_eq!(r.identity().format_version, FORMAT_VERSION);
    let got: Vec<(u64, EventKind, u64, u64)> = r
        .events()
        .iter()
        .map(|e: &Event| (e.seq, e.kind, e.offset_bytes, e.len_bytes))
        .collect();
    assert_eq!(
        got,
        [
            (0, EventKind::Read, 0, 65536),
            (1, EventKind::Write, 1 << 20, 4096),
            (2, EventKind::Flush, 0, 0)
        ]
    );
    assert!(r.matches(SIZE, Some(UUID)));
    assert!(!r.matches(SIZE, None));
    assert!(!r.matches(SIZE + 4096, Some(UUID)));
    // The finished recording is one self-contained file.
    assert!(!d.path().join("r.sqlite-wal").exists());
    // Never overwritten.
    let e = Recorder::create(&p, &Identity::new(SIZE, None, 65536)).err();
    assert!(matches!(e, Some(RecordingError::Exists { .. })), "{e:?}");
}

#[test]
fn refuses_a_random_file_and_empty_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("random");
    std::fs::write(
        &p,
        (0..4096u32).map(|i| (i * 7919) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let e = refusal(&p);
    assert!(matches!(e, RecordingError::NotSqlite { .. }), "{e:?}");
    assert!(e.to_string().contains("not an SQLite database"), "{e}");

    let p = d.path().join("zero-bytes");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(refusal(&p), RecordingError::NotRecording { .. }));

    // A valid SQLite database with nothing in it.
    let p = d.path().join("empty.sqlite");
    let c = Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE t (x); DROP TABLE t; VACUUM;")
        .unwrap();
    drop(c);
    let e = refusal(&p);
    assert!(matches!(e, RecordingError::NotRecording { .. }), "{e:?}");
    assert!(e.to_string().contains("is not a ferry recording"), "{e}");

    // Some other program's database with a `meta` table.
    let p = d.path().join("other.sqlite");
    let c = Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('format', 'x');")
        .unwrap();
    drop(c);
    assert!(matches!(refusal(&p), RecordingError::NotRecording { .. }));
}

fn with_version(d: &Path, v: i64) -> std::path::PathBuf {
    let p = d.join(format!("v{v}.sqlite"));
    write_sample(&p);
    Connection::open(&p)
        .unwrap()
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
            [v],
        )
        .unwrap();
    p
}

#[test]
fn refuses_other_versions() {
    let d = tempfile::tempdir().unwrap();
    let e = refusal(&with_version(d.path(), 0));
    assert!(
        matches!(e, RecordingError::TooOld { found: 0, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("recording format 0 is older than this ferry reads (1); record again"),
        "{e}"
    );
    let e = refusal(&with_version(d.path(), 99));
    assert!(
        matches!(e, RecordingError::TooNew { found: 99, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("newer"), "{e}");
}

fn tampered(d: &Path, name: &str, sql: &str) -> RecordingError {
    let p = d.join(format!("{name}.sqlite"));
    write_sample(&p);
    Connection::open(&p).unwrap().execute_batch(sql).unwrap();
    refusal(&p)
}

#[test]
fn refuses_corrupt_ones() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("no-events", "DROP TABLE events;"),
        (
            "no-kind-column",
            "DROP TABLE events; CREATE TABLE events (seq INTEGER PRIMARY KEY, t_us, offset, len);",
        ),
        ("negative-offset", "UPDATE events SET offset = -4096 WHERE seq = 1;"),
        (
            "overflowing",
            "UPDATE events SET offset = 9223372036854775807, len = 9223372036854775807 WHERE seq = 1;",
        ),
        ("past-the-end", "UPDATE events SET offset = 67108864 WHERE seq = 1;"),
        ("unknown-kind", "UPDATE events SET kind = 77 WHERE seq = 0;"),
        ("text-len", "UPDATE events SET len = 'many' WHERE seq = 0;"),
        ("bad-uuid", "UPDATE meta SET value = 'nope' WHERE key = 'fs_uuid';"),
        ("no-size", "DELETE FROM meta WHERE key = 'volume_size_bytes';"),
    ];
    for (name, sql) in cases {
        let e = tampered(d.path(), name, sql);
        assert!(matches!(e, RecordingError::Corrupt { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains("is corrupt"), "{name}: {e}");
    }
    // Garbage after a valid SQLite header.
    let p = d.path().join("garbage.sqlite");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend((0..8192u32).map(|i| (i * 31) as u8));
    std::fs::write(&p, bytes).unwrap();
    let e = refusal(&p);
    assert!(matches!(e, RecordingError::Corrupt { .. }), "{e:?}");
}

#[test]
fn drops_beyond_the_bound_are_counted_not_blocking() {
    // The bound itself is large; check the counting path through a writer that has gone.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("r.sqlite");
    let r = Recorder::create(&p, &Identity::new(SIZE, None, 65536)).unwrap();
    let s = r.sink();
    s.record(EventKind::Read, 0, 4096);
    let w = r.finish().unwrap();
    assert_eq!(
        w,
        writer::Written {
            events: 1,
            dropped: 0
        }
    );
    s.record(EventKind::Read, 0, 4096);
    assert_eq!(s.dropped(), 1);
    let rec = Recording::open(&p).unwrap();
    assert_eq!(rec.events().len(), 1);
    assert_eq!(rec.identity().fs_uuid, None);
    assert!(rec.matches(SIZE, None));
}
