//! What the appliance of a `kiln run` holds, written as a supermin.d in a private
//! temporary directory (so it goes through the same inputs, key and cache as any other
//! supermin appliance).
//!
//! - The command is looked up on the `PATH` it gets in the VM, then on kiln's own (or
//!   taken as a path when it has a `/`): the VM runs the first match of its `PATH`
//!   among the host's files, which the appliance must hold (the host's `PATH` may put a
//!   shim, e.g. pyenv's, before the real program).
//! - Its owner is found in the dpkg database as `dpkg -S` would, trying the path as
//!   given, with its directory symlinks resolved and fully resolved, each also in its
//!   merged-`/usr` alias (`/bin/x` ↔ `/usr/bin/x`), because packages list the paths they
//!   shipped, not the ones `PATH` finds today.
//! - A command no package owns is copied from the host together with what it needs:
//!   for a script its `#!` interpreter (recursively; for `#!/usr/bin/env [OPTIONS] CMD`
//!   also CMD, looked up as the command is), for a dynamic ELF file its program
//!   interpreter and shared libraries, found by reading the files ([`libs`]), each
//!   through its package when it has one. Nothing of the command, nor the loader it
//!   names, is ever run on the host.
//! - A relative command path (`./prog`) also puts the current directory in the
//!   appliance, so that with `--no-cwd` the command can start there.
//! - `--packages` must name installed packages; `--include` paths must exist
//!   (directories are listed recursively, symlinks not followed).
//! - The `hostfiles` list holds glob(3) patterns (matched with `GLOB_NOESCAPE`, where a
//!   backslash is literal): `*`, `?` and `[` in a name are written as bracket
//!   expressions (`[*]`), so every name matches exactly itself.
//! - With a sysroot (`--sysroot DIR`, another installed system) all of this is looked
//!   up below DIR: CMD on the VM's `PATH` only (the host's names host directories), its
//!   owner in DIR's database, paths resolved inside DIR. A dynamic program no package
//!   of DIR owns is refused there: its libraries are found through packages only.

mod libs;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use kiln::Sysroot;
use kiln::databases::Database;

pub struct Want {
    pub cmd: OsString,
    pub packages: Vec<String>,
    pub include: Vec<PathBuf>,
    pub cwd: Option<PathBuf>,
    /// The `PATH` the command gets in the VM.
    pub guest_path: Option<OsString>,
    /// The installed system everything is looked up in (the host's `/` by default).
    pub sysroot: Sysroot,
}

/// The value of `PATH` in an environment of `NAME=VALUE` entries.
pub fn path_of(env: &[OsString]) -> Option<OsString> {
    env.iter().rev().find_map(|v| {
        v.as_bytes()
            .strip_prefix(b"PATH=")
            .map(|p| OsStr::from_bytes(p).to_owned())
    })
}

/// Write the supermin.d for `want` into a new private temporary directory (its
/// `supermin.d/` subdirectory) and return it.
/// The private supermin.d of one `kiln run`, removed when dropped, and by a Ctrl-C,
/// SIGTERM or SIGHUP that ends kiln while the appliance is built from it.
pub struct Temp {
    dir: tempfile::TempDir,
    _cleanup: kiln_outdir::cleanup::Guard,
}

impl Temp {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn supermin_d(want: &Want) -> anyhow::Result<Temp> {
    let root = &want.sysroot;
    if !root.is_host() && !root.root.is_dir() {
        bail!("--sysroot {}: not a directory", root.root.display());
    }
    let mut c = Contents {
        search: libs::SearchPath::host(),
        guest_path: want.guest_path.clone(),
        root: root.clone(),
        ..Default::default()
    };
    let cmd = c.find(&want.cmd, want.cwd.as_deref())?;
    let db = kiln::databases::open(root).context("reading the package database")?;
    let db = db.as_ref();
    c.add_executable(db, &cmd, 0)?;
    if root.is_host()
        && is_relative_path(&want.cmd)
        && let Some(cwd) = &want.cwd
        && cwd.as_path() != Path::new("/")
    {
        // The directory only (not its contents): `--no-cwd` starts the command there.
        c.hostfiles.insert(lexical(cwd));
    }

