//! `kiln build --fixed`: libguestfs's fixed-appliance layout, its reproducible sparse
//! tarball, `kiln locate` on it, and real libguestfs booting it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{example_dir, kiln, text};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(kiln())
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn build_fixed(extra: &[&Path], flags: &[&str], supermin_d: &Path) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["build".as_ref(), "--fixed".as_ref()];
    for f in flags {
        args.push(f.as_ref());
    }
    for p in extra {
        args.push(p.as_os_str());
    }
    args.push(supermin_d.as_os_str());
    run(&args)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn fixed_directory_has_libguestfs_layout_and_locate_uses_it() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("fixed");
    let o = build_fixed(
        &[],
        &["-o", out.to_str().unwrap()],
        &example_dir().join("supermin.d"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(names(&out), ["README.fixed", "initrd", "kernel", "root"]);
    for f in ["kernel", "initrd", "root"] {
        let md = fs::symlink_metadata(out.join(f)).unwrap();
        assert!(md.file_type().is_file(), "{f} is not a regular file");
    }
    let readme = fs::read_to_string(out.join("README.fixed")).unwrap();
    assert!(
        readme.contains("fixed appliance, built by kiln"),
        "{readme}"
    );
    // The root stays sparse: 4 GiB apparent, far less allocated.
    let root = fs::metadata(out.join("root")).unwrap();
    assert_eq!(root.len(), 4 << 30);
    assert!(root.blocks() * 512 < 2 << 30, "root is not sparse");
    // No staging debris beside the output.
    assert_eq!(names(t.path()), ["fixed"]);

    let o = run(&["locate".as_ref(), "--path".as_ref(), out.as_os_str()]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<String> = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = ["kernel", "initrd", "root"]
        .iter()
        .map(|f| out.join(f).display().to_string())
        .collect();
    assert_eq!(lines, want, "{}", text(&o));
}

/// Whether two (sparse) files hold the same bytes, reading only their non-zero blocks
/// (`cmp` would read 4 GiB of holes).
fn same_content(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let size = fa.metadata().unwrap().len();
    if size != fb.metadata().unwrap().len() {
        return false;
    }
    let ma = kiln::fixed::tar::data_map(&fa, size).unwrap();
    if ma != kiln::fixed::tar::data_map(&fb, size).unwrap() {
        return false;
    }
    ma.iter().all(|&(off, len)| {
        let (mut x, mut y) = (vec![0u8; len as usize], vec![0u8; len as usize]);
        fa.read_exact_at(&mut x, off).unwrap();
        fb.read_exact_at(&mut y, off).unwrap();
        x == y
    })
}

#[test]
fn fixed_tarballs_are_byte_identical_and_sparse() {
    let t = tempfile::tempdir().unwrap();
    let sd = example_dir().join("supermin.d");
    let t1 = t.path().join("one.tar");
    let t2 = t.path().join("two.tar");
    let dir = t.path().join("dir");
    let o = build_fixed(&[&t1], &["--tar"], &sd);
    assert!(o.status.success(), "{}", text(&o));
    // The second build also writes the directory: the same tarball either way.
    let o = build_fixed(&[&t2], &["-o", dir.to_str().unwrap(), "--tar"], &sd);
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (fs::read(&t1).unwrap(), fs::read(&t2).unwrap());
    assert!(a == b, "two --fixed --tar builds differ");
    // Sparse: far below the 4 GiB root.
    assert!(a.len() < 1 << 30, "tarball is {} bytes", a.len());
    // Only the tarballs and the directory: no build directory left beside them.
    assert_eq!(names(t.path()), ["dir", "one.tar", "two.tar"]);

    let list = Command::new("tar").arg("-tvf").arg(&t1).output().unwrap();
    assert!(list.status.success(), "{}", text(&list));
    let list = String::from_utf8(list.stdout).unwrap();
    let got: Vec<&str> = list
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "appliance/",
            "appliance/README.fixed",
            "appliance/initrd",
            "appliance/kernel",
            "appliance/root"
        ]
    );
    assert!(
        list.lines()
            .all(|l| l.contains("root/root") && l.contains("1970-01-01")),
        "{list}"
    );

    // Extracted with GNU tar, the files are the directory's, and root is sparse again.
    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xSf")
        .arg(&t1)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    for f in ["README.fixed", "initrd", "kernel"] {
        assert!(
            fs::read(dir.join(f)).unwrap() == fs::read(x.path().join("appliance").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        same_content(&dir.join("root"), &x.path().join("appliance/root")),
        "root differs after extraction"
    );
    assert!(
        fs::metadata(x.path().join("appliance/root"))
            .unwrap()
            .blocks()
            * 512
            < 2 << 30
    );

    // SOURCE_DATE_EPOCH sets the times.
    let t3 = t.path().join("three.tar");
    let o = Command::new(kiln())
        .args(["build", "--fixed", "--tar"])
        .arg(&t3)
        .arg(&sd)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let list = Command::new("tar").arg("-tvf").arg(&t3).output().unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("2023-11-14"),
        "{}",
        text(&list)
    );
}

#[test]
fn fixed_bad_input_fails_clearly_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let sd = example_dir().join("supermin.d");
    let zip = t.path().join("appliance.zip");
    let o = build_fixed(&[&zip], &["--tar"], &sd);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("appliance.zip: unknown tarball suffix"), "{e}");
    let o = Command::new(kiln())
        .args(["build", "--fixed", "--tar"])
        .arg(t.path().join("a.tar"))
        .arg(&sd)
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SOURCE_DATE_EPOCH=yesterday"),
        "{}",
        text(&o)
    );
    let o = build_fixed(
        &[],
        &["-f", "chroot", "-o", t.path().join("c").to_str().unwrap()],
        &sd,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("leave out -f chroot"),
        "{}",
        text(&o)
    );
    // A missing supermin.d: the build fails, no tarball and no build directory.
    let o = build_fixed(
        &[&t.path().join("a.tar")],
        &["--tar"],
        &t.path().join("nope"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(names(t.path()).is_empty(), "{:?}", names(t.path()));
    // --tar belongs to --fixed: a usage error without it.
    let o = run(&[
        "build".as_ref(),
        "-f".as_ref(),
        "ext2".as_ref(),
        "--tar".as_ref(),
        "x.tar".as_ref(),
        sd.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// libguestfs boots the fixed appliance kiln wrote for it, after it went through the
/// tarball (as it would into a container image): no supermin involved.
#[test]
fn libguestfs_test_tool_passes_on_the_fixed_appliance() {
    let sd = Path::new("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d");
    assert!(
        sd.is_dir(),
        "{} missing: run scripts/setup-host",
        sd.display()
    );
    let t = tempfile::tempdir().unwrap();
    let tarball = t.path().join("appliance.tar");
    let o = build_fixed(&[&tarball], &["--tar"], sd);
    assert!(o.status.success(), "{}", text(&o));
    let st = Command::new("tar")
        .arg("-xSf")
        .arg(&tarball)
        .arg("-C")
        .arg(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    let dir = t.path().join("appliance");
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let o = Command::new("libguestfs-test-tool")
        .env("LIBGUESTFS_PATH", &dir)
        .env("LIBGUESTFS_CACHEDIR", &cache)
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .env("LIBGUESTFS_BACKEND", "direct")
        .output()
        .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("===== TEST FINISHED OK ====="), "{all}");
    // The fixed appliance's root was the drive, not a supermin build.
    assert!(
        all.contains(&format!("file={}/root", dir.display())),
        "{all}"
    );
    assert!(!all.contains("supermin --build"), "{all}");
}
