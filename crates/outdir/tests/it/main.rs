//! The integration tests of kiln-outdir in one test binary: one link for the crate
//! instead of one per test file. Each module holds the tests of one area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod staging;
