//! The supermin-compatible front end: `kiln` invoked as `supermin` (argv[0] basename,
//! e.g. bind-mounted over `/usr/bin/supermin`) or as `kiln supermin …`.
//!
//! It accepts supermin 5's command line ([`crate::supermin_args`]) and keeps its
//! contract — output directory layout `OUT/{kernel,initrd,root}`, messages prefixed
//! `supermin:`, exit status 0/1/2, `--lock` as a POSIX record lock (so it excludes a real
//! supermin too) — while doing the work kiln's way:
//!
//! - `--build -f ext2` with one supermin.d goes through kiln's per-user cache: the key
//!   covers everything that ends up in the appliance, one slot is built per key, and
//!   `OUT` is filled with hard links to the slot's files. `--if-newer` therefore detects
//!   every change (supermin only compares a few mtimes), and an unchanged rebuild yields
//!   byte-identical files, the same root UUID included;
//! - `OUT` is replaced atomically (`RENAME_EXCHANGE`): there is no moment where it is
//!   missing, unlike supermin's `mv` + `rename`;
//! - `-f chroot`, and builds from several inputs, run the pipeline directly into `OUT`
//!   (`--if-newer` then uses supermin's own mtime rule);
//! - `--prepare` writes `packages` and `base.tar.gz` from the installed system (see
//!   `kiln-prepare`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kiln::cache::{Cache, GetOptions};
use kiln::key::{KeyOptions, appliance_key};
use kiln::locate::{BuildRequest, pipeline_builder};
use kiln_outdir::Staging;

use crate::supermin_args::{Args, Format, Mode, Parsed, parse, version_line};

/// The file in `OUT` that records which cache key `OUT` holds.
const KEY_FILE: &str = ".kiln-key";

/// Run the front end on supermin arguments (without argv[0]); returns the exit status.
pub fn main(argv: Vec<String>) -> i32 {
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
    say(a, "package handler: debian/dpkg");
    // Held until the process exits, as supermin's lockf.
    let _lock = match &a.lock {
        Some(l) => {
            say(a, format!("acquiring lock on {}", l.display()));
            Some(lock_file(l)?)
        }
        None => None,
    };
    let out = PathBuf::from(&a.output);
    match a.mode {
        Some(Mode::Prepare) => prepare(a, &out),
        _ => build(a, &out),
    }
}

