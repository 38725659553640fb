//! Where the parser reads from: a trait, so the parser itself does no IO and can be fed a
//! byte slice by tests and fuzzers.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Random-access, read-only bytes of a volume.
pub trait BlockSource {
    /// The size of the volume in bytes.
    fn size(&self) -> u64;
    /// Fills all of `buf` from `offset`; an error if fewer bytes exist.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A file or block device, read with `pread`.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    /// Measures the size by seeking to the end, which works for block devices too (their
    /// metadata length is 0).
    pub fn new(mut file: File) -> io::Result<FileSource> {
        let size = file.seek(SeekFrom::End(0))?;
        Ok(FileSource { file, size })
    }

    /// For a caller that has measured the volume already.
    pub fn with_size(file: File, size: u64) -> FileSource {
        FileSource { file, size }
    }
}

impl BlockSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl BlockSource for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).ok();
        let bytes = start
            .and_then(|s| Some((s, s.checked_add(buf.len())?)))
            .and_then(|(s, e)| self.get(s..e));
        match bytes {
            Some(b) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the end of a {}-byte image",
                    buf.len(),
                    self.len()
                ),
            )),
        }
    }
}
