//! Property tests of the dpkg database readers: `status`, `diversions` and
//! `info/*.list` files of any content load or give an error naming the file, never
//! panic; well-formed ones read back exactly and resolve to a closed set. A few
//! thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_dpkg::{DpkgDb, parse_depends};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 4096;
    }
    c.failure_persistence = None;
    c
}

thread_local! {
    /// One dpkg root per test thread, rewritten for every case (a fresh temporary
    /// directory per case costs more than the parsing under test).
    static ROOT: tempfile::TempDir = tempfile::tempdir().unwrap();
}

/// This thread's dpkg root, now holding `status`, `diversions` if given, and the
/// `.list` files given (over those of earlier cases).
fn root(status: &[u8], diversions: Option<&[u8]>, lists: &[(&str, &[u8])]) -> PathBuf {
    ROOT.with(|t| {
        let admin = t.path().join("var/lib/dpkg");
        fs::create_dir_all(admin.join("info")).unwrap();
        fs::write(admin.join("status"), status).unwrap();
        match diversions {
            Some(d) => fs::write(admin.join("diversions"), d).unwrap(),
            None => {
                let _ = fs::remove_file(admin.join("diversions"));
            }
        }
        for (name, l) in lists {
            fs::write(admin.join("info").join(format!("{name}.list")), l).unwrap();
        }
        t.path().to_path_buf()
    })
}

/// Text built from the pieces a status file is made of, in any order: field names,
/// separators, continuation lines, paragraph breaks, names and version syntax.
fn status_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("Package: "),
        Just("Status: install ok installed\n"),
        Just("Status: deinstall ok config-files\n"),
        Just("Architecture: "),
        Just("Version: "),
        Just("Depends: "),
        Just("Pre-Depends: "),
        Just("Provides: "),
        Just("Conffiles:\n /etc/x 0123\n"),
        Just("Multi-Arch: same\n"),
        Just("\n"),
        Just("\n\n"),
        Just(" "),
        Just(":"),
        Just(","),
        Just("|"),
        Just("(>= 1.0)"),
        Just("[amd64]"),
        Just("<!nocheck>"),
        Just(":any"),
        Just(":native"),
        Just("a"),
        Just("b"),
        Just("libc6"),
        Just("amd64"),
        Just("all"),
        Just("\u{fffd}"),
        Just("\t"),
    ];
    prop::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
struct Pkg {
    name: String,
    version: String,
    arch: &'static str,
    /// Indices of other generated packages, by group of alternatives.
    depends: Vec<Vec<usize>>,
}

fn packages() -> impl Strategy<Value = Vec<Pkg>> {
    prop::collection::vec(
        (
            "[a-z0-9][a-z0-9+.-]{0,8}",
            "[0-9][0-9a-z.+~:-]{0,6}",
            prop_oneof![Just("amd64"), Just("all")],
            prop::collection::vec(prop::collection::vec(0..12usize, 1..3), 0..3),
        ),
        1..12,
    )
    .prop_map(|v| {
        let mut seen = HashSet::new();
        v.into_iter()
            .enumerate()
            .filter(|(_, (n, ..))| seen.insert(n.clone()))
            .map(|(i, (name, version, arch, depends))| Pkg {
                // dpkg itself (never arch all) fixes the native architecture.
                name: if i == 0 { "dpkg".into() } else { name },
                version,
                arch: if i == 0 { "amd64" } else { arch },
                depends,
            })
            .collect()
    })
}

