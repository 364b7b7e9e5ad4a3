use super::*;

/// A synthetic dpkg root: `status`, `diversions` and `.list` files.
fn fake_root(status: &str, lists: &[(&str, &str)], diversions: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let admin = t.path().join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::write(admin.join("status"), status).unwrap();
    if !diversions.is_empty() {
        fs::write(admin.join("diversions"), diversions).unwrap();
    }
    for (name, content) in lists {
        fs::write(admin.join("info").join(format!("{name}.list")), content).unwrap();
    }
    t
}

const STATUS: &str = "\
Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21
Pre-Depends: libc6 (>= 2.34)

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36
Conffiles:
 /etc/ld.so.conf.d/x86_64-linux-gnu.conf 593ad12389ab2b6f952e7ede67b8fbbf
 /etc/old.conf 0123 obsolete

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 2.36

Package: app
Status: install ok installed
Architecture: amd64
Version: 1.0
Depends: perl:any, usrmerge | usr-is-merged, awk, libc6 (>= 2.3) [amd64], gone
Pre-Depends: dash

Package: perl
Status: install ok installed
Architecture: amd64
Multi-Arch: allowed
Version: 5.36

Package: usr-is-merged
Status: install ok installed
Architecture: all
Version: 35

Package: usrmerge
Status: deinstall ok config-files
Architecture: all
Version: 35

Package: mawk
Status: install ok installed
Architecture: amd64
Multi-Arch: foreign
Provides: awk
Version: 1.3

Package: gawk
Status: install ok installed
Architecture: amd64
Multi-Arch: foreign
Provides: awk
Version: 5.2

Package: dash
Status: install ok triggers-pending
Architecture: amd64
Version: 0.5

Package: tool32
Status: install ok installed
Architecture: i386
Version: 1
Depends: libc6, mawk

Package: half
Status: install ok half-configured
Architecture: amd64
Version: 1
";

fn names(db: &DpkgDb, r: &Resolution) -> Vec<String> {
    r.packages
        .iter()
        .map(|&i| db.package(i).display())
        .collect()
}

#[test]
fn parses_status_and_native_arch() {
    let t = fake_root(STATUS, &[], "");
    let db = DpkgDb::load(t.path()).unwrap();
    assert_eq!(db.native_arch, "amd64");
    // `half-configured` and `config-files` are not installed.
    assert_eq!(db.packages().len(), 10);
    let libc = &db.packages()[1];
    assert!(libc.multi_arch_same);
    assert_eq!(
        libc.conffiles,
        [PathBuf::from("/etc/ld.so.conf.d/x86_64-linux-gnu.conf")]
    );
    let app = db.packages().iter().find(|p| p.name == "app").unwrap();
    assert_eq!(app.depends.len(), 6);
    assert_eq!(
        app.depends[0],
        [Dep {
            name: "dash".into(),
            qual: ArchQual::None
        }]
    );
    assert_eq!(
        app.depends[1],
        [Dep {
            name: "perl".into(),
            qual: ArchQual::Any
        }]
    );
    assert_eq!(app.depends[2].len(), 2);
}

#[test]
fn closure_uses_any_provides_and_first_installed_alternative() {
    let t = fake_root(STATUS, &[], "");
    let db = DpkgDb::load(t.path()).unwrap();
    let r = db.resolve(&["app", "nonexistent", "half"]);
    assert_eq!(
        names(&db, &r),
        [
            "app_1.0_amd64",
            "dash_0.5_amd64",
            // `awk` is virtual: the first provider by name.
            "gawk_5.2_amd64",
            "libc6_2.36_amd64",
            "perl_5.36_amd64",
            "usr-is-merged_35_all",
        ]
    );
    assert_eq!(r.missing, ["nonexistent", "half"]);
}

#[test]
fn provider_already_chosen_wins() {
    let t = fake_root(STATUS, &[], "");
    let db = DpkgDb::load(t.path()).unwrap();
    let r = db.resolve(&["mawk", "app"]);
    let n = names(&db, &r);
    assert!(n.contains(&"mawk_1.3_amd64".to_string()), "{n:?}");
    assert!(!n.iter().any(|p| p.starts_with("gawk")), "{n:?}");
}

#[test]
fn multiarch_names_and_qualifiers() {
    let t = fake_root(STATUS, &[], "");
    let db = DpkgDb::load(t.path()).unwrap();
    // Plain names mean the native architecture (or all), as supermin.
    assert_eq!(names(&db, &db.resolve(&["libc6"])), ["libc6_2.36_amd64"]);
    assert_eq!(
        names(&db, &db.resolve(&["libc6:i386"])),
        ["libc6_2.36_i386"]
    );
    assert_eq!(
        names(&db, &db.resolve(&["libc6:native"])),
        ["libc6_2.36_amd64"]
    );
    assert_eq!(
        names(&db, &db.resolve(&["usr-is-merged:any"])),
        ["usr-is-merged_35_all"]
    );
    // A foreign-arch package is never picked for a plain name...
    let r = db.resolve(&["tool32"]);
    assert!(r.packages.is_empty());
    assert_eq!(r.missing, ["tool32"]);
    // ...but can be asked for; its own deps follow its architecture, and a
    // Multi-Arch: foreign package of another architecture satisfies them.
    assert_eq!(
        names(&db, &db.resolve(&["tool32:i386"])),
        ["libc6_2.36_i386", "mawk_1.3_amd64", "tool32_1_i386"]
    );
}