    let names: Vec<&str> = want.packages.iter().map(String::as_str).collect();
    let res = db.resolve(&names)?;
    if !res.missing.is_empty() {
        bail!(
            "--packages: not installed {}: {}",
            if root.is_host() {
                "on this host".to_owned()
            } else {
                format!("in {}", root.root.display())
            },
            res.missing.join(", ")
        );
    }
    c.packages.extend(want.packages.iter().cloned());
    for p in &want.include {
        if !root.is_host() {
            // A path of the installed system: its files are read below the root.
            let inside = lexical(&Path::new("/").join(p));
            let on_disk = root_path(root, &inside);
            let mut found = BTreeSet::new();
            walk(&on_disk, &mut found).with_context(|| {
                format!("--include {} (in {})", p.display(), root.root.display())
            })?;
            for f in found {
                match f.strip_prefix(&on_disk) {
                    Ok(rel) if rel.as_os_str().is_empty() => c.hostfiles.insert(inside.clone()),
                    Ok(rel) => c.hostfiles.insert(inside.join(rel)),
                    Err(_) => continue,
                };
            }
            continue;
        }
        let abs = std::path::absolute(p).with_context(|| format!("--include {}", p.display()))?;
        fs::symlink_metadata(&abs).with_context(|| format!("--include {}", p.display()))?;
        walk(&abs, &mut c.hostfiles).with_context(|| format!("--include {}", p.display()))?;
    }

    let (dir, cleanup) = kiln_outdir::cleanup::create(|| {
        let dir = tempfile::Builder::new().prefix("kiln-run-").tempdir()?;
        let p = dir.path().to_path_buf();
        Ok::<_, std::io::Error>((dir, move || fs::remove_dir_all(&p)))
    })
    .context("creating a temporary directory")?;
    let dir = Temp {
        dir,
        _cleanup: cleanup,
    };
    let d = dir.path().join("supermin.d");
    fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
    let mut pk = String::new();
    for p in &c.packages {
        pk.push_str(p);
        pk.push('\n');
    }
    fs::write(d.join("packages"), pk).with_context(|| format!("writing {}", d.display()))?;
    if !c.hostfiles.is_empty() {
        let mut hf = Vec::new();
        for p in &c.hostfiles {
            let b = p.as_os_str().as_bytes();
            if b.contains(&b'\n') {
                bail!("{}: a path with a newline cannot be included", p.display());
            }
            glob_escape(b, &mut hf);
            hf.push(b'\n');
        }
        fs::write(d.join("hostfiles"), hf).with_context(|| format!("writing {}", d.display()))?;
    }
    tracing::debug!(
        "appliance: packages {}, {} host files",
        c.packages
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        c.hostfiles.len()
    );
    Ok(dir)
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

#[derive(Default)]
struct Contents {
    packages: BTreeSet<String>,
    hostfiles: BTreeSet<PathBuf>,
    search: libs::SearchPath,
    guest_path: Option<OsString>,
    /// Where paths are looked up (paths in `hostfiles` are the installed system's).
    root: Sysroot,
}

/// A script's `#!` line: the interpreter and the rest of the line (its argument).
fn shebang(head: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.trim_ascii();
    let end = line
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(line.len());
    Some((&line[..end], &line[end..]))
}

/// Interpreters followed from one command (a script run by a script…).
const MAX_INTERPRETERS: u32 = 4;

/// The command `env` runs, given the rest of a `#!/usr/bin/env …` line: the first word
/// that is neither an option of GNU `env` (`-i`, `-0`, `-v`, `-S`, `-u NAME`,
/// `-C DIR`, their long forms, `-` and `--`) nor a `NAME=VALUE` assignment. The kernel
/// passes the rest of the line as one argument; `env -S` splits it on white space, and
/// without `-S` only a one-word rest works, so splitting covers both.
fn env_command(args: &[u8]) -> Option<&[u8]> {
    let mut words = args
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w == b"--" {
            return words.next();
        }
        if let Some(long) = w.strip_prefix(b"--") {
            // Options with a separate argument; `--split-string` is followed by the
            // words themselves.
            if matches!(long, b"unset" | b"chdir") {
                words.next();
            }
            continue;
        }
        if let Some(short) = w.strip_prefix(b"-") {
            for (i, c) in short.iter().enumerate() {
                let rest = &short[i + 1..];
                match c {
                    b'u' | b'C' => {
                        if rest.is_empty() {
                            words.next();
                        }
                        break;
                    }
                    // `-Scmd`: the split string starts right after the S.
                    b'S' if !rest.is_empty() => {
                        if !rest.starts_with(b"-") && !rest.contains(&b'=') {
                            return Some(rest);
                        }
                        break;
                    }
                    _ => {}
                }
            }
            continue;
        }
        if w.contains(&b'=') {
            continue;
        }
        return Some(w);
    }
    None
}

impl Contents {
    fn add_executable(&mut self, db: &dyn Database, path: &Path, depth: u32) -> anyhow::Result<()> {
        if let Some(pkg) = owner_in(db, &self.root, path)? {
            tracing::info!("{}: from package {pkg}", path.display());
            self.packages.insert(pkg);
            return Ok(());
        }
        tracing::info!(
            "{}: owned by no package; copying it from the host",
            path.display()
        );
        self.add_host_file(path);
        if !self.root.is_host() {
            return self.add_unowned_in_root(db, path, depth);
        }
        let mut head = [0u8; 256];
        let n = libs::open_regular(path)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("reading {}", path.display()))?;
        let head = &head[..n];
        if let Some((interp, args)) = shebang(head) {
            if interp.is_empty() || depth >= MAX_INTERPRETERS {
                return Ok(());
            }
            let interp = PathBuf::from(OsStr::from_bytes(interp));
            self.add_executable(db, &interp, depth + 1)
                .with_context(|| format!("the interpreter of {}", path.display()))?;
            if interp.file_name() == Some(OsStr::new("env"))
                && let Some(target) = env_command(args)
            {
                let target =
                    find_command(OsStr::from_bytes(target), None, self.guest_path.as_deref())
                        .with_context(|| format!("the command {} runs", interp.display()))
                        .with_context(|| format!("the interpreter of {}", path.display()))?;
                self.add_executable(db, &target, depth + 1)
                    .with_context(|| format!("the interpreter of {}", path.display()))?;
            }
        } else if let Some(needs) = libs::needs(path, &self.search)? {
            if let Some(interp) = needs.interp
                && depth < MAX_INTERPRETERS
            {
                // A name to find and copy, never a program to run here.
                if !interp.is_absolute() || fs::metadata(&interp).is_err() {
                    bail!(
                        "{}: its program interpreter {} does not exist on the host",
                        path.display(),
                        interp.display()
                    );
                }
                self.add_executable(db, &interp, depth + 1)
                    .with_context(|| format!("the program interpreter of {}", path.display()))?;
            }
            for lib in needs.libs {
                match owner(db, &lib)? {
                    Some(pkg) => {
                        self.packages.insert(pkg);
                    }
                    None => self.add_host_file(&lib),
                }
            }
        }
        Ok(())
    }

