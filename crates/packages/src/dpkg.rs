//! The dpkg database (Debian, Ubuntu), read by hand: `status` (installed packages,
//! dependencies, provides, conffiles), `info/*.list` (files) and `diversions`, all below
//! a root directory. [`DpkgDb`] implements [`Database`](crate::Database); [`DRIVER`] is
//! supermin's `debian/dpkg`.
//!
//! Read by hand rather than through `dpkg-query`: the files are plain text with a
//! stable format (deb-status(5), the `.list` files, `diversions` in line triples), one
//! read of `status` is milliseconds where a `dpkg-query` per package is seconds, and no
//! program of the root has to run on this machine.
//!
//! Resolution is better than supermin's (reference §2.4, §9.2) while agreeing with it on
//! every name supermin does resolve:
//! - a dependency is satisfied by the **first alternative that is installed**, as a real
//!   package or through `Provides` (supermin only ever tries the first alternative and
//!   never resolves virtual packages);
//! - `:any`, `:native` and `:ARCH` qualifiers are honoured (supermin drops such names);
//! - packages in state `installed`, `triggers-pending` or `triggers-awaited` count as
//!   installed (their files are all on disk);
//! - a diversion applies to every package except the one that made it (supermin also
//!   redirects the diverting package's own file), and local diversions apply too.
//!
//! Configuration files (the `config` flag of [`FileFlags`](crate::FileFlags)) are the
//! package's conffiles and, as supermin's rule, every regular file under `/etc/`.
//!
//! ```
//! use kiln_packages::dpkg::DpkgDb;
//!
//! let root = tempfile::tempdir().unwrap();
//! let admin = root.path().join("var/lib/dpkg");
//! std::fs::create_dir_all(admin.join("info")).unwrap();
//! std::fs::write(
//!     admin.join("status"),
//!     "Package: hello\nStatus: install ok installed\nVersion: 2.10\nArchitecture: amd64\n",
//! )
//! .unwrap();
//! let db = DpkgDb::load(root.path()).unwrap();
//! let r = db.resolve(&["hello", "absent"]);
//! assert_eq!(db.package(r.packages[0]).display(), "hello_2.10_amd64");
//! assert_eq!(r.missing, ["absent"]);
//! ```

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// An error reading the dpkg database, naming the file (the cause is its source).
#[derive(Debug, thiserror::Error)]
#[error("dpkg database {}", path.display())]
pub struct DpkgError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// An architecture qualifier of a package name (`name:qual`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArchQual {
    /// No qualifier.
    None,
    /// `:any`: any installed architecture.
    Any,
    /// `:native`: the primary architecture.
    Native,
    /// `:amd64`, `:i386`, ...
    Arch(String),
}

/// One alternative of a dependency: a name with an optional qualifier. Versions,
/// architecture restrictions (`[...]`) and build profiles (`<...>`) are dropped: the
/// installed set is already consistent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dep {
    pub name: String,
    pub qual: ArchQual,
}

impl Dep {
    /// Parse `name[:qual] [(version)] [[archs]] [<profiles>]`.
    pub fn parse(s: &str) -> Option<Dep> {
        let word = s.split(['(', '[', '<']).next()?.trim();
        if word.is_empty() {
            return None;
        }
        let (name, qual) = match word.split_once(':') {
            None => (word, ArchQual::None),
            Some((n, "any")) => (n, ArchQual::Any),
            Some((n, "native")) => (n, ArchQual::Native),
            Some((n, a)) => (n, ArchQual::Arch(a.to_string())),
        };
        // `:amd64` alone names no package.
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        Some(Dep {
            name: name.to_string(),
            qual,
        })
    }
}

/// Parse a `Depends`-style field into groups of alternatives.
pub fn parse_depends(field: &str) -> Vec<Vec<Dep>> {
    field
        .split(',')
        .map(|g| g.split('|').filter_map(Dep::parse).collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .collect()
}

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// `Multi-Arch: foreign` (satisfies dependencies of any architecture).
    pub multi_arch_foreign: bool,
    /// `Multi-Arch: same` (its files are listed in `info/name:arch.list`).
    pub multi_arch_same: bool,
    /// Depends + Pre-Depends, alternatives grouped.
    pub depends: Vec<Vec<Dep>>,
    /// Virtual names this package provides.
    pub provides: Vec<String>,
    /// Paths of dpkg conffiles (obsolete ones excluded).
    pub conffiles: Vec<PathBuf>,
}

