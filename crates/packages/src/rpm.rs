//! The rpm database (Fedora, RHEL, CentOS, openSUSE, Mageia, OpenMandriva), read through
//! rpm's own query interface: one `rpm --root ROOT --dbpath DBPATH -qa --qf FORMAT`
//! run gives every installed package with its provides, requires and files (with
//! their flags). The database files are never parsed by hand, so every backend the
//! machine's `rpm` reads (sqlite, bdb, ndb) works. [`RpmDb`] implements
//! [`Database`](crate::Database); [`DRIVERS`] are supermin's five rpm drivers.
//!
//! Resolution follows supermin's rpm handler (`ph_rpm.ml`):
//! - a name means the installed package of that name (also `name.arch` and the full
//!   `name-[epoch:]version-release.arch`), preferring `noarch`, then this machine's
//!   architecture, then the highest version; failing that, the only installed package
//!   providing the name (several providers: not resolved, as supermin);
//! - each requirement (a package name, a virtual provide such as `kiln-virtual`, a
//!   soname such as `libc.so.6()(64bit)` or a file such as `/bin/sh`) is satisfied by
//!   an installed provider — a package providing the capability or owning the file —
//!   the shortest name first among several (yum's old rule, which supermin keeps);
//!   `rpmlib(…)` requirements are rpm's own and need no package;
//! - files: `%ghost` entries are flagged ghost (left out of the file set, never read
//!   from the disk), `%config` ones config, `%doc` ones doc.
//!
//! Where the database lives below the root: the first of `/usr/lib/sysimage/rpm`
//! (Fedora ≥ 36, openSUSE) and `/var/lib/rpm` that holds a database file
//! (`rpmdb.sqlite`, `Packages`, `Packages.db`). `rpm` runs with `LC_ALL=C` and its
//! standard error is kept for the error message when it fails.
//!
//! ```no_run
//! use std::path::Path;
//! use kiln_packages::Database;
//!
//! let db = kiln_packages::rpm::RpmDb::load(Path::new("/")).unwrap();
//! let r = db.resolve(&["bash"]).unwrap();
//! for &i in &r.packages {
//!     println!("{}", db.packages()[i].display);
//! }
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{
    Database, Driver, FileFlags, Package, PackageError, PackageFile, Resolution, in_root,
    is_regular, os_release_id,
};

/// Where rpm databases live, below the root, newest layout first.
pub const DBPATHS: &[&str] = &["/usr/lib/sysimage/rpm", "/var/lib/rpm"];

/// The files of a database directory, one per backend (sqlite, bdb, ndb).
const DBFILES: &[&str] = &["rpmdb.sqlite", "Packages", "Packages.db"];

/// rpm's file flags (`rpmfileAttrs`).
const RPMFILE_CONFIG: u32 = 1 << 0;
const RPMFILE_DOC: u32 = 1 << 1;
const RPMFILE_GHOST: u32 = 1 << 6;

/// The query: a header line per package, then one line per provide, requirement and
/// file. Tags are tab-separated; a file name is the rest of its line.
const QUERY_FORMAT: &str = "@\t%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n\
                            [P\t%{PROVIDENAME}\n][R\t%{REQUIRENAME}\n]\
                            [F\t%{FILEFLAGS}\t%{FILENAMES}\n]";

/// An error reading the rpm database.
#[derive(Debug, thiserror::Error)]
pub enum RpmError {
    #[error("rpm database below {}: none of {} holds a database", root.display(), DBPATHS.join(", "))]
    NoDatabase { root: PathBuf },
    #[error(
        "rpm database {}: cannot run `rpm` (install the rpm package to read rpm databases)",
        dbpath.display()
    )]
    Spawn {
        dbpath: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rpm database {}: `rpm -qa` failed ({status}): {stderr}", dbpath.display())]
    Query {
        dbpath: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("rpm database {}: unexpected `rpm -qa` output line {line}: {text:?}", dbpath.display())]
    Parse {
        dbpath: PathBuf,
        line: usize,
        text: String,
    },
}

#[derive(Debug, Clone)]
struct RpmPackage {
    name: String,
    epoch: u64,
    version: String,
    release: String,
    arch: String,
    requires: Vec<String>,
    files: Vec<(PathBuf, u32)>,
}