    /// The path (`.` and `..` removed: hostfiles must be normalised, and `$ORIGIN/../lib`
    /// gives such paths) and, when it goes through symlinks, the file it resolves to.
    fn add_host_file(&mut self, p: &Path) {
        self.hostfiles.insert(lexical(p));
        if let Some(c) = canonical_in(&self.root, p) {
            self.hostfiles.insert(c);
        }
    }

    /// The command as [`find_command`] finds it, or in another installed system as
    /// [`find_command_in`] does.
    fn find(&self, cmd: &OsStr, cwd: Option<&Path>) -> anyhow::Result<PathBuf> {
        if self.root.is_host() {
            find_command(cmd, cwd, self.guest_path.as_deref())
        } else {
            find_command_in(&self.root, cmd, self.guest_path.as_deref())
        }
    }

    /// A file of another installed system that no package of it owns (already in the
    /// hostfiles): a script brings its interpreter (and `env`'s command); a dynamic
    /// program is refused, since its libraries are found through packages only there.
    fn add_unowned_in_root(
        &mut self,
        db: &dyn Database,
        path: &Path,
        depth: u32,
    ) -> anyhow::Result<()> {
        let on_disk = root_path(&self.root, path);
        let bytes = fs::read(&on_disk).with_context(|| format!("reading {}", on_disk.display()))?;
        if let Some((interp, args)) = shebang(&bytes) {
            if interp.is_empty() || depth >= MAX_INTERPRETERS {
                return Ok(());
            }
            let interp = PathBuf::from(OsStr::from_bytes(interp));
            self.add_executable(db, &interp, depth + 1)
                .with_context(|| format!("the interpreter of {}", path.display()))?;
            if interp.file_name() == Some(OsStr::new("env"))
                && let Some(target) = env_command(args)
            {
                let target = self
                    .find(OsStr::from_bytes(target), None)
                    .with_context(|| format!("the interpreter of {}", path.display()))?;
                self.add_executable(db, &target, depth + 1)
                    .with_context(|| format!("the interpreter of {}", path.display()))?;
            }
            return Ok(());
        }
        if let Ok(Some(_)) = kiln_elf::interp(&bytes) {
            bail!(
                "{}: a dynamic program no package of {} owns; with --sysroot kiln finds \
                 libraries through packages only: add the package that owns it with \
                 --packages, or its libraries with --include",
                path.display(),
                self.root.root.display()
            );
        }
        Ok(())
    }
}

