//! Host files that are not ordinary, through the real binary: generated files of
//! procfs and sysfs, files below a directory the user cannot search, and host directory
//! times that change with unrelated activity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::text;

fn build(format: &str, supermin_d: &Path, out: &Path) -> Output {
    Command::new(common::kiln())
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
