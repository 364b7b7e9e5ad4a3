//! A reproducible, sparse-aware tarball of a fixed appliance.
//!
//! The archive is a function of the appliance's *content* only:
//! - entries `PREFIX/` then `PREFIX/README.fixed`, `initrd`, `kernel`, `root`, in that
//!   (byte) order; owner `root:root` (0/0), modes 0755/0644, every time set to one
//!   given value (`SOURCE_DATE_EPOCH` in the CLI, else 0);
//! - a file with at least 1 MiB of all-zero 4 KiB blocks (the 4 GiB root) is stored as a
//!   GNU sparse entry (old GNU format, read by GNU tar, bsdtar, Go's archive/tar and
//!   the `tar` crate): only its non-zero blocks are in the archive.
//!
//! The sparse map is computed from the bytes, not taken from the filesystem's extent
//! layout (which `tar::Builder`'s sparse support reports as it is): two copies of one
//! image on different filesystems, or one written with explicit zeros, must give the
//! same archive. `SEEK_DATA`/`SEEK_HOLE` only let the scan skip what is certainly zero.
//! The headers are written here with the `tar` crate's header types because its
//! `Builder` takes the map from the filesystem.
//!
//! Compression is chosen by suffix; each encoder runs single-threaded with fixed
//! settings (gzip header without name or time), so the output is deterministic too.
//! The archive is written to a temporary file beside the destination and renamed over
//! it: a failure leaves no partial tarball.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, GnuExtSparseHeader, Header};

use super::{FILES, FixedError, check_layout, io_err, write_err};

/// Granularity of holes: a 4 KiB block that is all zeros is not stored.
const BLOCK: u64 = 4096;
/// Files with less than this many zero bytes in whole blocks are stored as they are.
const SPARSE_MIN_HOLES: u64 = 1 << 20;
/// How much of a data extent is read at once.
const CHUNK: u64 = 1 << 20;

/// The compression of the tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// The compression a file name asks for: `.tar`, `.tar.gz`/`.tgz`,
    /// `.tar.xz`/`.txz`, `.tar.zst`/`.tzst`.
    pub fn from_path(path: &Path) -> Result<Compression, FixedError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let table = [
            (".tar", Compression::None),
            (".tar.gz", Compression::Gzip),
            (".tgz", Compression::Gzip),
            (".tar.xz", Compression::Xz),
            (".txz", Compression::Xz),
            (".tar.zst", Compression::Zstd),
            (".tzst", Compression::Zstd),
        ];
        table
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix))
            .map(|&(_, c)| c)
            .ok_or_else(|| FixedError::Suffix {
                path: path.to_path_buf(),
            })
    }
}

/// How to write the tarball.
#[derive(Debug, Clone)]
pub struct TarOptions {
    /// The directory name inside the archive (`appliance`, as libguestfs's
    /// `libguestfs-make-fixed-appliance --xz` names it).
    pub prefix: String,
    /// Modification time of every entry, seconds since the epoch.
    pub mtime: u64,
    pub compression: Compression,
}

impl TarOptions {
    /// Options for writing `path`: compression from its suffix, prefix `appliance`.
    pub fn for_path(path: &Path, mtime: u64) -> Result<TarOptions, FixedError> {
        Ok(TarOptions {
            prefix: "appliance".to_string(),
            mtime,
            compression: Compression::from_path(path)?,
        })
    }
}

/// What [`write_tar`] wrote.
#[derive(Debug, Clone)]
pub struct TarReport {
    /// Size of the tarball (compressed, if it is).
    pub bytes: u64,
    /// Files stored as sparse entries.
    pub sparse_files: Vec<String>,
    /// Bytes of file content stored (zero blocks of sparse files excluded).
    pub stored_bytes: u64,
}

