//! supermin 5's command line, parsed exactly as supermin parses it, so that callers
//! written for supermin (libguestfs above all) run unchanged with kiln installed as
//! `/usr/bin/supermin`.
//!
//! supermin uses OCaml's `Arg` module: arguments are taken strictly left to right,
//! options with an immediate effect (`--help`, `--version`, `--list-drivers`, and the
//! error-only `--names`/`--dtb`) act when reached, so an earlier error wins. Syntax
//! errors print `supermin: <why>` plus the usage text on stderr and exit 2. This module
//! only parses; it never touches the filesystem.
//!
//! Arguments are bytes (`OsString`): paths (inputs, `-o`, `--lock`, `--packager-config`)
//! are kept byte-exact; options whose values are names (`--host-cpu`, `--size`,
//! `--format`) must be UTF-8 and are refused with a message otherwise.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The usage text supermin prints for `--help` (stdout) and after syntax errors (stderr).
pub const USAGE: &str = "\
supermin - tool for creating supermin appliances
Copyright (C) 2009-2014 Red Hat Inc.

Usage:

  supermin --prepare LIST OF PACKAGES ...
  supermin --build INPUT [INPUT ...]

For full instructions, read the supermin(1) man page.

Options:

  --build                      Build a full appliance
  --copy-kernel                Copy kernel instead of symlinking
  --dtb                        Obsolete option, do not use
  -f chroot|ext2               Set output format
  --format                     -\"-
  --host-cpu ARCH              Set host CPU architecture
  --if-newer                   Only build if needed
  --include-packagelist        Add a file with the list of packages
  --list-drivers               Display list of drivers and exit
  --lock LOCKFILE              Use a lock file
  --names                      Give an error for people needing supermin 4
  -o OUTPUTDIR                 Set output directory
  --packager-config CONFIGFILE Set packager config file
  --prepare                    Prepare a supermin appliance
  --size                       Set the size of the ext2 filesystem
  --use-installed              Use installed files instead of accessing network
  -v                           Enable debugging messages
  --verbose                    -\"-
  -V                           Display version and exit
  --version                    -\"-
  -help                        Display this list of options
  --help                       Display this list of options
";

/// The version string kiln reports as supermin. Callers (libguestfs's configure,
/// scripts) compare it against 5.x, so kiln claims the supermin 5 interface it
/// implements and names itself after it.
pub fn version_line() -> String {
    format!("supermin 5.2.2 (kiln {})", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Build,
    Prepare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Chroot,
    Ext2,
}

/// A valid supermin command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args {
    pub mode: Option<Mode>,
    pub format: Option<Format>,
    pub output: PathBuf,
    pub copy_kernel: bool,
    pub host_cpu: Option<String>,
    pub if_newer: bool,
    pub lock: Option<PathBuf>,
    /// The `--size` text, validated here, converted by the image stage.
    pub size: Option<String>,
    pub include_packagelist: bool,
    pub packager_config: Option<PathBuf>,
    pub use_installed: bool,
    pub verbose: u32,
    /// Inputs (build) or package names (prepare), in order.
    pub anon: Vec<OsString>,
}

/// What to do after parsing: run, or exit at once with the given output.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Args),
    Exit {
        code: i32,
        stdout: String,
        stderr: String,
    },
}

fn syntax(msg: String) -> Parsed {
    Parsed::Exit {
        code: 2,
        stdout: String::new(),
        stderr: format!("supermin: {msg}\n{USAGE}"),
    }
}

fn fatal(msg: &str) -> Parsed {
    Parsed::Exit {
        code: 1,
        stdout: String::new(),
        stderr: format!("supermin: {msg}\n"),
    }
}

const NAMES_ERROR: &str = "*** error: This is supermin version 5.
supermin: *** It looks like you are looking for supermin version 4.

This version of supermin will not work.  You need to find the old version
or upgrade to libguestfs >= 1.26.";

const DTB_ERROR: &str = "*** error: The --dtb option was removed in supermin 5.1.18.

Normally you can just drop this option and the wildcard following
it.  Modern QEMU will generate a correct DTB for the supermin
appliance automatically.
";

/// True when `s` is a valid supermin size (`^[.0-9]+[bKMG]$`).
fn size_syntax_ok(s: &str) -> bool {
    crate::size::parse_supermin(s).is_ok()
}

/// A value that must be text (a name, a size): UTF-8, or a fatal error naming it.
// `Err` is the early exit (a `Parsed::Exit`): it happens once per process.
#[allow(clippy::result_large_err)]
fn text(option: &str, v: &OsStr) -> Result<String, Parsed> {
    v.to_str().map(str::to_owned).ok_or_else(|| {
        fatal(&format!(
            "{option}: argument '{}' is not valid UTF-8",
            v.to_string_lossy()
        ))
    })
}

