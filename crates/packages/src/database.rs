//! The package-database interface: what kiln asks of dpkg, rpm or pacman, and nothing
//! about how each answers. One module per database ([`dpkg`](crate::dpkg),
//! [`rpm`](crate::rpm), [`pacman`](crate::pacman)) implements [`Database`] and exports
//! its [`Driver`]s; the list of drivers lives in one place ([`DRIVERS`](crate::DRIVERS)),
//! so the file set stage, `prepare` and the cache key never name a database.
//!
//! The questions follow supermin's package handlers (`ph_dpkg.ml`, `ph_rpm.ml`,
//! `ph_pacman.ml`): is the database present under a root ([`Driver::detect`],
//! [`Driver::present`]); which packages are installed, with versions and what they
//! provide ([`Database::packages`]); the dependency closure of a set of names
//! ([`Database::resolve`]: virtual provides, file requires such as `/bin/sh`, soname
//! requires such as `libc.so.6()(64bit)`, alternatives resolved to an installed
//! provider); each package's files with their flags ([`Database::files`], or only
//! their paths, [`Database::paths`]); the
//! configuration files `prepare` archives ([`Database::config_files`]); and what dates
//! the database for the cache key ([`Driver::fingerprint`]).
//!
//! Invariants every implementation keeps:
//! - everything is read below [`Database::root`] (`/` for the host): no file of the
//!   machine kiln runs on is looked at when the root is another directory. Paths in
//!   answers are absolute *inside* the root (as the package lists name them); join them
//!   to the root with [`in_root`] to read them;
//! - answers are deterministic: [`Resolution::packages`] is sorted by
//!   [`Package::display`], provider choices do not depend on hash order;
//! - names that match nothing installed are reported in [`Resolution::missing`], never
//!   an error; an error means the database itself could not be read, and names the
//!   file or command at fault.
//!
//! ```
//! use std::path::{Path, PathBuf};
//! use kiln_packages::{Database, FileFlags, Package, PackageError, PackageFile, Resolution};
//!
//! /// A database of one package owning one file.
//! #[derive(Debug)]
//! struct One(Vec<Package>);
//!
//! impl Database for One {
//!     fn driver(&self) -> &'static str { "example/one" }
//!     fn root(&self) -> &Path { Path::new("/") }
//!     fn packages(&self) -> &[Package] { &self.0 }
//!     fn resolve(&self, names: &[&str]) -> Result<Resolution, PackageError> {
//!         let (found, missing): (Vec<&str>, Vec<&str>) =
//!             names.iter().partition(|n| **n == self.0[0].name);
//!         Ok(Resolution {
//!             packages: if found.is_empty() { vec![] } else { vec![0] },
//!             missing: missing.into_iter().map(String::from).collect(),
//!         })
//!     }
//!     fn files(&self, _: usize) -> Result<Vec<PackageFile>, PackageError> {
//!         Ok(vec![PackageFile::new("/etc/one.conf".into(), FileFlags::CONFIG)])
//!     }
//!     fn fingerprint(&self) -> Vec<PathBuf> { vec![] }
//! }
//!
//! let db = One(vec![Package::new("one", "1.0", "all", "one_1.0_all")]);
//! let r = db.resolve(&["one", "two"]).unwrap();
//! assert_eq!(r.missing, ["two"]);
//! let conf = db.config_files(r.packages[0]).unwrap();
//! assert_eq!(conf[0].path, Path::new("/etc/one.conf"));
//! ```

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};

/// An installed package, as every database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// The full version as the database writes it (`[epoch:]version[-release]`).
    pub version: String,
    pub arch: String,
    /// Virtual names (and, for rpm, sonames and capabilities) the package provides.
    pub provides: Vec<String>,
    /// supermin's name for the package, used by `--include-packagelist`: dpkg's
    /// `name_version_arch`, rpm's and pacman's `name-[epoch:]version-release.arch`.
    pub display: String,
}

impl Package {
    /// A package without provides.
    pub fn new(name: &str, version: &str, arch: &str, display: &str) -> Package {
        Package {
            name: name.to_owned(),
            version: version.to_owned(),
            arch: arch.to_owned(),
            provides: Vec::new(),
            display: display.to_owned(),
        }
    }
}

/// What a database says about one file of a package.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FileFlags {
    /// Configuration: left out of the file set (base images carry it) and archived by
    /// `prepare`. Each database applies supermin's rule for it (dpkg and pacman: a
    /// conffile/backup entry or a regular file under `/etc/`; rpm: `%config`).
    pub config: bool,
    /// Documentation (rpm `%doc`); kept like any other file, excludes decide.
    pub doc: bool,
    /// Listed but not shipped (rpm `%ghost`): never part of the file set, even when a
    /// file of that name exists on disk.
    pub ghost: bool,
}

impl FileFlags {
    pub const NONE: FileFlags = FileFlags {
        config: false,
        doc: false,
        ghost: false,
    };
    pub const CONFIG: FileFlags = FileFlags {
        config: true,
        doc: false,
        ghost: false,
    };
}

/// One file a package owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Where the file is in the installed system (and the appliance), absolute.
    pub path: PathBuf,
    /// Where its bytes really are, absolute inside the root: `path`, unless the
    /// database redirects it (dpkg diversions).
    pub source: PathBuf,
    pub flags: FileFlags,
}

impl PackageFile {
    /// A file whose bytes are at its own path.
    pub fn new(path: PathBuf, flags: FileFlags) -> PackageFile {
        PackageFile {
            source: path.clone(),
            path,
            flags,
        }
    }
}