/// CMD cannot be run from the host: kiln exits 127 (not found) or 126 (not
/// executable), as `env`, `docker run` and the shell do.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}: command not found on the host (searched PATH); give its path, or install it")]
    NotFound(String),
    #[error("{0}: not found on the host")]
    PathNotFound(String, #[source] std::io::Error),
    #[error("{0}: not an executable file")]
    NotExecutable(String),
}

impl CommandError {
    /// The exit status for it.
    pub fn code(&self) -> u8 {
        match self {
            CommandError::NotFound(_) => 127,
            CommandError::PathNotFound(_, e) if e.kind() == std::io::ErrorKind::NotFound => 127,
            CommandError::PathNotFound(..) | CommandError::NotExecutable(_) => 126,
        }
    }
}

/// The command as `guest_path` (the VM's `PATH`), then the host's `PATH`, finds it
/// among the host's files (absolute), or the path given.
fn find_command(
    cmd: &OsStr,
    cwd: Option<&Path>,
    guest_path: Option<&OsStr>,
) -> anyhow::Result<PathBuf> {
    let shown = Path::new(cmd).display().to_string();
    if cmd.as_bytes().contains(&b'/') {
        let p = match cwd {
            Some(c) => c.join(cmd),
            None => PathBuf::from(cmd),
        };
        let m = fs::metadata(&p).map_err(|e| CommandError::PathNotFound(shown.clone(), e))?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            return Err(CommandError::NotExecutable(shown).into());
        }
        return Ok(lexical(&p));
    }
    let host = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let path = match guest_path {
        Some(g) => {
            let mut p = g.to_owned();
            p.push(":");
            p.push(host);
            p
        }
        None => host,
    };
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            cwd.map(Path::to_path_buf).unwrap_or_else(|| ".".into())
        } else {
            PathBuf::from(OsStr::from_bytes(dir))
        };
        let p = dir.join(cmd);
        if let Ok(m) = fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(lexical(&std::path::absolute(&p).unwrap_or(p)));
        }
    }
    Err(CommandError::NotFound(shown).into())
}

/// The command as the VM's `PATH` (`guest_path`, else the standard one) finds it
/// among the files of another installed system `root` (the host's `PATH` names host
/// directories), or the path given, inside the root.
fn find_command_in(
    root: &Sysroot,
    cmd: &OsStr,
    guest_path: Option<&OsStr>,
) -> anyhow::Result<PathBuf> {
    const STANDARD: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let shown = Path::new(cmd).display();
    let exec = |p: &Path| {
        kiln_pattern::stat_in(&root.root, p)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.as_bytes().contains(&b'/') {
        let p = lexical(&Path::new("/").join(cmd));
        if !exec(&p) {
            bail!("{shown}: not an executable file in {}", root.root.display());
        }
        return Ok(p);
    }
    let path = guest_path.unwrap_or(OsStr::new(STANDARD));
    for dir in path.as_bytes().split(|&b| b == b':') {
        let p = Path::new("/").join(OsStr::from_bytes(dir)).join(cmd);
        if exec(&p) {
            return Ok(lexical(&p));
        }
    }
    bail!(
        "{shown}: command not found in {} (searched {}); give its path, or install it there",
        root.root.display(),
        Path::new(path).display()
    )
}

/// `realpath(p)` inside `root`.
fn canonical_in(root: &Sysroot, p: &Path) -> Option<PathBuf> {
    if root.is_host() {
        fs::canonicalize(p).ok()
    } else {
        kiln_pattern::resolve_in(&root.root, p).ok()
    }
}

/// Where `p` (a path of the installed system) is on this machine, symlinks followed
/// inside the root.
fn root_path(root: &Sysroot, p: &Path) -> PathBuf {
    if root.is_host() {
        return p.to_path_buf();
    }
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => match canonical_in(root, d) {
            Some(d) => root.host_path(&d.join(n)),
            None => root.host_path(p),
        },
        _ => root.host_path(p),
    }
}

