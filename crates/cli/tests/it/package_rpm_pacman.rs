//! The rpm and pacman packages made by `scripts/package --format rpm|pacman`:
//! byte-identical across builds, with the metadata Fedora's and Arch's tools read
//! (kiln-supermin provides supermin 5.2.2, conflicts with and replaces the
//! distribution's supermin), rpmlint-clean, and, installed into an empty root with
//! rpm and pacman themselves, exactly the expected files with /usr/bin/supermin a
//! link to kiln. The Debian packages are tested in package.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{kiln, text};

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The supermin version kiln's front end speaks (`supermin --version`).
const SUPERMIN: &str = "5.2.2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run scripts/package --format `format` on the kiln under test, writing into `out`;
/// the package files it wrote, sorted by name.
fn package(format: &str, out: &Path) -> Vec<PathBuf> {
    let o = Command::new("bash")
        .arg(repo().join("scripts/package"))
        .args(["--format", format])
        .env("KILN_BINARY", kiln())
        .env("KILN_PACKAGE_OUT", out)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut files: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_string).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The time every package is stamped with: the date of the Debian changelog's entry
/// (scripts/package's default SOURCE_DATE_EPOCH).
fn source_date_epoch() -> String {
    let changelog = fs::read_to_string(repo().join("packaging/debian/changelog")).unwrap();
    let trailer = changelog
        .lines()
        .find_map(|l| l.strip_prefix(" -- "))
        .unwrap();
    let date = trailer.split_once("  ").unwrap().1;
    ok(Command::new("date").args(["-d", date, "+%s"]))
        .trim()
        .to_string()
}

fn arch() -> String {
    ok(Command::new("uname").arg("-m")).trim().to_string()
}

/// Every path under `root` (relative, files and links only), except those under `skip`.
fn tree(root: &Path, skip: &str) -> BTreeSet<String> {
    let out = ok(Command::new("find")
        .arg(".")
        .args(["(", "-type", "f", "-o", "-type", "l", ")"])
        .current_dir(root));
    out.lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .filter(|l| !l.starts_with(skip))
        .collect()
}

/// The files both formats install for kiln (paths as Fedora and Arch lay them out).
fn kiln_files() -> Vec<String> {
    let mut v: Vec<String> = [
        "usr/bin/kiln",
        "usr/share/bash-completion/completions/kiln",
        "usr/share/zsh/site-functions/_kiln",
        "usr/share/fish/vendor_completions.d/kiln.fish",
        "usr/share/doc/kiln/README.md",
        "usr/share/licenses/kiln/LICENSE-MIT",
        "usr/share/licenses/kiln/LICENSE-APACHE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for page in [
        "kiln",
        "kiln-boot",
        "kiln-build",
        "kiln-cache",
        "kiln-checksum",
        "kiln-completions",
        "kiln-gc",
        "kiln-locate",
        "kiln-prepare",
        "kiln-run",
        "kiln-supermin",
    ] {
        v.push(format!("usr/share/man/man1/{page}.1.gz"));
    }
    v
}

