//! kiln as a library: build an appliance from a supermin appliance ([`pipeline`]),
//! locate (build and cache) the appliance a VM launcher boots ([`locate`]), and make the
//! appliance one command needs ([`run`], what `kiln run` boots).
//!
//! - [`pipeline`]: inputs → file set → output, one call per stage crate; this crate
//!   only sequences the stages and carries their errors.
//! - [`locate`]: the search path walk (supermin → fixed → old-style) and the pinned
//!   handle callers get ([`locate::Pinned`]).
//! - [`supermin`]: `supermin --build`'s contract (`--if-newer`, `OUT` filled from a cache
//!   slot or built straight into, atomically replaced), for kiln's supermin front end.
//! - [`guard`]: an output never destroys an input (refused before any work).
//! - [`key`]: the cache key of a supermin appliance (a checksum of everything that ends
//!   up in it, cheap enough for every launch).
//! - [`run`]: a command line → the supermin.d holding the command and what it needs
//!   (its package found by owner lookup, or the file with its `#!` interpreter or
//!   shared-library closure), built through [`locate`]; the VM side is `kiln-boot`.
//!
//! The per-user cache itself (slots, locks, pins, gc) is the `kiln-cache` crate.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let appliance = kiln::locate(&kiln::LocateOptions::default())?;
//! println!("kernel {}", appliance.kernel().display());
//! println!("initrd {}", appliance.initrd().display());
//! if let Some(root) = appliance.root() {
//!     println!("root {} UUID {:?}", root.display(), appliance.root_uuid());
//! }
//! // Until `appliance` is dropped these files are this process's own hard links: a
//! // rebuild by another process cannot swap them underneath (or pair them with
//! // another build's root UUID).
//! # Ok(()) }
//! ```

pub mod fixed;
pub mod guard;
pub mod key;
pub mod locate;
pub mod pipeline;
pub mod prepare;
pub mod run;
pub mod supermin;

pub use kiln_cache as cache;
/// The package databases: the interface, the dpkg, rpm and pacman readers, and the
/// choice between them (for callers that map files to packages, as [`run`] does).
pub use kiln_packages as databases;
pub use kiln_packages::Sysroot;
pub use locate::{LocateError, LocateOptions, Pinned, locate};
pub use pipeline::{
    ApplianceReport, BuildError, BuildOptions, BuildReport, Format, build, build_into,
};
