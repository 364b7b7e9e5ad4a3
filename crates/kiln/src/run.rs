//! The appliance of `kiln run`: a command line → the supermin.d that holds what the
//! command needs, written to a private temporary directory, and the [`LocateOptions`]
//! that build it (so it goes through the same inputs, key and cache as any other
//! supermin appliance, and a second run of the same command line boots at once).
//! Booting it and running the command is `kiln_boot::run`.
//!
//! What the appliance holds (the `contents` submodule):
//! - The command is looked up on the `PATH` it gets in the VM, then on kiln's own (or
//!   taken as a path when it has a `/`): the VM runs the first match of its `PATH`
//!   among the host's files, which the appliance must hold (the host's `PATH` may put a
//!   shim, e.g. pyenv's, before the real program).
//! - Its owner is found in the package database as `dpkg -S` would, trying the path as
//!   given, with its directory symlinks resolved and fully resolved, each also in its
//!   merged-`/usr` alias (`/bin/x` ↔ `/usr/bin/x`), because packages list the paths they
//!   shipped, not the ones `PATH` finds today. The database's file lists are read once
//!   into an index (the `owners` submodule) kept privately in the per-user cache under
//!   the database's fingerprint: a run with the same database as the last one (a
//!   package installed or removed changes it) answers from the index and never opens a
//!   file list; a damaged or foreign index is ignored and built again.
//! - A command no package owns is copied from the host together with what it needs:
//!   for a script its `#!` interpreter (recursively; for `#!/usr/bin/env [OPTIONS] CMD`
//!   also CMD, looked up as the command is), for a dynamic ELF file its program
//!   interpreter and shared libraries, found by reading the files (the `libs` submodule), each
//!   through its package when it has one. Nothing of the command, nor the loader it
//!   names, is ever run on the host.
//! - A relative command path (`./prog`) also puts the current directory in the
//!   appliance, so that with `--no-cwd` the command can start there.
//! - The directories `/proc`, `/sys` and `/dev` (not their contents): the init's run
//!   mode mounts on them with the root still read-only (see `kiln_boot::run`).
//! - `--packages` must name installed packages; `--include` paths must exist
//!   (directories are listed recursively, symlinks not followed).
//! - The `hostfiles` list holds glob(3) patterns (matched with `GLOB_NOESCAPE`, where a
//!   backslash is literal): `*`, `?` and `[` in a name are written as bracket
//!   expressions (`[*]`), so every name matches exactly itself.
//! - With a sysroot (`--sysroot DIR`, another installed system) all of this is looked
//!   up below DIR: CMD on the VM's `PATH` only (the host's names host directories), its
//!   owner in DIR's database, paths resolved inside DIR, and DIR's kernel is booted. A
//!   dynamic program no package of DIR owns is refused there: its libraries are found
//!   through packages only.
//!
//! Invariants: the private supermin.d is removed when its [`SuperminD`] is dropped, and
//! by a SIGINT, SIGTERM or SIGHUP that ends the process while it exists (`kiln_outdir::cleanup`);
//! the appliance built from it stays pinned as long as the [`Pinned`] handle lives.
//!
//! Errors name the `kiln run` option a field of [`Request`] stands for (`--include`,
//! `--packages`, `--sysroot`), as the command line is where most requests come from. A
//! command that cannot be run from the host is a [`CommandError`], which carries the
//! exit status of `env` and the shell (126, 127).
//!
//! # Example
//!
//! What `kiln run -- uname -r` does, with `kiln-boot` for the VM:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env = kiln::run::guest_env(&[])?;
//! let request = kiln::run::Request {
//!     cmd: "uname".into(),
//!     cwd: std::env::current_dir().ok(),
//!     guest_path: kiln::run::path_of(&env),
//!     ..Default::default()
//! };
//! let appliance = kiln::run::appliance(&request)?;
//! let root = appliance.root().ok_or("the appliance has no root image")?;
//! let out = kiln_boot::run::run(
//!     &kiln_boot::run::RunOptions {
//!         kernel: appliance.kernel().to_path_buf(),
//!         initrd: appliance.initrd().to_path_buf(),
//!         root: root.to_path_buf(),
//!         memory_mib: 512,
//!         cpus: 1,
//!         accel: kiln_boot::Accel::Auto,
//!         qemu: kiln_boot::default_qemu(),
//!         memo: None,
//!         timeout: None,
//!         append: Vec::new(),
//!         echo_console: false,
//!         interrupt: None,
//!         states: None,
//!     },
//!     &kiln_boot::run::RunSpec {
//!         argv: vec!["uname".into(), "-r".into()],
//!         env,
//!         cwd: None,
//!         shares: Vec::new(),
//!         tty: None,
//!         stderr_tty: false,
//!     },
//! )?;
//! std::process::exit(out.status.code().into());
//! # }
//! ```

