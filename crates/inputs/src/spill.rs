//! Spilled content: bytes read from a stream (a base image's tar member) kept in an
//! unlinked temporary file instead of memory, so that reading a member of any size
//! takes bounded memory.
//!
//! A [`Spill`] is one such file, opened with `O_TMPFILE` where the filesystem has it
//! (`tempfile::tempfile_in`), so no name ever appears in the directory and nothing is
//! left behind whatever way the process ends. [`Spill::append`] copies a stream to its
//! end and returns the [`Region`] that holds it; a region is what the file set refers
//! to, and what writers copy from (`copy_file_range`, keeping holes).
//!
//! Invariants:
//! - memory: one [`CHUNK`]-sized buffer per spill, whatever the stream's length;
//! - sparse: a [`BLOCK`] of the stream that is all zeros is never written, so it stays
//!   a hole of the file (a 3 GiB member of zeros takes no disk space), and
//!   [`Region::data_blocks`] finds the holes again with `SEEK_DATA`/`SEEK_HOLE`;
//! - regions start at a multiple of [`BLOCK`] and never overlap; bytes of the file are
//!   written once, so a hole inside a region reads as zeros;
//! - a region's identity is its content: equality and hashing use its length and the
//!   BLAKE3 hash of its bytes ([`Region::hash`]), computed while streaming, so a file set
//!   fingerprint covers member bytes without reading them again.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Regions are aligned to, and holes found in, blocks of this many bytes (the ext2
/// block size kiln writes, so a hole here is a hole in the image).
pub const BLOCK: u64 = 4096;

/// The buffer streams are read through.
pub const CHUNK: usize = 1 << 20;

/// An error of [`Spill::append`]: reading the stream or writing the spill file.
#[derive(Debug)]
pub enum AppendError {
    /// The source stream failed (a corrupt or truncated archive).
    Read(io::Error),
    /// The spill file could not be written (disk full...); `dir` is where it lives.
    Write { dir: PathBuf, source: io::Error },
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::Read(_) => f.write_str("reading the stream"),
            AppendError::Write { dir, .. } => write!(
                f,
                "writing a temporary file in {} (set TMPDIR to a directory with room)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppendError::Read(e) | AppendError::Write { source: e, .. } => Some(e),
        }
    }
}

/// An unlinked temporary file that streams are appended to. See the module doc.
pub struct Spill {
    file: File,
    dir: PathBuf,
    /// The end of the last region, and the one buffer streams are read through.
    state: Mutex<(u64, Vec<u8>)>,
}

impl fmt::Debug for Spill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spill").field("dir", &self.dir).finish()
    }
}

/// The directories a spill file is tried in, in order: `$TMPDIR` (when absolute), then
/// `/var/tmp` (disk-backed on most systems, where `/tmp` may be memory), then `/tmp`.
pub fn default_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(t) = std::env::var_os("TMPDIR").map(PathBuf::from)
        && t.is_absolute()
    {
        v.push(t);
    }
    for d in ["/var/tmp", "/tmp"] {
        if !v.iter().any(|x| x == Path::new(d)) {
            v.push(PathBuf::from(d));
        }
    }
    v
}

impl Spill {
    /// A new spill file in `dir`.
    pub fn new_in(dir: &Path) -> io::Result<Arc<Spill>> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(Arc::new(Spill {
            file,
            dir: dir.to_path_buf(),
            state: Mutex::new((0, Vec::new())),
        }))
    }

    /// A new spill file in the first of [`default_dirs`] where one can be made; the
    /// error is the last directory's.
    pub fn new() -> Result<Arc<Spill>, (PathBuf, io::Error)> {
        let mut last = (
            PathBuf::from("/tmp"),
            io::Error::other("no directory to try"),
        );
        for d in default_dirs() {
            match Spill::new_in(&d) {
                Ok(s) => return Ok(s),
                Err(e) => last = (d, e),
            }
        }
        Err(last)
    }

    /// The directory the file was made in (for messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spill file itself (to copy from, with [`Region::offset`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Copy `r` to its end into the file; the region holding its bytes.
    pub fn append(self: &Arc<Self>, r: &mut dyn Read) -> Result<Region, AppendError> {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (end, buf) = &mut *guard;
        if buf.is_empty() {
            buf.resize(CHUNK, 0);
        }
        let start = end.next_multiple_of(BLOCK);
        let mut pos = start;
        let mut hasher = blake3::Hasher::new();
        let res = loop {
            let n = match fill(r, buf) {
                Ok(n) => n,
                Err(e) => break Err(AppendError::Read(e)),
            };
            if n == 0 {
                break Ok(());
            }
            hasher.update(&buf[..n]);
            if let Err(source) = write_sparse(&self.file, &buf[..n], pos) {
                break Err(AppendError::Write {
                    dir: self.dir.clone(),
                    source,
                });
            }
            pos += n as u64;
            if n < buf.len() {
                break Ok(());
            }
        };
        // Even after an error: the next region must not start on bytes written here,
        // or its holes would read them.
        *end = pos;
        res?;
        // A region ending in a hole: the file must still reach its end.
        if self.file.metadata().map(|m| m.len()).unwrap_or(0) < pos {
            self.file
                .set_len(pos)
                .map_err(|source| AppendError::Write {
                    dir: self.dir.clone(),
                    source,
                })?;
        }
        Ok(Region {
            spill: Arc::clone(self),
            offset: start,
            len: pos - start,
            hash: *hasher.finalize().as_bytes(),
        })
    }
}

