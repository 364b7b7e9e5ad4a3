//! Atomic replacement of an output directory (`-o DIR`): every writer of kiln fills a
//! private sibling directory and publishes it with one rename.
//!
//! Invariants:
//! - the staging directory `.NAME.kiln-XXXXXX` sits beside `DIR` (same filesystem, so
//!   the final rename is atomic) and is created mode 0700 by `mkdtemp`; [`Staging::publish`]
//!   sets the final mode 0755 just before the rename (unless [`Staging::keep_mode`]);
//! - publishing uses `renameat2(RENAME_EXCHANGE)` when `DIR` exists, so there is no moment
//!   where `DIR` is missing or half-written (supermin's `mv` + `rename` has one); the old
//!   tree is then removed; `RENAME_NOREPLACE` when it does not exist;
//! - `DIR` must be a directory or absent: a file or a symlink at `DIR` is refused, never
//!   followed or replaced; `/` and `..` are refused;
//! - a staging directory that is dropped unpublished (error, panic) is removed, and so
//!   is one whose process is ended by SIGINT, SIGTERM or SIGHUP (through
//!   `cleanup`, before the process exits);
//! - its creator holds an exclusive `flock` on the staging directory for as long as it
//!   exists, so one left by a process that died otherwise (SIGKILL, power loss) is
//!   recognised as debris and removed by the next [`Staging::new`] for the same `DIR`,
//!   while a live build's staging directory, locked, is never touched;
//! - where `renameat2` flags are refused (`EINVAL`: filesystems without them), publishing
//!   falls back to plain renames: the old output is first moved aside, so `DIR` is
//!   briefly missing but never half-written.
//!
//! # Example
//!
//! ```
//! use kiln_outdir::Staging;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let t = tempfile::tempdir()?;
//! let out = t.path().join("appliance");
//! let staging = Staging::new(&out)?;
//! std::fs::write(staging.path().join("kernel"), b"...")?;
//! // Until here `out` is untouched; now it is replaced in one rename.
//! staging.publish()?;
//! assert!(out.join("kernel").exists());
//! # Ok(()) }
//! ```

pub mod cleanup;

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags, RenameFlags, renameat};
use rustix::io::Errno;

