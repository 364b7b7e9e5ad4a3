//! The supermin-compatible front end: `kiln` invoked as `supermin` (argv[0] basename,
//! e.g. bind-mounted over `/usr/bin/supermin`) or as `kiln supermin …`.
//!
//! It accepts supermin 5's command line ([`crate::supermin_args`]) and keeps its
//! contract — output directory layout `OUT/{kernel,initrd,root}`, messages prefixed
//! `supermin:`, exit status 0/1/2, `--lock` as a POSIX record lock (so it excludes a real
//! supermin too). This file only maps arguments and prints: what `--build` does
//! (`--if-newer` through the cache key, `OUT` filled from a cache slot or built straight
//! into, atomic replacement) is `kiln::supermin`; `--prepare` is `kiln::prepare`.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kiln::key::KeyOptions;
use kiln::supermin::{Outcome, SuperminOptions, lock_file};

use crate::supermin_args::{Args, Format, Mode, Parsed, parse, version_line};

/// Run the front end on supermin arguments (without argv[0]); returns the exit status.
pub fn main(argv: Vec<OsString>) -> i32 {
    let a = match parse(&argv) {
        Parsed::Exit {
            code,
            stdout,
            stderr,
        } => {
            print!("{stdout}");
            eprint!("{stderr}");
            let _ = io::stdout().flush();
            return code;
        }
        Parsed::Run(a) => a,
    };
    crate::init_logging(a.verbose.min(3) as u8);
    match run(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("supermin: {}", crate::message(&e));
            1
        }
    }
}

fn say(a: &Args, msg: impl AsRef<str>) {
    if a.verbose > 0 {
        println!("supermin: {}", msg.as_ref());
        let _ = io::stdout().flush();
    }
}

fn run(a: &Args) -> anyhow::Result<()> {
    if let Some(t) = std::env::var_os("TMPDIR")
        && !t.is_empty()
        && !Path::new(&t).is_absolute()
    {
        bail!("error: environment variable $TMPDIR must be an absolute path");
    }
    say(a, format!("version: {}", version_line()));
    say(
        a,
        format!(
            "package handler: {}",
            kiln::databases::choose(&sysroot()?).map_or("none", |d| d.name)
        ),
    );
    // Held until the process exits, as supermin's lockf.
    let _lock = match &a.lock {
        Some(l) => {
            say(a, format!("acquiring lock on {}", l.display()));
            Some(lock_file(l)?)
        }
        None => None,
    };
    let out = a.output.clone();
    match a.mode {
        Some(Mode::Prepare) => prepare(a, &out),
        _ => build(a, &out),
    }
}

/// The installed system the front end reads: `KILN_SYSROOT` (kiln's addition to
/// supermin's interface), else `/`; checked and canonical ([`kiln::Sysroot::open`]).
fn sysroot() -> anyhow::Result<kiln::Sysroot> {
    match std::env::var_os("KILN_SYSROOT") {
        Some(d) => Ok(kiln::Sysroot::open(d).context("KILN_SYSROOT")?),
        None => Ok(kiln::Sysroot::default()),
    }
}

fn prepare(a: &Args, out: &Path) -> anyhow::Result<()> {
    if a.anon.is_empty() {
        bail!("prepare: no input packages specified");
    }
    let mut names = Vec::with_capacity(a.anon.len());
    for n in &a.anon {
        match n.to_str() {
            Some(n) => names.push(n),
            None => bail!(
                "prepare: package name '{}' is not valid UTF-8",
                n.to_string_lossy()
            ),
        }
    }
    let o = kiln::prepare::PrepareOptions {
        root: sysroot()?.root,
        ..Default::default()
    };
    // The supermin.d replaces OUT: it must not be, hold or lie inside the system read.
    kiln::guard::check(
        &[kiln::guard::Named::new(out, "the output")],
        &[kiln::guard::Named::new(&o.root, "the sysroot")],
    )
    .context("prepare")?;
    let r = kiln::prepare::prepare(&names, out, &o)?;
    say(
        a,
        format!(
            "prepare: {} packages, including dependencies; {} config files",
            r.closure, r.config_files
        ),
    );
    Ok(())
}

fn build(a: &Args, out: &Path) -> anyhow::Result<()> {
    if !a.anon.is_empty() {
        let names: Vec<_> = a.anon.iter().map(|i| i.to_string_lossy()).collect();
        say(a, format!("build: {}", names.join(" ")));
    }
    let size = match &a.size {
        Some(s) => Some(crate::size::parse_supermin(s).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let format = match a.format {
        Some(Format::Ext2) => kiln::Format::Ext2,
        _ => kiln::Format::Chroot,
    };
    let inputs = a.anon.iter().map(PathBuf::from).collect();
    let mut opts = SuperminOptions::new(inputs, format, out.to_path_buf());
    opts.if_newer = a.if_newer;
    opts.copy_kernel = a.copy_kernel;
    opts.include_packagelist = a.include_packagelist;
    opts.key = KeyOptions {
        host_cpu: a
            .host_cpu
            .clone()
            .unwrap_or_else(kiln::pipeline::default_host_cpu),
        size,
        ..KeyOptions::default()
    };
    opts.key.set_sysroot(sysroot()?);
    let r = kiln::supermin::build(&opts)?;
    let key = r.key.as_ref().map(|k| k.as_str()).unwrap_or("");
    let uuid = r.root_uuid.as_deref().unwrap_or("unknown");
    match r.outcome {
        Outcome::UpToDate => say(a, "if-newer: output does not need rebuilding"),
        Outcome::FromCache { built, copied } => say(
            a,
            format!(
                "{} {key} (root UUID {uuid}){}",
                if built {
                    "built appliance"
                } else {
                    "reused cached appliance"
                },
                if copied {
                    ", copied sparsely: the output is on another filesystem than the cache"
                } else {
                    ""
                }
            ),
        ),
        Outcome::Direct if r.key.is_some() => say(
            a,
            format!("built appliance {key} (root UUID {uuid}) into the output"),
        ),
        Outcome::Direct => {}
    }
    Ok(())
}
