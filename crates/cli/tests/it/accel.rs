//! The accelerator choice on hosts whose KVM does not run guests, played by a stand-in
//! qemu on every machine: with `accel=kvm` it fails the way such hosts do (aborts,
//! stays silent, or prints a little and stalls); with `accel=tcg` it is the real qemu.
//! `kiln boot` and `kiln run` must notice within the watchdog's limit, say so in one
//! line, finish on TCG, remember the verdict for the host's boot, and leave no qemu.
//! A stand-in whose "KVM" works (the real qemu under TCG, slow but alive) must not be
//! given up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{example_dir, kiln};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The fallback line kiln prints (its tail: the head names the failure).
const USING_TCG: &str = "; using TCG (slower); --accel kvm to insist";

fn real_qemu() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("qemu-system-x86_64 on PATH (scripts/setup-host installs qemu-system-x86)")
}

fn require_kvm_device() {
    // Auto tries KVM only where /dev/kvm opens; these tests need that attempt to
    // happen so the stand-in can fail it. Every machine this suite runs on has one.
    assert!(
        kiln_boot::kvm_usable(),
        "/dev/kvm cannot be opened: these tests play a broken KVM behind a usable /dev/kvm"
    );
}

/// The example appliance, built once for the file.
fn appliance() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let a = crate::common::shared_tempdir(&DIR).join("a");
        let root = example_dir().join("supermin.d");
        let out = Command::new(kiln())
            .args(["build", "-f", "ext2"])
            .arg(&root)
            .arg("-o")
            .arg(&a)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        a
    })
}

/// A stand-in `qemu-system-x86_64` in its own directory. Each start logs its
/// accelerator and pid to `log`.
struct StandIn {
    dir: tempfile::TempDir,
}

impl StandIn {
    fn new(kvm_behaviour: &str) -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = format!(
            r#"#!/bin/sh
accel=tcg
for a in "$@"; do case "$a" in accel=kvm) accel=kvm ;; esac; done
echo "$accel $$" >> '{log}'
if [ "$accel" = kvm ]; then
{kvm_behaviour}
fi
exec '{real}' "$@"
"#,
            log = log.display(),
            real = real_qemu().display(),
        );
        let q = dir.path().join("qemu-system-x86_64");
        fs::write(&q, script).unwrap();
        fs::set_permissions(&q, fs::Permissions::from_mode(0o755)).unwrap();
        StandIn { dir }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("qemu-system-x86_64")
    }
    /// (accelerator, pid) of every start so far.
    fn starts(&self) -> Vec<(String, u32)> {
        fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (a, p) = l.split_once(' ').unwrap();
                (a.to_string(), p.parse().unwrap())
            })
            .collect()
    }
    fn assert_none_left(&self) {
        for (_, pid) in self.starts() {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or (pid reused) not ours: not a sleeping stand-in or a qemu.
            assert!(
                !(stat.contains("(sleep)") || stat.contains("(qemu-system-x86")),
                "qemu {pid} is still there: {stat}"
            );
        }
    }
}

const ABORTS: &str = r#"echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0" >&2
kill -ABRT $$"#;
const SILENT: &str = "exec sleep 600";
const STALLS: &str = r#"printf 'SeaBIOS (version 1.16.2)\r\nBooting from ROM..\r\n'
printf 'Physical KASLR disabled: no suitable memory region!\r\n'
exec sleep 600"#;
/// KVM that works, slowly: the real qemu with TCG in its place.
const WORKS: &str = r#"for a in "$@"; do
  shift; case "$a" in accel=kvm) a=accel=tcg ;; host) a=max ;; esac; set -- "$@" "$a"
done"#;

/// `kiln boot` of the example with `qemu` found by `how` ("path": first on PATH;
/// "env": KILN_QEMU), a private memo (TMPDIR) and a watchdog of `wait` seconds.
fn boot(stand_in: &StandIn, how: &str, memo_root: &Path, wait: &str) -> (Output, Duration) {
    let mut c = Command::new(kiln());
    c.args(["boot", "--timeout", "600"])
        .arg(appliance())
        .env("TMPDIR", memo_root)
        .env_remove("LIBGUESTFS_CACHEDIR")
        .env("KILN_KVM_WAIT", wait);
    match how {
        "path" => {
            let path = std::env::var_os("PATH").unwrap();
            let mut dirs = vec![stand_in.dir.path().to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            c.env("PATH", std::env::join_paths(dirs).unwrap())
                .env_remove("KILN_QEMU");
        }
        _ => {
            c.env("KILN_QEMU", stand_in.path());
        }
    }
    let t = Instant::now();
    let out = c.output().unwrap();
    (out, t.elapsed())
}

fn greeted(out: &Output) -> bool {
    text(&out.stdout).contains("Hello from the kiln example appliance")
}

fn broken_kvm_falls_back_once_and_is_remembered(kvm: &str, how: &str, said: &str) {
    require_kvm_device();
    let q = StandIn::new(kvm);
    let memo = tempfile::tempdir().unwrap();
    let (out, took) = boot(&q, how, memo.path(), "3");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", text(&out.stdout));
    assert!(greeted(&out), "{}", text(&out.stdout));
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(USING_TCG)).collect();
    assert_eq!(lines.len(), 1, "one fallback line expected:\n{err}");
    assert!(
        lines[0].starts_with("kiln: ") && lines[0].contains(said),
        "{err}"
    );
    let accels: Vec<String> = q.starts().into_iter().map(|(a, _)| a).collect();
    assert_eq!(accels, ["kvm", "tcg"], "{err}");
    q.assert_none_left();
    eprintln!("fell back after {said:?}: the whole boot took {took:?}");

    // The verdict holds for the rest of the host's boot: straight to TCG, no wait, no
    // second line.
    let (out, _) = boot(&q, how, memo.path(), "3");
    let err = text(&out.stderr);
    assert!(out.status.success() && greeted(&out), "{err}");
    assert!(!err.contains(USING_TCG), "{err}");
    let accels: Vec<String> = q.starts().into_iter().map(|(a, _)| a).collect();
    assert_eq!(accels, ["kvm", "tcg", "tcg"], "{err}");
    q.assert_none_left();
}