fn supermin_files() -> Vec<String> {
    [
        "usr/bin/supermin",
        "usr/share/man/man1/supermin.1.gz",
        "usr/share/licenses/kiln-supermin/LICENSE-MIT",
        "usr/share/licenses/kiln-supermin/LICENSE-APACHE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Checks what an installed root holds: the two packages' files and nothing else
/// (outside the package database), kiln runs, and supermin is a link to it.
fn check_installed_root(root: &Path, db: &str) {
    let mut want: BTreeSet<String> = kiln_files().into_iter().collect();
    want.extend(supermin_files());
    assert_eq!(tree(root, db), want);
    assert_eq!(
        fs::read_link(root.join("usr/bin/supermin")).unwrap(),
        Path::new("kiln")
    );
    assert_eq!(
        fs::read_link(root.join("usr/share/man/man1/supermin.1.gz")).unwrap(),
        Path::new("kiln-supermin.1.gz")
    );
    let v = ok(Command::new(root.join("usr/bin/supermin")).arg("--version"));
    assert_eq!(v.trim(), format!("supermin {SUPERMIN} (kiln {VERSION})"));
}

// --- rpm ------------------------------------------------------------------------------

/// The two rpm files in `dir`: (kiln, kiln-supermin).
fn rpms(files: &[PathBuf]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = files.iter().map(|p| name(p)).collect();
    assert_eq!(
        names,
        [
            format!("kiln-{VERSION}-1.{}.rpm", arch()),
            format!("kiln-supermin-{VERSION}-1.noarch.rpm")
        ],
        "rpm files"
    );
    (files[0].clone(), files[1].clone())
}

fn rpmq(rpm: &Path, what: &[&str]) -> String {
    ok(Command::new("rpm").arg("-qp").args(what).arg(rpm))
}

#[test]
fn rpm_packages_are_reproducible_complete_and_rpmlint_clean() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (kiln_a, sm_a) = rpms(&package("rpm", a.path()));
    let (kiln_b, sm_b) = rpms(&package("rpm", b.path()));
    for (x, y) in [(&kiln_a, &kiln_b), (&sm_a, &sm_b)] {
        assert!(
            fs::read(x).unwrap() == fs::read(y).unwrap(),
            "{} differs between two builds",
            name(x)
        );
    }

    // kiln-supermin: supermin by name and version, in place of the distribution's.
    let provides = lines(&rpmq(&sm_a, &["--provides"]));
    assert!(
        provides.contains(&format!("supermin = {SUPERMIN}")),
        "{provides:?}"
    );
    assert_eq!(lines(&rpmq(&sm_a, &["--conflicts"])), set(&["supermin"]));
    assert_eq!(
        lines(&rpmq(&sm_a, &["--obsoletes"])),
        set(&["supermin < 6"])
    );
    let requires = lines(&rpmq(&sm_a, &["--requires"]));
    assert!(
        requires.contains(&format!("kiln = {VERSION}-1")),
        "{requires:?}"
    );
    let mut want: Vec<String> = supermin_files().iter().map(|f| format!("/{f}")).collect();
    want.push("/usr/share/licenses/kiln-supermin".into());
    assert_eq!(
        lines(&rpmq(&sm_a, &["--list"])),
        want.into_iter().collect::<BTreeSet<_>>()
    );
    let dump = rpmq(&sm_a, &["--dump"]);
    let link = dump
        .lines()
        .find(|l| l.starts_with("/usr/bin/supermin "))
        .unwrap();
    assert!(link.ends_with(" kiln"), "{link}");

    // kiln: its files, all root's; requires only the libraries the binary links.
    let mut want: Vec<String> = kiln_files().iter().map(|f| format!("/{f}")).collect();
    want.extend([
        "/usr/share/doc/kiln".into(),
        "/usr/share/licenses/kiln".into(),
    ]);
    assert_eq!(
        lines(&rpmq(&kiln_a, &["--list"])),
        want.into_iter().collect::<BTreeSet<_>>()
    );
    let owners = rpmq(&kiln_a, &["--qf", "[%{FILEUSERNAME}:%{FILEGROUPNAME}\n]"]);
    assert!(owners.lines().all(|l| l == "root:root"), "{owners}");
    let requires = rpmq(&kiln_a, &["--requires"]);
    for r in requires.lines() {
        assert!(
            [
                "libc.so.6",
                "libm.so.6",
                "libgcc_s.so.1",
                "ld-linux",
                "rtld(",
                "rpmlib("
            ]
            .iter()
            .any(|p| r.starts_with(p)),
            "unexpected Requires: {r}\n{requires}"
        );
    }
    assert!(requires.contains("libc.so.6()(64bit)"), "{requires}");
    assert_eq!(
        lines(&rpmq(&kiln_a, &["--recommends"])),
        set(&["qemu-system-x86-core"])
    );
    assert_eq!(
        rpmq(&kiln_a, &["--qf", "%{BUILDTIME} %{BUILDHOST}"]),
        format!("{} kiln.reproducible", source_date_epoch())
    );

    // rpmlint, with Fedora's conventions (packaging/rpm/rpmlint.toml): no errors, and
    // only the warnings that file explains.
    let o = Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("packaging/rpm/rpmlint.toml"))
        .arg(&kiln_a)
        .arg(&sm_a)
        .arg(repo().join("packaging/rpm/kiln.spec"))
        .env("HOME", a.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let explained = [
        format!(
            "kiln-supermin.noarch: W: self-obsoletion supermin < 6 obsoletes supermin = {SUPERMIN}"
        ),
        format!("kiln.{}: W: no-manual-page-for-binary kiln", arch()),
        "kiln-supermin.noarch: W: no-manual-page-for-binary supermin".to_string(),
        format!("kiln.spec: W: invalid-url Source0: kiln-{VERSION}-staged.tar"),
    ];
    let findings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(": E: ") || l.contains(": W: "))
        .collect();
    assert!(
        out.contains(" 0 errors,") && findings.iter().all(|l| explained.iter().any(|e| e == l)),
        "rpmlint found more than the explained warnings:\n{}",
        text(&o)
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[ignore = "needs root"]
fn rpm_packages_install_into_an_empty_root_and_uninstall() {
    assert!(
        rustix::process::geteuid().is_root(),
        "rpm --root chroots: run this test as root"
    );
    let out = tempfile::tempdir().unwrap();
    let (kiln_rpm, sm_rpm) = rpms(&package("rpm", out.path()));
    let root = tempfile::tempdir().unwrap();
    let rpm = |args: &[&str]| {
        let mut c = Command::new("rpm");
        c.arg("--root")
            .arg(root.path())
            .args(["--dbpath", "/usr/lib/sysimage/rpm"])
            .args(args);
        c
    };
    // --nodeps: the empty root has no libc package to satisfy kiln's Requires.
    ok(rpm(&["--nodeps", "-i"]).arg(&kiln_rpm).arg(&sm_rpm));
    check_installed_root(root.path(), "usr/lib/sysimage/rpm/");
    assert_eq!(
        ok(&mut rpm(&["-q", "--whatprovides", "supermin"])).trim(),
        format!("kiln-supermin-{VERSION}-1.noarch")
    );
    assert!(
        ok(&mut rpm(&["-q", "--provides", "kiln-supermin"]))
            .lines()
            .any(|l| l == format!("supermin = {SUPERMIN}"))
    );
    ok(&mut rpm(&["-V", "--nodeps", "kiln", "kiln-supermin"]));

    // Uninstalling (as the README says) leaves nothing of kiln behind.
    ok(&mut rpm(&["-e", "kiln-supermin", "kiln"]));
    assert_eq!(tree(root.path(), "usr/lib/sysimage/rpm/"), BTreeSet::new());
}

// --- pacman ---------------------------------------------------------------------------

/// The two pacman package files: (kiln, kiln-supermin).
fn pkgs(files: &[PathBuf]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = files.iter().map(|p| name(p)).collect();
    assert_eq!(
        names,
        [
            format!("kiln-{VERSION}-1-{}.pkg.tar.zst", arch()),
            format!("kiln-supermin-{VERSION}-1-any.pkg.tar.zst")
        ],
        "pacman package files"
    );
    (files[0].clone(), files[1].clone())
}

/// A member of a package (.PKGINFO, .BUILDINFO) as text.
fn member(pkg: &Path, member: &str) -> String {
    ok(Command::new("bsdtar").arg("-xOf").arg(pkg).arg(member))
}

/// `key = value` lines of a .PKGINFO, comments dropped.
fn pkginfo(pkg: &Path) -> BTreeSet<String> {
    member(pkg, ".PKGINFO")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn pacman_packages_are_reproducible_complete_and_declare_supermin() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // makepkg refuses to run as root: as root, scripts/package runs it as nobody.
    let (kiln_a, sm_a) = pkgs(&package("pacman", a.path()));
    let (kiln_b, sm_b) = pkgs(&package("pacman", b.path()));
    for (x, y) in [(&kiln_a, &kiln_b), (&sm_a, &sm_b)] {
        assert!(
            fs::read(x).unwrap() == fs::read(y).unwrap(),
            "{} differs between two builds",
            name(x)
        );
    }

    // .PKGINFO is what pacman reads; namcap is not in Debian, so its fields are
    // checked here, all of them but the installed size.
    let packager = "packager = kiln developers <kiln@example.org>";
    let common = |pkgname: &str, arch: &str| {
        set(&[
            &format!("pkgname = {pkgname}"),
            "pkgbase = kiln",
            &format!("pkgver = {VERSION}-1"),
            "url = https://example.invalid/kiln",
            &format!("builddate = {}", source_date_epoch()),
            packager,
            &format!("arch = {arch}"),
            "license = MIT OR Apache-2.0",
        ])
    };
    let mut info = pkginfo(&kiln_a);
    assert!(info.iter().any(|l| l.starts_with("size = ")), "{info:?}");
    info.retain(|l| !l.starts_with("size = "));
    let mut want = common("kiln", &arch());
    want.extend(set(&[
        "pkgdesc = Build, cache and boot VM appliances from the host's own files",
        // What the binary links (ldd: libc, libm; libgcc_s), nothing else.
        "depend = glibc",
        "depend = gcc-libs",
        "optdepend = qemu-system-x86: kiln boot and kiln run start appliances under qemu",
        "optdepend = kiln-supermin: kiln as the system's supermin, for libguestfs",
    ]));
    assert_eq!(info, want);

    let mut info = pkginfo(&sm_a);
    info.retain(|l| !l.starts_with("size = "));
    let mut want = common("kiln-supermin", "any");
    want.extend(set(&[
        "pkgdesc = Makes kiln the system's supermin (for libguestfs)",
        &format!("depend = kiln={VERSION}-1"),
        &format!("provides = supermin={SUPERMIN}"),
        "conflict = supermin",
        "replaces = supermin",
    ]));
    assert_eq!(info, want);

    // .BUILDINFO records the build: one fixed directory, makepkg's own options.
    let buildinfo = member(&kiln_a, ".BUILDINFO");
    for line in [
        "builddir = /tmp/kiln-makepkg/build",
        "startdir = /tmp/kiln-makepkg",
        &format!("builddate = {}", source_date_epoch()),
        packager,
        "options = !strip",
    ] {
        assert!(buildinfo.lines().any(|l| l == line), "{line}:\n{buildinfo}");
    }

    // The files, all root's, with their times from SOURCE_DATE_EPOCH.
    let listing = ok(Command::new("bsdtar").arg("-tvf").arg(&kiln_a));
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| l.split_whitespace().nth(8).unwrap().to_string())
        .filter(|p| !p.starts_with('.'))
        .collect();
    assert_eq!(files, kiln_files().into_iter().collect());
    for l in listing.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f[2] == "root" && f[3] == "root", "not root's: {l}");
    }
    let mtree = ok(Command::new("sh")
        .arg("-c")
        .arg("bsdtar -xOf \"$0\" .MTREE | gzip -d")
        .arg(&kiln_a));
    let times: BTreeSet<&str> = mtree
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("time="))
        .collect();
    assert_eq!(
        times,
        BTreeSet::from([format!("{}.0", source_date_epoch()).as_str()]),
        "{mtree}"
    );
    let listing = ok(Command::new("bsdtar").arg("-tvf").arg(&sm_a));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('l') && l.ends_with("usr/bin/supermin -> kiln")),
        "{listing}"
    );
}

