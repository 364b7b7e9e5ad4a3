//! The pacman local database (Arch Linux, Artix), read directly: every installed
//! package is a directory `var/lib/pacman/local/NAME-VERSION/` holding `desc` (name,
//! version, architecture, provides, depends) and `files` (the file list and the
//! `backup` entries), plain text in `%SECTION%` blocks (alpm's own format, see
//! alpm's `be_local.c`). [`PacmanDb`] implements [`Database`](crate::Database);
//! [`DRIVER`] is supermin's `arch/pacman`.
//!
//! Read by hand: the format is stable and simple, and reading it needs neither pacman
//! nor `pactree` on this machine (supermin runs `pacman -Qi`, `pactree -u` and
//! `pacman -Ql` per package).
//!
//! Resolution follows `pactree -u` (what supermin uses): a dependency names a package,
//! or a capability some installed package provides (`sh`, a soname such as
//! `libreadline.so=8-64`); version constraints (`glibc>=2.38`) are dropped — the
//! installed set is already consistent. A real package of that name wins, then a
//! provider already in the closure, then the first provider by name.
//!
//! Files: paths are listed relative, directories with a trailing `/` (both normalised
//! to absolute paths without it); a file is configuration when it is a `backup` entry
//! or, as supermin's rule, a regular file under `/etc/`.
//!
//! ```
//! let root = tempfile::tempdir().unwrap();
//! let pkg = root.path().join("var/lib/pacman/local/hello-2.12-1");
//! std::fs::create_dir_all(&pkg).unwrap();
//! std::fs::write(pkg.join("desc"), "%NAME%\nhello\n\n%VERSION%\n2.12-1\n\n%ARCH%\nx86_64\n").unwrap();
//! std::fs::write(pkg.join("files"), "%FILES%\nusr/\nusr/bin/\nusr/bin/hello\n").unwrap();
//!
//! use kiln_packages::Database;
//! let db = kiln_packages::pacman::PacmanDb::load(root.path()).unwrap();
//! let r = db.resolve(&["hello"]).unwrap();
//! assert_eq!(db.packages()[r.packages[0]].display, "hello-2.12-1.x86_64");
//! let files = db.files(r.packages[0]).unwrap();
//! assert_eq!(files[2].path, std::path::Path::new("/usr/bin/hello"));
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::{
    Database, Driver, FileFlags, Package, PackageError, PackageFile, Resolution, in_root,
    is_regular, os_release_id,
};

/// The local database, below the root.
pub const LOCAL: &str = "/var/lib/pacman/local";

/// An error reading the pacman database, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PacmanError {
    #[error("pacman database {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pacman database {}: no %NAME% or %VERSION%", path.display())]
    Incomplete { path: PathBuf },
}

#[derive(Debug, Clone)]
struct PacPackage {
    dir: PathBuf,
    depends: Vec<String>,
}

/// The installed packages of a pacman local database.
#[derive(Debug, Clone)]
pub struct PacmanDb {
    root: PathBuf,
    summary: Vec<Package>,
    pkgs: Vec<PacPackage>,
    by_name: HashMap<String, usize>,
    providers: HashMap<String, Vec<usize>>,
}

/// `%SECTION%` blocks of a desc or files file: section → lines.
fn sections(text: &[u8]) -> HashMap<String, Vec<&[u8]>> {
    let mut out: HashMap<String, Vec<&[u8]>> = HashMap::new();
    let mut cur: Option<String> = None;
    for line in text.split(|&b| b == b'\n') {
        if line.is_empty() {
            cur = None;
        } else if line.len() > 2 && line.starts_with(b"%") && line.ends_with(b"%") {
            let name = String::from_utf8_lossy(&line[1..line.len() - 1]).into_owned();
            out.entry(name.clone()).or_default();
            cur = Some(name);
        } else if let Some(c) = &cur
            && let Some(v) = out.get_mut(c)
        {
            v.push(line);
        }
    }
    out
}

/// The name of a dependency or provide, without its version constraint.
fn dep_name(s: &str) -> &str {
    let end = s.find(['<', '>', '=', ':']).unwrap_or(s.len());
    s[..end].trim()
}