/// `p` with `.` and `..` removed lexically.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The paths dpkg may list `p` under.
#[cfg(test)]
fn candidates(p: &Path) -> Vec<PathBuf> {
    candidates_in(&Sysroot::default(), p)
}

/// The paths the database of `root` may list `p` under.
fn candidates_in(root: &Sysroot, p: &Path) -> Vec<PathBuf> {
    let mut v = vec![p.to_path_buf()];
    if let (Some(parent), Some(name)) = (p.parent(), p.file_name())
        && let Some(d) = canonical_in(root, parent)
    {
        v.push(d.join(name));
    }
    if let Some(c) = canonical_in(root, p) {
        v.push(c);
    }
    let mut out = Vec::new();
    for c in v {
        let alias = match c.strip_prefix("/usr") {
            Ok(rest) => Path::new("/").join(rest),
            Err(_) => Path::new("/usr").join(c.strip_prefix("/").unwrap_or(&c)),
        };
        for x in [c, alias] {
            if !out.contains(&x) {
                out.push(x);
            }
        }
    }
    out
}

/// The package owning `p` (under any of its [`candidates_in`]), as `dpkg -S` finds it.
fn owner(db: &dyn Database, p: &Path) -> anyhow::Result<Option<String>> {
    owner_in(db, &Sysroot::default(), p)
}

/// [`owner`] in the database of `root`, `p` resolved inside it.
fn owner_in(db: &dyn Database, root: &Sysroot, p: &Path) -> anyhow::Result<Option<String>> {
    let cands = candidates_in(root, p);
    let mut best: Option<(usize, String)> = None;
    for (i, pkg) in db.packages().iter().enumerate() {
        let files = match db.files(i) {
            Ok(f) => f,
            // A package without a file list owns nothing we can use.
            Err(_) => continue,
        };
        for f in files {
            if let Some(rank) = cands.iter().position(|c| *c == f.path)
                && best.as_ref().is_none_or(|(r, _)| rank < *r)
            {
                best = Some((rank, pkg.name.clone()));
            }
        }
    }
    Ok(best.map(|(_, n)| n))
}