/// Parse supermin's arguments (without argv[0]).
pub fn parse(argv: &[OsString]) -> Parsed {
    match parse_inner(argv) {
        Ok(a) => Parsed::Run(a),
        Err(p) => p,
    }
}

/// supermin's command line, left to right: anonymous arguments are kept in order, each
/// option is read with its value and takes effect at once; the whole is then checked.
#[allow(clippy::result_large_err)]
fn parse_inner(argv: &[OsString]) -> Result<Args, Parsed> {
    let mut a = Args::default();
    let mut rest = argv.iter();
    while let Some(raw) = rest.next() {
        if !raw.as_bytes().starts_with(b"-") {
            a.anon.push(raw.clone());
            continue;
        }
        let (name, value) = option(raw, &mut rest)?;
        apply(&mut a, &name, value)?;
    }
    validate(a)
}

/// How an option takes a value, as supermin declares it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    /// No value: `--opt=v` is a syntax error.
    Flag,
    /// A value, inline (`--opt=v`, `-o=v`) or the next argument.
    Value,
}

/// The arity of option `name`, `None` when supermin does not know it. `--dtb` takes
/// a value (supermin declares it so) though it is only an error once reached.
fn arity(name: &str) -> Option<Arity> {
    match name {
        "-f" | "--format" | "-o" | "--host-cpu" | "--lock" | "--size" | "--packager-config"
        | "--dtb" => Some(Arity::Value),
        "--build"
        | "--prepare"
        | "--copy-kernel"
        | "--if-newer"
        | "--include-packagelist"
        | "--use-installed"
        | "-v"
        | "--verbose"
        | "-V"
        | "--version"
        | "--list-drivers"
        | "--names"
        | "-help"
        | "--help" => Some(Arity::Flag),
        _ => None,
    }
}

/// The option `raw` (an argument starting with `-`) as its name and value (empty for
/// a flag), taking the value from `rest` when it is not inline. An unknown option, a
/// flag given a value and a missing value are syntax errors.
#[allow(clippy::result_large_err)]
fn option<'a>(
    raw: &OsStr,
    rest: &mut impl Iterator<Item = &'a OsString>,
) -> Result<(String, OsString), Parsed> {
    let bytes = raw.as_bytes();
    let shown = raw.to_string_lossy();
    // Option names are ASCII; a value after `=` stays bytes.
    let (name_b, inline) = match bytes.iter().position(|&b| b == b'=') {
        Some(eq) if bytes.starts_with(b"--") || eq == 2 => (
            &bytes[..eq],
            Some(OsStr::from_bytes(&bytes[eq + 1..]).to_os_string()),
        ),
        _ => (bytes, None),
    };
    let name = String::from_utf8_lossy(name_b).into_owned();
    let value = match (arity(&name), inline) {
        (None, _) => return Err(syntax(format!("unknown option '{shown}'."))),
        (Some(Arity::Flag), Some(v)) => {
            return Err(syntax(format!(
                "wrong argument '{}'; option '{shown}' expects no argument.",
                v.to_string_lossy()
            )));
        }
        (Some(Arity::Flag), None) => OsString::new(),
        (Some(Arity::Value), Some(v)) => v,
        (Some(Arity::Value), None) => match rest.next() {
            Some(v) => v.clone(),
            None => return Err(syntax(format!("option '{name}' needs an argument."))),
        },
    };
    Ok((name, value))
}

