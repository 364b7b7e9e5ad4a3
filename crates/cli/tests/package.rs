//! The Debian packages made by `scripts/package`: reproducible, lintian-clean, and,
//! installed on this machine, kiln becomes the system's supermin for unmodified
//! libguestfs until kiln-supermin is purged and Debian's supermin is back as it was.
//!
//! A test binary of its own, not a module of `tests/it`: it installs and purges the
//! packages on the host (`dpkg -i`, a diversion of `/usr/bin/supermin`), which would
//! change the dpkg database and the system's supermin under the other tests' feet.
//! Cargo runs test binaries one after another, so this one never overlaps them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/common/mod.rs"]
mod common;
use common::{example_dir, kiln, text};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run scripts/package on the kiln under test, writing into `out`; the two .deb paths.
fn package(out: &Path) -> (PathBuf, PathBuf) {
    let o = Command::new("bash")
        .arg(repo().join("scripts/package"))
        .env("KILN_BINARY", kiln())
        .env("KILN_PACKAGE_OUT", out)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut debs: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    debs.sort();
    let names: Vec<String> = debs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("kiln-supermin_") && names[0].ends_with("_all.deb"),
        "{names:?}"
    );
    assert!(
        names[1].starts_with("kiln_") && names[1].ends_with(".deb"),
        "{names:?}"
    );
    (debs[1].clone(), debs[0].clone())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn packages_are_reproducible_complete_and_lintian_clean() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (kiln_a, sm_a) = package(a.path());
    let (kiln_b, sm_b) = package(b.path());
    assert!(
        fs::read(&kiln_a).unwrap() == fs::read(&kiln_b).unwrap(),
        "kiln .deb differs between runs"
    );
    assert!(
        fs::read(&sm_a).unwrap() == fs::read(&sm_b).unwrap(),
        "kiln-supermin .deb differs"
    );

    let list = ok(Command::new("dpkg-deb").arg("-c").arg(&kiln_a));
    for path in [
        "./usr/bin/kiln",
        "./usr/share/man/man1/kiln.1.gz",
        "./usr/share/man/man1/kiln-build.1.gz",
        "./usr/share/bash-completion/completions/kiln",
        "./usr/share/zsh/vendor-completions/_kiln",
        "./usr/share/fish/vendor_completions.d/kiln.fish",
        "./usr/share/doc/kiln/copyright",
        "./usr/share/doc/kiln/README.md.gz",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{list}"
        );
    }
    assert!(list.lines().all(|l| l.contains(" root/root ")), "{list}");
    let depends = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&kiln_a)
        .arg("Depends"));
    assert!(depends.contains("libc6 (>="), "Depends: {depends}");
    let recommends = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&kiln_a)
        .arg("Recommends"));
    assert!(
        recommends.contains("qemu-system"),
        "Recommends: {recommends}"
    );
    let list = ok(Command::new("dpkg-deb").arg("-c").arg(&sm_a));
    assert!(list.contains("./usr/bin/supermin -> kiln"), "{list}");
    // Debian's libguestfs depends on supermin: kiln-supermin provides the supermin
    // version kiln's front end speaks (while diverting Debian's, so both coexist).
    let provides = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&sm_a)
        .arg("Provides"));
    assert_eq!(provides.trim(), "supermin (= 5.2.2)");
    let speaks = ok(Command::new(kiln()).args(["supermin", "--version"]));
    assert!(speaks.starts_with("supermin 5.2.2 "), "{speaks}");

    let o = run(Command::new("lintian")
        .arg("--pedantic")
        .arg(&kiln_a)
        .arg(&sm_a));
    let out = String::from_utf8_lossy(&o.stdout);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", text(&o));
    // lintian exits 0 or with 2 for warnings only; anything else is a failure to run.
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn sha256(path: &str) -> String {
    ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn diversions() -> String {
    let mut v: Vec<String> = ok(Command::new("dpkg-divert").arg("--list"))
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v.join("\n")
}

/// Puts the machine back when the test ends, however it ends: purges what the test
/// installed and drops a diversion that a half-finished removal left behind.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        for pkg in ["kiln-supermin", "kiln"] {
            if installed(pkg) {
                let _ = Command::new("dpkg").args(["--purge", pkg]).status();
            }
        }
        let left = Command::new("dpkg-divert")
            .args(["--listpackage", "/usr/bin/supermin"])
            .output();
        if let Ok(o) = left
            && String::from_utf8_lossy(&o.stdout).trim() == "kiln-supermin"
        {
            let _ = Command::new("dpkg-divert")
                .args([
                    "--package",
                    "kiln-supermin",
                    "--remove",
                    "--rename",
                    "--divert",
                    "/usr/bin/supermin.distrib",
                    "/usr/bin/supermin",
                ])
                .status();
        }
    }
}

