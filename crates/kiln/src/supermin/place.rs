//! Filling an output directory with a slot's files: a hard link where the output shares
//! the cache's filesystem, else a sparse copy; and the key file that records which
//! appliance an output holds.
//!
//! The sparse copy is written here because neither `std::fs::copy` nor
//! `copy_file_range(2)` keeps holes across filesystems: they would write the 4 GiB root
//! image out in full, zeros included. Only the data extents the source reports
//! (`SEEK_DATA`/`SEEK_HOLE`) are read, in bounded chunks, and all-zero chunks inside
//! them are skipped as well, so the copy is never larger on disk than the data it holds.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use kiln_cache::Key;
use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// The file in an output directory that records which cache key it holds.
pub const KEY_FILE: &str = ".kiln-key";

/// The three files of an appliance.
pub(crate) const FILES: [&str; 3] = ["kernel", "initrd", "root"];

/// How a file was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    Linked,
    Copied,
}

/// A hard link of `src` at `dst` when both are on one filesystem, else a sparse copy
/// (a symlink at `src` is copied as a symlink, never followed).
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> io::Result<Placed> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(Placed::Linked),
        // EXDEV: another filesystem, or a bind mount of the same one. EPERM: hard links
        // refused (fs.protected_hardlinks, a filesystem without links).
        Err(e) if matches!(e.raw_os_error(), Some(c) if c == Errno::XDEV.raw_os_error() || c == Errno::PERM.raw_os_error()) =>
        {
            copy(src, dst)?;
            Ok(Placed::Copied)
        }
        Err(e) => Err(e),
    }
}

/// A copy of `src` at `dst` (which must not exist): a symlink as a symlink, a regular
/// file sparsely ([`sparse_copy`]).
pub(crate) fn copy(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else {
        sparse_copy(src, dst).map(|_| ())
    }
}

/// Bytes read and written per step of a copy.
const CHUNK: usize = 1 << 20;

/// Copy regular file `src` to a new file `dst` with the same permission bits, writing
/// only the non-zero parts of the source's data extents: holes stay holes. Returns the
/// bytes written.
pub fn sparse_copy(src: &Path, dst: &Path) -> io::Result<u64> {
    let s = File::open(src)?;
    let md = s.metadata()?;
    if !md.is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let len = md.len();
    let d = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = next_data(&s, pos, len)? else {
            break;
        };
        let mut off = start;
        while off < end {
            let want = usize::try_from((end - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = s.read_at(&mut buf[..want], off)?;
            if n == 0 {
                // The file shrank underneath us: what was there is copied.
                break;
            }
            let chunk = &buf[..n];
            if chunk.iter().any(|&b| b != 0) {
                d.write_all_at(chunk, off)?;
                written += n as u64;
            }
            off += n as u64;
        }
        pos = end.max(start + 1);
    }
    d.set_len(len)?;
    d.set_permissions(fs::Permissions::from_mode(md.permissions().mode() & 0o7777))?;
    d.sync_all()?;
    Ok(written)
}

/// The next data extent `[start, end)` of `f` at or after `pos`; `None` past the last
/// one. A filesystem that does not report holes has one extent, the whole file.
fn next_data(f: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let start = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
        Ok(p) => p,
        Err(Errno::NXIO) => return Ok(None),
        Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(Some((pos, len))),
        Err(e) => return Err(e.into()),
    };
    if start >= len {
        return Ok(None);
    }
    let end = match rustix::fs::seek(f, SeekFrom::Hole(start)) {
        Ok(p) => p.min(len),
        Err(Errno::NXIO) => len,
        Err(e) => return Err(e.into()),
    };
    Ok(Some((start, end.max(start + 1).min(len))))
}

/// Write the key file into `dir`.
pub(crate) fn write_key(dir: &Path, key: &Key) -> io::Result<()> {
    fs::write(dir.join(KEY_FILE), format!("{}\n", key.as_str()))
}

/// True when `out` holds the appliance for `key`: the key file names it and the three
/// files are present.
pub fn holds_key(out: &Path, key: &Key) -> bool {
    let recorded = fs::read_to_string(out.join(KEY_FILE)).unwrap_or_default();
    recorded.trim() == key.as_str()
        && FILES
            .iter()
            .all(|f| fs::symlink_metadata(out.join(f)).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_holes_and_content() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        // A block of explicit zeros is data to the filesystem, a hole in the copy.
        f.write_all_at(&vec![0u8; 1 << 20], 40 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let dst = t.path().join("dst");
        let written = sparse_copy(&src, &dst).unwrap();
        assert!(written < 16 << 20, "wrote {written} bytes");
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let md = fs::metadata(&dst).unwrap();
        assert_eq!(md.len(), 64 << 20);
        assert!(md.blocks() * 512 < 16 << 20, "{} blocks", md.blocks());
        assert_eq!(md.permissions().mode() & 0o777, 0o640);
        // An existing destination is never overwritten.
        assert!(sparse_copy(&src, &dst).is_err());
    }

    #[test]
    fn empty_and_all_hole_files() {
        let t = tempfile::tempdir().unwrap();
        for len in [0u64, 5 << 20] {
            let src = t.path().join(format!("s{len}"));
            File::create(&src).unwrap().set_len(len).unwrap();
            let dst = t.path().join(format!("d{len}"));
            assert_eq!(sparse_copy(&src, &dst).unwrap(), 0);
            assert_eq!(fs::metadata(&dst).unwrap().len(), len);
        }
    }

    #[test]
    fn key_file_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let key = Key::new("abc123").unwrap();
        assert!(!holds_key(t.path(), &key));
        write_key(t.path(), &key).unwrap();
        assert!(!holds_key(t.path(), &key), "files missing");
        for f in FILES {
            fs::write(t.path().join(f), f).unwrap();
        }
        assert!(holds_key(t.path(), &key));
        assert!(!holds_key(t.path(), &Key::new("abc124").unwrap()));
    }
}