mod contents;
mod env;
mod libs;
mod owners;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_packages::PackageError;

use crate::locate::{LocateError, LocateOptions, Pinned};
use crate::{Sysroot, key::KernelEnv};
use contents::{Contents, lexical, root_path};

pub use contents::CommandError;
pub use env::{EnvError, guest_env, path_of};
pub use libs::{LibsError, Unfound};

/// What the appliance of one `kiln run` is made for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The command (CMD): a name looked up on `PATH`, or a path (relative to `cwd`).
    pub cmd: OsString,
    /// `--packages`: installed packages to add, with their dependencies.
    pub packages: Vec<String>,
    /// `--include`: files or directories (recursively) to copy; with a sysroot, paths
    /// of the installed system.
    pub include: Vec<PathBuf>,
    /// The current directory on the host: a relative `cmd` is relative to it.
    pub cwd: Option<PathBuf>,
    /// The `PATH` the command gets in the VM ([`path_of`] its environment).
    pub guest_path: Option<OsString>,
    /// `--sysroot`: the installed system everything is looked up in (the host's `/`
    /// by default), its kernel included.
    pub sysroot: Sysroot,
    /// `--kernel` and `--modules` (as `SUPERMIN_KERNEL` and `SUPERMIN_MODULES`); when
    /// both are `None` the process environment decides, as for any supermin appliance.
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    /// `--cachedir`: the cache root (`None`: [`kiln_cache::default_root`]); the
    /// appliance and the owner index are kept there.
    pub cachedir: Option<PathBuf>,
}