/// An error about the output directory, naming it.
#[derive(Debug, thiserror::Error)]
pub enum OutdirError {
    #[error("output {path}: {why}")]
    Refused { path: PathBuf, why: &'static str },
    #[error("output {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutdirError + '_ {
    move |source| OutdirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A private directory beside the output, published by one rename.
#[derive(Debug)]
pub struct Staging {
    out: PathBuf,
    tmp: Option<PathBuf>,
    keep_mode: bool,
    /// The staging directory, flock'ed for as long as this value lives.
    _lock: fs::File,
    /// Removes `tmp` if a signal ends the process first.
    cleanup: Option<crate::cleanup::Guard>,
}

/// Whether `out` currently exists as a directory; refuses anything else.
fn existing_dir(out: &Path) -> Result<bool, OutdirError> {
    match fs::symlink_metadata(out) {
        Ok(md) if md.is_dir() => Ok(true),
        Ok(md) if md.file_type().is_symlink() => Err(OutdirError::Refused {
            path: out.to_path_buf(),
            why: "is a symlink: give the real directory, or remove the link",
        }),
        Ok(_) => Err(OutdirError::Refused {
            path: out.to_path_buf(),
            why: "exists and is not a directory: remove it first",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(out)(e)),
    }
}

impl Staging {
    /// Create the staging directory for output `out`.
    pub fn new(out: &Path) -> Result<Staging, OutdirError> {
        let name = out.file_name().ok_or(OutdirError::Refused {
            path: out.to_path_buf(),
            why: "not a directory name that can be replaced (`/`, `..`)",
        })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        existing_dir(out)?;
        let prefix = staging_prefix(name);
        remove_debris(parent, &prefix);
        let (tmp, lock, cleanup) = make_locked(parent, &prefix).map_err(io_err(parent))?;
        Ok(Staging {
            out: out.to_path_buf(),
            tmp: Some(tmp),
            keep_mode: false,
            _lock: lock,
            cleanup: Some(cleanup),
        })
    }

    /// Publish with the mode the caller gave the staging directory, instead of 0755
    /// (a chroot's root directory carries the file set's own mode).
    pub fn keep_mode(&mut self) {
        self.keep_mode = true;
    }

    /// The directory to fill.
    pub fn path(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(&self.out)
    }

    /// The output directory this staging directory will replace.
    pub fn output(&self) -> &Path {
        &self.out
    }

    /// Put the staging directory in place of the output, atomically, and remove the old
    /// output tree if there was one.
    pub fn publish(mut self) -> Result<(), OutdirError> {
        let Some(tmp) = self.tmp.clone() else {
            return Ok(());
        };
        if !self.keep_mode {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io_err(&tmp))?;
        }
        let exists = existing_dir(&self.out)?;
        let (first, second) = if exists {
            (RenameFlags::EXCHANGE, RenameFlags::NOREPLACE)
        } else {
            (RenameFlags::NOREPLACE, RenameFlags::EXCHANGE)
        };
        let out = self.out.clone();
        match renameat_with(CWD, &tmp, CWD, &out, first) {
            Ok(()) => {}
            // Created or removed by someone else in between: the other way, once.
            Err(Errno::EXIST | Errno::NOENT) => match renameat_with(CWD, &tmp, CWD, &out, second) {
                Ok(()) => {}
                Err(Errno::INVAL) => plain_renames(&tmp, &out).map_err(io_err(&out))?,
                Err(e) => return Err(io_err(&out)(e.into())),
            },
            Err(Errno::INVAL) => plain_renames(&tmp, &out).map_err(io_err(&out))?,
            Err(e) => return Err(io_err(&out)(e.into())),
        }
        tracing::info!("renamed {} to {}", tmp.display(), out.display());
        // After an exchange `tmp` holds the old output: Drop removes it. After a plain
        // rename nothing is left there.
        if !fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
            self.tmp = None;
            self.cleanup = None;
        }
        Ok(())
    }
}

/// Fault injection for the tests: `KILN_OUTDIR_NO_RENAME_FLAGS=1` makes `renameat2`
/// flags look unsupported (`EINVAL`), as on filesystems without them. Only in builds
/// with the `test-hooks` feature, which the tests enable; a shipped kiln has none.
fn renameat_with(
    from_dir: impl rustix::fd::AsFd,
    from: &Path,
    to_dir: impl rustix::fd::AsFd,
    to: &Path,
    flags: RenameFlags,
) -> rustix::io::Result<()> {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("KILN_OUTDIR_NO_RENAME_FLAGS").is_some_and(|v| v == "1") {
        return Err(Errno::INVAL);
    }
    rustix::fs::renameat_with(from_dir, from, to_dir, to, flags)
}

/// Publishing without `renameat2` flags: move an existing output aside, put `tmp` in
/// its place, then remove the old tree. `DIR` is missing for a moment, never partial.
fn plain_renames(tmp: &Path, out: &Path) -> io::Result<()> {
    let mut aside = tmp.as_os_str().to_owned();
    aside.push(".old");
    let aside = PathBuf::from(aside);
    match renameat(CWD, out, CWD, &aside) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(renameat(CWD, tmp, CWD, out)?),
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = renameat(CWD, tmp, CWD, out) {
        // Put the old output back; the staging directory stays ours to remove.
        let _ = renameat(CWD, &aside, CWD, out);
        return Err(e.into());
    }
    if let Err(e) = remove_tree(&aside) {
        tracing::warn!("could not remove {}: {e}", aside.display());
    }
    Ok(())
}

/// `.NAME.kiln-`: the start of every staging directory name for output `NAME`.
fn staging_prefix(name: &OsStr) -> Vec<u8> {
    let mut p = b".".to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(b".kiln-");
    p
}

/// Make `PARENT/.NAME.kiln-XXXXXX` (0700), lock it and register its removal on a
/// signal; a racing [`remove_debris`] that took it for debris before we locked it makes
/// us start again.
fn make_locked(
    parent: &Path,
    prefix: &[u8],
) -> io::Result<(PathBuf, fs::File, crate::cleanup::Guard)> {
    loop {
        let (tmp, cleanup) = crate::cleanup::create(|| {
            let tmp = tempfile::Builder::new()
                .prefix(OsStr::from_bytes(prefix))
                .tempdir_in(parent)?
                .keep();
            let t = tmp.clone();
            Ok::<_, io::Error>((tmp, move || remove_tree(&t)))
        })?;
        let lock = match open_dir_nofollow(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                let _ = remove_tree(&tmp);
                return Err(e);
            }
        };
        lock.lock()?;
        let same = fs::symlink_metadata(&tmp)
            .ok()
            .zip(lock.metadata().ok())
            .is_some_and(|(a, b)| a.dev() == b.dev() && a.ino() == b.ino());
        if same {
            return Ok((tmp, lock, cleanup));
        }
        drop(cleanup);
    }
}

