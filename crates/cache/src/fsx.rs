//! Small wrappers over the openat family. Every call here works relative to a directory
//! handle and never follows a symlink in the last component, so a link planted inside
//! the cache is seen as a link (and refused), never followed.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// Flags for opening a directory entry as a directory without following a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Open `name` in `dir` as a directory; a symlink gives `ELOOP`, anything else `ENOTDIR`.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// `lstat` relative to `dir`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Device and inode: what "the same file" means.
pub(crate) fn ident(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// True when `fd` is still the object named `name` in `dir` (nobody renamed or
/// replaced it between our open and now).
pub(crate) fn still_named(dir: BorrowedFd<'_>, name: &str, fd: BorrowedFd<'_>) -> io::Result<bool> {
    let have = rustix::fs::fstat(fd)?;
    match lstat_at(dir, name) {
        Ok(st) => Ok(ident(&st) == ident(&have)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Open (creating if needed) a regular file for locking. Refuses symlinks (`O_NOFOLLOW`)
/// and, with `O_NONBLOCK`, cannot hang on a planted FIFO; the caller checks the type.
pub(crate) fn open_lock_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    Ok(File::from(fd))
}

/// Open an existing regular file read-only without following links or blocking on FIFOs.
pub(crate) fn open_file_ro(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Create a new file (fails if it exists), mode exactly `mode` whatever the umask.
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// Make a directory with exactly `mode` (umask-proof) and return a handle to it.
/// `EEXIST` is passed through so callers can pick another name.
pub(crate) fn make_dir(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
    let fd = open_dir(dir, name)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(fd)
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Names in a directory (not `.`/`..`), as UTF-8; other names are skipped because kiln
/// never makes them.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if let Ok(s) = std::str::from_utf8(name) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// Remove `name` in `dir` and, if it is a directory, everything inside it, without ever
/// following a symlink (links are unlinked, not entered). Entries that vanish meanwhile
/// (a racing remover) are fine.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    remove_tree_depth(dir, name, 0).map(|_| ())
}

/// [`remove_tree`], returning the bytes it freed: the allocated size of every file
/// whose last link it removed, and of the directories.
pub(crate) fn remove_tree_freeing(dir: BorrowedFd<'_>, name: &str) -> io::Result<u64> {
    remove_tree_depth(dir, name, 0)
}

fn allocated(st: &Stat) -> u64 {
    (st.st_blocks as u64).saturating_mul(512)
}

fn remove_tree_depth(dir: BorrowedFd<'_>, name: &str, depth: u32) -> io::Result<u64> {
    let st = match lstat_at(dir, name) {
        Ok(st) => st,
        Err(e) if not_found(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    if file_type(&st) != FileType::Directory {
        // Another link (a pin, its slot) keeps the data: nothing is freed then.
        let freed = if st.st_nlink <= 1 { allocated(&st) } else { 0 };
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Err(e) if e == rustix::io::Errno::NOENT => Ok(0),
            r => r.map(|()| freed).map_err(Into::into),
        };
    }
    if depth > 256 {
        return Err(io::Error::other("directory nesting deeper than 256 levels"));
    }
    let sub = match open_dir(dir, name) {
        Ok(fd) => fd,
        Err(e) if not_found(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    // The directory may have been made unwritable by a builder; it is ours, so fix that.
    let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    let mut freed = 0u64;
    for child in list(sub.as_fd())? {
        freed = freed.saturating_add(remove_tree_depth(sub.as_fd(), &child, depth + 1)?);
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Err(e) if e == rustix::io::Errno::NOENT => Ok(freed),
        r => r
            .map(|()| freed.saturating_add(allocated(&st)))
            .map_err(Into::into),
    }
}

/// Allocated bytes of the regular files directly inside `dir`.
pub(crate) fn allocated_size(dir: BorrowedFd<'_>) -> io::Result<u64> {
    let mut total = 0u64;
    for name in list(dir)? {
        if let Ok(st) = lstat_at(dir, &name) {
            total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
        }
    }
    Ok(total)
}
