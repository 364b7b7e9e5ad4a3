//! Property tests of the dpkg database readers: `status`, `diversions` and
//! `info/*.list` files of any content load or give an error naming the file, never
//! panic; well-formed ones read back exactly and resolve to a closed set; `Depends`-style
//! fields of any text parse into clean names. A few thousand cases each;
//! `PROPTEST_CASES=N` for a longer run.

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_packages::dpkg::{DpkgDb, parse_depends};
use proptest::prelude::*;

/// A root with `var/lib/dpkg/{status,diversions,info/*.list}` holding exactly what is
/// given: one directory per test thread, rewritten for each case (a fresh directory
/// per case is most of the time of a case on a busy disk).
fn root(status: &[u8], diversions: Option<&[u8]>, lists: &[(String, Vec<u8>)]) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    }
    let root = DIR.with(|d| d.path().to_path_buf());
    let admin = root.join("var/lib/dpkg");
    let info = admin.join("info");
    fs::create_dir_all(&info).unwrap();
    for e in fs::read_dir(&info).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    fs::write(admin.join("status"), status).unwrap();
    match diversions {
        Some(d) => fs::write(admin.join("diversions"), d).unwrap(),
        None => {
            let _ = fs::remove_file(admin.join("diversions"));
        }
    }
    for (name, data) in lists {
        fs::write(info.join(name), data).unwrap();
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

/// A package name as dpkg allows (lower case, digits, `+-.`), never `/`.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9+.-]{0,10}"
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
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any status and diversions bytes load (they are text dpkg wrote, read lossily):
    /// every package has a name, resolving never panics and gives valid packages, and
    /// listing files gives the files or an error naming the `.list` file (or `status`,
    /// for a name that is not a dpkg name and would lead out of info/).
    #[test]
    fn arbitrary_databases_never_panic(
        status in prop_oneof![
            prop::collection::vec(status_line(), 0..40).prop_map(|l| l.join("\n").into_bytes()),
            status_like().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..2000),
        ],
        diversions in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        names in prop::collection::vec(
            prop_oneof![name(), any::<String>(), "[a-z:()| ,]{0,8}"],
            0..5,
        ),
    ) {
        let r = root(&status, diversions.as_deref(), &[]);
        let db = DpkgDb::load(&r).unwrap();
        for p in db.packages() {
            prop_assert!(!p.name.is_empty());
        }
        let res = db.resolve(&names);
        for &i in &res.packages {
            prop_assert!(i < db.packages().len());
        }
        for m in &res.missing {
            prop_assert!(names.contains(m));
        }
        for i in 0..db.packages().len() {
            if let Err(e) = db.files(i) {
                let s = e.to_string();
                prop_assert!(s.contains("dpkg database"), "{}", s);
                prop_assert!(s.contains(".list") || s.ends_with("/status"), "{}", s);
            }
        }
    }

    /// `Depends`-style fields of any text: groups are never empty, names never empty,
    /// trimmed, without a separator.
    #[test]
    fn depends_fields_never_panic(
        field in prop_oneof!["[a-z:| ,()<>!\\[\\]=0-9.]{0,60}", "\\PC{0,60}", any::<String>()],
    ) {
        for group in parse_depends(&field) {
            prop_assert!(!group.is_empty());
            for d in group {
                prop_assert!(!d.name.is_empty());
                prop_assert!(!d.name.contains([',', '|', '(', '[', '<']), "{:?}", d);
                prop_assert_eq!(d.name.trim(), d.name.as_str());
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

    /// `.list` files of any bytes (named `p.list` or `p:amd64.list`): the files are
    /// exactly the lines starting with `/`, bytes kept as they are, without dpkg's `/.`.
    #[test]
    fn list_files_keep_absolute_lines(
        lines in prop::collection::vec(prop_oneof![
            Just(b"/.".to_vec()),
            "/[a-z/. ]{0,12}".prop_map(String::into_bytes),
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

    /// `diversions` of any bytes loads; well-formed line triples read back, the last
    /// diversion of a path winning (`:` is a local diversion).
    #[test]
    fn diversions_read_back(
        junk in prop::collection::vec(any::<u8>(), 0..300),
        triples in prop::collection::vec(
            ("/[a-z]{1,8}", "/[a-z]{1,8}\\.(distrib|real)", prop_oneof![Just(":".to_string()), name()]),
            0..6,
        ),
    ) {
        let t = root(b"", Some(&junk), &[]);
        DpkgDb::load(&t).unwrap();

        let text: String = triples.iter().map(|(a, b, c)| format!("{a}\n{b}\n{c}\n")).collect();
        let t = root(b"", Some(text.as_bytes()), &[]);
        let db = DpkgDb::load(&t).unwrap();
        for (from, _, _) in &triples {
            let (_, to, by) = triples.iter().rev().find(|x| &x.0 == from).unwrap();
            let d = db.diversion(Path::new(from)).unwrap();
            prop_assert_eq!(&d.to, &PathBuf::from(to));
            prop_assert_eq!(d.by.as_deref(), (by != ":").then_some(by.as_str()));
        }
    }
}
