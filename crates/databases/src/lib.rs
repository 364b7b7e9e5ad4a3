//! The package databases kiln knows, and the one choice between them.
//!
//! [`DRIVERS`] lists every implementation of [`kiln_packages::Database`] in supermin's
//! `--list-drivers` order; adding a database is one crate exporting a
//! [`Driver`] and one line there. Everything else — the file set stage, `prepare`, the
//! cache key, the front end's `--list-drivers` — goes through [`choose`], [`open`] and
//! [`fingerprint`], so the build and the key always read the same database.
//!
//! The choice for a root: the first driver that *detects* it (its distribution and its
//! database, as supermin detects the host), else the first whose database is merely
//! *present* (a root without `etc/os-release`, such as a test tree), else none.
//!
//! ```
//! use kiln_packages::DatabaseRoot;
//!
//! let empty = tempfile::tempdir().unwrap();
//! let at = DatabaseRoot::new(empty.path());
//! assert!(kiln_databases::choose(&at).is_none());
//! let e = kiln_databases::open(&at).unwrap_err();
//! assert!(e.to_string().contains("no package database"));
//! assert!(kiln_databases::list_drivers(&at).contains("debian/dpkg\tnot-detected\n"));
//! ```

use std::path::PathBuf;

pub use kiln_packages::{Database, DatabaseRoot, Driver, PackageError};

/// Every database kiln reads, in supermin's `--list-drivers` order.
pub const DRIVERS: &[Driver] = &[
    kiln_dpkg::DRIVER,
    kiln_rpm::OPENMANDRIVA,
    kiln_rpm::MAGEIA,
    kiln_rpm::OPENSUSE,
    kiln_rpm::IBM_POWERKVM,
    kiln_rpm::FEDORA,
];

/// No database of any known kind below the root.
#[derive(Debug, thiserror::Error)]
#[error(
    "no package database below {}: looked for {looked_for}; give the root of an \
     installed system",
    root.display()
)]
pub struct NotFound {
    pub root: PathBuf,
    pub looked_for: String,
}

/// The driver for the database below `at`, if any (see the crate doc).
pub fn choose(at: &DatabaseRoot) -> Option<&'static Driver> {
    DRIVERS
        .iter()
        .find(|d| (d.detect)(&at.root))
        .or_else(|| DRIVERS.iter().find(|d| (d.present)(&at.root)))
}

/// Open the database below `at`.
pub fn open(at: &DatabaseRoot) -> Result<Box<dyn Database>, PackageError> {
    match choose(at) {
        Some(d) => (d.open)(&at.root),
        None => Err(PackageError::new(NotFound {
            root: at.root.clone(),
            looked_for: DRIVERS
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", "),
        })),
    }
}

/// What dates the database below `at` without opening it: the chosen driver's name and
/// the paths whose `lstat` identity changes with the installed set (`None`: no
/// database).
pub fn fingerprint(at: &DatabaseRoot) -> Option<(&'static str, Vec<PathBuf>)> {
    choose(at).map(|d| (d.name, (d.fingerprint)(&at.root)))
}

/// supermin's `--list-drivers` output for the root: one `system/packager`, a tab and
/// `detected` or `not-detected` per line.
pub fn list_drivers(at: &DatabaseRoot) -> String {
    DRIVERS
        .iter()
        .map(|d| {
            let state = if (d.detect)(&at.root) {
                "detected"
            } else {
                "not-detected"
            };
            format!("{}\t{state}\n", d.name)
        })
        .collect()
}
