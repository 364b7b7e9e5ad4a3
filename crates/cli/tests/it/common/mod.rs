//! Helpers shared by the command-line tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// The Debian roots of the kiln tests (bootstrapped once, cached between runs).
#[path = "../../../../kiln/tests/it/common/roots.rs"]
pub mod roots;

/// The `kiln` binary under test.
pub fn kiln() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// The bundled example's directory (`examples/hello`, holding `supermin.d`).
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello")
}

/// A process's status and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
