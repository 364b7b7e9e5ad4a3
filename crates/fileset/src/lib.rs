//! kiln's file set stage: turn the parsed inputs of a supermin appliance into the exact,
//! sorted list of entries of the appliance root ([`FileSet`]).
//!
//! The types in [`entry`] are the contract with the writers that follow (chroot, ext2);
//! [`scan`] reads host objects into entries.

pub mod entry;
pub mod scan;

pub use entry::{Content, Entry, FileSet, Kind, Meta, SetError, Xattr, is_normal_abs};
