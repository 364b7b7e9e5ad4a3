//! The packages and host files a command needs ([`Contents`]): the command found as the
//! VM's `PATH` finds it, its owner in the package database, and for a command no
//! package owns what it needs to run (a script's `#!` interpreter, a dynamic program's
//! loader and libraries). See the module doc of [`crate::run`] for the rules.
//!
//! Invariant: files are only read, never run; paths are looked up below the request's
//! sysroot, and the paths recorded are the installed system's.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::ApplianceError;
use super::libs;
use super::owners::Index;
use crate::Sysroot;

/// Interpreters followed from one command (a script run by a script…).
const MAX_INTERPRETERS: u32 = 4;

/// What the appliance holds, as it is collected.
pub(super) struct Contents {
    pub(super) packages: BTreeSet<String>,
    pub(super) hostfiles: BTreeSet<PathBuf>,
    search: libs::SearchPath,
    guest_path: Option<OsString>,
    /// Where paths are looked up (paths in `hostfiles` are the installed system's).
    root: Sysroot,
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

/// `source` as the error of the interpreter of `path`.
fn of_interpreter(path: &Path) -> impl FnOnce(ApplianceError) -> ApplianceError + '_ {
    move |source| ApplianceError::Interpreter {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

impl Contents {
    /// Nothing yet, for commands looked up in `root` with the VM's `PATH`.
    pub(super) fn new(root: Sysroot, guest_path: Option<OsString>) -> Contents {
        Contents {
            packages: BTreeSet::new(),
            hostfiles: BTreeSet::new(),
            search: libs::SearchPath::host(),
            guest_path,
            root,
        }
    }

    /// The executable `path` (a command, or an interpreter `depth` levels below it):
    /// its package, or the file and what it needs to run.
    pub(super) fn add_executable(
        &mut self,
        owners: &Index,
        path: &Path,
        depth: u32,
    ) -> Result<(), ApplianceError> {
        if let Some(pkg) = owner_in(owners, &self.root, path) {
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
            return self.add_unowned_in_root(owners, path, depth);
        }
        let mut head = [0u8; 256];
        let n = libs::open_regular(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|source| ApplianceError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let head = &head[..n];
        if let Some((interp, args)) = shebang(head) {
            if interp.is_empty() || depth >= MAX_INTERPRETERS {
                return Ok(());
            }
            let interp = PathBuf::from(OsStr::from_bytes(interp));
            self.add_executable(owners, &interp, depth + 1)
                .map_err(of_interpreter(path))?;
            if interp.file_name() == Some(OsStr::new("env"))
                && let Some(target) = env_command(args)
            {
                let target =
                    find_command(OsStr::from_bytes(target), None, self.guest_path.as_deref())
                        .map_err(|source| ApplianceError::EnvCommand {
                            env: interp.clone(),
                            source: Box::new(source.into()),
                        })
                        .map_err(of_interpreter(path))?;
                self.add_executable(owners, &target, depth + 1)
                    .map_err(of_interpreter(path))?;
            }
        } else if let Some(needs) = libs::needs(path, &self.search)? {
            if let Some(interp) = needs.interp
                && depth < MAX_INTERPRETERS
            {
                // A name to find and copy, never a program to run here.
                if !interp.is_absolute() || fs::metadata(&interp).is_err() {
                    return Err(ApplianceError::NoProgramInterpreter {
                        path: path.to_path_buf(),
                        interp,
                    });
                }
                self.add_executable(owners, &interp, depth + 1)
                    .map_err(|source| ApplianceError::ProgramInterpreter {
                        path: path.to_path_buf(),
                        source: Box::new(source),
                    })?;
            }
            for lib in needs.libs {
                match owner(owners, &lib) {
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
    pub(super) fn find(&self, cmd: &OsStr, cwd: Option<&Path>) -> Result<PathBuf, ApplianceError> {
        if self.root.is_host() {
            Ok(find_command(cmd, cwd, self.guest_path.as_deref())?)
        } else {
            find_command_in(&self.root, cmd, self.guest_path.as_deref())
        }
    }

    /// A file of another installed system that no package of it owns (already in the
    /// hostfiles): a script brings its interpreter (and `env`'s command); a dynamic
    /// program is refused, since its libraries are found through packages only there.
    fn add_unowned_in_root(
        &mut self,
        owners: &Index,
        path: &Path,
        depth: u32,
    ) -> Result<(), ApplianceError> {
        let on_disk = root_path(&self.root, path);
        let bytes = fs::read(&on_disk).map_err(|source| ApplianceError::Read {
            path: on_disk.clone(),
            source,
        })?;
        if let Some((interp, args)) = shebang(&bytes) {
            if interp.is_empty() || depth >= MAX_INTERPRETERS {
                return Ok(());
            }
            let interp = PathBuf::from(OsStr::from_bytes(interp));
            self.add_executable(owners, &interp, depth + 1)
                .map_err(of_interpreter(path))?;
            if interp.file_name() == Some(OsStr::new("env"))
                && let Some(target) = env_command(args)
            {
                let target = self
                    .find(OsStr::from_bytes(target), None)
                    .map_err(of_interpreter(path))?;
                self.add_executable(owners, &target, depth + 1)
                    .map_err(of_interpreter(path))?;
            }
            return Ok(());
        }
        if let Ok(Some(_)) = kiln_elf::interp(&bytes) {
            return Err(ApplianceError::UnownedDynamic {
                path: path.to_path_buf(),
                root: self.root.root.clone(),
            });
        }
        Ok(())
    }
}

/// The command as `guest_path` (the VM's `PATH`), then the host's `PATH`, finds it
/// among the host's files (absolute), or the path given.
pub(super) fn find_command(
    cmd: &OsStr,
    cwd: Option<&Path>,
    guest_path: Option<&OsStr>,
) -> Result<PathBuf, CommandError> {
    let shown = Path::new(cmd).display().to_string();
    if cmd.as_bytes().contains(&b'/') {
        let p = match cwd {
            Some(c) => c.join(cmd),
            None => PathBuf::from(cmd),
        };
        let m = fs::metadata(&p).map_err(|e| CommandError::PathNotFound(shown.clone(), e))?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            return Err(CommandError::NotExecutable(shown));
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
    Err(CommandError::NotFound(shown))
}

/// The command as the VM's `PATH` (`guest_path`, else the standard one) finds it
/// among the files of another installed system `root` (the host's `PATH` names host
/// directories), or the path given, inside the root.
fn find_command_in(
    root: &Sysroot,
    cmd: &OsStr,
    guest_path: Option<&OsStr>,
) -> Result<PathBuf, ApplianceError> {
    const STANDARD: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let exec = |p: &Path| {
        kiln_pattern::stat_in(&root.root, p)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.as_bytes().contains(&b'/') {
        let p = lexical(&Path::new("/").join(cmd));
        if !exec(&p) {
            return Err(ApplianceError::NotExecutableIn {
                cmd: cmd.into(),
                root: root.root.clone(),
            });
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
    Err(ApplianceError::NotFoundIn {
        cmd: cmd.into(),
        root: root.root.clone(),
        searched: path.into(),
    })
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
pub(super) fn root_path(root: &Sysroot, p: &Path) -> PathBuf {
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
pub(super) fn lexical(p: &Path) -> PathBuf {
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
fn owner(owners: &Index, p: &Path) -> Option<String> {
    owner_in(owners, &Sysroot::default(), p)
}

/// [`owner`] in the database of `root` (whose index `owners` is), `p` resolved inside
/// it: the first candidate any package lists, and of the packages listing it the first
/// in the database's order, which is what the index holds.
fn owner_in(owners: &Index, root: &Sysroot, p: &Path) -> Option<String> {
    candidates_in(root, p)
        .iter()
        .find_map(|c| owners.get(c))
        .map(str::to_owned)
}

/// Every package's name and listed paths, read through [`Database::files`] as kiln
/// did before the index.
///
/// [`Database::files`]: kiln_packages::Database::files
#[cfg(test)]
fn file_lists(db: &dyn kiln_packages::Database) -> Vec<(String, Vec<PathBuf>)> {
    db.packages()
        .iter()
        .enumerate()
        .filter_map(|(i, pkg)| {
            // A package without a file list owns nothing we can use.
            let files = db.files(i).ok()?;
            Some((
                pkg.name.clone(),
                files.into_iter().map(|f| f.path).collect(),
            ))
        })
        .collect()
}

/// [`owner_in`] by scanning the file lists (what kiln did before the index): the
/// reference the index is compared with.
#[cfg(test)]
fn owner_by_scan(lists: &[(String, Vec<PathBuf>)], root: &Sysroot, p: &Path) -> Option<String> {
    let cands = candidates_in(root, p);
    let mut best: Option<(usize, String)> = None;
    for (name, files) in lists {
        for f in files {
            if let Some(rank) = cands.iter().position(|c| c == f)
                && best.as_ref().is_none_or(|(r, _)| rank < *r)
            {
                best = Some((rank, name.clone()));
            }
        }
    }
    best.map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::super::tests::executable;
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
        let db = crate::databases::open(&Sysroot::default()).unwrap();
        let (owners, _) = Index::scan(db.as_ref(), &[0; 32], Path::new("/"));
        let sh = find_command(OsStr::new("sh"), None, None).unwrap();
        assert_eq!(owner(&owners, &sh).as_deref(), Some("dash"));
        assert!(find_command(OsStr::new("kiln-no-such-command"), None, None).is_err());
        // The VM's PATH comes first: what the VM will run is what the appliance holds.
        let t = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(t.path()).unwrap();
        executable(&d.join("sh"), "#!/bin/sh\n");
        let g = find_command(OsStr::new("sh"), None, Some(d.as_os_str())).unwrap();
        assert_eq!(g, d.join("sh"));
    }

    /// The index, as a warm run reads it back from the cache, answers as the scan of
    /// the host's dpkg database does: commands (and the interpreter and libraries of
    /// one), merged-/usr aliases both ways (dpkg lists `/bin/uname`, `PATH` finds
    /// `/usr/bin/uname`), a directory many packages list, a link through `/lib64`,
    /// paths no package owns; then every entry of the host's command and library
    /// directories.
    #[test]
    fn the_index_answers_as_the_scan_of_the_host_database() {
        let host = Sysroot::default();
        let t = tempfile::tempdir().unwrap();
        let cache = kiln_cache::Cache::open(t.path()).unwrap();
        let id = super::super::owners::Identity::of(&host).unwrap();
        let db = crate::databases::open(&host).unwrap();
        let db = db.as_ref();
        let open = || super::super::owners::open(Some(&cache), Some(&id), &host, db);
        let built = open();
        assert!(cache.path().join(id.name()).is_file(), "no index kept");
        let owners = open();
        assert_eq!(owners.len(), built.len());
        let lists = file_lists(db);

        let unowned = fs::canonicalize(t.path()).unwrap().join("file");
        fs::write(&unowned, "").unwrap();
        let mut paths: Vec<PathBuf> = ["sh", "uname", "env", "perl", "ls", "dpkg"]
            .iter()
            .map(|c| find_command(OsStr::new(c), None, None).unwrap())
            .collect();
        paths.extend(
            [
                "/bin/uname",
                "/usr/bin/uname",
                "/bin/sh",
                "/usr/bin/sh",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
                "/usr/bin",
                "/usr/bin/../bin/ls",
                "/etc/hostname",
                "/nonexistent-kiln/bin/x",
            ]
            .map(PathBuf::from),
        );
        paths.push(unowned.clone());
        for p in &paths {
            assert_eq!(
                owner(&owners, p),
                owner_by_scan(&lists, &host, p),
                "{}",
                p.display()
            );
        }
        let want = |p: &str| owner(&owners, Path::new(p));
        assert_eq!(want("/usr/bin/uname").as_deref(), Some("coreutils"));
        assert_eq!(want("/bin/sh").as_deref(), Some("dash"));
        assert_eq!(
            want("/usr/lib/x86_64-linux-gnu/libc.so.6").as_deref(),
            Some("libc6")
        );
        assert_eq!(want("/etc/hostname"), None);
        assert_eq!(want("/nonexistent-kiln/bin/x"), None);
        assert_eq!(owner(&owners, &unowned), None);

        // A spread of each directory (about 40 entries: a scan costs tens of ms).
        let mut swept = 0;
        for dir in ["/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu"] {
            let mut entries: Vec<PathBuf> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            let step = (entries.len() / 40).max(1);
            for p in entries.into_iter().step_by(step) {
                assert_eq!(
                    owner(&owners, &p),
                    owner_by_scan(&lists, &host, &p),
                    "{}",
                    p.display()
                );
                swept += 1;
            }
        }
        assert!(swept >= 100, "only {swept} host paths compared");
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
}
