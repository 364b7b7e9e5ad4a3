//! Every message names the real cause and the thing the user passed, through the real
//! binary: `--kernel`, an unusable `--sysroot`, a package missing from a `--sysroot`, a
//! full filesystem under `--tar`, `SOURCE_DATE_EPOCH` out of range, two spellings of one
//! sysroot, hostfiles patterns with `..`, and `kiln run`'s exit status for a command
//! the host does not have. Each test quotes the command it reproduces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{example_dir, kiln, text};

#[path = "../../../packages/tests/it/roots/mod.rs"]
mod dbroots;
use dbroots::rpm as rpmroot;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Builds write 4 GiB sparse images; keep them serial.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cmd() -> Command {
    let mut c = Command::new(kiln());
    c.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("KILN_SYSROOT")
        .env_remove("SUPERMIN_KERNEL")
        .env_remove("SUPERMIN_KERNEL_VERSION")
        .env_remove("SUPERMIN_MODULES")
        .env_remove("KILN_LOG");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A small installed Debian-like system: an empty dpkg database, `/etc/hostname`, and
/// merged-`/usr` links (`/lib -> usr/lib`).
fn dpkg_root(dir: &Path) -> PathBuf {
    let r = dir.join("sysroot");
    fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
    fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("etc/hostname"), "sysroot\n").unwrap();
    fs::create_dir_all(r.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    r
}

/// `kiln run --kernel X -- true` used to say `SUPERMIN_KERNEL=X: …`; it names
/// `--kernel X` and what to give it, and fails before any VM starts.
#[test]
fn kernel_option_errors_name_the_option() {
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("junk");
    fs::write(&junk, "not a kernel\n").unwrap();
    let missing = t.path().join("missing");
    for (kernel, why) in [
        (&junk, "no kernel version found in it"),
        (&missing, "cannot read it"),
    ] {
        let o = cmd()
            .arg("run")
            .arg("--cachedir")
            .arg(t.path())
            .arg("--kernel")
            .arg(kernel)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(125), "{}", text(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("--kernel {}: {why}", kernel.display())),
            "{e}"
        );
        assert!(e.contains("give --kernel"), "{e}");
        assert!(!e.contains("SUPERMIN_KERNEL"), "{e}");
    }
}

/// `kiln build -f chroot --sysroot /etc/passwd SD -o OUT` (and a sysroot that does not
/// exist) used to say "no package database below …"; it says what is wrong.
#[test]
fn a_sysroot_that_is_a_file_or_missing_says_so() {
    let t = tempfile::tempdir().unwrap();
    let sd = example_dir().join("supermin.d");
    let file = t.path().join("file");
    fs::write(&file, "").unwrap();
    let missing = t.path().join("missing");
    for (root, why) in [(&file, "is not a directory"), (&missing, "does not exist")] {
        for sub in ["build", "checksum", "locate", "prepare"] {
            let mut c = cmd();
            c.arg(sub).arg("--sysroot").arg(root);
            match sub {
                "build" => c
                    .args(["-f", "chroot"])
                    .arg(&sd)
                    .arg("-o")
                    .arg(t.path().join("o")),
                "checksum" => c.arg(&sd),
                "locate" => c.arg("--path").arg(t.path()),
                _ => c.arg("-o").arg(t.path().join("p")).arg("bash"),
            };
            let o = c.output().unwrap();
            assert_eq!(o.status.code(), Some(1), "{sub}: {}", text(&o));
            let e = stderr(&o);
            assert!(
                e.contains(&format!("--sysroot: {} {why}", root.display())),
                "{sub}: {e}"
            );
            assert!(!e.contains("no package database"), "{sub}: {e}");
        }
        // supermin --build with KILN_SYSROOT=FILE
        let o = cmd()
            .env("KILN_SYSROOT", root)
            .args(["supermin", "--build", "-f", "chroot", "-o"])
            .arg(t.path().join("o"))
            .arg(&sd)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            stderr(&o).contains(&format!("KILN_SYSROOT: {} {why}", root.display())),
            "{}",
            text(&o)
        );
    }
    assert_eq!(names(t.path()), ["file"]);
}

