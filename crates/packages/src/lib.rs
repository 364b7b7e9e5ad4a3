//! Package databases, read below the root of an installed system. This crate owns:
//! - the interface every database answers ([`Database`], [`Driver`], [`Package`],
//!   [`PackageFile`], [`Resolution`]; module [`database`]);
//! - [`Sysroot`], the installed system an appliance is made from;
//! - the three implementations, each read below a root: [`dpkg`] (Debian, Ubuntu; read
//!   as text), [`rpm`] (Fedora, openSUSE, Mageia, OpenMandriva; through the `rpm`
//!   command's query interface) and [`pacman`] (Arch Linux; read as text);
//! - the one choice between them for a root ([`choose`], [`open`], [`fingerprint`],
//!   [`list_drivers`], over the list [`DRIVERS`]).
//!
//! Callers that only use a database take a `&dyn Database`; the library opens it with
//! [`open`] and computes the cache key with [`fingerprint`], so the build and the key
//! always read the same database. Adding a database is one module exporting a
//! [`Driver`] and one line in [`DRIVERS`].
//!
//! ```
//! let host = kiln_packages::Sysroot::default();
//! assert!(kiln_packages::list_drivers(&host).contains("debian/dpkg\t"));
//! ```

pub mod choice;
pub mod database;
pub mod dpkg;
pub mod pacman;
pub mod rpm;
pub mod sysroot;

pub use choice::{DRIVERS, NotFound, choose, fingerprint, list_drivers, open};
pub use database::{
    Database, Driver, FileFlags, Package, PackageError, PackageFile, Resolution, in_root,
    is_regular, os_release_id,
};
pub use sysroot::{Sysroot, SysrootError};
