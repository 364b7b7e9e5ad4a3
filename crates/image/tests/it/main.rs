//! The integration tests of kiln-image in one test binary: one link for the crate
//! instead of one per test file. Each module holds the tests of one area;
//! `common` holds the helpers they share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod faults;
mod roundtrip;
