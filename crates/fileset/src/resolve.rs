//! The file set stage as a whole: [`Inputs`] + the package database + the host → a
//! [`SetBuilder`] holding every entry of the appliance root, with supermin's counts.
//!
//! Steps (reference §2.4–2.6), each logged at `info` with its count:
//! 1. package names → installed packages → their dependency closure, through the
//!    package-database interface ([`Database`]; the caller chooses and opens the
//!    database, `kiln_packages::open`); names that are not installed are **warned
//!    about** by name and origin (supermin ignores them silently) and otherwise
//!    ignored, as supermin does;
//! 2. their files; **config files are dropped** (they come from base images): a path is
//!    config when the database flags it so (for dpkg: under `/etc/` and a regular file on
//!    the host, supermin's rule, or one of the package's conffiles, anywhere); ghost
//!    entries (listed, not shipped) are dropped too;
//! 3. excludefiles: `fnmatch(FNM_NOESCAPE)` on package files only;
//! 4. hostfiles: `glob(GLOB_NOESCAPE)`; a pattern not starting with `/` is an error
//!    naming its input line (supermin globs it relative to the current directory and
//!    crashes later); a pattern with a `.` or `..` component is left out with one
//!    warning naming its line, on the host and below a sysroot alike;
//! 5. existence filter (lstat of source or path), then **unreadable files are left out
//!    with a warning naming them** (as supermin's warning) — kiln never writes an empty
//!    stand-in for a file it cannot read, as root or not; files (and hostfiles
//!    patterns) hidden by a directory the user cannot search are left out with one
//!    warning per such directory ([`crate::access`]), not silently as missing ones;
//! 6. the root's merged-/usr links ([`crate::layout`]) join the list when the closure
//!    does not name them; then munging ([`crate::munge`]);
//! 7. base images (in order), then the munged host entries, merged by [`SetBuilder`].
//!    Host directories take the time of the package database (the newest of its
//!    fingerprint files, dpkg's `status`) instead of their own, so that the image is a
//!    function of its cache key: a directory's time changes with any file created in it
//!    (`/tmp`, `/var/tmp`) and is not in the key, while the database's files are.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_inputs::{BaseImage, Inputs, Line, Member, MemberKind, Origin};

use crate::access::Hidden;
use crate::builder::{PlaceError, SetBuilder, Source};
use crate::entry::{Content, Entry, Kind, Meta};
use crate::munge::{HostFile, StatCache, munge};
use crate::scan;
use kiln_packages::{Database, PackageError, Sysroot};
use kiln_pattern::{FnMatchSet, PatternError};

/// Options of the file set stage.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The installed system: its package database, and the root every package file
    /// and hostfiles pattern is read below (the host's `/` by default).
    pub sysroot: Sysroot,
}

/// `e` and its causes, joined by ": " (for a warning that does not stop the stage).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The numbers supermin prints at `-v` (reference §1.7, §8.3), plus kiln's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packages in the closure.
    pub packages: usize,
    /// Package names that matched nothing installed.
    pub missing_packages: usize,
    /// Non-config package files.
    pub files: usize,
    pub after_excludes: usize,
    pub after_hostfiles: usize,
    /// After the existence filter and removing unreadable files.
    pub after_unreadable: usize,
    pub after_munging: usize,
    /// Members of all base images.
    pub base_members: usize,
    /// Entries of the merged set (including `/`).
    pub entries: usize,
}

/// The result of the stage.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Every entry so far; add more (modules tree, `/packagelist`) then `finish()`.
    pub builder: SetBuilder,
    /// The closure as `name_version_arch`, sorted bytewise (`--include-packagelist`).
    pub packages: Vec<String>,
    pub counts: Counts,
    /// The driver of the package database read (`debian/dpkg`).
    pub database: &'static str,
}

/// An error of the file set stage, naming the input or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Packages(#[from] PackageError),
    #[error(
        "{origin}: hostfiles pattern {pattern:?} is not an absolute path: write it \
         starting with `/`"
    )]
    RelativeHostfile { origin: Origin, pattern: PathBuf },
    #[error("{origin}: hostfiles pattern {pattern:?}")]
    Glob {
        origin: Origin,
        pattern: PathBuf,
        #[source]
        source: PatternError,
    },
    #[error("base image {image}: member {member}")]
    BaseImage {
        image: PathBuf,
        member: PathBuf,
        #[source]
        source: PlaceError,
    },
}

