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
//! - a staging directory that is dropped unpublished (error, panic) is removed.
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

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, renameat_with};

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
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.kiln-", name.to_string_lossy()))
            .tempdir_in(parent)
            .map_err(io_err(parent))?
            .keep();
        Ok(Staging {
            out: out.to_path_buf(),
            tmp: Some(tmp),
            keep_mode: false,
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
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOENT) => {
                renameat_with(CWD, &tmp, CWD, &out, second).map_err(|e| io_err(&out)(e.into()))?
            }
            Err(e) => return Err(io_err(&out)(e.into())),
        }
        tracing::info!("renamed {} to {}", tmp.display(), out.display());
        // After an exchange `tmp` holds the old output: Drop removes it. After a plain
        // rename nothing is left there.
        if !fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
            self.tmp = None;
        }
        Ok(())
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