fn open_dir_nofollow(p: &Path) -> io::Result<fs::File> {
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(fs::File::from(fd))
}

/// Remove staging directories for the same output left by processes that are gone:
/// ours (same owner), not locked by a live process. Failures are only logged.
fn remove_debris(parent: &Path, prefix: &[u8]) {
    let Ok(rd) = fs::read_dir(parent) else { return };
    let euid = rustix::process::geteuid().as_raw();
    for de in rd.flatten() {
        let name = de.file_name();
        if !name.as_bytes().starts_with(prefix) {
            continue;
        }
        let p = de.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !md.is_dir() || md.uid() != euid {
            continue;
        }
        let Ok(f) = open_dir_nofollow(&p) else {
            continue;
        };
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue, // a live build's
            Err(std::fs::TryLockError::Error(_)) => continue,
        }
        let still = fs::symlink_metadata(&p)
            .ok()
            .zip(f.metadata().ok())
            .is_some_and(|(a, b)| a.dev() == b.dev() && a.ino() == b.ino());
        if !still {
            continue;
        }
        match remove_tree(&p) {
            Ok(()) => tracing::info!("removed {} (left by an interrupted build)", p.display()),
            Err(e) => tracing::warn!("could not remove {}: {e}", p.display()),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take()
            && let Err(e) = remove_tree(&t)
        {
            tracing::warn!("could not remove {}: {e}", t.display());
        }
    }
}

/// Remove a tree that may contain read-only directories, never following symlinks.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    match fs::remove_dir_all(root) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    // Make every directory writable by its owner, then retry.
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d)?;
        if !md.is_dir() {
            continue;
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
        for de in fs::read_dir(&d)? {
            let de = de?;
            if de.file_type()?.is_dir() {
                stack.push(de.path());
            }
        }
    }
    fs::remove_dir_all(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn publishes_new_and_replaces_existing() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let s = Staging::new(&out).unwrap();
        fs::write(s.path().join("a"), b"1").unwrap();
        s.publish().unwrap();
        assert_eq!(fs::read(out.join("a")).unwrap(), b"1");
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o755
        );

        // Hold the old directory open: the exchange must not disturb it.
        let old = fs::File::open(&out).unwrap();
        let s = Staging::new(&out).unwrap();
        fs::write(s.path().join("b"), b"2").unwrap();
        fs::create_dir(s.path().join("ro")).unwrap();
        fs::set_permissions(s.path().join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        s.publish().unwrap();
        drop(old);
        assert_eq!(names(&out), ["b", "ro"]);
        assert_eq!(
            names(t.path()),
            ["out"],
            "old tree removed, no staging left"
        );
    }

    #[test]
    fn dropped_staging_is_removed_and_output_kept() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep"), b"").unwrap();
        {
            let s = Staging::new(&out).unwrap();
            fs::write(s.path().join("half"), b"").unwrap();
        }
        assert_eq!(names(t.path()), ["out"]);
        assert_eq!(names(&out), ["keep"]);
    }

    #[test]
    fn refuses_files_symlinks_and_root() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"").unwrap();
        assert!(
            Staging::new(&f)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        let l = t.path().join("l");
        std::os::unix::fs::symlink(t.path(), &l).unwrap();
        assert!(
            Staging::new(&l)
                .unwrap_err()
                .to_string()
                .contains("symlink")
        );
        assert!(Staging::new(Path::new("/")).is_err());
        assert_eq!(names(t.path()), ["f", "l"]);
    }
}