fn member_entry(m: &Member) -> Entry {
    let kind = match &m.kind {
        MemberKind::Dir => Kind::Dir,
        MemberKind::File(d) => Kind::File(Content::Spilled(d.clone())),
        // Identity is not kept for tarball hard links: each name gets the shared bytes.
        MemberKind::HardLink { content, .. } => Kind::File(Content::Spilled(content.clone())),
        MemberKind::Symlink(t) => Kind::Symlink(t.clone()),
        MemberKind::CharDev(d) => Kind::CharDev(*d),
        MemberKind::BlockDev(d) => Kind::BlockDev(*d),
        MemberKind::Fifo => Kind::Fifo,
    };
    let mut meta = Meta::new(m.perm);
    meta.uid = m.uid;
    meta.gid = m.gid;
    meta.mtime = m.mtime;
    Entry {
        path: m.path.clone(),
        kind,
        meta,
    }
}

/// Add the members of `images` (in order) to `b`.
pub fn add_base_images(b: &mut SetBuilder, images: &[BaseImage]) -> Result<usize, ResolveError> {
    let mut n = 0;
    for img in images {
        for m in &img.members {
            b.insert(member_entry(m), Source::Base)
                .map_err(|source| ResolveError::BaseImage {
                    image: img.source.clone(),
                    member: m.path.clone(),
                    source,
                })?;
            n += 1;
        }
    }
    Ok(n)
}

/// True when the effective user can read `p` (following symlinks).
fn readable(p: &Path) -> Result<(), std::io::Error> {
    rustix::fs::accessat(
        rustix::fs::CWD,
        p,
        rustix::fs::Access::READ_OK,
        rustix::fs::AtFlags::EACCESS,
    )
    .map_err(std::io::Error::from)
}

/// The time given to host directories: the newest of the package database's own
/// files whose identity is part of the appliance's cache key (dpkg's `status`, rewritten
/// on every package change), where a directory's own time is not (it changes whenever
/// a file is created in it); time 0 when there are none.
fn package_set_time(db_files: &[PathBuf]) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    db_files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.mtime(), m.mtime_nsec() as u32))
        .max()
        .unwrap_or((0, 0))
}

/// Run the whole stage on `db`, the package database of `opts.sysroot` (the caller
/// chooses and opens it, `kiln_packages::open`): the steps of the module doc, in order.
pub fn resolve(
    inputs: &Inputs,
    db: &dyn Database,
    opts: &Options,
) -> Result<Resolved, ResolveError> {
    let sysroot = &opts.sysroot;
    // Root reads everything (CAP_DAC_OVERRIDE): nothing is unreadable or hidden to it.
    let as_root = rustix::process::geteuid().is_root();
    let mut counts = Counts::default();
    let mut hidden = Hidden::default();
    let mut cache = StatCache::new(sysroot.clone());

    let closure = close_packages(inputs, db, sysroot)?;
    counts.packages = closure.names.len();
    counts.missing_packages = closure.missing;
    let mut files = package_files(db, &closure.indices);
    counts.files = files.len();
    drop_excluded(&mut files, &inputs.excludes);
    counts.after_excludes = files.len();
    add_hostfiles(&mut files, &inputs.hostfiles, sysroot, as_root, &mut hidden)?;
    counts.after_hostfiles = files.len();
    keep_present_and_readable(&mut files, &mut cache, sysroot, as_root, hidden);
    counts.after_unreadable = files.len();
    add_layout_links(&mut files, sysroot);
    let munged = munge_files(files, &mut cache);
    counts.after_munging = munged.len();
    let (builder, base_members) = merge(inputs, &munged, &mut cache, db)?;
    counts.base_members = base_members;
    counts.entries = builder.len();

    Ok(Resolved {
        builder,
        packages: closure.names,
        counts,
        database: db.driver(),
    })
}

