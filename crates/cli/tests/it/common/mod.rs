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

/// A temporary directory shared by the tests of one module for the whole run (a cache
/// whose appliance several tests reuse), removed when the test process exits.
///
/// A `static` is never dropped, so a `TempDir` kept in one would leave its directory
/// (an appliance cache: about 2 GB) behind after every run. The harness ends the
/// process through `exit(3)`, whether tests passed or failed, which runs `atexit`
/// handlers: the directories are removed there.
pub fn shared_tempdir(slot: &'static std::sync::OnceLock<PathBuf>) -> &'static Path {
    slot.get_or_init(|| {
        static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        extern "C" fn remove_all() {
            let dirs = match DIRS.lock() {
                Ok(mut d) => std::mem::take(&mut *d),
                Err(p) => std::mem::take(&mut *p.into_inner()),
            };
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        static REGISTER: std::sync::Once = std::sync::Once::new();
        REGISTER.call_once(|| {
            // SAFETY: `remove_all` is an `extern "C" fn()` with no arguments that does
            // not unwind (it ignores every error), as atexit(3) requires.
            let rc = unsafe { libc::atexit(remove_all) };
            assert_eq!(
                rc, 0,
                "atexit refused the cleanup of the shared test directories"
            );
        });
        let dir = tempfile::tempdir().unwrap().keep();
        DIRS.lock().unwrap().push(dir.clone());
        dir
    })
}
