//! What the appliance of a `kiln run` holds, written as a supermin.d in a private
//! temporary directory (so it goes through the same inputs, key and cache as any other
//! supermin appliance).
//!
//! - The command is looked up on `PATH` (or taken as a path when it has a `/`).
//! - Its owner is found in the dpkg database as `dpkg -S` would, trying the path as
//!   given, with its directory symlinks resolved and fully resolved, each also in its
//!   merged-`/usr` alias (`/bin/x` ↔ `/usr/bin/x`), because packages list the paths they
//!   shipped, not the ones `PATH` finds today.
//! - A command no package owns is copied from the host together with what it needs:
//!   for a script its `#!` interpreter (recursively), for a dynamic ELF file the
//!   libraries its program interpreter resolves (`ld.so --list FILE`, what `ldd` runs;
//!   the loader is run, never the command), each through its package when it has one.
//! - `--packages` must name installed packages; `--include` paths must exist
//!   (directories are listed recursively, symlinks not followed).
//! - With a sysroot (`--sysroot DIR`, another installed system) all of this is looked
//!   up below DIR: CMD on the standard `PATH` (the host's names host directories), its
//!   owner in DIR's database, paths resolved inside DIR. An unowned dynamic program is
//!   refused there: listing its libraries would run DIR's loader on this machine.

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
    /// The installed system everything is looked up in (the host's `/` by default).
    pub sysroot: Sysroot,
}

/// Write the supermin.d for `want` into a new private temporary directory (its
/// `supermin.d/` subdirectory) and return it.
/// The private supermin.d of one `kiln run`, removed when dropped, and by a Ctrl-C,
/// SIGTERM or SIGHUP that ends kiln while the appliance is built from it.
pub struct Temp {
    dir: tempfile::TempDir,
    _cleanup: kiln_cleanup::Guard,
}

impl Temp {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn supermin_d(want: &Want) -> anyhow::Result<Temp> {
    let root = &want.sysroot;
    let cmd = if root.is_host() {
        find_command(&want.cmd, want.cwd.as_deref())?
    } else {
        if !root.root.is_dir() {
            bail!("--sysroot {}: not a directory", root.root.display());
        }
        find_command_in(root, &want.cmd)?
    };
    let db = kiln::databases::open(root).context("reading the package database")?;
    let db = db.as_ref();
    let mut c = Contents {
        root: root.clone(),
        ..Contents::default()
    };
    c.add_executable(db, &cmd, 0)?;

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
            c.hostfiles.extend(
                found
                    .into_iter()
                    .filter_map(|f| Some(inside.join(f.strip_prefix(&on_disk).ok()?))),
            );
            continue;
        }
        let abs = std::path::absolute(p).with_context(|| format!("--include {}", p.display()))?;
        fs::symlink_metadata(&abs).with_context(|| format!("--include {}", p.display()))?;
        walk(&abs, &mut c.hostfiles).with_context(|| format!("--include {}", p.display()))?;
    }

    let (dir, cleanup) = kiln_cleanup::create(|| {
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
            // The list holds glob(3) patterns: escape what glob would interpret.
            for &ch in b {
                if matches!(ch, b'*' | b'?' | b'[' | b'\\') {
                    hf.push(b'\\');
                }
                hf.push(ch);
            }
            hf.push(b'\n');
        }
        fs::write(d.join("hostfiles"), hf).with_context(|| format!("writing {}", d.display()))?;
    }
    tracing::debug!(
        "appliance: packages {:?}, {} host files",
        c.packages,
        c.hostfiles.len()
    );
    Ok(dir)
}