/// Refuse a tarball destination that is a directory or a symlink (replacing it would
/// remove the directory, or the link instead of writing where it points). Callers run
/// this before a build too, so a bad destination costs no build.
pub fn check_destination(out: &Path) -> Result<(), FixedError> {
    let what = match fs::symlink_metadata(out) {
        Ok(md) if md.is_dir() => "directory",
        Ok(md) if md.file_type().is_symlink() => "symlink",
        _ => return Ok(()),
    };
    Err(FixedError::Refused {
        path: out.to_path_buf(),
        what,
    })
}

/// Write the fixed appliance in `dir` as a tarball at `out`, replacing `out` atomically.
pub fn write_tar(dir: &Path, out: &Path, opts: &TarOptions) -> Result<TarReport, FixedError> {
    check_layout(dir)?;
    check_destination(out)?;
    let name = out
        .file_name()
        .ok_or_else(|| FixedError::Suffix {
            path: out.to_path_buf(),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.kiln-"))
        .tempfile_in(parent)
        .map_err(write_err(out))?;
    let file = tmp.as_file().try_clone().map_err(write_err(out))?;
    let mut sink = Sink::new(BufWriter::with_capacity(1 << 20, file), opts.compression)
        .map_err(write_err(out))?;

    let mut report = TarReport {
        bytes: 0,
        sparse_files: Vec::new(),
        stored_bytes: 0,
    };
    let mut h = base_header(&format!("{}/", opts.prefix), opts.mtime, 0o755)?;
    h.set_entry_type(EntryType::Directory);
    h.set_size(0);
    h.set_cksum();
    sink.write_all(h.as_bytes()).map_err(write_err(out))?;
    for name in FILES {
        let path = dir.join(name);
        let stored = append_file(
            &mut sink,
            &path,
            &format!("{}/{name}", opts.prefix),
            opts,
            out,
        )?;
        if stored.sparse {
            report.sparse_files.push(name.to_string());
        }
        report.stored_bytes += stored.bytes;
    }
    // The end-of-archive marker: two zero blocks.
    sink.write_all(&[0u8; 1024]).map_err(write_err(out))?;
    let file = sink.finish().map_err(write_err(out))?;
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(write_err(out))?;
    report.bytes = file.metadata().map_err(write_err(out))?.len();
    tmp.persist(out).map_err(|e| FixedError::Write {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(report)
}

/// A header with the fixed owner, mode and time.
fn base_header(name: &str, mtime: u64, mode: u32) -> Result<Header, FixedError> {
    let bad = |e| FixedError::Io {
        path: PathBuf::from(name),
        source: e,
    };
    let mut h = Header::new_gnu();
    h.set_path(name).map_err(bad)?;
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root").map_err(bad)?;
    h.set_groupname("root").map_err(bad)?;
    h.set_mtime(mtime);
    Ok(h)
}

struct Stored {
    sparse: bool,
    bytes: u64,
}

fn append_file(
    sink: &mut Sink,
    path: &Path,
    name: &str,
    opts: &TarOptions,
    out: &Path,
) -> Result<Stored, FixedError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let data = data_map(&file, size).map_err(io_err(path))?;
    let stored: u64 = data.iter().map(|&(_, n)| n).sum();
    let mut h = base_header(name, opts.mtime, 0o644)?;
    let sparse = size - stored >= SPARSE_MIN_HOLES;
    let map = if sparse {
        let mut map = data;
        // GNU tar's convention: a file that ends in a hole ends its map with an empty
        // segment at its size, so that readers know the real length.
        if map.last().is_none_or(|&(o, n)| o + n < size) {
            map.push((size, 0));
        }
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(stored);
        let gnu = h.as_gnu_mut().ok_or_else(|| FixedError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("not a GNU header"),
        })?;
        gnu.set_real_size(size);
        for (slot, &(o, n)) in gnu.sparse.iter_mut().zip(&map) {
            slot.set_offset(o);
            slot.set_length(n);
        }
        gnu.set_is_extended(map.len() > gnu.sparse.len());
        map
    } else {
        h.set_entry_type(EntryType::Regular);
        h.set_size(size);
        vec![(0, size)]
    };
    h.set_cksum();
    sink.write_all(h.as_bytes()).map_err(write_err(out))?;
    if sparse && map.len() > 4 {
        let rest = &map[4..];
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut ext = GnuExtSparseHeader::new();
            for (slot, &(o, n)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
                slot.set_offset(o);
                slot.set_length(n);
            }
            ext.set_is_extended(i + 1 < chunks.len());
            sink.write_all(ext.as_bytes()).map_err(write_err(out))?;
        }
    }
    let mut written = 0u64;
    for &(off, len) in &map {
        copy_range(&file, off, len, sink).map_err(|e| match e {
            Copy::Read(e) => io_err(path)(e),
            Copy::Write(e) => write_err(out)(e),
        })?;
        written += len;
    }
    let pad = (512 - written % 512) % 512;
    sink.write_all(&[0u8; 512][..pad as usize])
        .map_err(write_err(out))?;
    Ok(Stored {
        sparse,
        bytes: written,
    })
}

/// Which side of a copy failed: the message names the file read, or the tarball.
enum Copy {
    Read(io::Error),
    Write(io::Error),
}

/// Copy exactly `len` bytes at `off`; a file that shrank meanwhile is an error.
fn copy_range(file: &File, off: u64, len: u64, sink: &mut Sink) -> Result<(), Copy> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], off + done)
            .map_err(Copy::Read)?;
        sink.write_all(&buf[..n]).map_err(Copy::Write)?;
        done += n as u64;
    }
    Ok(())
}

