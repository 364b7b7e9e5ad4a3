//! `kiln prepare` (and the supermin front end's `--prepare`): from package names and the
//! package database (through `kiln-packages`, which also chooses which one), write a
//! supermin appliance directory that `kiln build` turns into a bootable appliance.
//!
//! Output (replacing `OUT` atomically, see `kiln-outdir`):
//! - `packages`: the requested names that are installed (directly or through
//!   `Provides`), de-duplicated and sorted bytewise, one per line. Dependencies are not
//!   written: the build resolves them again, against the database it runs on.
//! - `base.tar.gz`: the configuration files of the whole dependency closure — a path is
//!   configuration when the database flags it so (for dpkg: one of the package's
//!   conffiles, or a regular file under `/etc/` — supermin's rule, which the build uses
//!   to leave such files out of the package files) — plus the directories above them
//!   (supermin's tarball has files only, so their directories come out with whatever
//!   owner the first writer had).
//!
//! Differences from supermin, on purpose:
//! - configuration files come from the installed system (supermin's `--use-installed`).
//!   supermin's default downloads the packages again to get pristine files, which needs
//!   the network and may fetch a different version than the one installed;
//! - names that are not installed are reported by name (supermin drops them silently);
//! - the archive is reproducible: members sorted, numeric owners, the gzip header without
//!   a time, and member times clamped to `SOURCE_DATE_EPOCH` when it is set;
//! - files that cannot be read are left out with a warning naming them (as supermin).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_outdir::{OutdirError, Staging};
use kiln_packages::{PackageError, Sysroot, in_root};

/// Errors of `prepare`, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("prepare: no input packages specified")]
    NoPackages,
    #[error(
        "prepare: none of the packages listed on the command line seem to be installed \
         ({names}); check the names with `{hint}`"
    )]
    NoneInstalled {
        names: String,
        /// The database's own listing command (`dpkg -l`, `rpm -qa`, `pacman -Q`).
        hint: &'static str,
    },
    #[error(transparent)]
    Packages(#[from] PackageError),
    #[error(transparent)]
    Output(#[from] OutdirError),
    #[error("prepare: writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Options of `prepare`.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The root the package database and the files it lists are read below.
    pub root: PathBuf,
    /// Clamp member times to this (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            root: PathBuf::from("/"),
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    }
}

/// What `prepare` wrote.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Names written to `packages`.
    pub packages: Vec<String>,
    /// Requested names that are not installed.
    pub missing: Vec<String>,
    /// Packages in the dependency closure.
    pub closure: usize,
    /// Configuration files archived.
    pub config_files: usize,
    /// Configuration files left out because they could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a supermin.d for `names` at `out`.
pub fn prepare<S: AsRef<str>>(
    names: &[S],
    out: &Path,
    opts: &PrepareOptions,
) -> Result<Prepared, PrepareError> {
    if names.is_empty() {
        return Err(PrepareError::NoPackages);
    }
    let db = kiln_packages::open(&Sysroot::new(&opts.root))?;
    let mut report = Prepared::default();
    let mut wanted: Vec<String> = Vec::new();
    for n in names {
        let n = n.as_ref();
        if db.resolve(&[n])?.missing.is_empty() {
            wanted.push(n.to_string());
        } else {
            tracing::warn!("prepare: package {n} is not installed; left out");
            report.missing.push(n.to_string());
        }
    }
    if wanted.is_empty() {
        let hint = match db.driver() {
            d if d.ends_with("/rpm") => "rpm -qa",
            d if d.ends_with("/pacman") => "pacman -Q",
            _ => "dpkg -l",
        };
        return Err(PrepareError::NoneInstalled {
            names: report.missing.join(" "),
            hint,
        });
    }
    wanted.sort();
    wanted.dedup();
    let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let closure = db.resolve(&names)?;
    report.closure = closure.packages.len();
    tracing::info!(
        "prepare: {} packages, including dependencies",
        report.closure
    );

    // Configuration files of the closure: destination path → host source.
    let mut config: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for &i in &closure.packages {
        for f in db.config_files(i)? {
            let src = in_root(&opts.root, &f.source);
            if fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                config.insert(f.path, src);
            }
        }
    }

    let staging = Staging::new(out)?;
    let mut list = wanted.join("\n");
    list.push('\n');
    let ppath = staging.path().join("packages");
    fs::write(&ppath, list).map_err(werr(&ppath))?;

    let tpath = staging.path().join("base.tar.gz");
    let file = fs::File::create(&tpath).map_err(werr(&tpath))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(io::BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Complete);
    let mut dirs_done: Vec<PathBuf> = Vec::new();
    for (dest, src) in &config {
        let mut f = match fs::File::open(src) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("prepare: {}: {e} (left out)", src.display());
                report.unreadable.push((dest.clone(), e.to_string()));
                continue;
            }
        };
        let md = f.metadata().map_err(werr(src))?;
        // The directories above the file, once each, outermost first.
        let mut parents: Vec<&Path> = dest.ancestors().skip(1).collect();
        parents.reverse();
        for d in parents.into_iter().filter(|d| *d != Path::new("/")) {
            if dirs_done.iter().any(|x| x == d) {
                continue;
            }
            dirs_done.push(d.to_path_buf());
            let dmd = fs::metadata(in_root(&opts.root, d)).map_err(werr(d))?;
            let mut h = header(&dmd, tar::EntryType::Directory, 0, opts);
            tar.append_data(&mut h, member_name(d, true), io::empty())
                .map_err(werr(&tpath))?;
        }
        let mut h = header(&md, tar::EntryType::Regular, md.len(), opts);
        tar.append_data(&mut h, member_name(dest, false), &mut f)
            .map_err(werr(src))?;
        report.config_files += 1;
    }
    let gz = tar.into_inner().map_err(werr(&tpath))?;
    let mut w = gz.finish().map_err(werr(&tpath))?;
    w.flush().map_err(werr(&tpath))?;
    drop(w);
    tracing::info!("prepare: {} config files", report.config_files);
    staging.publish()?;
    report.packages = wanted;
    Ok(report)
}

/// The tar member name of `path`: `etc/x`, with a trailing `/` for directories.
fn member_name(path: &Path, dir: bool) -> PathBuf {
    let mut s = path
        .strip_prefix("/")
        .unwrap_or(path)
        .as_os_str()
        .to_owned();
    if dir {
        s.push("/");
    }
    PathBuf::from(s)
}

fn header(
    md: &fs::Metadata,
    kind: tar::EntryType,
    size: u64,
    opts: &PrepareOptions,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    let mtime = match opts.source_date_epoch {
        Some(sde) => md.mtime().min(sde),
        None => md.mtime(),
    };
    h.set_mtime(mtime.max(0) as u64);
    h
}