#[test]
fn kvm_that_aborts_at_start_falls_back_to_tcg() {
    broken_kvm_falls_back_once_and_is_remembered(
        ABORTS,
        "path",
        "qemu failed with KVM (qemu-system-x86_64: error: failed to set MSR 0x10a",
    );
}

#[test]
fn kvm_whose_guest_stays_silent_falls_back_to_tcg() {
    broken_kvm_falls_back_once_and_is_remembered(
        SILENT,
        "env",
        "KVM did not start the guest within 3 s",
    );
}

#[test]
fn kvm_whose_guest_stalls_after_some_output_falls_back_to_tcg() {
    broken_kvm_falls_back_once_and_is_remembered(
        STALLS,
        "path",
        "KVM did not start the guest within 3 s",
    );
}

/// A slow but working KVM is kept: the guest speaks within the limit.
#[test]
fn kvm_that_runs_the_guest_is_kept() {
    require_kvm_device();
    let q = StandIn::new(WORKS);
    let memo = tempfile::tempdir().unwrap();
    let (out, _) = boot(&q, "env", memo.path(), "300");
    let err = text(&out.stderr);
    assert!(out.status.success() && greeted(&out), "{err}");
    assert!(!err.contains(USING_TCG), "{err}");
    let accels: Vec<String> = q.starts().into_iter().map(|(a, _)| a).collect();
    assert_eq!(accels, ["kvm"]);
    q.assert_none_left();
}

/// Insisting on KVM means no watchdog and no fallback: a silent KVM runs into the
/// timeout, and nothing is remembered.
#[test]
fn accel_kvm_insists() {
    require_kvm_device();
    let q = StandIn::new(SILENT);
    let memo = tempfile::tempdir().unwrap();
    let out = Command::new(kiln())
        .args(["boot", "--accel", "kvm", "--timeout", "5"])
        .arg(appliance())
        .env("TMPDIR", memo.path())
        .env("KILN_KVM_WAIT", "1")
        .env("KILN_QEMU", q.path())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains(USING_TCG), "{err}");
    let accels: Vec<String> = q.starts().into_iter().map(|(a, _)| a).collect();
    assert_eq!(accels, ["kvm"]);
    q.assert_none_left();
    assert!(
        fs::read_dir(memo.path())
            .unwrap()
            .flatten()
            .all(|e| !e.path().join("kvm-verdict").exists()),
        "a verdict was remembered for --accel kvm"
    );
}

/// `kiln run` under the same broken KVM: the command's output arrives, from TCG. The
/// fallback's line is kiln's notice: shown with `-v` (or on a terminal), never in a
/// redirected stderr that belongs to the command.
#[test]
fn kiln_run_falls_back_from_a_stalling_kvm() {
    require_kvm_device();
    for verbose in [true, false] {
        let q = StandIn::new(STALLS);
        let cache = tempfile::tempdir().unwrap();
        let mut c = Command::new(kiln());
        c.arg("run");
        if verbose {
            c.arg("-v");
        }
        let out = c
            .args([
                "--no-cwd",
                "--timeout",
                "600",
                "--packages",
                "coreutils",
                "--cachedir",
            ])
            .arg(cache.path())
            .args(["--", "sh", "-c", "uname -r; echo to-stderr >&2"])
            .env("KILN_KVM_WAIT", "3")
            .env("KILN_QEMU", q.path())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        let release = text(&out.stdout);
        assert!(
            Path::new("/boot")
                .join(format!("vmlinuz-{}", release.trim()))
                .exists(),
            "not a release of /boot: {release:?}\n{err}"
        );
        if verbose {
            assert!(
                err.contains("KVM did not start the guest within 3 s") && err.contains(USING_TCG),
                "{err}"
            );
        } else {
            assert_eq!(err, "to-stderr\n", "kiln's notices in the command's stderr");
        }
        let accels: Vec<String> = q.starts().into_iter().map(|(a, _)| a).collect();
        assert_eq!(accels, ["kvm", "tcg"], "{err}");
        q.assert_none_left();
    }
}
