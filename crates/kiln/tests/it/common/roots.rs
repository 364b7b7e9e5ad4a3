//! Debian 13 roots bootstrapped by mmdebstrap for the tests, cached between runs in
//! `$KILN_TEST_ROOTS` (default /var/tmp/kiln-test-roots). Each is built into a
//! per-process temporary directory and renamed into place when complete, so an
//! interrupted bootstrap is never taken for a root, and concurrent test processes
//! each end up with a whole one.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// The cache directory of the roots.
pub fn cache() -> PathBuf {
    std::env::var_os("KILN_TEST_ROOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kiln-test-roots"))
}

/// The root `name` (a minbase Debian 13 with `include`, comma-separated), bootstrapped
/// if it is not cached; `None` when the package sources cannot be reached.
pub fn debian_13(name: &str, include: &str) -> Option<PathBuf> {
    let cache = cache();
    let root = cache.join(name);
    if root.join("boot").exists() {
        return Some(root);
    }
    fs::create_dir_all(&cache).unwrap();
    let tmp = cache.join(format!("{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let st = Command::new("mmdebstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={include}"))
        .arg("trixie")
        .arg(&tmp)
        .status()
        .expect("mmdebstrap: run scripts/setup-host");
    if !st.success() {
        let _ = fs::remove_dir_all(&tmp);
        eprintln!("SKIPPED: mmdebstrap could not bootstrap trixie (package sources unreachable?)");
        return None;
    }
    // Another test process may have won the race: keep its root.
    if fs::rename(&tmp, &root).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    Some(root)
}

/// The small Debian 13 root the tests share: its kernel and busybox.
pub fn trixie() -> Option<PathBuf> {
    debian_13("trixie", "linux-image-amd64,busybox")
}
