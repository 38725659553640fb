//! Which recording `--prefetch PATH` means (see the module docs of `prefetch` for the rules).

use std::path::{Path, PathBuf};

use super::PrefetchError;
use crate::recording::{Identity, Recording};

/// File name endings taken as recordings in a `--prefetch` directory.
pub const EXTENSIONS: [&str; 2] = ["sqlite", "ferryrec"];

/// The recording for a volume of `size` bytes with file-system UUID `uuid`, or `None` when a
/// directory holds no match. A file named explicitly must be usable: its refusal is the
/// caller's start-up error.
pub fn choose(
    path: &Path,
    size: u64,
    uuid: Option<[u8; 16]>,
) -> Result<Option<Recording>, PrefetchError> {
    let meta = std::fs::metadata(path).map_err(|source| PrefetchError::Io {
        path: path.into(),
        source,
    })?;
    if !meta.is_dir() {
        let r = Recording::open(path)?;
        let recorded = r.identity().volume_size_bytes;
        if recorded != size {
            return Err(PrefetchError::WrongSize {
                path: path.into(),
                recorded,
                volume: size,
            });
        }
        if r.identity().fs_uuid != uuid {
            tracing::warn!(recording = %path.display(), "the recording's file-system UUID differs from this volume's; using it anyway (same size)");
        }
        return Ok(Some(r));
    }
    let entries = std::fs::read_dir(path).map_err(|source| PrefetchError::Io {
        path: path.into(),
        source,
    })?;
    // Identities only: holding every candidate's events at once could be large.
    let mut candidates: Vec<(PathBuf, Identity)> = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let ours = p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| EXTENSIONS.contains(&x));
        if !ours || !p.is_file() {
            continue;
        }
        match Recording::open(&p) {
            Ok(r) if r.identity().volume_size_bytes == size => {
                candidates.push((p.clone(), r.identity().clone()))
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "--prefetch: skipping a recording that does not open")
            }
        }
    }
    match best(candidates, uuid) {
        // Checked a moment ago; a file changed since is refused like any other.
        Some(p) => Ok(Some(Recording::open(&p)?)),
        None => Ok(None),
    }
}

/// Same UUID first, else any ext4 recording when the volume is ext4; newest wins, then the
/// file name (so the choice does not depend on directory order).
fn best(candidates: Vec<(PathBuf, Identity)>, uuid: Option<[u8; 16]>) -> Option<PathBuf> {
    let rank = |id: &Identity| -> Option<u8> {
        let theirs = id.fs_uuid;
        if theirs == uuid {
            Some(0)
        } else if uuid.is_some() && theirs.is_some() {
            Some(1)
        } else {
            None
        }
    };
    candidates
        .into_iter()
        .filter_map(|(p, id)| Some((rank(&id)?, id.created_at_unix_s, p)))
        .min_by(|(ra, ca, pa), (rb, cb, pb)| ra.cmp(rb).then(cb.cmp(ca)).then(pa.cmp(pb)))
        .map(|(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::Recorder;

    fn make(dir: &Path, name: &str, size: u64, uuid: Option<[u8; 16]>, created: u64) {
        let mut id = Identity::new(size, uuid, 65536);
        id.created_at_unix_s = created;
        let r = Recorder::create(&dir.join(name), &id).expect("create");
        r.finish().expect("finish");
    }

    #[test]
    fn directory_prefers_identity_then_similar_newest() {
        let d = tempfile::tempdir().expect("tempdir");
        let (u1, u2) = (Some([1u8; 16]), Some([2u8; 16]));
        make(d.path(), "other-size.sqlite", 2 << 20, u1, 50);
        make(d.path(), "similar-old.sqlite", 1 << 20, u2, 10);
        make(d.path(), "similar-new.ferryrec", 1 << 20, u2, 20);
        make(d.path(), "no-fs.sqlite", 1 << 20, None, 30);
        std::fs::write(d.path().join("junk.sqlite"), b"not a recording").expect("junk");
        let pick = |uuid| {
            choose(d.path(), 1 << 20, uuid).expect("choose").map(|r| {
                r.path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
        };
        // No exact match: the newest ext4 recording of that size.
        assert_eq!(pick(u1), Some(Some("similar-new.ferryrec".into())));
        make(d.path(), "exact-old.sqlite", 1 << 20, u1, 1);
        assert_eq!(pick(u1), Some(Some("exact-old.sqlite".into())));
        // A volume without ext4: only a recording without one either.
        assert_eq!(pick(None), Some(Some("no-fs.sqlite".into())));
        // Nothing of that size.
        assert!(choose(d.path(), 3 << 20, u1).expect("choose").is_none());
    }

    #[test]
    fn explicit_file_of_another_size_or_corrupt_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        make(d.path(), "r.sqlite", 2 << 20, None, 1);
        let p = d.path().join("r.sqlite");
        let e = choose(&p, 1 << 20, None).expect_err("other size");
        assert!(e.to_string().contains("2097152 byte volume"), "{e}");
        assert!(choose(&p, 2 << 20, Some([3; 16])).expect("ok").is_some());
        let bad = d.path().join("bad.sqlite");
        std::fs::write(&bad, b"garbage").expect("write");
        let e = choose(&bad, 1 << 20, None).expect_err("corrupt");
        assert!(e.to_string().contains("not a ferry recording"), "{e}");
        assert!(choose(&d.path().join("missing"), 1, None).is_err());
    }
}
