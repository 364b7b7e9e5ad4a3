//! `--list-drivers` on this machine (Debian), compared with the real supermin's.

use std::process::Command;

use kiln_packages::{Sysroot, list_drivers};

#[test]
fn host_list_matches_supermin() {
    let ours = list_drivers(&Sysroot::default());
    assert!(ours.contains("debian/dpkg\tdetected\n"), "{ours}");
    assert_eq!(ours.lines().count(), 7);
    assert_eq!(ours.matches("\tdetected").count(), 1, "{ours}");
    // Debian's supermin is built with the dpkg handler only: every line it prints is
    // ours too.
    let out = Command::new("supermin")
        .arg("--list-drivers")
        .output()
        .unwrap();
    assert!(out.status.success());
    let theirs = String::from_utf8(out.stdout).unwrap();
    assert!(!theirs.is_empty());
    for line in theirs.lines() {
        assert!(
            ours.lines().any(|l| l == line),
            "supermin: {line:?}; kiln: {ours}"
        );
    }
}