/// `setpriv --reuid=65534 … kiln build -f chroot --sysroot SYS SD -o OUT`, where SYS is
/// a root-owned 0700 directory: the message says this user cannot read it (it used to
/// say "no package database below SYS").
#[test]
#[ignore = "needs root"]
fn an_unreadable_sysroot_says_this_user_cannot_read_it() {
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::set_permissions(r, fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where `nobody` can run it.
    let bin = r.join("kiln");
    fs::copy(kiln(), &bin).unwrap();
    let sys = dpkg_root(r);
    fs::set_permissions(&sys, fs::Permissions::from_mode(0o700)).unwrap();
    let sd = r.join("sd");
    fs::create_dir(&sd).unwrap();
    fs::write(sd.join("hostfiles"), "/etc/hostname\n").unwrap();
    let outs = r.join("outs");
    fs::create_dir(&outs).unwrap();
    std::os::unix::fs::chown(&outs, Some(65534), Some(65534)).unwrap();
    let as_nobody = |sysroot: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(["build", "-f", "chroot", "--sysroot"])
            .arg(sysroot)
            .arg(&sd)
            .arg("-o")
            .arg(outs.join("out"))
            .output()
            .unwrap()
    };
    let o = as_nobody(&sys);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "--sysroot: {} cannot be read by this user",
            sys.display()
        )) && e.contains("Permission denied"),
        "{e}"
    );
    assert!(!e.contains("no package database"), "{e}");
    // The precondition: readable, the same build works for the same user.
    fs::set_permissions(&sys, fs::Permissions::from_mode(0o755)).unwrap();
    let o = as_nobody(&sys);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read(outs.join("out/etc/hostname")).unwrap(),
        b"sysroot\n"
    );
}

/// `kiln build -f chroot --sysroot RPMROOT SD -o OUT` with a package RPMROOT lacks used
/// to warn "is not installed on this host"; the warning names the sysroot.
#[test]
fn a_package_missing_from_a_sysroot_is_missing_there_not_on_this_host() {
    assert!(
        rpmroot::tools_present(),
        "rpm and rpmbuild: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = rpmroot::make_root(t.path(), &[]);
    let sd = t.path().join("sd");
    fs::create_dir(&sd).unwrap();
    fs::write(sd.join("packages"), "kiln-app\nkiln-not-there\n").unwrap();
    let o = cmd()
        .args(["build", "-f", "chroot", "--sysroot"])
        .arg(&root)
        .arg(&sd)
        .arg("-o")
        .arg(t.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let e = stderr(&o);
    let root = root.canonicalize().unwrap();
    assert!(
        e.contains(&format!(
            "package \"kiln-not-there\" is not installed in {}",
            root.display()
        )),
        "{e}"
    );
    assert!(!e.contains("this host"), "{e}");
    assert!(t.path().join("out/usr/bin/kiln-app").is_file());
}

/// `kiln build --fixed -o D --tar T SD` with T on a full filesystem (a 1 MiB tmpfs,
/// mounted in a private mount namespace): the error names the tarball that could not be
/// written, not the root file being read; D is not published and no partial tarball is
/// left.
#[test]
#[ignore = "needs root"]
fn a_full_filesystem_under_the_tarball_names_the_tarball() {
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let dir = t.path().join("fixed");
    let tar = mnt.join("appliance.tar");
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m kiln-full "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(&mnt)
        .arg(kiln())
        .args(["build", "--fixed", "-o"])
        .arg(&dir)
        .arg("--tar")
        .arg(&tar)
        .arg(example_dir().join("supermin.d"))
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("writing {}", tar.display())) && e.contains("No space left on device"),
        "{e}"
    );
    assert!(!e.contains("/root:"), "names the root file read: {e}");
    assert!(!dir.exists(), "D published after a failed tarball");
    // The tmpfs was private to the namespace; nothing is left in the directory.
    assert!(names(&mnt).is_empty(), "{:?}", names(&mnt));
    assert_eq!(names(t.path()), ["small"]);
}

/// `SOURCE_DATE_EPOCH=18446744073709551615 kiln build --fixed --tar T SD` was accepted
/// (GNU tar then said "out of time_t range"); it is refused before the build, and the
/// latest time a tar header holds is accepted and read back by GNU tar.
#[test]
fn source_date_epoch_out_of_range_is_refused() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let sd = example_dir().join("supermin.d");
    let tar = t.path().join("a.tar");
    for v in ["18446744073709551615", "8589934592"] {
        let o = cmd()
            .env("SOURCE_DATE_EPOCH", v)
            .args(["build", "-v", "--fixed", "--tar"])
            .arg(&tar)
            .arg(&sd)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("SOURCE_DATE_EPOCH={v}: out of range")) && e.contains("8589934591"),
            "{e}"
        );
        assert!(
            !e.contains("reading the supermin appliance"),
            "built first: {e}"
        );
        assert!(names(t.path()).is_empty());
    }
    let o = cmd()
        .env("SOURCE_DATE_EPOCH", "8589934591")
        .args(["build", "--fixed", "--tar"])
        .arg(&tar)
        .arg(&sd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let list = Command::new("tar")
        .arg("-tvf")
        .arg(&tar)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list));
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        out.lines().all(|l| l.contains("2242-03-16")),
        "{}",
        text(&list)
    );
    assert!(!stderr(&list).contains("time_t"), "{}", text(&list));
}