/// Give `a` the effect of option `name` with its `value`: set what it sets, or end
/// parsing with what it does at once (see [`act_now`]). A value that is not valid
/// for its option is a fatal error, as is a second mode.
#[allow(clippy::result_large_err)]
fn apply(a: &mut Args, name: &str, value: OsString) -> Result<(), Parsed> {
    match name {
        "--build" | "--prepare" => {
            if a.mode.is_some() {
                return Err(fatal(
                    "you must use --prepare or --build to select the mode",
                ));
            }
            a.mode = Some(if name == "--build" {
                Mode::Build
            } else {
                Mode::Prepare
            });
        }
        "-f" | "--format" => {
            a.format = Some(match text(name, &value)?.as_str() {
                "chroot" | "fs" | "filesystem" => Format::Chroot,
                "ext2" => Format::Ext2,
                other => {
                    return Err(fatal(&format!("unknown --format option ({other})\n")));
                }
            })
        }
        "-o" => {
            let mut v = value.into_vec();
            if v.len() > 1 && v.ends_with(b"/") {
                v.pop();
            }
            a.output = PathBuf::from(OsString::from_vec(v));
        }
        "--host-cpu" => a.host_cpu = Some(text(name, &value)?),
        "--lock" => a.lock = Some(PathBuf::from(value)),
        "--size" => {
            let value = value.to_string_lossy();
            if !size_syntax_ok(&value) {
                return Err(fatal(&format!("cannot parse size field '{value}'")));
            }
            a.size = Some(value.into_owned());
        }
        "--packager-config" => a.packager_config = Some(PathBuf::from(value)),
        "--copy-kernel" => a.copy_kernel = true,
        "--if-newer" => a.if_newer = true,
        "--include-packagelist" => a.include_packagelist = true,
        "--use-installed" => a.use_installed = true,
        "-v" | "--verbose" => a.verbose += 1,
        _ => return Err(act_now(name)),
    }
    Ok(())
}

/// What an option with an immediate effect does when reached: print the version, the
/// drivers or the usage and exit 0, or fail for the removed `--names` and `--dtb`.
fn act_now(name: &str) -> Parsed {
    match name {
        "-V" | "--version" => Parsed::Exit {
            code: 0,
            stdout: format!("{}\n", version_line()),
            stderr: String::new(),
        },
        "--list-drivers" => Parsed::Exit {
            code: 0,
            // Detected for the root in use: `KILN_SYSROOT`, else `/`.
            stdout: kiln::databases::list_drivers(&kiln::Sysroot::new(
                std::env::var_os("KILN_SYSROOT").unwrap_or_else(|| "/".into()),
            )),
            stderr: String::new(),
        },
        "--names" => fatal(NAMES_ERROR),
        "--dtb" => fatal(DTB_ERROR),
        _ => Parsed::Exit {
            code: 0,
            stdout: USAGE.into(),
            stderr: String::new(),
        },
    }
}

