//! A warm `kiln run` finds the command's package without reading the package database's
//! file lists: the owner index the first run kept in the cache answers (real qemu, the
//! host's kernel and dpkg database). The lists are made unreadable for real, as root
//! cannot be kept from reading a file by its mode: the runs after the first one happen
//! in a private mount namespace where `/var/lib/dpkg/info` is an empty tmpfs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{kiln, text};

const INFO: &str = "/var/lib/dpkg/info";

/// `kiln run --cachedir CACHE ARGS` (TCG: booting is not what this is about), in a
/// private mount namespace with the dpkg file lists hidden when `hidden`.
fn run(cache: &Path, args: &[&str], hidden: bool) -> Output {
    let mut c = if hidden {
        let mut c = Command::new("unshare");
        // The shell checks that the lists are gone before kiln starts.
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size=1m,mode=0755 kiln-no-lists {INFO} || exit 90; \
                 [ -z \"$(ls -A {INFO})\" ] || exit 91; exec \"$@\""
            ))
            .arg("sh")
            .arg(kiln());
        c
    } else {
        Command::new(kiln())
    };
    c.arg("run")
        .arg("--cachedir")
        .arg(cache)
        .args(["--accel", "tcg", "--timeout", "600"])
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The owner index files in the cache under `cache`.
fn indexes(cache: &Path) -> Vec<fs::DirEntry> {
    let dir = cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.file_name().to_string_lossy().starts_with("owners-"))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn a_warm_run_does_not_read_the_file_lists() {
    assert!(
        rustix::process::geteuid().is_root(),
        "mounting over the dpkg info directory needs root: run as root"
    );
    assert!(
        fs::read_dir(INFO).unwrap().next().is_some(),
        "{INFO} is empty on this host"
    );
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path();
    let uname = ["-v", "--no-cwd", "--", "uname", "-r"];

    let first = run(cache, &uname, false);
    assert!(first.status.success(), "{}", text(&first));
    let kept = indexes(cache);
    assert_eq!(kept.len(), 1, "{:?}", kept);
    let m = kept[0].metadata().unwrap();
    assert!(m.is_file());
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(m.uid(), rustix::process::geteuid().as_raw());

    // The precondition: without an index, the hidden lists leave uname without a
    // package (a missing --include then stops the run before anything is built).
    let fresh = tempfile::tempdir().unwrap();
    let o = run(
        fresh.path(),
        &[
            "-v",
            "--no-cwd",
            "--include",
            "/nonexistent-kiln",
            "--",
            "uname",
            "-r",
        ],
        true,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("uname: owned by no package")
            && err.contains("--include /nonexistent-kiln"),
        "{}",
        text(&o)
    );
    assert!(
        indexes(fresh.path()).is_empty(),
        "an index of no lists was kept"
    );

    // The warm run: the same package, so the same appliance, from the cache.
    let warm = run(cache, &uname, true);
    let err = String::from_utf8_lossy(&warm.stderr);
    assert!(warm.status.success(), "{}", text(&warm));
    assert_eq!(warm.stdout, first.stdout, "{}", text(&warm));
    assert!(
        err.contains("uname: from package coreutils") && err.contains("(cached)"),
        "{}",
        text(&warm)
    );
    assert_eq!(indexes(cache).len(), 1);
}
