//! Property tests of the pacman local database reader: `desc` and `files` of arbitrary
//! bytes load, resolve and list without a panic (a `desc` without name or version is an
//! error naming it), and well-formed databases read back as written. A few thousand
//! cases each; `PROPTEST_CASES=N` for a longer run.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_packages::Database;
use kiln_packages::pacman::{PacmanDb, PacmanError};
use proptest::prelude::*;

/// A root with an empty local database: one directory per test thread, emptied for each case (a fresh
/// directory per case is most of the time of a case on a busy disk).
fn fresh_root() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    }
    let root = DIR.with(|d| d.path().to_path_buf());
    let _ = fs::remove_dir_all(root.join("var"));
    fs::create_dir_all(root.join("var/lib/pacman/local")).unwrap();
    root
}

fn write_pkg(root: &Path, dir: &str, desc: &[u8], files: &[u8]) {
    let d = root.join("var/lib/pacman/local").join(dir);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("desc"), desc).unwrap();
    fs::write(d.join("files"), files).unwrap();
}

/// Text in alpm's `%SECTION%` format with plausible and arbitrary lines.
fn sectioned() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        3 => prop::sample::select(&[
            "%NAME%", "%VERSION%", "%ARCH%", "%PROVIDES%", "%DEPENDS%", "%FILES%",
            "%BACKUP%", "%%", "%", "",
        ][..]).prop_map(|s| s.as_bytes().to_vec()),
        3 => "[a-z0-9./<>=:_ -]{0,16}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..20),
    ];
    prop::collection::vec(line, 0..30).prop_map(|l| l.join(&b'\n'))
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9@._+-]{0,10}"
}

proptest! {
    // A database written per case: disk-bound, fewer cases.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary `desc` and `files`: a database or an error naming the `desc`; then
    /// resolving any names and listing every package's files never panic, and every
    /// file is absolute.
    #[test]
    fn arbitrary_desc_and_files_never_panic(
        pkgs in prop::collection::vec(
            (prop_oneof![sectioned(), prop::collection::vec(any::<u8>(), 0..400)], sectioned()),
            1..4),
        names in prop::collection::vec(prop_oneof![name(), any::<String>()], 0..4),
    ) {
        let t = fresh_root();
        for (i, (desc, files)) in pkgs.iter().enumerate() {
            write_pkg(&t, &format!("p{i}-1"), desc, files);
        }
        match PacmanDb::load(&t) {
            Ok(db) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let r = db.resolve(&names).unwrap();
                prop_assert!(r.missing.len() <= names.len());
                prop_assert!(r.packages.iter().all(|&i| i < db.packages().len()));
                for i in 0..db.packages().len() {
                    for f in db.files(i).unwrap() {
                        prop_assert!(f.path.as_os_str().as_bytes().starts_with(b"/"));
                    }
                }
            }
            Err(e @ PacmanError::Incomplete { .. }) => {
                prop_assert!(e.to_string().contains("/desc: no %NAME% or %VERSION%"), "{}", e);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

proptest! {
    // Up to six package directories of files per case: disk-bound, fewer cases.
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Well-formed packages read back: name, version, architecture and provides as
    /// written (version constraints dropped), files absolute without a trailing `/`,
    /// `backup` entries flagged as configuration, and every name resolves.
    #[test]
    fn well_formed_packages_read_back(
        pkgs in prop::collection::btree_map(name(), (
            "[0-9][0-9a-z.+:]{0,6}-[0-9]",
            prop::collection::vec(name(), 0..3),
            prop::collection::vec(name(), 0..3),
            prop::collection::vec(("[a-z]{1,4}(/[a-z]{1,4}){0,2}", any::<bool>(), any::<bool>()), 0..5),
        ), 0..6),
    ) {
        let t = fresh_root();
        for (n, (v, provides, depends, files)) in &pkgs {
            let mut desc = format!("%NAME%\n{n}\n\n%VERSION%\n{v}\n\n%ARCH%\nx86_64\n\n");
            desc += &format!("%PROVIDES%\n{}\n\n", provides.iter().map(|p| format!("{p}=1.0\n")).collect::<String>());
            desc += &format!("%DEPENDS%\n{}\n\n", depends.iter().map(|d| format!("{d}>=2\n")).collect::<String>());
            let mut f = "%FILES%\n".to_string();
            let mut b = "%BACKUP%\n".to_string();
            for (p, dir, backup) in files {
                f += &format!("{p}{}\n", if *dir { "/" } else { "" });
                if *backup {
                    b += &format!("{p}\t0123abcd\n");
                }
            }
            write_pkg(&t, &format!("{n}-{v}"), desc.as_bytes(), format!("{f}\n{b}").as_bytes());
        }
        let db = PacmanDb::load(&t).unwrap();
        prop_assert_eq!(db.packages().len(), pkgs.len());
        for (i, p) in db.packages().iter().enumerate() {
            let (v, provides, _, files) = &pkgs[&p.name];
            prop_assert_eq!(&p.version, v);
            prop_assert_eq!(p.arch.as_str(), "x86_64");
            prop_assert_eq!(&p.provides, provides);
            let got = db.files(i).unwrap();
            prop_assert_eq!(got.len(), files.len());
            for (g, (path, _, backup)) in got.iter().zip(files) {
                prop_assert_eq!(g.path.clone(), Path::new("/").join(path));
                if *backup {
                    prop_assert!(g.flags.config, "{:?}", g);
                }
            }
        }
        let all: Vec<&str> = pkgs.keys().map(String::as_str).collect();
        let r = db.resolve(&all).unwrap();
        prop_assert!(r.missing.is_empty());
        prop_assert_eq!(r.packages.len(), pkgs.len());
    }
}
