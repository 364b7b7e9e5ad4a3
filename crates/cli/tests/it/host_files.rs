//! Host files that are not ordinary, through the real binary: generated files of
//! procfs and sysfs, files below a directory the user cannot search, and host directory
//! times that change with unrelated activity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::text;

fn build(format: &str, supermin_d: &Path, out: &Path) -> Output {
    Command::new(crate::common::kiln())
        .args(["build", "-f", format])
        .arg(supermin_d)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// `debugfs -R 'cat PATH' image`: the bytes of `path` inside an ext2 image.
fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    o.stdout
}

fn e2fsck_clean(image: &Path) {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn {}: {}",
        image.display(),
        text(&o)
    );
}

/// procfs reports size 0 and sysfs 4096 for any attribute; both used to fail the
/// build ("expected 4096 bytes, found 4096 bytes"). They are copied as read, as
/// supermin copies them.
#[test]
fn proc_and_sys_files_are_copied_as_read() {
    let files = ["/proc/version", "/sys/devices/system/cpu/possible"];
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("supermin.d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("hostfiles"), files.join("\n") + "\n").unwrap();

    let chroot = t.path().join("chroot");
    let o = build("chroot", &d, &chroot);
    assert!(o.status.success(), "{}", text(&o));
    let ext2 = t.path().join("appliance");
    let o = build("ext2", &d, &ext2);
    assert!(o.status.success(), "{}", text(&o));
    e2fsck_clean(&ext2.join("root"));
    for f in files {
        let want = fs::read(f).unwrap();
        assert!(!want.is_empty(), "{f} reads empty on this host");
        let rel = f.trim_start_matches('/');
        assert_eq!(fs::read(chroot.join(rel)).unwrap(), want, "chroot {f}");
        assert_eq!(debugfs_cat(&ext2.join("root"), f), want, "image {f}");
    }
}

/// Run `kiln build -f chroot --sysroot SYSROOT` as user and group 65534 (nobody), from
/// a copy of the binary that user can execute wherever the build tree is.
fn build_as_nobody(bin_dir: &Path, supermin_d: &Path, sysroot: &Path, out: &Path) -> Output {
    let bin = bin_dir.join("kiln");
    if !bin.exists() {
        fs::copy(crate::common::kiln(), &bin).unwrap();
    }
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["build", "-f", "chroot", "--sysroot"])
        .arg(sysroot)
        .arg(supermin_d)
        .arg("-o")
        .arg(out)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A non-root user cannot see below a 0700 directory of another user: the files are
/// left out with a warning naming the directory and what to do (they used to vanish
/// silently, as if they did not exist). The system is a private one (`--sysroot`), so
/// its package database can name files there.
#[test]
#[ignore = "needs root"]
fn files_below_an_unsearchable_directory_are_warned_about() {
    use std::os::unix::fs::{PermissionsExt, chown};
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::set_permissions(r, fs::Permissions::from_mode(0o755)).unwrap();
    let sys = r.join("sys");
    let secret = sys.join("secret");
    fs::create_dir_all(secret.join("sub")).unwrap();
    fs::create_dir(secret.join("pkg")).unwrap();
    fs::write(secret.join("f"), b"f").unwrap();
    fs::write(secret.join("sub/g"), b"g").unwrap();
    fs::write(secret.join("pkg/data"), b"p").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(sys.join("open")).unwrap();
    fs::write(sys.join("open/visible"), b"v").unwrap();
    // A Debian system whose one package has its files below the secret directory.
    fs::create_dir(sys.join("etc")).unwrap();
    fs::write(sys.join("etc/os-release"), "ID=debian\n").unwrap();
    let admin = sys.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::write(
        admin.join("status"),
        "Package: secretpkg\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n",
    )
    .unwrap();
    fs::write(
        admin.join("info/secretpkg.list"),
        "/.\n/secret\n/secret/pkg\n/secret/pkg/data\n",
    )
    .unwrap();
    let d = r.join("supermin.d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("packages"), "secretpkg\n").unwrap();
    fs::write(
        d.join("hostfiles"),
        "/secret/f\n/secret/sub/*\n/open/visible\n",
    )
    .unwrap();
    let outs = r.join("outs");
    fs::create_dir(&outs).unwrap();
    chown(&outs, Some(65534), Some(65534)).unwrap();

    // As root every file is there: the lists themselves are right.
    let o = Command::new(crate::common::kiln())
        .args(["build", "-f", "chroot", "--sysroot"])
        .arg(&sys)
        .arg(&d)
        .arg("-o")
        .arg(r.join("as-root"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let in_root = r.join("as-root/secret");
    assert_eq!(fs::read(in_root.join("f")).unwrap(), b"f", "{}", text(&o));
    assert_eq!(fs::read(in_root.join("sub/g")).unwrap(), b"g");
    assert_eq!(fs::read(in_root.join("pkg/data")).unwrap(), b"p");

    let out = outs.join("chroot");
    let o = build_as_nobody(r, &d, &sys, &out);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let warning = err
        .lines()
        .find(|l| l.contains("not searchable"))
        .unwrap_or_else(|| panic!("no warning about {}: {}", secret.display(), text(&o)));
    assert!(
        warning.contains(&format!("{}: directory not searchable", secret.display())),
        "{warning}"
    );
    // Two hostfiles patterns and the package's two paths below the directory.
    assert!(
        warning.contains("and 3 more"),
        "all paths counted: {warning}"
    );
    assert!(
        warning.contains(&format!("chmod o+x {}", secret.display())),
        "{warning}"
    );
    assert_eq!(
        err.matches("not searchable").count(),
        1,
        "one warning: {err}"
    );
    assert_eq!(fs::read(out.join("open/visible")).unwrap(), b"v");
    assert!(!out.join("secret/f").exists());
}

/// The filesystem UUID of an ext2 image (`s_uuid`, 104 bytes into the superblock).
fn root_uuid(image: &Path) -> [u8; 16] {
    use std::os::unix::fs::FileExt;
    let mut u = [0u8; 16];
    fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut u, 1024 + 104)
        .unwrap();
    u
}

/// The data extents of a sparse file (SEEK_DATA/SEEK_HOLE), as (start, end).
fn data_extents(f: &fs::File) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let len = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(data) = seek(f, SeekFrom::Data(pos)) else {
            break;
        };
        let hole = seek(f, SeekFrom::Hole(data)).unwrap();
        out.push((data, hole));
        pos = hole;
    }
    out
}

/// Two (sparse) files hold the same bytes: same length, and the data of the union of
/// their extents compares equal (holes read as zeros), without reading the holes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let mut ext = data_extents(&fa);
    ext.extend(data_extents(&fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for (start, end) in ext {
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(ba.len());
            fa.read_exact_at(&mut ba[..n], off).unwrap();
            fb.read_exact_at(&mut bb[..n], off).unwrap();
            if ba[..n] != bb[..n] {
                return false;
            }
            off += n as u64;
        }
    }
    true
}

/// `kiln checksum SUPERMIN_D`: the cache key.
fn checksum(supermin_d: &Path) -> String {
    let o = Command::new(crate::common::kiln())
        .arg("checksum")
        .arg(supermin_d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Creating and removing files in `/tmp` and `/var/tmp` (as libguestfs, supermin and
/// kiln's own staging do) changes those directories' times, which the cache key does
/// not cover; they must not change the image either: same bytes, same root UUID.
#[test]
fn unrelated_host_activity_does_not_change_the_image() {
    let list = fs::read_to_string("/var/lib/dpkg/info/base-files.list").unwrap();
    for d in ["/tmp", "/var/tmp"] {
        assert!(list.lines().any(|l| l == d), "base-files lists {d}");
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("supermin.d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("packages"), "base-files\n").unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let key_a = checksum(&d);
    let o = build("ext2", &d, &a);
    assert!(o.status.success(), "{}", text(&o));

    let mtime = |p: &str| fs::metadata(p).unwrap().modified().unwrap();
    // Activity in both directories, repeated until each one's time has moved (a change
    // within one tick of the clock leaves the time as it was).
    let start = std::time::Instant::now();
    for dir in ["/tmp", "/var/tmp"] {
        let before = mtime(dir);
        while mtime(dir) == before {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the time of {dir} never moved"
            );
            let scratch = tempfile::Builder::new()
                .prefix("kiln-activity")
                .tempdir_in(dir)
                .unwrap();
            fs::write(scratch.path().join("f"), b"x").unwrap();
            drop(scratch);
            let f = tempfile::NamedTempFile::new_in(dir).unwrap();
            drop(f);
        }
    }

    let o = build("ext2", &d, &b);
    assert!(o.status.success(), "{}", text(&o));
    // The claim is about builds with one key: the host must not have changed in a way
    // the key covers meanwhile (a package installed by someone else).
    assert_eq!(key_a, checksum(&d), "the cache key changed during the test");
    let (ra, rb) = (a.join("root"), b.join("root"));
    assert_eq!(root_uuid(&ra), root_uuid(&rb), "root UUID");
    assert!(
        same_bytes(&ra, &rb),
        "{} and {} differ",
        ra.display(),
        rb.display()
    );
    e2fsck_clean(&rb);
}
