//! Property tests of the supermin command line ([`crate::supermin_args::parse`]): any
//! argv, of any bytes, gives a run or an exit with code 0, 1 or 2 (never a panic); a
//! run is always a complete, consistent command; well-formed command lines are read
//! as written. A few thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use proptest::prelude::*;

use crate::supermin_args::{Args, Format, Mode, Parsed, parse};

/// supermin's options, `--list-drivers` left out: it probes the host's package
/// databases, which is not the parser's business and slow in a loop.
const OPTIONS: &[&str] = &[
    "--build",
    "--prepare",
    "-f",
    "--format",
    "-o",
    "--host-cpu",
    "--lock",
    "--size",
    "--packager-config",
    "--copy-kernel",
    "--if-newer",
    "--include-packagelist",
    "--use-installed",
    "-v",
    "--verbose",
    "-V",
    "--version",
    "--names",
    "--dtb",
    "-help",
    "--help",
    "--",
    "-",
    "--bogus",
    "-x",
];

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..12)
}

/// One argument: an option (maybe with `=value`), a likely value, or any bytes.
fn arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        3 => prop::sample::select(OPTIONS).prop_map(OsString::from),
        2 => (prop::sample::select(OPTIONS), bytes()).prop_map(|(o, v)| {
            let mut b = o.as_bytes().to_vec();
            b.push(b'=');
            b.extend(v);
            OsString::from_vec(b)
        }),
        2 => prop::sample::select(&["ext2", "chroot", "fs", "4G", "512M", "1.5K", "/tmp/o/", "x"][..])
            .prop_map(OsString::from),
        2 => bytes().prop_map(OsString::from_vec),
    ]
}

fn check(argv: &[OsString]) -> Result<(), TestCaseError> {
    match parse(argv) {
        Parsed::Exit {
            code,
            stdout,
            stderr,
        } => {
            prop_assert!(matches!(code, 0..=2), "exit code {}", code);
            if code == 0 {
                prop_assert!(!stdout.is_empty() && stderr.is_empty());
            } else {
                prop_assert!(
                    stdout.is_empty() && stderr.starts_with("supermin: "),
                    "{}",
                    stderr
                );
            }
        }
        Parsed::Run(a) => {
            let mode = a.mode.expect("a run has a mode");
            prop_assert_eq!(mode == Mode::Build, a.format.is_some());
            prop_assert!(!a.output.as_os_str().is_empty());
            if let Some(s) = &a.size {
                prop_assert!(crate::size::parse_supermin(s).is_ok(), "{}", s);
            }
        }
    }
    Ok(())
}

/// A well-formed command line and the `Args` it means.
fn command() -> impl Strategy<Value = (Vec<OsString>, Args)> {
    (
        any::<bool>(),
        prop::sample::select(
            &[
                ("ext2", Format::Ext2),
                ("chroot", Format::Chroot),
                ("fs", Format::Chroot),
            ][..],
        ),
        prop::collection::vec(1..=255u8, 1..10),
        prop::option::of((
            0..100_000u64,
            prop::sample::select(&["b", "K", "M", "G"][..]),
        )),
        any::<bool>(),
        any::<bool>(),
        0..3u32,
        prop::collection::vec(
            prop::collection::vec(1..=255u8, 1..8).prop_filter("not an option", |v| v[0] != b'-'),
            0..4,
        ),
    )
        .prop_map(
            |(build, (fname, format), out, size, copy, newer, verbose, anon)| {
                let mut argv: Vec<OsString> =
                    vec![if build { "--build" } else { "--prepare" }.into()];
                let mut a = Args {
                    mode: Some(if build { Mode::Build } else { Mode::Prepare }),
                    copy_kernel: copy,
                    if_newer: newer,
                    verbose,
                    ..Args::default()
                };
                if build {
                    argv.extend(["-f".into(), OsString::from(fname)]);
                    a.format = Some(format);
                }
                argv.push("-o".into());
                argv.push(OsString::from_vec(out.clone()));
                let mut o = out;
                if o.len() > 1 && o.ends_with(b"/") {
                    o.pop();
                }
                a.output = OsString::from_vec(o).into();
                if let Some((n, u)) = size {
                    let s = format!("{n}{u}");
                    argv.push(OsString::from(format!("--size={s}")));
                    a.size = Some(s);
                }
                if copy {
                    argv.push("--copy-kernel".into());
                }
                if newer {
                    argv.push("--if-newer".into());
                }
                for _ in 0..verbose {
                    argv.push("-v".into());
                }
                for x in &anon {
                    argv.push(OsString::from_vec(x.clone()));
                }
                a.anon = anon.into_iter().map(OsString::from_vec).collect();
                (argv, a)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Arbitrary argv of arbitrary bytes: no panic, exit code 0, 1 or 2.
    #[test]
    fn arbitrary_bytes_never_panic(argv in prop::collection::vec(bytes().prop_map(OsString::from_vec), 0..8)) {
        check(&argv)?;
    }

    /// argv made of supermin's options and values, with and without `=`: no panic,
    /// exit code 0, 1 or 2, and every run is complete.
    #[test]
    fn option_soup_never_panics(argv in prop::collection::vec(arg(), 0..10)) {
        check(&argv)?;
    }

    /// A well-formed command line is read as written.
    #[test]
    fn well_formed_command_lines_are_read_as_written((argv, want) in command()) {
        match parse(&argv) {
            Parsed::Run(a) => prop_assert_eq!(a, want),
            Parsed::Exit { code, stderr, .. } => {
                prop_assert!(false, "exit {} for {:?}: {}", code, argv, stderr)
            }
        }
    }
}

#[test]
fn non_utf8_values_are_errors_not_panics() {
    let argv: Vec<OsString> = vec![
        "--build".into(),
        "-f".into(),
        OsString::from_vec(vec![0xff]),
        "-o".into(),
        "x".into(),
    ];
    match parse(&argv) {
        Parsed::Exit {
            code: 1, stderr, ..
        } => assert!(stderr.contains("not valid UTF-8")),
        other => panic!("{other:?}"),
    }
}