/// The installed packages of an rpm database.
#[derive(Debug, Clone)]
pub struct RpmDb {
    root: PathBuf,
    driver: &'static str,
    /// The database directory, absolute inside the root (as `--dbpath` takes it).
    dbpath: PathBuf,
    summary: Vec<Package>,
    pkgs: Vec<RpmPackage>,
    by_name: HashMap<String, Vec<usize>>,
    /// Capability or file path → the packages providing or owning it.
    providers: HashMap<Vec<u8>, Vec<usize>>,
    machine_arch: &'static str,
}

/// The database directory below `root` (absolute inside the root), if any.
pub fn find_dbpath(root: &Path) -> Option<&'static str> {
    DBPATHS.iter().copied().find(|d| {
        DBFILES
            .iter()
            .any(|f| in_root(root, &Path::new(d).join(f)).exists())
    })
}

/// `rpm --version` runs on this machine.
fn rpm_available() -> bool {
    Command::new("rpm")
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl RpmDb {
    /// Query the database below `root` (`/` for the host), naming it after the rpm
    /// distribution the root is (`fedora/rpm` when it says nothing).
    pub fn load(root: &Path) -> Result<RpmDb, RpmError> {
        let id = os_release_id(root);
        let driver = DRIVERS
            .iter()
            .find(|d| identity(d.name, root, &id))
            .map_or(FEDORA.name, |d| d.name);
        RpmDb::load_as(root, driver)
    }

    fn load_as(root: &Path, driver: &'static str) -> Result<RpmDb, RpmError> {
        let dbpath = find_dbpath(root).ok_or_else(|| RpmError::NoDatabase {
            root: root.to_path_buf(),
        })?;
        let dbpath = PathBuf::from(dbpath);
        let shown = in_root(root, &dbpath);
        let out = Command::new("rpm")
            .arg("--root")
            .arg(root)
            .arg("--dbpath")
            .arg(&dbpath)
            .args(["-qa", "--qf", QUERY_FORMAT])
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| RpmError::Spawn {
                dbpath: shown.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(RpmError::Query {
                dbpath: shown,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let pkgs = parse(&out.stdout).map_err(|(line, text)| RpmError::Parse {
            dbpath: shown,
            line,
            text,
        })?;
        Ok(RpmDb::from_packages(root, driver, dbpath, pkgs))
    }

    fn from_packages(
        root: &Path,
        driver: &'static str,
        dbpath: PathBuf,
        mut pkgs: Vec<(RpmPackage, Vec<String>)>,
    ) -> RpmDb {
        // A stable order whatever order rpm lists in.
        pkgs.sort_by_cached_key(|p| display(&p.0));
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        let mut summary = Vec::with_capacity(pkgs.len());
        let mut out = Vec::with_capacity(pkgs.len());
        for (i, (p, provides)) in pkgs.into_iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
            for cap in &provides {
                providers
                    .entry(cap.as_bytes().to_vec())
                    .or_default()
                    .push(i);
            }
            for (f, _) in &p.files {
                providers
                    .entry(f.as_os_str().as_bytes().to_vec())
                    .or_default()
                    .push(i);
            }
            summary.push(Package {
                name: p.name.clone(),
                version: evr(&p),
                arch: p.arch.clone(),
                provides,
                display: display(&p),
            });
            out.push(p);
        }
        for v in providers.values_mut() {
            v.dedup();
        }
        RpmDb {
            root: root.to_path_buf(),
            driver,
            dbpath,
            summary,
            pkgs: out,
            by_name,
            providers,
            machine_arch: std::env::consts::ARCH,
        }
    }

    /// The database directory, absolute inside the root.
    pub fn dbpath(&self) -> &Path {
        &self.dbpath
    }

    /// supermin's `rpm_package_of_string`: the installed package a name means.
    fn package_of_string(&self, s: &str) -> Option<usize> {
        let mut cands: Vec<usize> = match self.by_name.get(s) {
            Some(v) => v.clone(),
            None => (0..self.pkgs.len())
                .filter(|&i| {
                    let p = &self.pkgs[i];
                    self.summary[i].display == s || format!("{}.{}", p.name, p.arch) == s
                })
                .collect(),
        };
        if cands.is_empty() {
            // The only provider of the name, if there is exactly one.
            let provs: HashSet<&str> = self
                .providers
                .get(s.as_bytes())
                .into_iter()
                .flatten()
                .map(|&i| self.pkgs[i].name.as_str())
                .collect();
            if provs.len() != 1 {
                return None;
            }
            let name = provs.into_iter().next()?;
            cands = self.by_name.get(name)?.clone();
        }
        let weight = |i: usize| match self.pkgs[i].arch.as_str() {
            "noarch" => 2,
            a if a == self.machine_arch => 1,
            _ => 0,
        };
        cands.sort_by(|&a, &b| {
            weight(b)
                .cmp(&weight(a))
                .then_with(|| vercmp_evr(&self.pkgs[b], &self.pkgs[a]))
        });
        cands.first().copied()
    }

    /// supermin's `provider`: the installed package satisfying one requirement.
    fn provider(&self, req: &str) -> Option<usize> {
        let mut names: Vec<&str> = self
            .providers
            .get(req.as_bytes())
            .into_iter()
            .flatten()
            .map(|&i| self.pkgs[i].name.as_str())
            .collect();
        names.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
        names.dedup();
        names.iter().find_map(|n| self.package_of_string(n))
    }
}

/// `[epoch:]version-release`.
fn evr(p: &RpmPackage) -> String {
    if p.epoch == 0 {
        format!("{}-{}", p.version, p.release)
    } else {
        format!("{}:{}-{}", p.epoch, p.version, p.release)
    }
}

/// supermin's `rpm_package_to_string`: `name-[epoch:]version-release.arch`.
fn display(p: &RpmPackage) -> String {
    format!("{}-{}.{}", p.name, evr(p), p.arch)
}

/// Order two packages by epoch, version, release (rpmvercmp).
fn vercmp_evr(a: &RpmPackage, b: &RpmPackage) -> std::cmp::Ordering {
    a.epoch
        .cmp(&b.epoch)
        .then_with(|| rpmvercmp(&a.version, &b.version))
        .then_with(|| rpmvercmp(&a.release, &b.release))
}

/// rpm's version comparison: alternating runs of digits (numerically) and letters
/// (bytewise), separators ignored, `~` sorting before everything and `^` after the
/// end.
pub fn rpmvercmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    loop {
        while a.first().is_some_and(|&c| sep(c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|&c| sep(c)) {
            b = &b[1..];
        }
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) | (Some(b'^'), Some(b'^')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'~'), _) => return Less,
            (_, Some(b'~')) => return Greater,
            (Some(b'^'), None) => return Greater,
            (None, Some(b'^')) => return Less,
            (Some(b'^'), _) => return Less,
            (_, Some(b'^')) => return Greater,
            (None, None) => return Equal,
            (None, _) => return Less,
            (_, None) => return Greater,
            _ => {}
        }
        let digits = a[0].is_ascii_digit();
        let run = |s: &[u8]| {
            s.iter()
                .take_while(|c| {
                    if digits {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (na, nb) = (run(a), run(b));
        if nb == 0 {
            // A number is newer than letters.
            return if digits { Greater } else { Less };
        }
        let (ra, rb) = (&a[..na], &b[..nb]);
        let ord = if digits {
            let ta = trim_zeros(ra);
            let tb = trim_zeros(rb);
            ta.len().cmp(&tb.len()).then(ta.cmp(tb))
        } else {
            ra.cmp(rb)
        };
        if ord != Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

/// Parse the query output into packages and their provides; `Err((line, text))`
/// names the first line that does not fit.
#[allow(clippy::type_complexity)]
fn parse(out: &[u8]) -> Result<Vec<(RpmPackage, Vec<String>)>, (usize, String)> {
    let mut pkgs: Vec<(RpmPackage, Vec<String>)> = Vec::new();
    for (n, line) in out.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || (n + 1, String::from_utf8_lossy(line).into_owned());
        let mut f = line.splitn(2, |&b| b == b'\t');
        let tag = f.next().unwrap_or_default();
        let rest = f.next().ok_or_else(bad)?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        match (tag, pkgs.last_mut()) {
            (b"@", _) => {
                let s = text();
                let v: Vec<&str> = s.split('\t').collect();
                let [name, epoch, version, release, arch] = v[..] else {
                    return Err(bad());
                };
                pkgs.push((
                    RpmPackage {
                        name: name.to_owned(),
                        epoch: epoch.parse().unwrap_or(0),
                        version: version.to_owned(),
                        release: release.to_owned(),
                        arch: arch.to_owned(),
                        requires: Vec::new(),
                        files: Vec::new(),
                    },
                    Vec::new(),
                ));
            }
            (b"P", Some((_, provides))) => provides.push(text()),
            (b"R", Some((p, _))) => p.requires.push(text()),
            (b"F", Some((p, _))) => {
                let mut g = rest.splitn(2, |&b| b == b'\t');
                let flags = g
                    .next()
                    .and_then(|x| std::str::from_utf8(x).ok())
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(bad)?;
                let path = g
                    .next()
                    .filter(|p| p.first() == Some(&b'/'))
                    .ok_or_else(bad)?;
                p.files
                    .push((PathBuf::from(OsStr::from_bytes(path)), flags));
            }
            _ => return Err(bad()),
        }
    }
    Ok(pkgs)
}

impl Database for RpmDb {
    fn driver(&self) -> &'static str {
        self.driver
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn packages(&self) -> &[Package] {
        &self.summary
    }

    fn resolve(&self, names: &[&str]) -> Result<Resolution, PackageError> {
        let mut chosen: HashSet<usize> = HashSet::new();
        let mut queue = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match self.package_of_string(n.trim()) {
                Some(i) => {
                    if chosen.insert(i) {
                        queue.push(i);
                    }
                }
                None => missing.push((*n).to_owned()),
            }
        }
        let mut head = 0;
        while head < queue.len() {
            let i = queue[head];
            head += 1;
            for req in &self.pkgs[i].requires {
                if req.starts_with("rpmlib(") {
                    continue;
                }
                if let Some(j) = self.provider(req)
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
        Ok(self.pkgs[package]
            .files
            .iter()
            .map(|(path, fl)| {
                PackageFile::new(
                    path.clone(),
                    FileFlags {
                        config: fl & RPMFILE_CONFIG != 0,
                        doc: fl & RPMFILE_DOC != 0,
                        ghost: fl & RPMFILE_GHOST != 0,
                    },
                )
            })
            .collect())
    }

    fn fingerprint(&self) -> Vec<PathBuf> {
        fingerprint(&self.root)
    }
}

/// The database files below `root` whose `lstat` identity changes with the installed
/// set: each backend's main file, and sqlite's write-ahead log (where a transaction
/// lands before it is checkpointed).
fn fingerprint(root: &Path) -> Vec<PathBuf> {
    let Some(d) = find_dbpath(root) else {
        return Vec::new();
    };
    let dir = in_root(root, Path::new(d));
    DBFILES
        .iter()
        .chain(&["rpmdb.sqlite-wal"])
        .map(|f| dir.join(f))
        .collect()
}

fn present(root: &Path) -> bool {
    find_dbpath(root).is_some()
}

fn open_as(root: &Path, driver: &'static str) -> Result<Box<dyn Database>, PackageError> {
    Ok(Box::new(
        RpmDb::load_as(root, driver).map_err(PackageError::new)?,
    ))
}

/// The distribution identity each rpm driver detects (supermin's `*_detect`, without
/// the download tools kiln does not use).
fn identity(driver: &str, root: &Path, id: &str) -> bool {
    match driver {
        "fedora/rpm" => {
            matches!(
                id,
                "fedora"
                    | "rhel"
                    | "centos"
                    | "openEuler"
                    | "anolis"
                    | "KylinSecOS"
                    | "uos"
                    | "kylin"
            ) || [
                "/etc/redhat-release",
                "/etc/fedora-release",
                "/etc/openEuler-release",
                "/etc/anolis-release",
                "/etc/kylin-release",
                "/etc/UnionTech-release",
            ]
            .iter()
            .any(|f| is_regular(root, f))
        }
        "opensuse/rpm" => {
            matches!(id, "sled" | "sles")
                || id.starts_with("opensuse")
                || is_regular(root, "/etc/SuSE-release")
        }
        "mageia/rpm" => id == "mageia" || is_regular(root, "/etc/mageia-release"),
        "openmandriva/rpm" => id == "openmandriva" || is_regular(root, "/etc/openmandriva-release"),
        "ibm_powerkvm/rpm" => is_regular(root, "/etc/ibm_powerkvm-release"),
        _ => false,
    }
}

macro_rules! driver {
    ($name:literal) => {
        Driver {
            name: $name,
            detect: |root| {
                identity($name, root, &os_release_id(root)) && present(root) && rpm_available()
            },
            present,
            open: |root| open_as(root, $name),
            fingerprint,
        }
    };
}

pub const OPENMANDRIVA: Driver = driver!("openmandriva/rpm");
pub const MAGEIA: Driver = driver!("mageia/rpm");
pub const OPENSUSE: Driver = driver!("opensuse/rpm");
pub const IBM_POWERKVM: Driver = driver!("ibm_powerkvm/rpm");
pub const FEDORA: Driver = driver!("fedora/rpm");

/// supermin's rpm drivers, in its `--list-drivers` order.
pub const DRIVERS: [Driver; 5] = [OPENMANDRIVA, MAGEIA, OPENSUSE, IBM_POWERKVM, FEDORA];

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