/// The result of resolving package names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Indices into [`Database::packages`] of the closure, sorted by display name.
    pub packages: Vec<usize>,
    /// Requested names that matched no installed package (nor a provide).
    pub missing: Vec<String>,
}

/// A package database that could not be read. It carries the implementation's own
/// error (which names the file or command at fault) and shows only that error's
/// message; the cause is its [`source`](Error::source).
#[derive(Debug)]
pub struct PackageError(Box<dyn Error + Send + Sync>);

impl PackageError {
    pub fn new(e: impl Error + Send + Sync + 'static) -> PackageError {
        PackageError(Box::new(e))
    }

    /// The implementation's error, to downcast.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for PackageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for PackageError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// An opened package database.
pub trait Database: fmt::Debug + Send + Sync {
    /// supermin's `system/packager` name of the driver that opened it (`debian/dpkg`).
    fn driver(&self) -> &'static str;

    /// The root everything is read below (`/` for the host).
    fn root(&self) -> &Path;

    /// The installed packages.
    fn packages(&self) -> &[Package];

    /// Map names (as a `packages` list writes them) to installed packages and close
    /// over their dependencies, each satisfied by an installed package.
    fn resolve(&self, names: &[&str]) -> Result<Resolution, PackageError>;

    /// The files of package `package` (an index into [`Database::packages`]).
    fn files(&self, package: usize) -> Result<Vec<PackageFile>, PackageError>;

    /// The paths `package` lists ([`PackageFile::path`] of [`Database::files`]), for
    /// owner lookups, which need no flags. A database whose flags cost more reads
    /// (dpkg looks at every `/etc` path) answers this without them.
    fn paths(&self, package: usize) -> Result<Vec<PathBuf>, PackageError> {
        Ok(self.files(package)?.into_iter().map(|f| f.path).collect())
    }

    /// The configuration files of `package`, for `prepare`.
    fn config_files(&self, package: usize) -> Result<Vec<PackageFile>, PackageError> {
        let mut f = self.files(package)?;
        f.retain(|f| f.flags.config && !f.flags.ghost);
        Ok(f)
    }

    /// The paths (outside or inside the root, as they are on this machine) whose
    /// `lstat` identity changes whenever the installed set changes.
    fn fingerprint(&self) -> Vec<PathBuf>;
}

/// One way of reading a database, registered under supermin's name for it.
#[derive(Clone, Copy)]
pub struct Driver {
    /// `system/packager`, as `supermin --list-drivers` prints it.
    pub name: &'static str,
    /// supermin's detection, for a root: the distribution is the driver's and its
    /// database is present.
    pub detect: fn(&Path) -> bool,
    /// The database is present below the root, whatever the distribution says.
    pub present: fn(&Path) -> bool,
    /// Open the database below the root.
    pub open: fn(&Path) -> Result<Box<dyn Database>, PackageError>,
    /// [`Database::fingerprint`] without opening (the cache key's cheap path).
    pub fingerprint: fn(&Path) -> Vec<PathBuf>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Driver").field(&self.name).finish()
    }
}

/// `path` (absolute inside `root`, as a database names it) as a path on this machine.
///
/// ```
/// use std::path::Path;
/// assert_eq!(kiln_packages::in_root(Path::new("/"), Path::new("/etc/x")), Path::new("/etc/x"));
/// assert_eq!(kiln_packages::in_root(Path::new("/r"), Path::new("/etc/x")), Path::new("/r/etc/x"));
/// ```
pub fn in_root(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") {
        return path.to_path_buf();
    }
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// `ID` of `ROOT/etc/os-release` (quotes removed), as supermin reads it; empty when
/// absent. Drivers use it to detect their distribution.
pub fn os_release_id(root: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(in_root(root, Path::new("/etc/os-release"))) else {
        return String::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("ID="))
        .map(|v| {
            let v = v.trim();
            let q = |c| v.len() > 1 && v.starts_with(c) && v.ends_with(c);
            if q('"') || q('\'') {
                v[1..v.len() - 1].to_owned()
            } else {
                v.to_owned()
            }
        })
        .next_back()
        .unwrap_or_default()
}

/// True when `ROOT/path` is a regular file (after following symlinks, as supermin's
/// `stat`).
pub fn is_regular(root: &Path, path: &str) -> bool {
    std::fs::metadata(in_root(root, Path::new(path))).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_id_unquotes_and_takes_the_last() {
        let t = tempfile::tempdir().unwrap();
        let t = t.path();
        assert_eq!(os_release_id(t), "");
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(
            t.join("etc/os-release"),
            "NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=41\n",
        )
        .unwrap();
        assert_eq!(os_release_id(t), "fedora");
        std::fs::write(t.join("etc/os-release"), "ID='arch'\n").unwrap();
        assert_eq!(os_release_id(t), "arch");
        std::fs::write(t.join("etc/os-release"), "ID=\"opensuse-tumbleweed\"\n").unwrap();
        assert_eq!(os_release_id(t), "opensuse-tumbleweed");
        assert!(!is_regular(t, "/etc/arch-release"));
        assert!(is_regular(t, "/etc/os-release"));
    }

    #[test]
    fn package_error_shows_only_its_own_message() {
        #[derive(Debug, thiserror::Error)]
        #[error("db file /x")]
        struct E(#[source] std::io::Error);
        let e = PackageError::new(E(std::io::Error::other("boom")));
        assert_eq!(e.to_string(), "db file /x");
        assert_eq!(e.source().unwrap().to_string(), "boom");
    }
}