#[test]
fn files_lists_and_diversions() {
    let t = fake_root(
        STATUS,
        &[
            ("libc6:amd64", "/.\n/lib\n/lib/libc.so.6\n"),
            ("dash", "/.\n/bin\n/bin/sh\n/bin/dash\n"),
            ("perl", "/usr/bin/perl\n/usr/bin/x\n"),
        ],
        "/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/x\n/usr/bin/x.real\n:\n/usr/bin/perl\n/usr/bin/perl.orig\nother\n",
    );
    let db = DpkgDb::load(t.path()).unwrap();
    let idx = |n: &str| db.packages().iter().position(|p| p.name == n).unwrap();
    assert_eq!(
        db.files(idx("libc6")).unwrap(),
        [PathBuf::from("/lib"), "/lib/libc.so.6".into()]
    );
    assert_eq!(db.files(idx("dash")).unwrap().len(), 3);
    // No .list file for a package: an error naming the file.
    let e = db.files(idx("mawk")).unwrap_err();
    assert!(e.to_string().contains("mawk.list"), "{e}");
    // The diverting package keeps its own file; others and local diversions redirect.
    assert_eq!(
        db.source_of("dash", Path::new("/bin/sh")),
        Path::new("/bin/sh")
    );
    assert_eq!(
        db.source_of("bash", Path::new("/bin/sh")),
        Path::new("/bin/sh.distrib")
    );
    assert_eq!(
        db.source_of("perl", Path::new("/usr/bin/x")),
        Path::new("/usr/bin/x.real")
    );
    assert_eq!(
        db.source_of("perl", Path::new("/usr/bin/perl")),
        Path::new("/usr/bin/perl.orig")
    );
    assert_eq!(
        db.source_of("perl", Path::new("/usr/bin/y")),
        Path::new("/usr/bin/y")
    );
}

#[test]
fn missing_status_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let e = DpkgDb::load(t.path()).unwrap_err();
    assert!(e.to_string().contains("var/lib/dpkg/status"), "{e}");
}

#[test]
fn interface_flags_config_files_and_applies_diversions() {
    use crate::Database;
    let t = fake_root(
        STATUS,
        &[(
            "libc6:amd64",
            "/.\n/etc\n/etc/ld.so.conf.d/x86_64-linux-gnu.conf\n/etc/ld.so.conf\n/lib/libc.so.6\n",
        )],
        "/lib/libc.so.6\n/lib/libc.so.6.real\n:\n",
    );
    // A regular file under /etc/ below the root is config; /etc itself is not.
    fs::create_dir_all(t.path().join("etc")).unwrap();
    fs::write(t.path().join("etc/ld.so.conf"), b"include\n").unwrap();
    let db = DpkgDb::load(t.path()).unwrap();
    let i = db
        .packages()
        .iter()
        .position(|p| p.name == "libc6")
        .unwrap();
    let files = Database::files(&db, i).unwrap();
    let config: Vec<&Path> = files
        .iter()
        .filter(|f| f.flags.config)
        .map(|f| f.path.as_path())
        .collect();
    assert_eq!(
        config,
        [
            Path::new("/etc/ld.so.conf.d/x86_64-linux-gnu.conf"),
            Path::new("/etc/ld.so.conf")
        ]
    );
    let libc = files.iter().find(|f| f.path == Path::new("/lib/libc.so.6"));
    assert_eq!(
        libc.map(|f| f.source.as_path()),
        Some(Path::new("/lib/libc.so.6.real"))
    );
    assert_eq!(Database::config_files(&db, i).unwrap().len(), 2);
    // The paths alone are the files' paths, diverted or not.
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(Database::paths(&db, i).unwrap(), paths);
    assert_eq!(Database::packages(&db)[i].display, "libc6_2.36_amd64");
    assert_eq!(
        Database::fingerprint(&db),
        [
            t.path().join("var/lib/dpkg/status"),
            t.path().join("var/lib/dpkg/diversions")
        ]
    );
}

#[test]
fn driver_detects_debian_roots_with_a_database() {
    let t = fake_root(STATUS, &[], "");
    // A database without a Debian identity is present but not detected (as supermin).
    assert!((DRIVER.present)(t.path()));
    assert!(!(DRIVER.detect)(t.path()));
    fs::create_dir_all(t.path().join("etc")).unwrap();
    fs::write(t.path().join("etc/debian_version"), b"12.8\n").unwrap();
    assert!((DRIVER.detect)(t.path()));
    let empty = tempfile::tempdir().unwrap();
    assert!(!(DRIVER.present)(empty.path()) && !(DRIVER.detect)(empty.path()));
    let e = (DRIVER.open)(empty.path()).unwrap_err();
    assert!(e.to_string().contains("var/lib/dpkg/status"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn a_package_name_from_status_never_leads_out_of_info() {
    // A hostile status names a package `../../secret`: its "file list" would be
    // `info/../../secret.list`, outside the database. It is refused, naming status.
    let t = fake_root(
        "Package: ../../secret\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n",
        &[],
        "",
    );
    fs::write(t.path().join("var/lib/secret.list"), "/etc/shadow\n").unwrap();
    fs::write(t.path().join("var/lib/secret:amd64.list"), "/etc/shadow\n").unwrap();
    let db = DpkgDb::load(t.path()).unwrap();
    let i = db
        .packages()
        .iter()
        .position(|p| p.name == "../../secret")
        .unwrap();
    let e = db.files(i).unwrap_err();
    assert!(e.to_string().contains("var/lib/dpkg/status"), "{e}");
    assert!(
        std::error::Error::source(&e)
            .unwrap()
            .to_string()
            .contains("not a valid dpkg package name")
    );
}