#[derive(Default)]
struct Contents {
    packages: BTreeSet<String>,
    hostfiles: BTreeSet<PathBuf>,
    /// Where paths are looked up (paths in `hostfiles` are the installed system's).
    root: Sysroot,
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
        let on_disk = root_path(&self.root, path);
        let mut head = [0u8; 256];
        let n = fs::File::open(&on_disk)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("reading {}", path.display()))?;
        let head = &head[..n];
        if let Some(rest) = head.strip_prefix(b"#!") {
            let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
            let interp = line
                .split(|b| b.is_ascii_whitespace())
                .find(|w| !w.is_empty())
                .map(|w| PathBuf::from(OsStr::from_bytes(w)));
            if let Some(i) = interp
                && depth < 4
            {
                self.add_executable(db, &i, depth + 1)
                    .with_context(|| format!("the interpreter of {}", path.display()))?;
            }
        } else if let Some(interp) = elf_interp(&on_disk)? {
            if !self.root.is_host() {
                bail!(
                    "{}: a dynamic program no package of {} owns; kiln does not run that \
                     system's loader to find its libraries: add the package that owns it \
                     with --packages, or its libraries with --include",
                    path.display(),
                    self.root.root.display()
                );
            }
            for lib in shared_libraries(&interp, path)? {
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

    /// The path and, when it goes through symlinks, the file it resolves to.
    fn add_host_file(&mut self, p: &Path) {
        self.hostfiles.insert(p.to_path_buf());
        if let Some(c) = canonical_in(&self.root, p) {
            self.hostfiles.insert(c);
        }
    }
}

/// The command as the host's `PATH` finds it (absolute), or the path given.
fn find_command(cmd: &OsStr, cwd: Option<&Path>) -> anyhow::Result<PathBuf> {
    let shown = Path::new(cmd).display();
    if cmd.as_bytes().contains(&b'/') {
        let p = match cwd {
            Some(c) => c.join(cmd),
            None => PathBuf::from(cmd),
        };
        let m = fs::metadata(&p).with_context(|| format!("{shown}: not found on the host"))?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            bail!("{shown}: not an executable file");
        }
        return Ok(lexical(&p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
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
    bail!("{shown}: command not found on the host (searched PATH); give its path, or install it")
}

/// The command as the standard `PATH` finds it in `root` (the host's `PATH` names
/// directories of the host), or the path given, inside the root.
fn find_command_in(root: &Sysroot, cmd: &OsStr) -> anyhow::Result<PathBuf> {
    let shown = Path::new(cmd).display();
    let exec = |p: &Path| {
        kiln_pattern_stat(root, p)
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.as_bytes().contains(&b'/') {
        let p = lexical(&Path::new("/").join(cmd));
        if !exec(&p) {
            bail!("{shown}: not an executable file in {}", root.root.display());
        }
        return Ok(p);
    }
    for dir in GUEST_PATH.split(':') {
        let p = Path::new(dir).join(cmd);
        if exec(&p) {
            return Ok(p);
        }
    }
    bail!(
        "{shown}: command not found in {} (searched {GUEST_PATH}); give its path, or install it there",
        root.root.display()
    )
}

/// The `PATH` searched in another installed system (the guest command's own `PATH`).
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `stat` of `p` inside `root` (symlinks followed inside it).
fn kiln_pattern_stat(root: &Sysroot, p: &Path) -> Option<fs::Metadata> {
    if root.is_host() {
        fs::metadata(p).ok()
    } else {
        kiln_pattern::stat_in(&root.root, p).ok()
    }
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

/// The paths the database of `root` may list `p` under (for the host: the paths dpkg
/// may list it under).
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

/// The ELF program interpreter (`PT_INTERP`) of `p`; `None` for a static or non-ELF file.
fn elf_interp(p: &Path) -> anyhow::Result<Option<PathBuf>> {
    let b = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    match kiln_initrd::elf_interp(&b) {
        Ok(i) => Ok(i.map(|s| PathBuf::from(OsStr::from_bytes(s)))),
        // Not a 64-bit little-endian ELF file: a script or another kind of program,
        // whose loader (if any) kiln does not follow.
        Err(_) if b.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) => Ok(None),
        Err(why) => bail!("{}: {why}", p.display()),
    }
}

/// The libraries `interp --list file` resolves (what `ldd` prints), the loader included.
fn shared_libraries(interp: &Path, file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new(interp)
        .arg("--list")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} --list {}", interp.display(), file.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list {} failed ({}): {}",
            interp.display(),
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = vec![interp.to_path_buf()];
    for line in out.stdout.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        let path = match line.windows(4).position(|w| w == b" => ") {
            Some(i) => &line[i + 4..],
            None => line,
        };
        if path.starts_with(b"not found") {
            bail!(
                "{}: shared library {} not found on the host",
                file.display(),
                String::from_utf8_lossy(line)
            );
        }
        if path.first() == Some(&b'/') {
            let end = path.iter().position(|&b| b == b' ').unwrap_or(path.len());
            libs.push(PathBuf::from(OsStr::from_bytes(&path[..end])));
        }
    }
    Ok(libs)
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
        let c = candidates_in(&Sysroot::default(), Path::new("/nonexistent-kiln/bin/x"));
        assert!(c.contains(&PathBuf::from("/usr/nonexistent-kiln/bin/x")));
        let c = candidates_in(&Sysroot::default(), Path::new("/usr/nonexistent-kiln/x"));
        assert!(c.contains(&PathBuf::from("/nonexistent-kiln/x")));
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn host_shell_has_an_owner_and_libraries() {
        let db = kiln::databases::open(&Sysroot::default()).unwrap();
        let db = db.as_ref();
        let sh = find_command(OsStr::new("sh"), None).unwrap();
        assert_eq!(owner(db, &sh).unwrap().as_deref(), Some("dash"));
        let interp = elf_interp(&fs::canonicalize(&sh).unwrap())
            .unwrap()
            .unwrap();
        let libs = shared_libraries(&interp, &sh).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(find_command(OsStr::new("kiln-no-such-command"), None).is_err());
    }
}
