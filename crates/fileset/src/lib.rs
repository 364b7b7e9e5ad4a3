//! kiln's file set stage: turn the parsed inputs of a supermin appliance into the exact,
//! sorted list of entries of the appliance root ([`FileSet`]), and write a file set out
//! as a directory tree ([`chroot`]).
//!
//! The types in [`entry`] are the contract with the writers that follow (chroot, ext2);
//! [`scan`] reads host objects into entries; [`dpkg`] reads the package database;
//! [`pattern`] wraps glob(3)/fnmatch(3); [`munge`] is supermin's parent/symlink
//! completion; [`builder`] merges base images and host entries; [`resolve`] is the whole
//! stage.

pub mod builder;
pub mod chroot;
pub mod dpkg;
pub mod entry;
pub mod munge;
pub mod pattern;
pub mod resolve;
pub mod scan;

pub use builder::{SetBuilder, Source};
pub use chroot::write_chroot;
pub use entry::{Content, Entry, FileSet, Kind, Meta, SetError, Xattr, is_normal_abs};
pub use resolve::{Counts, Options, ResolveError, Resolved, resolve};