#[test]
#[ignore = "needs root"]
fn pacman_packages_install_into_an_empty_root_and_uninstall() {
    assert!(
        rustix::process::geteuid().is_root(),
        "pacman installs only as root: run this test as root"
    );
    let out = tempfile::tempdir().unwrap();
    let (kiln_pkg, sm_pkg) = pkgs(&package("pacman", out.path()));
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("var/lib/pacman")).unwrap();
    // The host's pacman.conf (Debian's) wants signatures and a keyring; these files
    // are local and unsigned, as makepkg makes them.
    let conf = out.path().join("pacman.conf");
    fs::write(
        &conf,
        "[options]\nArchitecture = auto\nSigLevel = Never\nLocalFileSigLevel = Never\n",
    )
    .unwrap();
    let pacman = |args: &[&str]| {
        let mut c = Command::new("pacman");
        c.arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(&conf)
            .arg("--noconfirm")
            .args(args);
        c
    };
    // -dd: the empty root has no glibc package to satisfy kiln's depends.
    ok(pacman(&["-dd", "-U"]).arg(&kiln_pkg).arg(&sm_pkg));
    check_installed_root(root.path(), "var/lib/pacman/");

    let qi = ok(&mut pacman(&["-Qi", "kiln-supermin"]));
    for (field, value) in [
        ("Provides", format!("supermin={SUPERMIN}")),
        ("Conflicts With", "supermin".to_string()),
        ("Replaces", "supermin".to_string()),
        ("Depends On", format!("kiln={VERSION}-1")),
    ] {
        assert!(
            qi.lines().any(|l| l.starts_with(field)
                && l.split_once(':').map(|(_, v)| v.trim()) == Some(value.as_str())),
            "{field}: {value} missing:\n{qi}"
        );
    }
    let owner = ok(pacman(&["-Qo"]).arg(root.path().join("usr/bin/supermin")));
    assert!(owner.contains(" is owned by kiln-supermin "), "{owner}");
    ok(&mut pacman(&["-Qkk", "kiln", "kiln-supermin"]));

    // Uninstalling (as the README says) leaves nothing of kiln behind.
    ok(&mut pacman(&["-R", "kiln-supermin", "kiln"]));
    assert_eq!(tree(root.path(), "var/lib/pacman/"), BTreeSet::new());
}
