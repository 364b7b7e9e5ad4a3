//! Property tests of the reader of rpm's `--qf` output ([`parse`]) and of
//! [`rpmvercmp`]: any text is packages or an error naming a line of it, never a panic;
//! well-formed output reads back as written; version comparison is a consistent
//! order. A few thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Ordering;

use proptest::prelude::*;

use super::*;

/// A line of query output: a tag with plausible or arbitrary fields, or any bytes.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        "[a-z0-9./()_+-]{0,10}".prop_map(String::into_bytes),
        Just(b"0".to_vec()),
        Just(b"/usr/bin/x".to_vec()),
        prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..10
        ),
    ];
    prop_oneof![
        4 => (prop::sample::select(&["@", "P", "R", "F", "X", ""][..]),
              prop::collection::vec(field, 0..7))
            .prop_map(|(tag, fields)| {
                let mut l = tag.as_bytes().to_vec();
                for f in fields {
                    l.push(b'\t');
                    l.extend(f);
                }
                l
            }),
        1 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..30),
    ]
}

/// A version-like string: runs of digits, letters and separators, `~` and `^`.
fn version() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[0-9a-zA-Z.~^_+-]{0,12}", 1 => any::<String>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any output: packages, or an error naming a line that is there and its text;
    /// packages read give a database that resolves and lists without a panic.
    #[test]
    fn arbitrary_output_never_panics(
        lines in prop_oneof![
            prop::collection::vec(line(), 0..20),
            prop::collection::vec(any::<u8>(), 0..400).prop_map(|b| vec![b]),
        ],
        names in prop::collection::vec("[a-z0-9.:()/-]{0,10}", 0..4),
    ) {
        let out = lines.join(&b'\n');
        match parse(&out) {
            Ok(pkgs) => {
                let db = RpmDb::from_packages(Path::new("/"), FEDORA.name, PathBuf::from("/var/lib/rpm"), pkgs);
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let r = db.resolve(&names).unwrap();
                prop_assert!(r.packages.iter().all(|&i| i < db.packages().len()));
                for i in 0..db.packages().len() {
                    for f in db.files(i).unwrap() {
                        prop_assert!(f.path.is_absolute());
                    }
                }
            }
            Err((n, text)) => {
                prop_assert!(n >= 1);
                let bad = out.split(|&b| b == b'\n').nth(n - 1);
                prop_assert!(bad.is_some(), "line {} of {}", n, lines.len());
                prop_assert_eq!(String::from_utf8_lossy(bad.unwrap()).into_owned(), text);
            }
        }
    }

    /// Well-formed output reads back as written.
    #[test]
    fn well_formed_output_reads_back(
        pkgs in prop::collection::vec((
            "[a-z][a-z0-9+_-]{0,8}",
            any::<u32>(),
            "[0-9][0-9a-z.~^+]{0,6}",
            "[0-9][0-9a-z.]{0,6}",
            prop::sample::select(&["x86_64", "noarch", "i686"][..]),
            prop::collection::vec("[a-z0-9.()_/-]{1,12}", 0..3),
            prop::collection::vec("[a-z0-9.()_/-]{1,12}", 0..3),
            prop::collection::vec((any::<u32>(), "/[a-z0-9/._-]{0,12}"), 0..4),
        ), 0..6),
    ) {
        let mut out = String::new();
        for (n, e, v, r, a, provides, requires, files) in &pkgs {
            out += &format!("@\t{n}\t{e}\t{v}\t{r}\t{a}\n");
            for p in provides {
                out += &format!("P\t{p}\n");
            }
            for q in requires {
                out += &format!("R\t{q}\n");
            }
            for (fl, path) in files {
                out += &format!("F\t{fl}\t{path}\n");
            }
        }
        let got = parse(out.as_bytes()).unwrap();
        prop_assert_eq!(got.len(), pkgs.len());
        for ((p, provides), (n, e, v, r, a, want_provides, requires, files)) in got.iter().zip(&pkgs) {
            prop_assert_eq!(&p.name, n);
            prop_assert_eq!(p.epoch, u64::from(*e));
            prop_assert_eq!(&p.version, v);
            prop_assert_eq!(&p.release, r);
            prop_assert_eq!(&p.arch, a);
            prop_assert_eq!(provides, want_provides);
            prop_assert_eq!(&p.requires, requires);
            let want: Vec<(PathBuf, u32)> = files.iter().map(|(f, path)| (PathBuf::from(path), *f)).collect();
            prop_assert_eq!(&p.files, &want);
        }
    }

    /// rpmvercmp never panics, a version equals itself, and swapping the arguments
    /// reverses the answer.
    #[test]
    fn rpmvercmp_is_consistent(a in version(), b in version()) {
        prop_assert_eq!(rpmvercmp(&a, &a), Ordering::Equal);
        prop_assert_eq!(rpmvercmp(&a, &b), rpmvercmp(&b, &a).reverse(), "{:?} {:?}", a, b);
    }

    /// Numbers compare by value, leading zeros aside.
    #[test]
    fn rpmvercmp_compares_numbers_by_value(x in any::<u64>(), y in any::<u64>(), zeros in 0..3usize) {
        let pad = "0".repeat(zeros);
        prop_assert_eq!(rpmvercmp(&format!("{pad}{x}"), &y.to_string()), x.cmp(&y));
        prop_assert_eq!(rpmvercmp(&format!("1.{x}"), &format!("1.{y}")), x.cmp(&y));
    }
}