impl Package {
    /// supermin's display form, used by `--include-packagelist`: `name_version_arch`.
    pub fn display(&self) -> String {
        format!("{}_{}_{}", self.name, self.version, self.arch)
    }
}

/// One diversion: files named `from` are installed as `to`, except those of `by`
/// (`None` for a local diversion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diversion {
    pub to: PathBuf,
    pub by: Option<String>,
}

/// The installed packages of a dpkg database.
#[derive(Debug, Clone)]
pub struct DpkgDb {
    root: PathBuf,
    admindir: PathBuf,
    /// The packages as the interface describes them (same order as `pkgs`).
    summary: Vec<crate::Package>,
    /// The primary (native) architecture.
    pub native_arch: String,
    pkgs: Vec<Package>,
    by_name: HashMap<String, Vec<usize>>,
    providers: HashMap<String, Vec<usize>>,
    diversions: HashMap<PathBuf, Diversion>,
}

pub use crate::Resolution;

fn read(path: &Path) -> Result<Vec<u8>, DpkgError> {
    fs::read(path).map_err(|source| DpkgError {
        path: path.to_path_buf(),
        source,
    })
}

/// The primary architecture when the database does not say (the `dpkg` package is not
/// installed): the one this binary was built for.
fn default_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "i386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64el",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

impl DpkgDb {
    /// Load the database below `root` (`/` for the host): `ROOT/var/lib/dpkg/`.
    pub fn load(root: &Path) -> Result<DpkgDb, DpkgError> {
        let admindir = crate::in_root(root, Path::new("/var/lib/dpkg"));
        let status_path = admindir.join("status");
        let status = read(&status_path)?;
        let status = String::from_utf8_lossy(&status);
        let mut pkgs = Vec::new();
        for para in status.split("\n\n") {
            if let Some(p) = parse_paragraph(para) {
                pkgs.push(p);
            }
        }
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in pkgs.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
            for v in &p.provides {
                providers.entry(v.clone()).or_default().push(i);
            }
        }
        // dpkg's own architecture is the native one (what `dpkg --print-architecture`
        // prints), without running dpkg.
        let native_arch = by_name
            .get("dpkg")
            .and_then(|v| v.first())
            .map(|&i| pkgs[i].arch.clone())
            .unwrap_or_else(|| default_arch().to_string());
        let diversions = match fs::read(admindir.join("diversions")) {
            Ok(d) => parse_diversions(&String::from_utf8_lossy(&d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(DpkgError {
                    path: admindir.join("diversions"),
                    source,
                });
            }
        };
        let summary = pkgs
            .iter()
            .map(|p| crate::Package {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                provides: p.provides.clone(),
                display: p.display(),
            })
            .collect();
        Ok(DpkgDb {
            root: root.to_path_buf(),
            admindir,
            summary,
            native_arch,
            pkgs,
            by_name,
            providers,
            diversions,
        })
    }

    /// The path of the `status` file (its mtime says when the database changed).
    pub fn status_path(&self) -> PathBuf {
        self.admindir.join("status")
    }

    /// An installed package by index.
    pub fn package(&self, i: usize) -> &Package {
        &self.pkgs[i]
    }

    /// All installed packages.
    pub fn packages(&self) -> &[Package] {
        &self.pkgs
    }

    /// The diversion of `path`, if any.
    pub fn diversion(&self, path: &Path) -> Option<&Diversion> {
        self.diversions.get(path)
    }

    fn arch_ok(&self, p: &Package, want: &ArchQual, from_arch: Option<&str>) -> bool {
        match want {
            ArchQual::Any => true,
            ArchQual::Native => p.arch == self.native_arch || p.arch == "all",
            ArchQual::Arch(a) => &p.arch == a,
            ArchQual::None => {
                // A dependency of an arch:all package or a name from a packages file
                // means the native architecture.
                let a = from_arch
                    .filter(|a| *a != "all")
                    .unwrap_or(&self.native_arch);
                p.arch == a || p.arch == "all" || (from_arch.is_some() && p.multi_arch_foreign)
            }
        }
    }