/// The packages of the closure: indices into [`Database::packages`] and their display
/// names, sorted by display name; how many requested names matched nothing.
struct Closure {
    indices: Vec<usize>,
    names: Vec<String>,
    missing: usize,
}

/// Step 1: package names → installed packages → their dependency closure; names that
/// are not installed are warned about by name and origin, and ignored.
fn close_packages(
    inputs: &Inputs,
    db: &dyn Database,
    sysroot: &Sysroot,
) -> Result<Closure, ResolveError> {
    tracing::info!("mapping package names to installed packages");
    tracing::info!("package database: {}", db.driver());
    let wanted: Vec<&str> = inputs.packages.iter().map(|l| l.value.as_str()).collect();
    tracing::info!("resolving full list of package dependencies");
    let res = db.resolve(&wanted)?;
    for m in &res.missing {
        let origin = inputs
            .packages
            .iter()
            .find(|l| &l.value == m)
            .map(|l| l.origin.to_string())
            .unwrap_or_default();
        // Name the system the database belongs to: the host, or the --sysroot.
        if sysroot.is_host() {
            tracing::warn!("{origin}: package {m:?} is not installed on this host: ignored");
        } else {
            tracing::warn!(
                "{origin}: package {m:?} is not installed in {}: ignored",
                sysroot.root.display()
            );
        }
    }
    let all = db.packages();
    let names: Vec<String> = res
        .packages
        .iter()
        .map(|&i| all[i].display.clone())
        .collect();
    for p in &names {
        tracing::debug!("package: {p}");
    }
    tracing::info!("{} packages, including dependencies", names.len());
    Ok(Closure {
        indices: res.packages,
        names,
        missing: res.missing.len(),
    })
}

/// Step 2: the files of `packages`, without config files (a path is config when any
/// package of the closure says so) and without ghosts; the first package listing a
/// path decides where its bytes are. Sorted in set order.
fn package_files(db: &dyn Database, packages: &[usize]) -> Vec<HostFile> {
    let all = db.packages();
    let mut config: HashSet<PathBuf> = HashSet::new();
    let mut listed: HashMap<PathBuf, PathBuf> = HashMap::new();
    for &i in packages {
        let files = match db.files(i) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "package {}: {}: its files are left out",
                    all[i].display,
                    error_chain(&e)
                );
                continue;
            }
        };
        for f in files {
            if f.flags.config {
                config.insert(f.path);
            } else if !f.flags.ghost {
                listed.entry(f.path).or_insert(f.source);
            }
        }
    }
    let mut files: Vec<HostFile> = listed
        .into_iter()
        .filter(|(p, _)| !config.contains(p))
        .map(|(path, source)| HostFile { path, source })
        .collect();
    files.sort_unstable_by(|a, b| crate::builder::set_order(&a.path, &b.path));
    tracing::info!("{} files", files.len());
    files
}

/// Step 3: excludefiles, matched against package files only (hostfiles are added
/// after).
fn drop_excluded(files: &mut Vec<HostFile>, excludes: &[Line<Vec<u8>>]) {
    if !excludes.is_empty() {
        let excludes = FnMatchSet::new(excludes.iter().map(|x| x.value.as_slice()));
        files.retain(|f| {
            let hit = excludes.matches(f.path.as_os_str().as_bytes());
            if hit {
                tracing::debug!("excluding {}", f.path.display());
            }
            !hit
        });
    }
    tracing::info!("{} files, after matching excludefiles", files.len());
}