#[test]
#[ignore = "needs root"]
fn installed_packages_make_kiln_the_supermin_and_purge_restores_debian() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test installs packages: run it as root"
    );
    assert!(
        installed("supermin"),
        "Debian's supermin is not installed: run scripts/setup-host"
    );
    for pkg in ["kiln", "kiln-supermin"] {
        assert!(
            !installed(pkg),
            "{pkg} is installed already; this test installs and purges it: purge it first"
        );
    }
    let before_divert = diversions();
    let before_sum = sha256("/usr/bin/supermin");
    let before_version = ok(Command::new("supermin").arg("--version"));
    assert!(!before_version.contains("kiln"), "{before_version}");

    let debs = tempfile::tempdir().unwrap();
    let (kiln_deb, sm_deb) = package(debs.path());
    let _restore = Restore;

    ok(Command::new("dpkg").arg("-i").arg(&kiln_deb).arg(&sm_deb));
    let check_installed = || {
        let v = ok(Command::new("supermin").arg("--version"));
        assert!(v.contains("(kiln "), "supermin --version: {v}");
        assert_eq!(
            fs::read_link("/usr/bin/supermin").unwrap(),
            Path::new("kiln")
        );
        assert_eq!(sha256("/usr/bin/supermin.distrib"), before_sum);
        let d = ok(Command::new("dpkg-divert").args(["--list", "/usr/bin/supermin"]));
        assert_eq!(
            d.trim(),
            "diversion of /usr/bin/supermin to /usr/bin/supermin.distrib by kiln-supermin"
        );
    };
    check_installed();
    // Fault injection, to check by hand that a failure midway leaves the machine as it
    // was (the guard purges and removes the diversion).
    if std::env::var_os("KILN_TEST_FAIL_AFTER_INSTALL").is_some() {
        panic!("failing on purpose after installing (KILN_TEST_FAIL_AFTER_INSTALL)");
    }
    // A reinstall (dpkg runs the maintainer scripts as for an upgrade) keeps one
    // consistent diversion.
    ok(Command::new("dpkg").arg("-i").arg(&sm_deb));
    check_installed();
    assert!(
        ok(Command::new("bash").args(["-c", "type -P kiln"])).trim() == "/usr/bin/kiln",
        "kiln is not /usr/bin/kiln"
    );

    // Unmodified libguestfs, no bind mount, no namespace: it runs /usr/bin/supermin.
    let cache = tempfile::tempdir().unwrap();
    let o = run(Command::new("libguestfs-test-tool")
        .env("LIBGUESTFS_CACHEDIR", cache.path())
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .env("LIBGUESTFS_BACKEND", "direct")
        .env_remove("LIBGUESTFS_PATH"));
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("===== TEST FINISHED OK ====="), "{all}");
    // kiln built it: its appliance is in kiln's cache layout (slots), not supermin's.
    let cachedir = cache
        .path()
        .join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    let slots = fs::read_dir(&cachedir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("slot-")
        })
        .count();
    assert!(
        slots >= 1,
        "no kiln cache slot in {}: {all}",
        cachedir.display()
    );

    // Purge: Debian's supermin is back, byte for byte, and the diversions are as before.
    ok(Command::new("dpkg").args(["--purge", "kiln-supermin"]));
    assert!(!Path::new("/usr/bin/supermin.distrib").exists());
    let md = fs::symlink_metadata("/usr/bin/supermin").unwrap();
    assert!(
        md.file_type().is_file(),
        "/usr/bin/supermin is not a file again"
    );
    assert_eq!(sha256("/usr/bin/supermin"), before_sum);
    assert_eq!(diversions(), before_divert);
    ok(Command::new("dpkg").args(["--verify", "supermin"]));
    assert_eq!(
        ok(Command::new("supermin").arg("--version")),
        before_version
    );
    // And it works: Debian's supermin builds the example appliance.
    let chroot = tempfile::tempdir().unwrap();
    let o = run(Command::new("supermin")
        .args(["--build", "-f", "chroot", "-o"])
        .arg(chroot.path().join("out"))
        .arg(example_dir().join("supermin.d")));
    assert!(o.status.success(), "{}", text(&o));
    assert!(chroot.path().join("out/init").exists(), "{}", text(&o));
    // kiln itself goes too.
    ok(Command::new("dpkg").args(["--purge", "kiln"]));
    assert!(!Path::new("/usr/bin/kiln").exists());
    assert!(!installed("kiln") && !installed("kiln-supermin"));
}
