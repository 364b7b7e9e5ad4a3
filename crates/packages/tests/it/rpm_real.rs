//! kiln's rpm reader against a root made by the real rpmbuild and rpm.

use std::path::Path;

use kiln_packages::Database;
use kiln_packages::rpm::RpmDb;

use crate::roots::rpm as rpmroot;

/// A fresh root; the tools are required (scripts/setup-host installs them).
fn rpm_root() -> (tempfile::TempDir, std::path::PathBuf) {
    assert!(
        rpmroot::tools_present(),
        "rpm and rpmbuild are needed: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = rpmroot::make_root(t.path(), &[]);
    (t, root)
}

fn listed(db: &RpmDb, names: &[&str]) -> Vec<String> {
    let r = db.resolve(names).unwrap();
    let mut v: Vec<String> = Vec::new();
    for &i in &r.packages {
        v.extend(
            db.files(i)
                .unwrap()
                .into_iter()
                .map(|f| f.path.display().to_string()),
        );
    }
    v.sort();
    v
}

#[test]
fn closure_files_and_flags_match_rpm_itself() {
    let (_t, root) = rpm_root();
    let db = RpmDb::load(&root).unwrap();
    assert_eq!(db.dbpath(), Path::new(rpmroot::DBPATH));
    assert_eq!(db.packages().len(), 4);
    let r = db.resolve(&["kiln-app", "not-installed"]).unwrap();
    let names: Vec<&str> = r
        .packages
        .iter()
        .map(|&i| db.packages()[i].display.as_str())
        .collect();
    // kiln-virtual → kiln-shell, /bin/sh → kiln-shell, libkiln.so.1()(64bit) → kiln-libs.
    assert_eq!(
        names,
        [
            "kiln-app-1.0-1.noarch",
            "kiln-libs-1.0-1.noarch",
            "kiln-shell-1.0-1.noarch"
        ]
    );
    assert_eq!(r.missing, ["not-installed"]);
    let closure = ["kiln-app", "kiln-libs", "kiln-shell"];
    assert_eq!(listed(&db, &["kiln-app"]), rpmroot::rpm_ql(&root, &closure));

    let all: Vec<kiln_packages::PackageFile> = r
        .packages
        .iter()
        .flat_map(|&i| db.files(i).unwrap())
        .collect();
    let with = |pred: fn(&kiln_packages::FileFlags) -> bool| {
        let mut v: Vec<String> = all
            .iter()
            .filter(|f| pred(&f.flags))
            .map(|f| f.path.display().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(with(|f| f.config), rpmroot::rpm_flagged(&root, &closure, 1));
    assert_eq!(with(|f| f.doc), rpmroot::rpm_flagged(&root, &closure, 2));
    assert_eq!(with(|f| f.ghost), rpmroot::rpm_flagged(&root, &closure, 64));
    assert_eq!(with(|f| f.ghost), ["/var/log/kiln-shell.log"]);
    assert_eq!(with(|f| f.config), ["/etc/kiln-shell.conf"]);
    // The ghost is listed, not on disk.
    assert!(!root.join("var/log/kiln-shell.log").exists());
    let shell = r
        .packages
        .iter()
        .find(|&&i| db.packages()[i].name == "kiln-shell");
    let conf = db.config_files(*shell.unwrap()).unwrap();
    assert_eq!(conf.len(), 1);
}

#[test]
fn detection_and_fingerprint_follow_the_root() {
    let (_t, root) = rpm_root();
    // No distribution identity: present, not detected; named fedora/rpm.
    assert!((kiln_packages::rpm::FEDORA.present)(&root));
    assert!(
        kiln_packages::rpm::DRIVERS
            .iter()
            .all(|d| !(d.detect)(&root))
    );
    assert_eq!(RpmDb::load(&root).unwrap().driver(), "fedora/rpm");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=\"opensuse-tumbleweed\"\n").unwrap();
    let detected: Vec<&str> = kiln_packages::rpm::DRIVERS
        .iter()
        .filter(|d| (d.detect)(&root))
        .map(|d| d.name)
        .collect();
    assert_eq!(detected, ["opensuse/rpm"]);
    assert_eq!(RpmDb::load(&root).unwrap().driver(), "opensuse/rpm");
    let fp = (kiln_packages::rpm::FEDORA.fingerprint)(&root);
    assert!(
        fp.contains(&root.join("usr/lib/sysimage/rpm/rpmdb.sqlite")),
        "{fp:?}"
    );
    assert!(fp.iter().all(|p| p.starts_with(&root)));
}

#[test]
fn a_root_without_a_database_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let e = RpmDb::load(t.path()).unwrap_err();
    assert!(
        e.to_string().contains("none of /usr/lib/sysimage/rpm"),
        "{e}"
    );
}