/// Read until `buf` is full or the stream ends; the bytes read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Write `data` at `pos` (a multiple of [`BLOCK`]), leaving out all-zero blocks.
fn write_sparse(f: &File, data: &[u8], pos: u64) -> io::Result<()> {
    let b = BLOCK as usize;
    let mut run: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let j = (i + b).min(data.len());
        let zero = data[i..j].iter().all(|&x| x == 0);
        match (zero, run) {
            (false, None) => run = Some(i),
            (true, Some(s)) => {
                f.write_all_at(&data[s..i], pos + s as u64)?;
                run = None;
            }
            _ => {}
        }
        i = j;
    }
    if let Some(s) = run {
        f.write_all_at(&data[s..], pos + s as u64)?;
    }
    Ok(())
}

/// Bytes of a [`Spill`]: `len` bytes at `offset`. See the module doc.
#[derive(Clone)]
pub struct Region {
    spill: Arc<Spill>,
    offset: u64,
    len: u64,
    hash: [u8; 32],
}

impl PartialEq for Region {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.hash == other.hash
    }
}

impl Eq for Region {}

impl std::hash::Hash for Region {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.len.hash(state);
        self.hash.hash(state);
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h: String = self.hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "Region({} bytes at {}, blake3 {h}…)",
            self.len, self.offset
        )
    }
}

impl Region {
    /// A region holding `data`, in a spill file of its own (tests, small generated
    /// content).
    pub fn from_bytes(data: &[u8]) -> io::Result<Region> {
        let spill = Spill::new().map_err(|(_, e)| e)?;
        spill.append(&mut &data[..]).map_err(|e| match e {
            AppendError::Read(e) | AppendError::Write { source: e, .. } => e,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// BLAKE3 hash of the bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The spill file holding the bytes.
    pub fn spill(&self) -> &Spill {
        &self.spill
    }

    /// Where the bytes start in [`Spill::file`] (a multiple of [`BLOCK`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Read at `off` within the region (fewer bytes only at its end).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let left = self.len.saturating_sub(off);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.spill.file.read_at(&mut buf[..n], self.offset + off)
    }

    /// The whole content in memory (small regions only: tests, messages).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; usize::try_from(self.len).map_err(io::Error::other)?];
        self.spill.file.read_exact_at(&mut v, self.offset)?;
        Ok(v)
    }

    /// The blocks of the region that hold data, as `(first block, count)` in
    /// [`BLOCK`]s from its start, ascending; the rest are holes (zeros).
    pub fn data_blocks(&self) -> io::Result<Vec<(u64, u64)>> {
        use rustix::fs::{SeekFrom, seek};
        let nblocks = self.len.div_ceil(BLOCK);
        let (start, end) = (self.offset, self.offset + self.len);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut pos = start;
        while pos < end {
            let data = match seek(&self.spill.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                // No SEEK_DATA here: all of it is data.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                    return Ok(if nblocks == 0 {
                        Vec::new()
                    } else {
                        vec![(0, nblocks)]
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if data >= end {
                break;
            }
            let hole = seek(&self.spill.file, SeekFrom::Hole(data))?.min(end);
            let (a, b) = ((data - start) / BLOCK, (hole - start).div_ceil(BLOCK));
            match out.last_mut() {
                Some(l) if l.0 + l.1 >= a => l.1 = l.1.max(b - l.0),
                _ => out.push((a, b - a)),
            }
            pos = hole.max(data + 1);
        }
        Ok(out)
    }

    /// Write the region to the start of `out` (an empty file), keeping its holes:
    /// only [`Region::data_blocks`] are copied (`copy_file_range`, or reads and writes
    /// where the kernel cannot copy between the two files), then `out` is sized.
    pub fn copy_to(&self, out: &File) -> io::Result<()> {
        let mut buf = Vec::new();
        for (a, n) in self.data_blocks()? {
            let mut off = a * BLOCK;
            let stop = ((a + n) * BLOCK).min(self.len);
            while off < stop {
                let want = (stop - off).min(1 << 30) as usize;
                let mut off_in = self.offset + off;
                let mut off_out = off;
                if buf.is_empty() {
                    match rustix::fs::copy_file_range(
                        &self.spill.file,
                        Some(&mut off_in),
                        out,
                        Some(&mut off_out),
                        want,
                    ) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(k) => {
                            off += k as u64;
                            continue;
                        }
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(
                            rustix::io::Errno::XDEV
                            | rustix::io::Errno::INVAL
                            | rustix::io::Errno::NOSYS
                            | rustix::io::Errno::OPNOTSUPP,
                        ) => buf.resize(CHUNK, 0),
                        Err(e) => return Err(e.into()),
                    }
                }
                let k = want.min(buf.len());
                self.spill
                    .file
                    .read_exact_at(&mut buf[..k], self.offset + off)?;
                out.write_all_at(&buf[..k], off)?;
                off += k as u64;
            }
        }
        out.set_len(self.len)
    }
}

#[cfg(test)]
mod tests;