    /// Candidates for `dep`: real packages first, then providers; each list preferring
    /// the native architecture.
    fn candidates(&self, dep: &Dep, from_arch: Option<&str>) -> (Vec<usize>, Vec<usize>) {
        let filter = |v: Option<&Vec<usize>>| {
            let mut c: Vec<usize> = v
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| self.arch_ok(&self.pkgs[i], &dep.qual, from_arch))
                .collect();
            c.sort_by_key(|&i| {
                let p = &self.pkgs[i];
                (
                    p.arch != self.native_arch && p.arch != "all",
                    p.name.clone(),
                )
            });
            c
        };
        (
            filter(self.by_name.get(&dep.name)),
            filter(self.providers.get(&dep.name)),
        )
    }

    /// Pick the package satisfying one group of alternatives: the first alternative with
    /// an installed real package or provider; among providers, one already chosen wins.
    fn satisfy(
        &self,
        group: &[Dep],
        from_arch: Option<&str>,
        chosen: &HashSet<usize>,
    ) -> Option<usize> {
        for dep in group {
            let (real, virt) = self.candidates(dep, from_arch);
            if let Some(&i) = real.first() {
                return Some(i);
            }
            if let Some(&i) = virt.iter().find(|i| chosen.contains(i)).or(virt.first()) {
                return Some(i);
            }
        }
        None
    }

    /// Map package names (as in a packages file) to installed packages and close over
    /// Depends + Pre-Depends.
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Resolution {
        let mut chosen: HashSet<usize> = HashSet::new();
        let mut queue = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            let n = n.as_ref();
            match Dep::parse(n).and_then(|d| self.satisfy(&[d], None, &chosen)) {
                Some(i) => {
                    if chosen.insert(i) {
                        queue.push(i);
                    }
                }
                None => missing.push(n.to_string()),
            }
        }
        // Breadth-first in a deterministic order, so provider choice is stable.
        let mut head = 0;
        while head < queue.len() {
            let i = queue[head];
            head += 1;
            let p = &self.pkgs[i];
            for group in &p.depends {
                if let Some(j) = self.satisfy(group, Some(&p.arch), &chosen)
                    && chosen.insert(j)
                {
                    queue.push(j);
                }
            }
        }
        let mut packages: Vec<usize> = chosen.into_iter().collect();
        packages.sort_by_key(|&i| self.pkgs[i].display());
        Resolution { packages, missing }
    }

    /// The files of an installed package, as listed in `info/NAME[:ARCH].list` (without
    /// `/.`).
    pub fn files(&self, i: usize) -> Result<Vec<PathBuf>, DpkgError> {
        let p = &self.pkgs[i];
        let info = self.admindir.join("info");
        // The name comes from `status`: it must not lead the read out of `info/`
        // (dpkg's own names are `[a-z0-9][a-z0-9+.-]*`, so no `/` and never `..`).
        if !is_safe_name(&p.name) || !(p.arch.is_empty() || is_safe_name(&p.arch)) {
            return Err(DpkgError {
                path: self.admindir.join("status"),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "package {:?} (architecture {:?}) is not a valid dpkg package name",
                        p.name, p.arch
                    ),
                ),
            });
        }
        let qualified = info.join(format!("{}:{}.list", p.name, p.arch));
        let data = match fs::read(&qualified) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                read(&info.join(format!("{}.list", p.name)))?
            }
            Err(source) => {
                return Err(DpkgError {
                    path: qualified,
                    source,
                });
            }
        };
        use std::os::unix::ffi::OsStrExt;
        Ok(data
            .split(|&b| b == b'\n')
            .filter(|l| l.first() == Some(&b'/') && *l != b"/.")
            .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
            .collect())
    }

    /// Where package `pkg`'s file `path` really is on the host (after diversions).
    pub fn source_of(&self, pkg: &str, path: &Path) -> PathBuf {
        match self.diversions.get(path) {
            Some(d) if d.by.as_deref() != Some(pkg) => d.to.clone(),
            _ => path.to_path_buf(),
        }
    }
}