/// The file's non-zero content as sorted, merged `(offset, length)` segments on the
/// 4 KiB grid (the last one may end at a size that is not a multiple of 4 KiB).
pub fn data_map(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut segs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    // Blocks before `next` were scanned already (extents need not be block-aligned).
    let mut next = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let (start, end) = match data_extent(file, pos, size)? {
            Some(e) => e,
            None => break,
        };
        let mut b = (start / BLOCK * BLOCK).max(next);
        while b < end {
            let n = (end.div_ceil(BLOCK) * BLOCK).min(size).min(b + CHUNK) - b;
            file.read_exact_at(&mut buf[..n as usize], b)?;
            for (i, block) in buf[..n as usize].chunks(BLOCK as usize).enumerate() {
                if block.iter().all(|&x| x == 0) {
                    continue;
                }
                let o = b + i as u64 * BLOCK;
                let l = block.len() as u64;
                match segs.last_mut() {
                    Some((so, sl)) if *so + *sl == o => *sl += l,
                    _ => segs.push((o, l)),
                }
            }
            b += n;
        }
        next = b;
        pos = end.max(b);
    }
    Ok(segs)
}

/// The next data extent at or after `pos` as the filesystem reports it, or the rest of
/// the file when it cannot tell (no `SEEK_DATA` support: then everything is scanned).
fn data_extent(file: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let start = match seek(file, SeekFrom::Data(pos)) {
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(_) => return Ok(Some((pos, size))),
    };
    let end = match seek(file, SeekFrom::Hole(start)) {
        Ok(e) => e.min(size),
        Err(_) => size,
    };
    Ok(Some((start, end)))
}

/// The archive's output stream, compressed or not.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Xz(liblzma::write::XzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Sink {
    fn new(w: BufWriter<File>, c: Compression) -> io::Result<Sink> {
        Ok(match c {
            Compression::None => Sink::Plain(w),
            // No file name and time 0 in the gzip header.
            Compression::Gzip => Sink::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(w, flate2::Compression::default()),
            ),
            Compression::Xz => Sink::Xz(liblzma::write::XzEncoder::new(w, 6)),
            Compression::Zstd => Sink::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    fn finish(self) -> io::Result<File> {
        let w = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(e) => e.finish()?,
            Sink::Xz(e) => e.finish()?,
            Sink::Zstd(e) => e.finish()?,
        };
        w.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Xz(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Xz(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
#[path = "tar_tests.rs"]
mod tests;
