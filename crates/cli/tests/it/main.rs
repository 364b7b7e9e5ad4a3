//! The integration tests of kiln-cli in one test binary: one link for the crate
//! instead of one per test file. Each module holds the tests of one area;
//! `common` holds the helpers they share.
//!
//! `tests/package.rs` stays a binary of its own: it installs packages on the host,
//! which the tests here must not see change under them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod accel;
mod big_members;
mod build_cli;
mod build_messages;
mod cache_cli;
mod cargo_runner;
mod completions;
mod debian_13_host;
mod fixed;
mod gc_freed;
mod hello;
mod host_files;
mod hostile;
mod interrupt;
mod libguestfs;
mod outputs;
mod package_rpm_pacman;
mod prepare_boot;
mod run;
mod run_contents;
mod run_owners;
mod run_stdio;
mod run_sysroot;
mod run_warm;
mod supermin_compare;
mod supermin_frontend;
mod terminal_json;