/// Why the appliance of a command could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// The command cannot be run from the host (see [`CommandError::code`]).
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("--sysroot {}: not a directory", .0.display())]
    SysrootNotDirectory(PathBuf),
    #[error("{}: not an executable file in {}", cmd.display(), root.display())]
    NotExecutableIn { cmd: PathBuf, root: PathBuf },
    #[error(
        "{}: command not found in {} (searched {}); give its path, or install it there",
        cmd.display(),
        root.display(),
        searched.display()
    )]
    NotFoundIn {
        cmd: PathBuf,
        root: PathBuf,
        searched: PathBuf,
    },
    #[error("the interpreter of {}", path.display())]
    Interpreter {
        path: PathBuf,
        #[source]
        source: Box<ApplianceError>,
    },
    #[error("the program interpreter of {}", path.display())]
    ProgramInterpreter {
        path: PathBuf,
        #[source]
        source: Box<ApplianceError>,
    },
    /// The command a `#!/usr/bin/env CMD` line runs.
    #[error("the command {} runs", env.display())]
    EnvCommand {
        env: PathBuf,
        #[source]
        source: Box<ApplianceError>,
    },
    #[error(
        "{}: its program interpreter {} does not exist on the host",
        path.display(),
        interp.display()
    )]
    NoProgramInterpreter { path: PathBuf, interp: PathBuf },
    #[error(
        "{}: a dynamic program no package of {} owns; with --sysroot kiln finds \
         libraries through packages only: add the package that owns it with \
         --packages, or its libraries with --include",
        path.display(),
        root.display()
    )]
    UnownedDynamic { path: PathBuf, root: PathBuf },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Libraries(#[from] libs::LibsError),
    #[error("reading the package database")]
    Database(#[source] PackageError),
    #[error(transparent)]
    Packages(PackageError),
    #[error("--packages: not installed {place}: {}", missing.join(", "))]
    NotInstalled { place: String, missing: Vec<String> },
    #[error("--include {}", path.display())]
    Include {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--include {} (in {})", path.display(), root.display())]
    IncludeIn {
        path: PathBuf,
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: a path with a newline cannot be included", .0.display())]
    Newline(PathBuf),
    #[error("creating a temporary directory")]
    TempDir(#[source] io::Error),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the appliance")]
    Locate(#[source] LocateError),
}

impl ApplianceError {
    /// The [`CommandError`] behind this error, if the command itself (or the command
    /// a script's `#!` line names) cannot be run from the host.
    pub fn command_error(&self) -> Option<&CommandError> {
        match self {
            ApplianceError::Command(c) => Some(c),
            ApplianceError::Interpreter { source, .. }
            | ApplianceError::ProgramInterpreter { source, .. }
            | ApplianceError::EnvCommand { source, .. } => source.command_error(),
            _ => None,
        }
    }
}

/// The private supermin.d of one `kiln run` (in [`SuperminD::path`]`/supermin.d`),
/// removed when dropped, and by a Ctrl-C, SIGTERM or SIGHUP that ends the process while
/// the appliance is built from it.
pub struct SuperminD {
    dir: tempfile::TempDir,
    _cleanup: kiln_outdir::cleanup::Guard,
    options: LocateOptions,
}

impl SuperminD {
    /// The directory holding `supermin.d/`: the search path [`SuperminD::locate_options`]
    /// gives [`crate::locate`].
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What builds (or finds in the cache) the appliance: the search path is this
    /// directory; the key reads the request's sysroot, kernel and modules.
    pub fn locate_options(&self) -> &LocateOptions {
        &self.options
    }
}

/// The appliance for `req`, built into the cache or found there, pinned until the
/// handle is dropped. The private supermin.d is gone when this returns.
pub fn appliance(req: &Request) -> Result<Pinned, ApplianceError> {
    let dir = supermin_d(req)?;
    crate::locate(dir.locate_options()).map_err(ApplianceError::Locate)
}

/// Write the supermin.d for `req` into a new private temporary directory and return
/// it, with the options that build it. Owners are looked up in the index kept in the
/// request's cache (built there from the database's file lists when it is missing or
/// out of date; without a usable cache, built for this call only).
pub fn supermin_d(req: &Request) -> Result<SuperminD, ApplianceError> {
    let root = &req.sysroot;
    if !root.is_host() && !root.root.is_dir() {
        return Err(ApplianceError::SysrootNotDirectory(root.root.clone()));
    }
    let mut c = Contents::new(root.clone(), req.guest_path.clone());
    let cmd = c.find(&req.cmd, req.cwd.as_deref())?;
    // The database's identity before it is read, so an index is only kept for what
    // was read (see `owners`).
    let id = owners::Identity::of(root);
    let db = crate::databases::open(root).map_err(ApplianceError::Database)?;
    let db = db.as_ref();
    // Without a usable cache the run still works (locate reports the cache's error).
    let cache = crate::locate::open_cache(req.cachedir.as_deref())
        .inspect_err(|e| tracing::debug!("owner index: no cache: {e}"))
        .ok();
    let owners = owners::open(cache.as_ref(), id.as_ref(), root, db);
    c.add_executable(&owners, &cmd, 0)?;
    if root.is_host()
        && is_relative_path(&req.cmd)
        && let Some(cwd) = &req.cwd
        && cwd.as_path() != Path::new("/")
    {
        // The directory only (not its contents): `--no-cwd` starts the command there.
        c.hostfiles.insert(lexical(cwd));
    }

    let names: Vec<&str> = req.packages.iter().map(String::as_str).collect();
    let res = db.resolve(&names).map_err(ApplianceError::Packages)?;
    if !res.missing.is_empty() {
        return Err(ApplianceError::NotInstalled {
            place: if root.is_host() {
                "on this host".to_owned()
            } else {
                format!("in {}", root.root.display())
            },
            missing: res.missing,
        });
    }
    c.packages.extend(req.packages.iter().cloned());
    for p in &req.include {
        include(&mut c.hostfiles, root, p)?;
    }
    // The mount points of the init's run mode (the directories only): with them the
    // guest reaches its ready point without writing to the root, so `kiln run` can
    // save the VM's state there and start later runs from it.
    for p in ["/proc", "/sys", "/dev"] {
        c.hostfiles.insert(PathBuf::from(p));
    }

    let (dir, cleanup) = write(&c.packages, &c.hostfiles)?;
    tracing::debug!(
        "appliance: packages {}, {} host files",
        c.packages
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        c.hostfiles.len()
    );
    let mut options = LocateOptions {
        path: Some(dir.path().as_os_str().to_owned()),
        cachedir: req.cachedir.clone(),
        ..Default::default()
    };
    if !root.is_host() {
        options.key.set_sysroot(root.clone());
    }
    if req.kernel.is_some() || req.modules.is_some() {
        // Errors then name --kernel / --modules, not the variables they stand for.
        options.key.kernel = KernelEnv::from_options(req.kernel.clone(), req.modules.clone());
    }
    Ok(SuperminD {
        dir,
        _cleanup: cleanup,
        options,
    })
}

/// `--include p`: `p` and, for a directory, everything below it; with a sysroot `p`
/// is a path of the installed system, read below its root.
fn include(
    hostfiles: &mut BTreeSet<PathBuf>,
    root: &Sysroot,
    p: &Path,
) -> Result<(), ApplianceError> {
    if root.is_host() {
        let err = |source| ApplianceError::Include {
            path: p.to_path_buf(),
            source,
        };
        let abs = std::path::absolute(p).map_err(err)?;
        fs::symlink_metadata(&abs).map_err(err)?;
        return walk(&abs, hostfiles).map_err(err);
    }
    let inside = lexical(&Path::new("/").join(p));
    let on_disk = root_path(root, &inside);
    let mut found = BTreeSet::new();
    walk(&on_disk, &mut found).map_err(|source| ApplianceError::IncludeIn {
        path: p.to_path_buf(),
        root: root.root.clone(),
        source,
    })?;
    for f in found {
        match f.strip_prefix(&on_disk) {
            Ok(rel) if rel.as_os_str().is_empty() => hostfiles.insert(inside.clone()),
            Ok(rel) => hostfiles.insert(inside.join(rel)),
            Err(_) => continue,
        };
    }
    Ok(())
}

/// The `packages` and `hostfiles` lists as a supermin.d in a new private directory.
/// It is registered with `kiln_outdir::cleanup` for removal on a signal; both are undone when
/// the pair is dropped.
fn write(
    packages: &BTreeSet<String>,
    hostfiles: &BTreeSet<PathBuf>,
) -> Result<(tempfile::TempDir, kiln_outdir::cleanup::Guard), ApplianceError> {
    let (dir, cleanup) = kiln_outdir::cleanup::create(|| {
        let dir = tempfile::Builder::new().prefix("kiln-run-").tempdir()?;
        let p = dir.path().to_path_buf();
        Ok::<_, io::Error>((dir, move || fs::remove_dir_all(&p)))
    })
    .map_err(ApplianceError::TempDir)?;
    let d = dir.path().join("supermin.d");
    fs::create_dir(&d).map_err(|source| ApplianceError::Create {
        path: d.clone(),
        source,
    })?;
    let written = |source| ApplianceError::Write {
        path: d.clone(),
        source,
    };
    let mut pk = String::new();
    for p in packages {
        pk.push_str(p);
        pk.push('\n');
    }
    fs::write(d.join("packages"), pk).map_err(written)?;
    if !hostfiles.is_empty() {
        let mut hf = Vec::new();
        for p in hostfiles {
            let b = p.as_os_str().as_bytes();
            if b.contains(&b'\n') {
                return Err(ApplianceError::Newline(p.clone()));
            }
            glob_escape(b, &mut hf);
            hf.push(b'\n');
        }
        fs::write(d.join("hostfiles"), hf).map_err(written)?;
    }
    Ok((dir, cleanup))
}

/// `name` as a glob(3) pattern (with `GLOB_NOESCAPE`, as supermin and kiln match
/// hostfiles) that matches exactly `name`: each of `*`, `?` and `[` becomes a bracket
/// expression holding it; a backslash is literal and stays.
fn glob_escape(name: &[u8], out: &mut Vec<u8>) {
    for &ch in name {
        if matches!(ch, b'*' | b'?' | b'[') {
            out.extend_from_slice(&[b'[', ch, b']']);
        } else {
            out.push(ch);
        }
    }
}

/// A command given as a relative path (`./prog`, `bin/prog`), not looked up on `PATH`.
pub fn is_relative_path(cmd: &OsStr) -> bool {
    let b = cmd.as_bytes();
    b.contains(&b'/') && b.first() != Some(&b'/')
}

/// `p` and, for a directory, everything below it (symlinks not followed).
fn walk(p: &Path, out: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    out.insert(p.to_path_buf());
    if fs::symlink_metadata(p)?.is_dir() {
        for e in fs::read_dir(p)? {
            walk(&e?.path(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The message and its causes, as the CLI prints them.
    pub(super) fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }

    pub(super) fn executable(p: &Path, text: &str) {
        fs::write(p, text).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn glob_escapes_match_exactly_the_name() {
        let mut out = Vec::new();
        glob_escape(b"/a*b?c[d]e\\f", &mut out);
        assert_eq!(out, b"/a[*]b[?]c[[]d]e\\f");
    }

    /// [`supermin_d`] for `req`, with a cache of its own when `req` names none: the
    /// owner index is kept there, not in the cache of the user running the tests.
    fn made(req: &Request) -> Result<SuperminD, ApplianceError> {
        if req.cachedir.is_some() {
            return supermin_d(req);
        }
        let cache = tempfile::tempdir().unwrap();
        let mut req = req.clone();
        req.cachedir = Some(cache.path().to_path_buf());
        supermin_d(&req)
    }

    /// The packages and hostfiles lines of the supermin.d written for `req`.
    fn written(req: &Request) -> (Vec<String>, Vec<Vec<u8>>) {
        let t = made(req).unwrap();
        let d = t.path().join("supermin.d");
        let packages = fs::read_to_string(d.join("packages")).unwrap();
        let hostfiles = fs::read(d.join("hostfiles")).unwrap_or_default();
        let mut lines: Vec<Vec<u8>> = hostfiles
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        // Every appliance has the run mode's mount points; the tests look at the rest.
        let mount_points: [&[u8]; 3] = [b"/proc", b"/sys", b"/dev"];
        for m in mount_points {
            assert!(
                lines.iter().any(|l| l == m),
                "{} is not in the hostfiles",
                String::from_utf8_lossy(m)
            );
        }
        lines.retain(|l| !mount_points.contains(&l.as_slice()));
        (packages.lines().map(String::from).collect(), lines)
    }

    fn request(cmd: impl Into<OsString>, cwd: Option<&Path>) -> Request {
        Request {
            cmd: cmd.into(),
            cwd: cwd.map(Path::to_path_buf),
            guest_path: Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ..Default::default()
        }
    }

    /// The error `supermin_d` gives for `req`, with its causes.
    fn refused(req: &Request) -> String {
        chain(&made(req).err().unwrap())
    }

    /// The private directory is the search path of the options, the request's
    /// cachedir, sysroot and kernel go into them, and dropping it removes it.
    #[test]
    fn the_options_search_the_private_directory_and_carry_the_request() {
        let t = tempfile::tempdir().unwrap();
        let mut r = request("sh", None);
        r.cachedir = Some(t.path().to_path_buf());
        r.kernel = Some("/nonexistent-kiln/vmlinuz".into());
        let d = supermin_d(&r).unwrap();
        let o = d.locate_options();
        assert_eq!(o.path.as_deref(), Some(d.path().as_os_str()));
        assert_eq!(o.cachedir.as_deref(), Some(t.path()));
        assert!(o.key.sysroot.is_host());
        let k = &o.key.kernel;
        assert_eq!(
            k.kernel.as_deref(),
            Some(OsStr::new("/nonexistent-kiln/vmlinuz"))
        );
        assert_eq!(
            (k.modules.as_deref(), k.given),
            (None, crate::key::Given::Options)
        );
        assert!(d.path().join("supermin.d/packages").is_file());
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());
    }

    /// A program whose PT_INTERP is a script writing a marker (what `ldd` would run):
    /// the interpreter is put in the appliance and never run on the host.
    #[test]
    fn a_hostile_program_interpreter_is_copied_never_run() {
        let t = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(t.path()).unwrap();
        let marker = d.join("marker");
        let evil = d.join("evil");
        executable(&evil, &format!("#!/bin/sh\ntouch '{}'\n", marker.display()));
        fs::write(d.join("main.c"), "int main(void) { return 0; }\n").unwrap();
        let st = std::process::Command::new("cc")
            .current_dir(&d)
            .args(["-o", "prog", "main.c"])
            .arg(format!("-Wl,--dynamic-linker={}", evil.display()))
            .status()
            .unwrap();
        assert!(st.success());
        let (packages, hostfiles) = written(&request("./prog", Some(&d)));
        assert!(
            !marker.exists(),
            "the program's interpreter ran on the host"
        );
        for p in [&evil, &d.join("prog"), &d] {
            assert!(
                hostfiles.contains(&p.as_os_str().as_bytes().to_vec()),
                "{} not in {hostfiles:?}",
                p.display()
            );
        }
        // The script's own interpreter, and the C library the program needs.
        for p in ["dash", "libc6"] {
            assert!(packages.iter().any(|x| x == p), "{p} not in {packages:?}");
        }
        // An interpreter that does not exist is an error naming it, not a crash.
        fs::remove_file(&evil).unwrap();
        let e = refused(&request(d.join("prog"), None));
        assert!(e.contains("program interpreter"), "{e}");
        assert!(!marker.exists());
    }

    /// Names with each glob(3) metacharacter and a backslash, beside names an
    /// unescaped pattern would also match: each hostfiles line matches exactly its
    /// own file.
    #[test]
    fn names_with_glob_characters_are_included_exactly() {
        let t = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(t.path()).unwrap().join("inc");
        fs::create_dir(&d).unwrap();
        let names = [
            "a*b", "a?b", "a[b", "a\\b", "a[b]", "a[*]b", "aXb", "ab", "a]b",
        ];
        for n in names {
            fs::write(d.join(n), n).unwrap();
        }
        let mut r = request("sh", None);
        r.include.push(d.clone());
        let (_, hostfiles) = written(&r);
        let mut expected: BTreeSet<PathBuf> = names.iter().map(|n| d.join(n)).collect();
        expected.insert(d.clone());
        let mut found = BTreeSet::new();
        for line in &hostfiles {
            let m = kiln_pattern::glob(OsStr::from_bytes(line)).unwrap();
            assert_eq!(
                m.len(),
                1,
                "{} matches {m:?}",
                String::from_utf8_lossy(line)
            );
            assert!(found.insert(m[0].clone()));
        }
        assert_eq!(found, expected);
    }

    /// `#!/usr/bin/env -S perl -w`: env's package and the one owning perl; a command
    /// env runs that does not exist is the command error (127) it would be as CMD.
    #[test]
    fn env_scripts_bring_the_command_env_runs() {
        let t = tempfile::tempdir().unwrap();
        let s = fs::canonicalize(t.path()).unwrap().join("script");
        executable(&s, "#!/usr/bin/env -S perl -w\nprint \"hi\\n\";\n");
        let (packages, _) = written(&request(s.as_os_str(), None));
        for p in ["coreutils", "perl-base"] {
            assert!(packages.iter().any(|x| x == p), "{p} not in {packages:?}");
        }
        executable(&s, "#!/usr/bin/env kiln-no-such-command\n");
        let e = made(&request(s.as_os_str(), None)).err().unwrap();
        assert!(chain(&e).contains("kiln-no-such-command"), "{}", chain(&e));
        assert_eq!(e.command_error().map(CommandError::code), Some(127));
    }

    /// Another installed system (merged /usr, a dpkg database): the command is found
    /// on the VM's PATH inside it, a script no package owns brings its interpreter's
    /// package, `--include` names the root's files, and an unowned dynamic program is
    /// refused with a message saying what to add.
    #[test]
    fn a_sysroot_is_searched_inside() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(t.path()).unwrap();
        fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
        fs::write(
            r.join("var/lib/dpkg/status"),
            "Package: dash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n",
        )
        .unwrap();
        fs::write(
            r.join("var/lib/dpkg/info/dash.list"),
            "/.\n/usr\n/usr/bin\n/usr/bin/dash\n/usr/bin/sh\n",
        )
        .unwrap();
        for d in ["usr/bin", "usr/local/bin", "etc/tool"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        symlink("usr/bin", r.join("bin")).unwrap();
        executable(&r.join("usr/bin/dash"), "not really dash");
        symlink("dash", r.join("usr/bin/sh")).unwrap();
        executable(&r.join("usr/local/bin/tool"), "#!/bin/sh\necho tool\n");
        fs::write(r.join("etc/tool/a.conf"), "a").unwrap();
        let mut w = request("tool", None);
        w.sysroot = Sysroot::new(&r);
        w.include.push("/etc/tool".into());
        let (packages, hostfiles) = written(&w);
        assert_eq!(packages, ["dash"]);
        let hf: Vec<String> = hostfiles
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert_eq!(hf, ["/etc/tool", "/etc/tool/a.conf", "/usr/local/bin/tool"]);
        // The key reads the installed system.
        let d = made(&w).unwrap();
        assert_eq!(d.locate_options().key.sysroot.root, r);

        // The host's PATH is not the root's: a command only the host has is not found.
        let mut w = request("true", None);
        w.sysroot = Sysroot::new(&r);
        let e = refused(&w);
        assert!(
            e.contains("command not found in") && e.contains(&r.display().to_string()),
            "{e}"
        );

        fs::copy(
            fs::canonicalize(contents::find_command(OsStr::new("true"), None, None).unwrap())
                .unwrap(),
            r.join("usr/local/bin/prog"),
        )
        .unwrap();
        let mut w = request("prog", None);
        w.sysroot = Sysroot::new(&r);
        let e = refused(&w);
        assert!(
            e.contains("/usr/local/bin/prog: a dynamic program") && e.contains("--packages"),
            "{e}"
        );

        let mut w = request("tool", None);
        w.sysroot = Sysroot::new(r.join("absent"));
        let e = refused(&w);
        assert!(
            e.contains("--sysroot") && e.contains("not a directory"),
            "{e}"
        );
    }
}