/// `p` and, for a directory, everything below it (symlinks not followed).
fn walk(p: &Path, out: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
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
    use super::*;

    #[test]
    fn usr_aliases() {
        let c = candidates(Path::new("/nonexistent-kiln/bin/x"));
        assert!(c.contains(&PathBuf::from("/usr/nonexistent-kiln/bin/x")));
        let c = candidates(Path::new("/usr/nonexistent-kiln/x"));
        assert!(c.contains(&PathBuf::from("/nonexistent-kiln/x")));
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn host_shell_has_an_owner() {
        let db = kiln::databases::open(&Sysroot::default()).unwrap();
        let db = db.as_ref();
        let sh = find_command(OsStr::new("sh"), None, None).unwrap();
        assert_eq!(owner(db, &sh).unwrap().as_deref(), Some("dash"));
        assert!(find_command(OsStr::new("kiln-no-such-command"), None, None).is_err());
        // The VM's PATH comes first: what the VM will run is what the appliance holds.
        let t = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(t.path()).unwrap();
        executable(&d.join("sh"), "#!/bin/sh\n");
        let g = find_command(OsStr::new("sh"), None, Some(d.as_os_str())).unwrap();
        assert_eq!(g, d.join("sh"));
    }

    #[test]
    fn env_command_skips_options_and_assignments() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b" python3", Some(b"python3")),
            (b"python3 -u", Some(b"python3")),
            (b"-S python3 -u", Some(b"python3")),
            (b"-Spython3 -u", Some(b"python3")),
            (b"-iS A=1 B=2 perl -w", Some(b"perl")),
            (b"-u HOME -C /tmp -- -weird", Some(b"-weird")),
            (
                b"-uHOME --unset LANG --chdir=/ --split-string perl",
                Some(b"perl"),
            ),
            (b"- -0 -v X=1", None),
            (b"", None),
        ];
        for (args, want) in cases {
            assert_eq!(
                env_command(args),
                *want,
                "{}",
                String::from_utf8_lossy(args)
            );
        }
    }

    #[test]
    fn glob_escapes_match_exactly_the_name() {
        let mut out = Vec::new();
        glob_escape(b"/a*b?c[d]e\\f", &mut out);
        assert_eq!(out, b"/a[*]b[?]c[[]d]e\\f");
    }

    /// The packages and hostfiles lines of the supermin.d written for `want`.
    fn written(want: &Want) -> (Vec<String>, Vec<Vec<u8>>) {
        let t = supermin_d(want).unwrap();
        let d = t.path().join("supermin.d");
        let packages = fs::read_to_string(d.join("packages")).unwrap();
        let hostfiles = fs::read(d.join("hostfiles")).unwrap_or_default();
        (
            packages.lines().map(String::from).collect(),
            hostfiles
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        )
    }

    fn want(cmd: impl Into<OsString>, cwd: Option<&Path>) -> Want {
        Want {
            cmd: cmd.into(),
            packages: Vec::new(),
            include: Vec::new(),
            cwd: cwd.map(Path::to_path_buf),
            guest_path: Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            sysroot: Sysroot::default(),
        }
    }

    fn executable(p: &Path, text: &str) {
        fs::write(p, text).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
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
        let (packages, hostfiles) = written(&want("./prog", Some(&d)));
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
        let e = supermin_d(&want(d.join("prog"), None)).err().unwrap();
        assert!(format!("{e:#}").contains("program interpreter"), "{e:#}");
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
        let mut w = want("sh", None);
        w.include.push(d.clone());
        let (_, hostfiles) = written(&w);
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

    /// `#!/usr/bin/env -S perl -w`: env's package and the one owning perl.
    #[test]
    fn env_scripts_bring_the_command_env_runs() {
        let t = tempfile::tempdir().unwrap();
        let s = fs::canonicalize(t.path()).unwrap().join("script");
        executable(&s, "#!/usr/bin/env -S perl -w\nprint \"hi\\n\";\n");
        let (packages, _) = written(&want(s.as_os_str(), None));
        for p in ["coreutils", "perl-base"] {
            assert!(packages.iter().any(|x| x == p), "{p} not in {packages:?}");
        }
        executable(&s, "#!/usr/bin/env kiln-no-such-command\n");
        let e = supermin_d(&want(s.as_os_str(), None)).err().unwrap();
        assert!(format!("{e:#}").contains("kiln-no-such-command"), "{e:#}");
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
        let mut w = want("tool", None);
        w.sysroot = Sysroot::new(&r);
        w.include.push("/etc/tool".into());
        let (packages, hostfiles) = written(&w);
        assert_eq!(packages, ["dash"]);
        let hf: Vec<String> = hostfiles
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert_eq!(hf, ["/etc/tool", "/etc/tool/a.conf", "/usr/local/bin/tool"]);

        // The host's PATH is not the root's: a command only the host has is not found.
        let mut w = want("true", None);
        w.sysroot = Sysroot::new(&r);
        let e = format!("{:#}", supermin_d(&w).err().unwrap());
        assert!(
            e.contains("command not found in") && e.contains(&r.display().to_string()),
            "{e}"
        );

        fs::copy(
            fs::canonicalize(find_command(OsStr::new("true"), None, None).unwrap()).unwrap(),
            r.join("usr/local/bin/prog"),
        )
        .unwrap();
        let mut w = want("prog", None);
        w.sysroot = Sysroot::new(&r);
        let e = format!("{:#}", supermin_d(&w).err().unwrap());
        assert!(
            e.contains("/usr/local/bin/prog: a dynamic program") && e.contains("--packages"),
            "{e}"
        );

        let mut w = want("tool", None);
        w.sysroot = Sysroot::new(r.join("absent"));
        let e = format!("{:#}", supermin_d(&w).err().unwrap());
        assert!(
            e.contains("--sysroot") && e.contains("not a directory"),
            "{e}"
        );
    }
}