fn status_of(pkgs: &[Pkg]) -> String {
    let mut s = String::new();
    for p in pkgs {
        s += &format!(
            "Package: {}\nStatus: install ok installed\nArchitecture: {}\nVersion: {}\n",
            p.name, p.arch, p.version
        );
        let groups: Vec<String> = p
            .depends
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&i| match pkgs.get(i) {
                        Some(d) => format!("{} (>= 0)", d.name),
                        None => format!("absent{i}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        if !groups.is_empty() {
            s += &format!("Depends: {}\n", groups.join(", "));
        }
        s += "\n";
    }
    s
}

proptest! {
    #![proptest_config(config())]

    /// Any status and diversions bytes load (they are text dpkg wrote, read lossily)
    /// and resolve without a panic; what resolves is a valid package.
    #[test]
    fn arbitrary_databases_never_panic(
        status in prop_oneof![
            status_like().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..800),
        ],
        diversions in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        names in prop::collection::vec("[a-z:()| ,]{0,8}", 0..4),
    ) {
        let r = root(&status, diversions.as_deref(), &[]);
        let db = DpkgDb::load(&r).unwrap();
        let res = db.resolve(&names);
        for &i in &res.packages {
            prop_assert!(i < db.packages().len());
            prop_assert!(!db.package(i).name.is_empty());
        }
        for m in &res.missing {
            prop_assert!(names.contains(m));
        }
        // A .list file that is missing is an error naming it, a name that is not a
        // dpkg name (it would lead out of info/) one naming status; never a panic.
        for i in 0..db.packages().len() {
            if let Err(e) = db.files(i) {
                let s = e.to_string();
                prop_assert!(s.contains(".list") || s.ends_with("/status"), "{}", s);
            }
        }
    }

    /// Well-formed status files read back field by field, and the closure of every
    /// name is closed: each dependency group with an installed alternative is
    /// satisfied inside it.
    #[test]
    fn status_files_read_back_and_resolve_to_a_closed_set(pkgs in packages()) {
        let r = root(status_of(&pkgs).as_bytes(), None, &[]);
        let db = DpkgDb::load(&r).unwrap();
        prop_assert_eq!(db.packages().len(), pkgs.len());
        for (got, want) in db.packages().iter().zip(&pkgs) {
            prop_assert_eq!(&got.name, &want.name);
            prop_assert_eq!(&got.version, &want.version);
            prop_assert_eq!(got.arch.as_str(), want.arch);
            prop_assert_eq!(got.depends.len(), want.depends.len());
        }
        let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
        let res = db.resolve(&names);
        prop_assert!(res.missing.is_empty(), "{:?}", res.missing);
        let chosen: HashSet<&str> =
            res.packages.iter().map(|&i| db.package(i).name.as_str()).collect();
        for n in &names {
            prop_assert!(chosen.contains(n));
        }
        for &i in &res.packages {
            for g in &db.package(i).depends {
                let installed = g.iter().any(|d| names.contains(&d.name.as_str()));
                let met = g.iter().any(|d| chosen.contains(d.name.as_str()));
                prop_assert!(!installed || met, "{:?} of {}", g, db.package(i).name);
            }
        }
    }

    /// `.list` files: exactly the lines that start with `/` (bytes as they are),
    /// without dpkg's `/.`.
    #[test]
    fn list_files_give_their_absolute_lines(list in prop::collection::vec(
        prop_oneof![
            Just(b"/.".to_vec()),
            prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..20),
            "/[a-z/. ]{0,12}".prop_map(String::into_bytes),
        ],
        0..20,
    )) {
        let text = list.join(&b"\n"[..]);
        let status = "Package: p\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n";
        let r = root(status.as_bytes(), None, &[("p", &text)]);
        let db = DpkgDb::load(&r).unwrap();
        let got: Vec<Vec<u8>> =
            db.files(0).unwrap().iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
        let want: Vec<Vec<u8>> = list
            .iter()
            .filter(|l| l.first() == Some(&b'/') && l.as_slice() != b"/.")
            .cloned()
            .collect();
        prop_assert_eq!(got, want);
    }

    /// Diversions are line triples: each complete triple is found again.
    #[test]
    fn diversions_read_back(triples in prop::collection::vec(
        ("/[a-z]{1,6}", "/[a-z]{1,6}\\.real", prop_oneof![Just(":".to_string()), "[a-z]{1,5}"]),
        0..6,
    )) {
        let text: String = triples.iter().map(|(a, b, c)| format!("{a}\n{b}\n{c}\n")).collect();
        let r = root(b"", Some(text.as_bytes()), &[]);
        let db = DpkgDb::load(&r).unwrap();
        // The last diversion of a path wins.
        let mut last = std::collections::HashMap::new();
        for (a, b, c) in &triples {
            last.insert(a, (b, c));
        }
        for (a, (b, c)) in last {
            let d = db.diversion(Path::new(a)).unwrap();
            prop_assert_eq!(&d.to, &PathBuf::from(b));
            prop_assert_eq!(d.by.as_deref(), (c != ":").then_some(c.as_str()));
        }
    }

    /// Depends fields of any text: groups of non-empty, trimmed names.
    #[test]
    fn depends_fields_never_panic(field in "\\PC{0,60}") {
        for g in parse_depends(&field) {
            prop_assert!(!g.is_empty());
            for d in g {
                prop_assert!(!d.name.is_empty());
                prop_assert_eq!(d.name.trim(), d.name.as_str());
                prop_assert!(!d.name.contains([',', '|']));
            }
        }
    }
}
