//! The package databases kiln knows, and the one choice between them.
//!
//! [`DRIVERS`] lists every implementation of [`Database`](crate::Database) in supermin's
//! `--list-drivers` order; adding a database is one module exporting a
//! [`Driver`] and one line there. Everything else — the file set stage, `prepare`, the
//! cache key, the front end's `--list-drivers` — goes through [`choose`], [`open`] and
//! [`fingerprint`], so the build and the key always read the same database.
//!
//! The choice for a root: the first driver that *detects* it (its distribution and its
//! database, as supermin detects the host), else the first whose database is merely
//! *present* (a root without `etc/os-release`, such as a test tree), else none.
//!
//! ```
//! use kiln_packages::Sysroot;
//!
//! let empty = tempfile::tempdir().unwrap();
//! let at = Sysroot::new(empty.path());
//! assert!(kiln_packages::choose(&at).is_none());
//! let e = kiln_packages::open(&at).unwrap_err();
//! assert!(e.to_string().contains("no package database"));
//! assert!(kiln_packages::list_drivers(&at).contains("debian/dpkg\tnot-detected\n"));
//! ```

use std::path::PathBuf;

use crate::{Database, Driver, PackageError, Sysroot, dpkg, pacman, rpm};

/// Every database kiln reads, in supermin's `--list-drivers` order.
pub const DRIVERS: &[Driver] = &[
    pacman::DRIVER,
    dpkg::DRIVER,
    rpm::OPENMANDRIVA,
    rpm::MAGEIA,
    rpm::OPENSUSE,
    rpm::IBM_POWERKVM,
    rpm::FEDORA,
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
pub fn choose(at: &Sysroot) -> Option<&'static Driver> {
    DRIVERS
        .iter()
        .find(|d| (d.detect)(&at.root))
        .or_else(|| DRIVERS.iter().find(|d| (d.present)(&at.root)))
}

/// Open the database below `at`.
pub fn open(at: &Sysroot) -> Result<Box<dyn Database>, PackageError> {
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
pub fn fingerprint(at: &Sysroot) -> Option<(&'static str, Vec<PathBuf>)> {
    choose(at).map(|d| (d.name, (d.fingerprint)(&at.root)))
}

/// supermin's `--list-drivers` output for the root: one `system/packager`, a tab and
/// `detected` or `not-detected` per line.
pub fn list_drivers(at: &Sysroot) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn seven_drivers_in_supermin_order() {
        let t = tempfile::tempdir().unwrap();
        let names: Vec<&str> = DRIVERS.iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            [
                "arch/pacman",
                "debian/dpkg",
                "openmandriva/rpm",
                "mageia/rpm",
                "opensuse/rpm",
                "ibm_powerkvm/rpm",
                "fedora/rpm"
            ]
        );
        let at = Sysroot::new(t.path());
        assert_eq!(
            list_drivers(&at),
            names
                .iter()
                .map(|n| format!("{n}\tnot-detected\n"))
                .collect::<String>()
        );
        assert!(fingerprint(&at).is_none());
    }

    #[test]
    fn a_present_database_is_chosen_and_a_detected_one_wins() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let at = Sysroot::new(r);
        fs::create_dir_all(r.join("var/lib/pacman/local")).unwrap();
        fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
        // Both present, neither detected: the first in the list.
        assert_eq!(choose(&at).map(|d| d.name), Some("arch/pacman"));
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/debian_version"), "13.1\n").unwrap();
        assert_eq!(choose(&at).map(|d| d.name), Some("debian/dpkg"));
        assert_eq!(open(&at).unwrap().driver(), "debian/dpkg");
        assert!(list_drivers(&at).contains("debian/dpkg\tdetected\n"));
        assert!(list_drivers(&at).contains("arch/pacman\tnot-detected\n"));
        let (name, paths) = fingerprint(&at).unwrap();
        assert_eq!(name, "debian/dpkg");
        assert_eq!(paths[0], r.join("var/lib/dpkg/status"));
    }
}
