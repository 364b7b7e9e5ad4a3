//! kiln's file set stage: turn the parsed inputs of a supermin appliance into the exact,
//! sorted list of entries of the appliance root ([`FileSet`]). Writing a set out is the
//! writers' job (`kiln-image`: the ext2 image and the `chroot` tree).
//!
//! Modules: [`entry`] holds the types that are the contract with the writers that follow
//! (chroot, ext2); [`scan`] reads host objects into entries; the package database is
//! read through the interface of `kiln-packages` (a `&dyn Database` the caller chooses
//! and opens; this crate names no database); pattern matching is `kiln-pattern`'s (glob(3)/fnmatch(3)); [`munge`] is
//! supermin's parent/symlink completion, in-process; [`layout`] is the root's
//! merged-/usr links, which come with every appliance made from it; [`builder`] merges base images and
//! host entries into one tree, resolving paths through the set's own symlinks;
//! [`mod@resolve`] runs the whole stage with supermin's counts.
//!
//! Invariants and choices (details in each module):
//! - the output is a valid [`FileSet`]: sorted, unique, parents are directories, hard
//!   links name earlier files; the same inputs on the same host give the same set;
//! - nothing is read through a shell or an external program; no host path outside the
//!   package lists, hostfiles globs and (later) added trees is ever looked at;
//! - the root `/` is 0755, 0:0, time 0 (a tarball's own `./` entry is ignored);
//! - directory metadata: a host directory's metadata wins over a base image's (supermin
//!   chroot behaviour; its ext2 output keeps the tarball's, see [`builder`]);
//! - hard links: host files sharing an inode stay hard links; tarball hard links become
//!   separate files with the same bytes;
//! - unreadable host files, and host files below a directory the user cannot search,
//!   are left out with a warning naming them, never written as
//!   empty files; packages that are not installed are warned about and ignored.

pub mod access;
pub mod builder;
pub mod entry;
pub mod layout;
pub mod munge;
/// The pattern matcher, re-exported for crates that still reach it through the file
/// set (it lives in `kiln-pattern`).
pub use kiln_pattern as pattern;
pub mod resolve;
pub mod scan;

pub use builder::{SetBuilder, Source};
pub use entry::{Content, Entry, FileSet, Kind, Meta, Region, SetError, Xattr, is_normal_abs};
pub use resolve::{Counts, Options, ResolveError, Resolved, resolve};
