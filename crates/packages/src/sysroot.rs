//! The installed system an appliance is made from ([`Sysroot`]): the root every
//! database, package file, host file, `/boot` and `/lib/modules` is read below.
//!
//! Invariant: a sysroot the user names is canonical ([`Sysroot::open`]), so two
//! spellings of one directory are one system (and one cache key).

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::in_root;

/// The installed system an appliance is made from: the package database is the one
/// found below `root`, and package files, host files, `/boot` and `/lib/modules` are
/// read below it too (`/`: the machine kiln runs on; `--sysroot DIR` otherwise). The
/// cache key and the build both take it, so they cannot name different systems.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sysroot {
    pub root: PathBuf,
}

impl Sysroot {
    /// The system at `root`, taken as given (see [`Sysroot::open`] for a checked,
    /// canonical one).
    pub fn new(root: impl Into<PathBuf>) -> Sysroot {
        Sysroot { root: root.into() }
    }

    /// The installed system at `dir` as the user named it (`--sysroot`): resolved to its
    /// canonical path (symlinks and `..` followed, so `/var/tmp/x/../../../` *is* `/`
    /// and gets the host's cache key), after checking that it is a directory this user
    /// can list and search. The error says which of these is wrong.
    ///
    /// ```
    /// let t = tempfile::tempdir().unwrap();
    /// std::fs::create_dir(t.path().join("sub")).unwrap();
    /// let s = kiln_packages::Sysroot::open(t.path().join("sub/..")).unwrap();
    /// assert_eq!(s.root, t.path().canonicalize().unwrap());
    /// assert!(kiln_packages::Sysroot::open("/").unwrap().is_host());
    /// let f = t.path().join("file");
    /// std::fs::write(&f, "").unwrap();
    /// let e = kiln_packages::Sysroot::open(&f).unwrap_err();
    /// assert!(e.to_string().ends_with("is not a directory: give the root directory of an installed system"));
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Sysroot, SysrootError> {
        let dir = dir.as_ref();
        let err = |why: &'static str, source: Option<std::io::Error>| SysrootError {
            path: dir.to_path_buf(),
            why,
            source,
        };
        // A path through a file fails here with ENOTDIR; `..` inside it is resolved by
        // the kernel, after the links before it, as every later open would.
        let root = std::fs::canonicalize(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err(
                "does not exist: give the root directory of an installed system",
                None,
            ),
            std::io::ErrorKind::NotADirectory => err(
                "is not a directory: give the root directory of an installed system",
                None,
            ),
            std::io::ErrorKind::PermissionDenied => err(
                "cannot be reached by this user: a directory above it cannot be searched",
                Some(e),
            ),
            _ => err("cannot be resolved", Some(e)),
        })?;
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(err(
                    "is not a directory: give the root directory of an installed system",
                    None,
                ));
            }
            Err(e) => return Err(err("cannot be read", Some(e))),
        }
        // Listing needs read permission, reaching anything below needs search (x).
        std::fs::read_dir(&root)
            .and_then(|_| std::fs::metadata(root.join(".")))
            .map_err(|e| {
                err(
                    "cannot be read by this user: run kiln as a user who can read the \
                     system, or give a copy this user can read",
                    Some(e),
                )
            })?;
        Ok(Sysroot { root })
    }

    /// True for the machine's own `/`.
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `path` (absolute inside the system) as a path on this machine.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        in_root(&self.root, path)
    }
}

/// A sysroot that cannot be used; the message names the path and what is wrong.
#[derive(Debug)]
pub struct SysrootError {
    pub path: PathBuf,
    pub why: &'static str,
    pub source: Option<std::io::Error>,
}

impl fmt::Display for SysrootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.why)
    }
}

impl Error for SysrootError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn Error + 'static))
    }
}

impl Default for Sysroot {
    fn default() -> Self {
        Sysroot::new("/")
    }
}
