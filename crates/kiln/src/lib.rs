//! kiln, the library: the build pipeline ([`pipeline`]) that turns a supermin appliance
//! into an output (for now `-f chroot`), stage by stage; later also `locate`.
//!
//! This crate only sequences the stages (each a crate of its own) and carries their
//! errors; it holds no stage logic itself.

pub mod pipeline;

pub use pipeline::{BuildError, BuildOptions, BuildReport, Format, build};
