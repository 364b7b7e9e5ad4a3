//! Property tests of the dpkg database readers: `status` paragraphs, `Depends`-style
//! fields, `info/*.list` and `diversions` of arbitrary bytes load without a panic, and
//! well-formed databases read back as written. A few thousand cases each;
//! `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_dpkg::{DpkgDb, parse_depends};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 2048;
    }
    c.failure_persistence = None;
    c
}

/// A root with `var/lib/dpkg/{status,diversions,info/*.list}`: one directory per
/// test thread, rewritten for each case (a fresh directory per case is most of the
/// time of a case on a busy disk).
fn root(status: &[u8], diversions: Option<&[u8]>, lists: &[(String, Vec<u8>)]) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    }
    let root = DIR.with(|d| d.path().to_path_buf());
    let admin = root.join("var/lib/dpkg");
    let _ = fs::remove_dir_all(&admin);
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::write(admin.join("status"), status).unwrap();
    if let Some(d) = diversions {
        fs::write(admin.join("diversions"), d).unwrap();
    }
    for (name, data) in lists {
        fs::write(admin.join("info").join(name), data).unwrap();
    }
    root
}

/// A line of a status file: a known field with a plausible or arbitrary value, a
/// continuation line, a blank line, or arbitrary text.
fn status_line() -> impl Strategy<Value = String> {
    let field = prop::sample::select(
        &[
            "Package",
            "Status",
            "Version",
            "Architecture",
            "Multi-Arch",
            "Depends",
            "Pre-Depends",
            "Provides",
            "Conffiles",
        ][..],
    );
    let value = prop_oneof![
        Just("install ok installed".to_string()),
        Just("install ok triggers-pending".to_string()),
        Just("a:any (>= 1) | b:amd64 [amd64] <!nocheck>, c:native".to_string()),
        Just("foreign".to_string()),
        "[ -~]{0,30}",
        any::<String>(),
    ];
    prop_oneof![
        6 => (field, value).prop_map(|(f, v)| format!("{f}: {v}")),
        1 => "[ \t][ -~]{0,20}",
        1 => Just(String::new()),
        1 => any::<String>(),
    ]
}

/// A package name as dpkg allows (lower case, digits, `+-.`), never `/`.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9+.-]{0,10}"
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes as `status`: the database loads (a file that is there is read), every
    /// package has a name, and resolving and listing files never panic.
    #[test]
    fn arbitrary_status_never_panics(
        status in prop_oneof![
            prop::collection::vec(status_line(), 0..40).prop_map(|l| l.join("\n").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..2000),
        ],
        names in prop::collection::vec(prop_oneof![name(), any::<String>()], 0..5),
    ) {
        let t = root(&status, None, &[]);
        let db = DpkgDb::load(&t).unwrap();
        for p in db.packages() {
            prop_assert!(!p.name.is_empty());
        }
        let r = db.resolve(&names);
        for &i in &r.packages {
            prop_assert!(i < db.packages().len());
            if let Err(e) = db.files(i) {
                prop_assert!(e.to_string().contains("dpkg database"), "{}", e);
            }
        }
    }

    /// `Depends`-style fields: never a panic, and no name keeps a separator or leading
    /// blanks. (A blank before a `:` qualifier stays in the name, as does an empty name
    /// before `:`; dpkg never writes either, and such a name matches no package.)
    #[test]
    fn depends_fields_never_panic(field in prop_oneof!["[a-z:| ,()<>!\\[\\]=0-9.]{0,60}", any::<String>()]) {
        for group in parse_depends(&field) {
            prop_assert!(!group.is_empty());
            for d in group {
                prop_assert!(!d.name.contains([',', '|', '(', '[', '<']), "{:?}", d);
                prop_assert_eq!(d.name.trim_start(), d.name.as_str());
            }
        }
    }

    /// Well-formed paragraphs read back: names, versions, architectures, dependency
    /// names and provides as written; packages not installed are left out.
    #[test]
    fn well_formed_status_reads_back(
        pkgs in prop::collection::vec(
            (name(), "[0-9][0-9a-z.+~-]{0,8}", prop::sample::select(&["amd64", "all", "i386"][..]),
             any::<bool>(), prop::collection::vec(name(), 0..4), prop::collection::vec(name(), 0..2)),
            0..12),
    ) {
        let mut status = String::new();
        for (n, v, a, installed, deps, provides) in &pkgs {
            let state = if *installed { "installed" } else { "config-files" };
            status += &format!("Package: {n}\nStatus: install ok {state}\nVersion: {v}\nArchitecture: {a}\n");
            if !deps.is_empty() {
                status += &format!("Depends: {}\n", deps.join(" (>= 1.0),\n "));
            }
            if !provides.is_empty() {
                status += &format!("Provides: {}\n", provides.join(", "));
            }
            status += "\n";
        }
        let t = root(status.as_bytes(), None, &[]);
        let db = DpkgDb::load(&t).unwrap();
        let want: Vec<_> = pkgs.iter().filter(|p| p.3).collect();
        prop_assert_eq!(db.packages().len(), want.len());
        for (p, (n, v, a, _, deps, provides)) in db.packages().iter().zip(want) {
            prop_assert_eq!(&p.name, n);
            prop_assert_eq!(&p.version, v);
            prop_assert_eq!(&p.arch, a);
            let got: Vec<&str> = p.depends.iter().flatten().map(|d| d.name.as_str()).collect();
            prop_assert_eq!(got, deps.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(&p.provides, provides);
        }
    }

    /// `.list` files of any bytes: the files are exactly the lines starting with `/`,
    /// bytes kept as they are, without `/.`.
    #[test]
    fn list_files_keep_absolute_lines(
        lines in prop::collection::vec(prop_oneof![
            Just(b"/.".to_vec()),
            "/[a-z/.]{0,12}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..20),
        ], 0..20),
        qualified in any::<bool>(),
    ) {
        let data = lines.join(&b'\n');
        let list = if qualified { "p:amd64.list" } else { "p.list" };
        let t = root(
            b"Package: p\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n",
            None,
            &[(list.to_string(), data)],
        );
        let db = DpkgDb::load(&t).unwrap();
        let got: Vec<Vec<u8>> = db.files(0).unwrap().iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
        let want: Vec<Vec<u8>> = lines.into_iter().filter(|l| l.first() == Some(&b'/') && l != b"/.").collect();
        prop_assert_eq!(got, want);
    }

    /// `diversions` of any bytes loads; well-formed triples read back (`:` is a local
    /// diversion).
    #[test]
    fn diversions_read_back(
        junk in prop::collection::vec(any::<u8>(), 0..300),
        triples in prop::collection::vec(("/[a-z]{1,8}", "/[a-z]{1,8}\\.distrib", prop_oneof![Just(":".to_string()), name()]), 0..6),
    ) {
        let t = root(b"", Some(&junk), &[]);
        DpkgDb::load(&t).unwrap();

        let text: String = triples.iter().map(|(a, b, c)| format!("{a}\n{b}\n{c}\n")).collect();
        let t = root(b"", Some(text.as_bytes()), &[]);
        let db = DpkgDb::load(&t).unwrap();
        // A later triple for the same path wins: one diversion per path.
        for (from, _, _) in &triples {
            let (_, to, by) = triples.iter().rev().find(|x| &x.0 == from).unwrap();
            let d = db.diversion(Path::new(from)).unwrap();
            prop_assert_eq!(&d.to, &PathBuf::from(to));
            prop_assert_eq!(d.by.as_deref(), (by != ":").then_some(by.as_str()));
        }
    }
}