/// Step 4: hostfiles, globbed on the host or below the sysroot. A relative pattern is
/// an error naming its line; one with a `.` or `..` component is left out with a
/// warning. A pattern matching nothing is noted in `hidden` when a directory this
/// user cannot search may hide its matches.
fn add_hostfiles(
    files: &mut Vec<HostFile>,
    hostfiles: &[Line<PathBuf>],
    sysroot: &Sysroot,
    as_root: bool,
    hidden: &mut Hidden,
) -> Result<(), ResolveError> {
    for l in hostfiles {
        if !l.value.is_absolute() {
            return Err(ResolveError::RelativeHostfile {
                origin: l.origin.clone(),
                pattern: l.value.clone(),
            });
        }
        // `.` and `..` are not followed in a pattern (its matches would not be
        // normalised paths, which the set refuses one by one, or, below a sysroot where
        // `..` is resolved through its links, match nothing): one warning, whatever
        // the system.
        if l.value
            .as_os_str()
            .as_bytes()
            .split(|&b| b == b'/')
            .any(|c| c == b"." || c == b"..")
        {
            tracing::warn!(
                "{}: hostfiles pattern {} has a `.` or `..` component: left out; write the \
                 path without them",
                l.origin,
                l.value.display()
            );
            continue;
        }
        let matches = if sysroot.is_host() {
            kiln_pattern::glob(l.value.as_os_str()).map_err(|source| ResolveError::Glob {
                origin: l.origin.clone(),
                pattern: l.value.clone(),
                source,
            })?
        } else {
            kiln_pattern::glob_in(&sysroot.root, l.value.as_os_str())
        };
        // Searched for where the pattern lies on this machine (below the sysroot).
        if matches.is_empty() && !as_root {
            hidden.note_pattern(&sysroot.host_path(&l.value));
        }
        files.extend(matches.into_iter().map(HostFile::same));
    }
    tracing::info!("{} files, after adding hostfiles", files.len());
    Ok(())
}

/// Step 5: existence (lstat of the source or the path; a diverted file is read from
/// where dpkg put it), then readability: unreadable files are left out with a warning
/// naming them, files hidden by a directory this user cannot search with one warning
/// per directory (`hidden`, with the patterns step 4 noted).
fn keep_present_and_readable(
    files: &mut Vec<HostFile>,
    cache: &mut StatCache,
    sysroot: &Sysroot,
    as_root: bool,
    mut hidden: Hidden,
) {
    let mut noted = false;
    files.retain_mut(|f| {
        let md = if f.source == f.path {
            cache.lstat(&f.path)
        } else {
            match (cache.lstat(&f.source), cache.lstat(&f.path)) {
                (Some(s), _) if s.is_file() => Some(s),
                (_, Some(p)) => {
                    f.source = f.path.clone();
                    Some(p)
                }
                (s, None) => s,
            }
        };
        let Some(md) = md else {
            // Not there, or hidden by a directory this user cannot search.
            if !as_root {
                hidden.note_missing(&sysroot.host_path(&f.path));
            }
            return false;
        };
        // Root reads everything (CAP_DAC_OVERRIDE): no need to ask.
        if !md.is_file() || as_root {
            return true;
        }
        match readable(&cache.host_path(&f.source)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "{}: {e} (ignored: left out of the appliance)",
                    f.path.display()
                );
                if !noted && e.kind() == std::io::ErrorKind::PermissionDenied {
                    noted = true;
                    tracing::warn!(
                        "some host files are not readable by this user, so kiln cannot copy \
                         them into the appliance; this is a property of the host's \
                         packaging, not a reason to run kiln as root"
                    );
                }
                false
            }
        }
    });
    hidden.warn();
    tracing::info!("{} files, after removing unreadable files", files.len());
}

/// Step 6, first half: the root's layout, its merged-/usr links, whatever the closure
/// (on Debian 13 they belong to `base-files`, which no package depends on). Munging
/// then adds their targets, and every path named through a link lands below its
/// target. Links the closure lists already are not added twice, so supermin's counts
/// stay.
fn add_layout_links(files: &mut Vec<HostFile>, sysroot: &Sysroot) {
    let listed: HashSet<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    let missing: Vec<HostFile> = crate::layout::usr_links(sysroot)
        .into_iter()
        .filter(|l| !listed.contains(l.path.as_path()))
        .map(|l| HostFile::same(l.path))
        .collect();
    for l in &missing {
        tracing::debug!("layout: {} (not in the package closure)", l.path.display());
    }
    files.extend(missing);
}

/// Step 6, second half: munging ([`munge`]), parents and symlink targets completed.
fn munge_files(files: Vec<HostFile>, cache: &mut StatCache) -> Vec<HostFile> {
    let munged = munge(files, cache);
    tracing::info!("{} files, after munging", munged.len());
    for f in &munged {
        tracing::trace!("munged: {} (from {})", f.path.display(), f.source.display());
    }
    munged
}