/// `kiln checksum --sysroot /var/tmp/x/../../../ SD` gave another key than
/// `kiln checksum SD` for the same system; `..`, a symlink to `/` and `/` itself now
/// give the host's key.
#[test]
fn one_sysroot_spelled_three_ways_has_one_key() {
    let t = tempfile::tempdir().unwrap();
    let sd = t.path().join("sd");
    fs::create_dir(&sd).unwrap();
    fs::write(sd.join("packages"), "busybox\n").unwrap();
    fs::write(sd.join("hostfiles"), "/etc/hostname\n").unwrap();
    let x = t.path().join("x");
    fs::create_dir(&x).unwrap();
    let depth = x.canonicalize().unwrap().components().count() - 1;
    let mut up = x.clone().into_os_string();
    for _ in 0..depth {
        up.push("/..");
    }
    up.push("/");
    let link = t.path().join("slash");
    std::os::unix::fs::symlink("/", &link).unwrap();
    let key = |sysroot: Option<&std::ffi::OsStr>| {
        let mut c = cmd();
        c.arg("checksum");
        if let Some(s) = sysroot {
            c.arg("--sysroot").arg(s);
        }
        let o = c.arg(&sd).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let host = key(None);
    assert_eq!(
        key(Some(up.as_os_str())),
        host,
        "{}",
        Path::new(&up).display()
    );
    assert_eq!(key(Some(link.as_os_str())), host);
    assert_eq!(key(Some("/".as_ref())), host);
    // Another system keeps its own key.
    let other = dpkg_root(t.path());
    assert_ne!(key(Some(other.as_os_str())), host);
}

/// A hostfiles pattern with `..` (`/lib/../etc/hostname`, where `/lib` is a link to
/// `usr/lib`) is left out with one warning naming its line, with `--sysroot` as on
/// `/` (below a sysroot it used to match nothing, silently).
#[test]
fn a_hostfiles_pattern_with_dotdot_is_warned_about_under_a_sysroot_too() {
    let t = tempfile::tempdir().unwrap();
    let sys = dpkg_root(t.path());
    let sd = t.path().join("sd");
    fs::create_dir(&sd).unwrap();
    fs::write(
        sd.join("hostfiles"),
        "/etc/hostname\n/lib/../etc/hostname\n/etc/./host*\n",
    )
    .unwrap();
    for sysroot in [Some(&sys), None] {
        let out = t.path().join("out");
        let mut c = cmd();
        c.args(["build", "-f", "chroot"]);
        if let Some(s) = sysroot {
            c.arg("--sysroot").arg(s);
        }
        let o = c.arg(&sd).arg("-o").arg(&out).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let e = stderr(&o);
        for (line, pat) in [(2, "/lib/../etc/hostname"), (3, "/etc/./host*")] {
            let want = format!(
                "{}:{line}: hostfiles pattern {pat} has a `.` or `..` component: left out",
                sd.join("hostfiles").display()
            );
            assert_eq!(e.matches(&want).count(), 1, "{sysroot:?}: {e}");
        }
        assert!(out.join("etc/hostname").is_file(), "{}", text(&o));
    }
}

/// `kiln run -- kiln-no-such-command` exited 125; as `env`, `docker run` and `podman run`
/// it exits 127 for a command not found, and 126 for one that cannot be run.
#[test]
fn a_command_the_host_lacks_exits_127_and_one_it_cannot_run_126() {
    let t = tempfile::tempdir().unwrap();
    let not_exec = t.path().join("data.txt");
    fs::write(&not_exec, "text\n").unwrap();
    let env = Command::new("env")
        .arg("kiln-no-such-command")
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(127), "env's convention");
    for (what, want) in [
        (Path::new("kiln-no-such-command"), 127),
        (&t.path().join("missing/cmd"), 127),
        (&not_exec, 126),
    ] {
        let o = cmd()
            .arg("run")
            .arg("--cachedir")
            .arg(t.path())
            .arg("--")
            .arg(what)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(want), "{}", text(&o));
        assert!(
            stderr(&o).contains(&what.display().to_string()),
            "{}",
            text(&o)
        );
    }
}