/// Validation after parsing, in supermin's order: a mode, a format exactly when
/// building, an output directory.
#[allow(clippy::result_large_err)]
fn validate(a: Args) -> Result<Args, Parsed> {
    let Some(mode) = a.mode else {
        return Err(fatal(
            "you must use --prepare or --build to select the mode",
        ));
    };
    if mode == Mode::Prepare && a.format.is_some() {
        return Err(fatal("cannot use --prepare and --format options together"));
    }
    if mode == Mode::Build && a.format.is_none() {
        return Err(fatal(
            "when using --build, you must specify an output --format",
        ));
    }
    if a.output.as_os_str().is_empty() {
        return Err(fatal(
            "supermin: output directory (-o option) must be supplied",
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Parsed {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }
    fn code(args: &[&str]) -> i32 {
        match p(args) {
            Parsed::Exit { code, .. } => code,
            Parsed::Run(_) => 0,
        }
    }
    fn stderr(args: &[&str]) -> String {
        match p(args) {
            Parsed::Exit { stderr, .. } => stderr,
            Parsed::Run(_) => String::new(),
        }
    }

    #[test]
    fn libguestfs_invocation() {
        let Parsed::Run(a) = p(&[
            "--build",
            "--verbose",
            "--if-newer",
            "--lock",
            "/c/lock",
            "--copy-kernel",
            "-f",
            "ext2",
            "--host-cpu",
            "x86_64",
            "/usr/lib/guestfs/supermin.d",
            "-o",
            "/c/appliance.d/",
        ]) else {
            panic!("expected a run");
        };
        assert_eq!(a.mode, Some(Mode::Build));
        assert_eq!(a.format, Some(Format::Ext2));
        assert!(a.if_newer && a.copy_kernel);
        assert_eq!(a.verbose, 1);
        assert_eq!(a.lock, Some(PathBuf::from("/c/lock")));
        assert_eq!(a.host_cpu.as_deref(), Some("x86_64"));
        assert_eq!(a.output, PathBuf::from("/c/appliance.d"));
        assert_eq!(a.anon, [OsString::from("/usr/lib/guestfs/supermin.d")]);
    }

    #[test]
    fn syntax_errors_exit_2_with_usage() {
        assert_eq!(code(&["--bogus"]), 2);
        assert!(stderr(&["--bogus"]).starts_with("supermin: unknown option '--bogus'.\n"));
        assert!(stderr(&["--bogus"]).contains("supermin --build INPUT"));
        assert_eq!(code(&["--build", "-o"]), 2);
        assert!(stderr(&["-o"]).starts_with("supermin: option '-o' needs an argument."));
        assert_eq!(code(&["--version=1"]), 2);
        assert!(stderr(&["--version=1"]).contains("option '--version=1' expects no argument"));
        assert_eq!(code(&["--"]), 2);
    }

    #[test]
    fn earlier_arguments_win() {
        assert_eq!(code(&["--bogus", "-V"]), 2);
        match p(&["-V", "--bogus"]) {
            Parsed::Exit { code, stdout, .. } => {
                assert_eq!(code, 0);
                assert!(stdout.starts_with("supermin 5"));
            }
            Parsed::Run(_) => panic!("expected exit"),
        }
        match p(&["--help"]) {
            Parsed::Exit { code, stdout, .. } => {
                assert_eq!(code, 0);
                assert_eq!(stdout, USAGE);
            }
            Parsed::Run(_) => panic!("expected exit"),
        }
    }

    #[test]
    fn validation_order_and_messages() {
        assert!(stderr(&[]).contains("you must use --prepare or --build"));
        assert_eq!(code(&[]), 1);
        assert!(stderr(&["--build", "--build"]).contains("select the mode"));
        assert!(stderr(&["--prepare", "-f", "ext2", "-o", "x"]).contains("cannot use --prepare"));
        assert!(stderr(&["--build", "-o", "x"]).contains("must specify an output --format"));
        assert!(stderr(&["--build", "-f", "ext2"]).contains("-o option) must be supplied"));
        assert!(
            stderr(&["--build", "-f", "tar", "-o", "x"]).contains("unknown --format option (tar)")
        );
        assert_eq!(code(&["--names"]), 1);
        assert_eq!(code(&["--dtb", "x"]), 1);
    }

    #[test]
    fn size_syntax() {
        for ok in ["32G", "512M", "10737418240b", "1.5G", "4K"] {
            assert!(size_syntax_ok(ok), "{ok}");
        }
        for bad in ["4096", "10k", "1T", "G", "", "-1G"] {
            assert!(!size_syntax_ok(bad), "{bad}");
        }
        assert!(stderr(&["--size", "4096"]).contains("cannot parse size field '4096'"));
        assert_eq!(code(&["--size=4096"]), 1);
    }

    #[test]
    fn inline_values_and_aliases() {
        let Parsed::Run(a) = p(&["--build", "--format=chroot", "-o=/x", "in"]) else {
            panic!("expected a run");
        };
        assert_eq!(a.format, Some(Format::Chroot));
        assert_eq!(a.output, PathBuf::from("/x"));
        let Parsed::Run(a) = p(&["--build", "-f", "fs", "-o", "/", "-v", "-v"]) else {
            panic!("expected a run");
        };
        assert_eq!(a.format, Some(Format::Chroot));
        assert_eq!(a.output, PathBuf::from("/"));
        assert_eq!(a.verbose, 2);
    }

    #[test]
    fn non_utf8_paths_are_kept_and_names_refused() {
        use std::os::unix::ffi::OsStringExt;
        let bad = |s: &[u8]| OsString::from_vec(s.to_vec());
        let argv = vec![
            OsString::from("--build"),
            OsString::from("-f"),
            OsString::from("ext2"),
            bad(b"/tmp/\xff\xfe/supermin.d"),
            OsString::from("-o"),
            bad(b"/tmp/\xff/out/"),
            bad(b"--lock=/tmp/\xff/lock"),
        ];
        let Parsed::Run(a) = parse(&argv) else {
            panic!("expected a run");
        };
        assert_eq!(a.anon, [bad(b"/tmp/\xff\xfe/supermin.d")]);
        assert_eq!(a.output, PathBuf::from(bad(b"/tmp/\xff/out")));
        assert_eq!(a.lock, Some(PathBuf::from(bad(b"/tmp/\xff/lock"))));
        for (opt, code) in [("--host-cpu", 1), ("--size", 1), ("-f", 1)] {
            let argv = vec![OsString::from(opt), bad(b"x\xff")];
            match parse(&argv) {
                Parsed::Exit {
                    code: c, stderr, ..
                } => {
                    assert_eq!(c, code, "{opt}: {stderr}");
                    assert!(stderr.starts_with("supermin: "), "{stderr}");
                    assert!(stderr.contains("x\u{fffd}"), "{stderr}");
                }
                Parsed::Run(_) => panic!("{opt} accepted a non-UTF-8 value"),
            }
        }
        assert_eq!(
            match parse(&[bad(b"--\xff")]) {
                Parsed::Exit { code, .. } => code,
                Parsed::Run(_) => 0,
            },
            2
        );
    }
}