fn parse_paragraph(para: &str) -> Option<Package> {
    let mut fields: HashMap<&str, String> = HashMap::new();
    let mut last: Option<&str> = None;
    for line in para.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = last
                && let Some(v) = fields.get_mut(k)
            {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            last = Some(k);
            fields.insert(k, v.trim().to_string());
        }
    }
    let status = fields.get("Status")?;
    let state = status.split_whitespace().nth(2)?;
    if !matches!(state, "installed" | "triggers-pending" | "triggers-awaited") {
        return None;
    }
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    let mut depends = parse_depends(&get("Pre-Depends").replace('\n', " "));
    depends.extend(parse_depends(&get("Depends").replace('\n', " ")));
    let provides = parse_depends(&get("Provides").replace('\n', " "))
        .into_iter()
        .flatten()
        .map(|d| d.name)
        .collect();
    let conffiles = get("Conffiles")
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let path = w.next()?;
            let rest: Vec<&str> = w.collect();
            (path.starts_with('/') && !rest.contains(&"obsolete")).then(|| PathBuf::from(path))
        })
        .collect();
    let multi_arch = get("Multi-Arch");
    Some(Package {
        name: get("Package").to_string(),
        version: get("Version").to_string(),
        arch: get("Architecture").to_string(),
        multi_arch_foreign: multi_arch == "foreign",
        multi_arch_same: multi_arch == "same",
        depends,
        provides,
        conffiles,
    })
    .filter(|p| !p.name.is_empty())
}

/// `diversions` is a sequence of line triples: diverted path, new path, package (`:`
/// for a local diversion).
fn parse_diversions(data: &str) -> HashMap<PathBuf, Diversion> {
    let lines: Vec<&str> = data.lines().collect();
    lines
        .chunks_exact(3)
        .map(|t| {
            (
                PathBuf::from(t[0]),
                Diversion {
                    to: PathBuf::from(t[1]),
                    by: (t[2] != ":").then(|| t[2].to_string()),
                },
            )
        })
        .collect()
}

fn io_to_package(e: DpkgError) -> crate::PackageError {
    crate::PackageError::new(e)
}

/// The database's files below `root`: `status` (rewritten on every install, upgrade or
/// removal) and `diversions`.
fn fingerprint_paths(root: &Path) -> Vec<PathBuf> {
    let admin = crate::in_root(root, Path::new("/var/lib/dpkg"));
    vec![admin.join("status"), admin.join("diversions")]
}

impl crate::Database for DpkgDb {
    fn driver(&self) -> &'static str {
        DRIVER.name
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn packages(&self) -> &[crate::Package] {
        &self.summary
    }

    fn resolve(&self, names: &[&str]) -> Result<Resolution, crate::PackageError> {
        Ok(DpkgDb::resolve(self, names))
    }

    /// The listed files with their diversions applied; `config` for conffiles and for
    /// regular files under `/etc/` (looked at below the root).
    fn files(&self, package: usize) -> Result<Vec<crate::PackageFile>, crate::PackageError> {
        use std::os::unix::ffi::OsStrExt;
        let p = &self.pkgs[package];
        let files = DpkgDb::files(self, package).map_err(io_to_package)?;
        Ok(files
            .into_iter()
            .map(|path| {
                let etc = path.as_os_str().as_bytes().starts_with(b"/etc/")
                    && fs::symlink_metadata(crate::in_root(&self.root, &path))
                        .is_ok_and(|m| m.is_file());
                let config = etc || p.conffiles.contains(&path);
                crate::PackageFile {
                    source: self.source_of(&p.name, &path),
                    path,
                    flags: crate::FileFlags {
                        config,
                        ..crate::FileFlags::NONE
                    },
                }
            })
            .collect())
    }

    /// The listed paths as they are, without looking at `/etc` (diversions move a
    /// file's bytes, not the path its package lists).
    fn paths(&self, package: usize) -> Result<Vec<PathBuf>, crate::PackageError> {
        DpkgDb::files(self, package).map_err(io_to_package)
    }

    fn fingerprint(&self) -> Vec<PathBuf> {
        fingerprint_paths(&self.root)
    }
}

/// supermin's `debian/dpkg`: detected on Debian and Ubuntu (`ID` in `etc/os-release`,
/// or `etc/debian_version`) when the database is present.
pub const DRIVER: crate::Driver = crate::Driver {
    name: "debian/dpkg",
    detect: |root| {
        (matches!(crate::os_release_id(root).as_str(), "debian" | "ubuntu")
            || crate::is_regular(root, "/etc/debian_version"))
            && present(root)
    },
    present,
    open: |root| Ok(Box::new(DpkgDb::load(root).map_err(io_to_package)?)),
    fingerprint: fingerprint_paths,
};

fn present(root: &Path) -> bool {
    crate::is_regular(root, "/var/lib/dpkg/status")
}

#[cfg(test)]
mod tests;

/// A package or architecture name that names one file in `info/`: not empty, not `.`
/// or `..`, no `/` and no NUL.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}