fn read(path: &Path) -> Result<Vec<u8>, PacmanError> {
    fs::read(path).map_err(|source| PacmanError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl PacmanDb {
    /// Read the local database below `root` (`/` for the host).
    pub fn load(root: &Path) -> Result<PacmanDb, PacmanError> {
        let local = in_root(root, Path::new(LOCAL));
        let rd = fs::read_dir(&local).map_err(|source| PacmanError::Read {
            path: local.clone(),
            source,
        })?;
        let mut dirs = Vec::new();
        for e in rd {
            let e = e.map_err(|source| PacmanError::Read {
                path: local.clone(),
                source,
            })?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        dirs.sort();
        let mut summary = Vec::new();
        let mut pkgs = Vec::new();
        for dir in dirs {
            let desc_path = dir.join("desc");
            let desc = read(&desc_path)?;
            let s = sections(&desc);
            let one = |k: &str| {
                s.get(k)
                    .and_then(|v| v.first())
                    .map(|l| String::from_utf8_lossy(l).into_owned())
            };
            let all = |k: &str| -> Vec<String> {
                s.get(k)
                    .into_iter()
                    .flatten()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect()
            };
            let (Some(name), Some(version)) = (one("NAME"), one("VERSION")) else {
                return Err(PacmanError::Incomplete { path: desc_path });
            };
            let arch = one("ARCH").unwrap_or_else(|| "any".to_owned());
            let provides = all("PROVIDES")
                .iter()
                .map(|p| dep_name(p).to_owned())
                .collect();
            summary.push(Package {
                display: format!("{name}-{version}.{arch}"),
                name,
                version,
                arch,
                provides,
            });
            pkgs.push(PacPackage {
                dir,
                depends: all("DEPENDS")
                    .iter()
                    .map(|d| dep_name(d).to_owned())
                    .filter(|d| !d.is_empty())
                    .collect(),
            });
        }
        let mut by_name = HashMap::new();
        let mut providers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in summary.iter().enumerate() {
            by_name.insert(p.name.clone(), i);
            for v in &p.provides {
                providers.entry(v.clone()).or_default().push(i);
            }
        }
        Ok(PacmanDb {
            root: root.to_path_buf(),
            summary,
            pkgs,
            by_name,
            providers,
        })
    }

    fn satisfy(&self, dep: &str, chosen: &HashSet<usize>) -> Option<usize> {
        if let Some(&i) = self.by_name.get(dep) {
            return Some(i);
        }
        let p = self.providers.get(dep)?;
        p.iter().find(|i| chosen.contains(i)).or(p.first()).copied()
    }
}

impl Database for PacmanDb {
    fn driver(&self) -> &'static str {
        DRIVER.name
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn packages(&self) -> &[Package] {
        &self.summary
    }

    fn resolve(&self, names: &[&str]) -> Result<Resolution, PackageError> {
        let mut chosen = HashSet::new();
        let mut queue = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            let n = n.trim();
            let hit = self
                .satisfy(n, &chosen)
                .or_else(|| self.summary.iter().position(|p| p.display == n));
            match hit {
                Some(i) => {
                    if chosen.insert(i) {
                        queue.push(i);
                    }
                }
                None => missing.push(n.to_owned()),
            }
        }
        let mut head = 0;
        while head < queue.len() {
            let i = queue[head];
            head += 1;
            for d in &self.pkgs[i].depends {
                if let Some(j) = self.satisfy(d, &chosen)
                    && chosen.insert(j)
                {
                    queue.push(j);
                }
            }
        }
        let mut packages: Vec<usize> = chosen.into_iter().collect();
        packages.sort_by(|&a, &b| self.summary[a].display.cmp(&self.summary[b].display));
        Ok(Resolution { packages, missing })
    }

    fn files(&self, package: usize) -> Result<Vec<PackageFile>, PackageError> {
        let path = self.pkgs[package].dir.join("files");
        let data = read(&path).map_err(PackageError::new)?;
        let s = sections(&data);
        let backup: HashSet<&[u8]> = s
            .get("BACKUP")
            .into_iter()
            .flatten()
            .map(|l| l.split(|&b| b == b'\t').next().unwrap_or_default())
            .collect();
        Ok(s.get("FILES")
            .into_iter()
            .flatten()
            .map(|l| {
                let rel = l.strip_suffix(b"/").unwrap_or(l);
                let mut abs = b"/".to_vec();
                abs.extend_from_slice(rel);
                let abs = PathBuf::from(OsStr::from_bytes(&abs));
                let etc = rel.starts_with(b"etc/")
                    && fs::symlink_metadata(in_root(&self.root, &abs)).is_ok_and(|m| m.is_file());
                PackageFile::new(
                    abs,
                    FileFlags {
                        config: etc || backup.contains(rel),
                        ..FileFlags::NONE
                    },
                )
            })
            .collect())
    }

    fn fingerprint(&self) -> Vec<PathBuf> {
        fingerprint(&self.root)
    }
}

/// The local database directory: a package added or removed is an entry added or
/// removed there, which changes its `lstat` identity.
fn fingerprint(root: &Path) -> Vec<PathBuf> {
    vec![in_root(root, Path::new(LOCAL))]
}

fn present(root: &Path) -> bool {
    fs::metadata(in_root(root, Path::new(LOCAL))).is_ok_and(|m| m.is_dir())
}

/// supermin's `arch/pacman`: detected on Arch and Artix (`ID` in `etc/os-release`, or
/// `etc/arch-release`) when the local database is present.
pub const DRIVER: Driver = Driver {
    name: "arch/pacman",
    detect: |root| {
        (matches!(os_release_id(root).as_str(), "arch" | "artix")
            || is_regular(root, "/etc/arch-release"))
            && present(root)
    },
    present,
    open: |root| Ok(Box::new(PacmanDb::load(root).map_err(PackageError::new)?)),
    fingerprint,
};

#[cfg(test)]
mod tests;