/// Open (creating it 0644) and take a blocking exclusive POSIX record lock on `path`,
/// like supermin's `lockf(F_LOCK)`.
fn lock_file(path: &Path) -> anyhow::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("lock file {}", path.display()))?;
    loop {
        match rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(f),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

fn prepare(a: &Args, out: &Path) -> anyhow::Result<()> {
    if a.anon.is_empty() {
        bail!("prepare: no input packages specified");
    }
    let r = kiln_prepare::prepare(&a.anon, out, &kiln_prepare::PrepareOptions::default())?;
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
    if a.anon.is_empty() {
        bail!("build: no input supermin appliance specified");
    }
    say(a, format!("build: {}", a.anon.join(" ")));
    let inputs: Vec<PathBuf> = a.anon.iter().map(PathBuf::from).collect();
    for i in &inputs {
        if fs::metadata(i).is_err() {
            bail!(
                "build: input {} does not exist: give a supermin.d directory or input file",
                i.display()
            );
        }
    }
    let size = match &a.size {
        Some(s) => kiln_size::parse_supermin(s).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => kiln_image::DEFAULT_SIZE,
    };
    let host_cpu = a
        .host_cpu
        .clone()
        .unwrap_or_else(kiln::pipeline::default_host_cpu);
    let format = match a.format {
        Some(Format::Ext2) => kiln::Format::Ext2,
        _ => kiln::Format::Chroot,
    };
    let mut opts = kiln::BuildOptions::new(inputs.clone(), format, out.to_path_buf());
    opts.size = size;
    opts.host_cpu = host_cpu.clone();
    opts.copy_kernel = a.copy_kernel;
    opts.include_packagelist = a.include_packagelist;

    // One supermin.d to ext2 goes through the cache. (`/packagelist` is not part of the
    // cache key, so a build that asks for it is done directly.)
    if format == kiln::Format::Ext2
        && inputs.len() == 1
        && !a.include_packagelist
        && fs::metadata(&inputs[0])?.is_dir()
    {
        return build_cached(a, &opts, &inputs[0]);
    }
    if a.if_newer && up_to_date_by_mtime(a, out)? {
        say(a, "if-newer: output does not need rebuilding");
        return Ok(());
    }
    kiln::build(&opts).with_context(|| format!("building {}", out.display()))?;
    Ok(())
}

/// ext2 from one supermin.d: through the cache, then `OUT` made of hard links to the slot.
fn build_cached(a: &Args, opts: &kiln::BuildOptions, supermin_d: &Path) -> anyhow::Result<()> {
    // The same key options `kiln locate` uses, so both share one slot per appliance.
    let key_opts = KeyOptions {
        host_cpu: opts.host_cpu.clone(),
        size: a.size.as_ref().map(|_| opts.size),
        ..KeyOptions::default()
    };
    let key = appliance_key(supermin_d, &key_opts)
        .with_context(|| format!("computing the key of {}", supermin_d.display()))?;
    let out = &opts.output;
    if a.if_newer && holds_key(out, key.as_str()) {
        say(a, "if-newer: output does not need rebuilding");
        return Ok(());
    }
    let cache = Cache::open_default().context("opening the appliance cache")?;
    let get = GetOptions {
        pin_to: None,
        // Without --if-newer supermin always builds; so does kiln.
        force_rebuild: !a.if_newer,
        ..GetOptions::default()
    };
    // The same builder as `kiln locate`: kiln's pipeline into the slot, with a copy of
    // the kernel so the triple belongs together even if /boot changes later.
    let builder = pipeline_builder();
    let req = BuildRequest {
        supermin_d,
        key: &key,
        options: &key_opts,
    };
    let pin = cache.get_or_build(&key, &get, |dir| builder(&req, dir))?;
    say(
        a,
        format!(
            "{} {} (root UUID {})",
            if pin.built() {
                "built appliance"
            } else {
                "reused cached appliance"
            },
            key.as_str(),
            pin.root_uuid().unwrap_or("unknown")
        ),
    );
    let staging = Staging::new(out)?;
    for (name, src) in [
        ("kernel", pin.kernel()),
        ("initrd", pin.initrd()),
        ("root", pin.root()),
    ] {
        let dst = staging.path().join(name);
        link_or_copy(src, &dst)
            .with_context(|| format!("placing {} as {}", src.display(), dst.display()))?;
    }
    fs::write(staging.path().join(KEY_FILE), format!("{}\n", key.as_str()))
        .context("writing the key file")?;
    say(
        a,
        format!("renaming {} to {}", staging.path().display(), out.display()),
    );
    staging.publish()?;
    Ok(())
}

/// True when `out` holds the appliance for `key` with all three files present.
fn holds_key(out: &Path, key: &str) -> bool {
    let recorded = fs::read_to_string(out.join(KEY_FILE)).unwrap_or_default();
    recorded.trim() == key
        && ["kernel", "initrd", "root"]
            .iter()
            .all(|f| fs::symlink_metadata(out.join(f)).is_ok())
}

/// A hard link (same filesystem), else a copy; never follows a symlink at `src`.
fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc_exdev()) => {
            let md = fs::symlink_metadata(src)?;
            if md.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(src)?, dst)
            } else {
                fs::copy(src, dst).map(|_| ())
            }
        }
        Err(e) => Err(e),
    }
}

fn libc_exdev() -> i32 {
    rustix::io::Errno::XDEV.raw_os_error()
}

/// supermin's `--if-newer` rule: every input and the package database strictly older
/// than every output (`OUT`, and for ext2 its three files); a missing output means
/// rebuild.
fn up_to_date_by_mtime(a: &Args, out: &Path) -> anyhow::Result<bool> {
    let mut outputs = vec![out.to_path_buf()];
    if a.format == Some(Format::Ext2) {
        for f in ["kernel", "initrd", "root"] {
            outputs.push(out.join(f));
        }
    }
    let mtime = |p: &Path| -> anyhow::Result<Option<i128>> {
        match fs::symlink_metadata(p) {
            Ok(m) => Ok(Some(
                m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("if-newer: {}", p.display())),
        }
    };
    let mut oldest_out = i128::MAX;
    for o in &outputs {
        match mtime(o)? {
            Some(t) => oldest_out = oldest_out.min(t),
            None => return Ok(false),
        }
    }
    let mut inputs: Vec<PathBuf> = a.anon.iter().map(PathBuf::from).collect();
    inputs.push(PathBuf::from("/var/lib/dpkg/status"));
    for i in &inputs {
        if let Some(t) = mtime(i)?
            && t >= oldest_out
        {
            return Ok(false);
        }
    }
    Ok(true)
}