/// Step 7: base images first (in order), then the munged host entries, merged by
/// [`SetBuilder`]; host directories take the time of the package database. Returns
/// the builder and the number of base image members.
fn merge(
    inputs: &Inputs,
    munged: &[HostFile],
    cache: &mut StatCache,
    db: &dyn Database,
) -> Result<(SetBuilder, usize), ResolveError> {
    let mut builder = SetBuilder::new();
    builder.host_dir_time = Some(package_set_time(&db.fingerprint()));
    let base_members = add_base_images(&mut builder, &inputs.base_images)?;
    for f in munged {
        let Some(md) = cache.lstat(&f.source) else {
            tracing::warn!("{}: vanished while building (ignored)", f.source.display());
            continue;
        };
        let entry = match scan::host_entry_from(&cache.host_path(&f.source), f.path.clone(), &md) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("{} (ignored)", error_chain(&e));
                continue;
            }
        };
        if let Err(e) = builder.insert_host(entry, &md) {
            tracing::warn!("{} (ignored)", error_chain(&e));
        }
    }
    for w in builder.warnings.drain(..) {
        tracing::warn!("{w}");
    }
    tracing::info!("{} entries in the appliance root", builder.len());
    Ok((builder, base_members))
}

/// The `/packagelist` file: one `name_version_arch` per line, sorted, LF-terminated.
pub fn packagelist(packages: &[String]) -> Vec<u8> {
    let mut v: Vec<&String> = packages.iter().collect();
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut out = Vec::new();
    for p in v {
        out.extend_from_slice(p.as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_inputs::{Line, Member, Region};
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A synthetic dpkg root: `status`, `diversions` and `.list` files.
    fn fake_root(status: &str, lists: &[(&str, &str)], diversions: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let admin = t.path().join("var/lib/dpkg");
        fs::create_dir_all(admin.join("info")).unwrap();
        fs::write(admin.join("status"), status).unwrap();
        if !diversions.is_empty() {
            fs::write(admin.join("diversions"), diversions).unwrap();
        }
        for (name, content) in lists {
            fs::write(admin.join("info").join(format!("{name}.list")), content).unwrap();
        }
        t
    }

    /// The stage on the database below `root`, chosen and opened as the library does.
    fn resolve_in(inputs: &Inputs, root: &Path) -> Result<Resolved, ResolveError> {
        let sysroot = Sysroot::new(root);
        let db = kiln_packages::open(&sysroot)?;
        resolve(inputs, db.as_ref(), &Options { sysroot })
    }

    fn origin() -> Origin {
        Origin {
            file: "test".into(),
            line: 1,
        }
    }

    /// A host tree in a temp dir, a dpkg root whose lists name its files, and a base
    /// image: every step of the stage, checked on the resulting set.
    #[test]
    fn resolves_packages_excludes_hostfiles_diversions_and_base_images() {
        // The system lives below a root (`--sysroot`); its files under /srv/host.
        let h = PathBuf::from("/srv/host");
        let hs = h.display().to_string();
        let list = format!(
            "/.\n{hs}\n{hs}/bin\n{hs}/bin/app\n{hs}/usr/bin/tool\n{hs}/usr/share/doc\n{hs}/usr/share/doc/app/README\n\
             {hs}/etc/app/app.conf\n{hs}/gone\n"
        );
        // The conf file is a dpkg conffile (outside /etc here, so only that rule drops it).
        let status = format!(
            "Package: app\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\
             Conffiles:\n {hs}/etc/app/app.conf 0123456789abcdef\n"
        );
        let diversions = format!("{hs}/usr/bin/tool\n{hs}/usr/bin/tool.real\nother\n");
        let root = fake_root(&status, &[("app", &list)], &diversions);
        let on_disk = root.path().join("srv/host");
        for d in ["usr/bin", "usr/share/doc/app", "etc/app", "opt"] {
            fs::create_dir_all(on_disk.join(d)).unwrap();
        }
        fs::write(on_disk.join("usr/bin/app"), b"app").unwrap();
        fs::write(on_disk.join("usr/bin/tool.real"), b"diverted").unwrap();
        fs::write(on_disk.join("usr/share/doc/app/README"), b"doc").unwrap();
        fs::write(on_disk.join("etc/app/app.conf"), b"conf").unwrap();
        fs::write(on_disk.join("opt/.hidden"), b"h").unwrap();
        fs::write(on_disk.join("opt/visible"), b"v").unwrap();
        symlink("usr/bin", on_disk.join("bin")).unwrap();

        let line = |v: &str| Line {
            value: v.to_string(),
            origin: origin(),
        };
        let inputs = Inputs {
            packages: vec![line("app"), line("missing-pkg")],
            excludes: vec![Line {
                value: format!("{hs}/usr/share/doc/*").into_bytes(),
                origin: origin(),
            }],
            hostfiles: vec![Line {
                value: h.join("opt/*"),
                origin: origin(),
            }],
            base_images: vec![BaseImage {
                source: "base.tar".into(),
                members: vec![Member {
                    path: h.join("etc/app/app.conf"),
                    kind: MemberKind::File(Region::from_bytes(b"from base").unwrap()),
                    perm: 0o600,
                    uid: 0,
                    gid: 0,
                    mtime: 7,
                }],
            }],
            ..Inputs::default()
        };
        let r = resolve_in(&inputs, root.path()).unwrap();
        assert_eq!(r.packages, ["app_1_amd64"]);
        assert_eq!(r.counts.missing_packages, 1);
        // Listed: the root dir, bin, bin/app, tool, doc, README, gone (conf: dropped).
        assert_eq!(r.counts.files, 7);
        assert_eq!(r.counts.after_excludes, 6);
        assert_eq!(r.counts.after_hostfiles, 7, "`*` does not match .hidden");
        assert_eq!(r.counts.after_unreadable, 6, "`gone` does not exist");
        let set = r.builder.finish().unwrap();
        let get = |p: &str| set.entries().iter().find(|e| e.path == h.join(p));
        // Named through the `bin` symlink: lands in usr/bin.
        assert!(matches!(
            get("usr/bin/app").map(|e| &e.kind),
            Some(Kind::File(_))
        ));
        assert!(matches!(get("bin").map(|e| &e.kind), Some(Kind::Symlink(t)) if t == b"usr/bin"));
        // Diverted: the path the package names, the bytes from where dpkg put them.
        assert!(matches!(get("usr/bin/tool").map(|e| &e.kind),
            Some(Kind::File(Content::Host { path, .. })) if path == &on_disk.join("usr/bin/tool.real")));
        assert!(get("usr/share/doc/app/README").is_none());
        assert!(
            get("usr/share/doc").is_some(),
            "the matched directory itself stays"
        );
        assert!(get("usr/share/doc/app").is_none());
        assert!(get("opt/visible").is_some() && get("opt/.hidden").is_none());
        // The config file comes from the base image.
        let conf = get("etc/app/app.conf").unwrap();
        assert_eq!(
            conf.kind,
            Kind::File(Content::Spilled(Region::from_bytes(b"from base").unwrap()))
        );
        assert_eq!(conf.meta.perm, 0o600);
    }

    /// A merged-/usr root as Debian 13 lays it out: the top-level links belong to a
    /// package outside the closure, libc6 and base-files register their protective
    /// diversions, and an older package still names paths through the links.
    #[test]
    fn a_merged_root_brings_its_links_and_paths_land_below_them() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2\n\n\
                      Package: old\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n\
                      Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 13\n";
        let diversions = "/lib64/ld-linux-x86-64.so.2\n/lib64/ld-linux-x86-64.so.2.usr-is-merged\nlibc6\n\
                          /lib32\n/.lib32.usr-is-merged\nbase-files\n\
                          /libx32\n/.libx32.usr-is-merged\nbase-files\n";
        let root = fake_root(
            status,
            &[
                (
                    "libc6",
                    "/.\n/usr\n/usr/lib64\n/usr/lib64/ld-linux-x86-64.so.2\n",
                ),
                (
                    "old",
                    "/.\n/lib64\n/lib64/ld-linux-x86-64.so.2\n/lib\n/lib/lsb\n/lib/lsb/init-functions\n/lib32\n/lib32/x\n",
                ),
                ("base-files", "/.\n/bin\n/lib\n/lib64\n/sbin\n/usr\n"),
            ],
            diversions,
        );
        let r = root.path();
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib64",
            "usr/lib/lsb",
            "usr/share/empty",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("usr/lib64/ld-linux-x86-64.so.2"), b"loader").unwrap();
        fs::write(r.join("usr/lib/lsb/init-functions"), b"lsb").unwrap();
        for (l, t) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("sbin", "usr/sbin"),
        ] {
            symlink(t, r.join(l)).unwrap();
        }
        let line = |v: &str| Line {
            value: v.to_string(),
            origin: origin(),
        };
        let inputs = Inputs {
            packages: vec![line("libc6"), line("old")],
            hostfiles: vec![Line {
                value: "/lib/lsb/*".into(),
                origin: origin(),
            }],
            ..Inputs::default()
        };
        let res = resolve_in(&inputs, r).unwrap();
        assert_eq!(res.packages, ["libc6_2_amd64", "old_1_amd64"]);
        let set = res.builder.finish().unwrap();
        let get = |p: &str| set.entries().iter().find(|e| e.path == Path::new(p));
        for (l, t) in [
            ("/bin", "usr/bin"),
            ("/lib", "usr/lib"),
            ("/lib64", "usr/lib64"),
            ("/sbin", "usr/sbin"),
        ] {
            assert!(
                matches!(get(l).map(|e| &e.kind), Some(Kind::Symlink(x)) if x == t.as_bytes()),
                "{l}"
            );
            assert!(matches!(
                get(&format!("/{t}")).map(|e| &e.kind),
                Some(Kind::Dir)
            ));
        }
        // The loader named through /lib64 by `old` is libc6's file (the protective
        // diversion names no file that exists), once, below the link's target.
        assert!(
            matches!(get("/usr/lib64/ld-linux-x86-64.so.2").map(|e| &e.kind),
            Some(Kind::File(Content::Host { path, .. })) if path == &r.join("usr/lib64/ld-linux-x86-64.so.2"))
        );
        assert!(get("/usr/lib/lsb/init-functions").is_some());
        // Nothing below a link, no second real directory, no diversion target.
        let below_links: Vec<_> = set
            .entries()
            .iter()
            .filter(|e| {
                ["/bin/", "/lib/", "/lib64/", "/sbin/", "/lib32", "/."]
                    .iter()
                    .any(|l| e.path.as_os_str().as_bytes().starts_with(l.as_bytes()))
            })
            .map(|e| e.path.display().to_string())
            .collect();
        assert!(below_links.is_empty(), "{below_links:?}");
        // base-files is outside the closure: none of its other paths came along.
        assert!(get("/usr/share/empty").is_none() && get("/usr/share").is_none());
    }

    /// A root with real top-level directories gains nothing: the layout is empty.
    #[test]
    fn a_classic_root_gains_no_links() {
        let root = fake_root(
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2\n",
            &[("libc6", "/.\n/lib64\n/lib64/ld-linux-x86-64.so.2\n")],
            "",
        );
        let r = root.path();
        for d in ["bin", "sbin", "lib", "lib64", "usr/bin", "usr/lib"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("lib64/ld-linux-x86-64.so.2"), b"loader").unwrap();
        let inputs = Inputs {
            packages: vec![Line {
                value: "libc6".to_string(),
                origin: origin(),
            }],
            ..Inputs::default()
        };
        let res = resolve_in(&inputs, r).unwrap();
        let paths: Vec<String> = res
            .builder
            .finish()
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(paths, ["/", "/lib64", "/lib64/ld-linux-x86-64.so.2"]);
    }

    #[test]
    fn relative_hostfile_names_its_origin() {
        let root = fake_root("", &[], "");
        let inputs = Inputs {
            hostfiles: vec![Line {
                value: "etc/passwd".into(),
                origin: Origin {
                    file: "supermin.d/hostfiles".into(),
                    line: 3,
                },
            }],
            ..Inputs::default()
        };
        let e = resolve_in(&inputs, root.path()).unwrap_err();
        assert!(e.to_string().contains("supermin.d/hostfiles:3"), "{e}");
    }
}
