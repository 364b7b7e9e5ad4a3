//! supermin's "munging" (reference §2.5): make a host file list creatable in one pass by
//! inserting missing parent directories and the targets of directory symlinks, looking at
//! the host filesystem. Done in-process (stat, readlink, realpath) instead of one
//! `readlink -f` shell per file.
//!
//! Paths are those of the installed system; [`StatCache`] looks them up below its root
//! (`--sysroot`), following symlinks inside the root only. With the root `/` every
//! lookup is the plain system call, as before roots existed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_packages::Sysroot;

/// A host file list entry: where it goes (`path`) and where its bytes come from
/// (`source`, which differs from `path` for diverted package files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub path: PathBuf,
    pub source: PathBuf,
}

impl HostFile {
    /// An entry whose source is its own path.
    pub fn same(path: PathBuf) -> HostFile {
        HostFile {
            source: path.clone(),
            path,
        }
    }
}

/// Memoised `lstat` results, shared by the filters, munging and the merge so each host
/// path is looked at once; paths are looked up below the root.
#[derive(Debug)]
pub struct StatCache {
    root: Sysroot,
    l: HashMap<PathBuf, Option<fs::Metadata>>,
}

impl Default for StatCache {
    fn default() -> Self {
        StatCache::new(Sysroot::default())
    }
}

impl StatCache {
    /// A cache looking paths up below `root`.
    pub fn new(root: Sysroot) -> StatCache {
        StatCache {
            root,
            l: HashMap::new(),
        }
    }

    /// Where `p` (a path of the installed system) is on this machine, its parent
    /// directories resolved inside the root.
    pub fn host_path(&self, p: &Path) -> PathBuf {
        if self.root.is_host() {
            return p.to_path_buf();
        }
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => match kiln_pattern::resolve_in(&self.root.root, dir) {
                Ok(d) => self.root.host_path(&d.join(name)),
                Err(_) => self.root.host_path(p),
            },
            _ => self.root.host_path(p),
        }
    }

    /// `lstat(p)`, `None` when it fails.
    pub fn lstat(&mut self, p: &Path) -> Option<fs::Metadata> {
        if let Some(m) = self.l.get(p) {
            return m.clone();
        }
        let m = if self.root.is_host() {
            fs::symlink_metadata(p).ok()
        } else {
            kiln_pattern::lstat_in(&self.root.root, p).ok()
        };
        self.l.insert(p.to_path_buf(), m.clone());
        m
    }

    /// `stat(p)`: symlinks followed (inside the root).
    fn stat(&self, p: &Path) -> Option<fs::Metadata> {
        if self.root.is_host() {
            fs::metadata(p).ok()
        } else {
            kiln_pattern::stat_in(&self.root.root, p).ok()
        }
    }

    /// `realpath(p)` (inside the root).
    fn canonicalize(&self, p: &Path) -> Option<PathBuf> {
        if self.root.is_host() {
            fs::canonicalize(p).ok()
        } else {
            kiln_pattern::resolve_in(&self.root.root, p).ok()
        }
    }

    /// `readlink(p)`.
    fn read_link(&self, p: &Path) -> Option<PathBuf> {
        fs::read_link(self.host_path(p)).ok()
    }

    /// (is a directory after following symlinks, is a symlink).
    fn dir_and_link(&mut self, p: &Path) -> (bool, bool) {
        match self.lstat(p) {
            Some(m) if m.file_type().is_symlink() => {
                (self.stat(p).is_some_and(|m| m.is_dir()), true)
            }
            Some(m) => (m.is_dir(), false),
            None => (false, false),
        }
    }
}

fn parent_of(p: &Path) -> PathBuf {
    p.parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

/// The directory a host symlink-to-directory `p` points to, as supermin computes it:
/// an absolute target verbatim, a relative one canonicalised from `p`'s directory; one
/// trailing `/` removed.
fn symlink_dir_target(p: &Path, cache: &StatCache) -> Option<PathBuf> {
    let t = cache.read_link(p)?;
    let t = if t.is_absolute() {
        t
    } else {
        cache.canonicalize(&parent_of(p).join(t))?
    };
    let b = t.as_os_str().as_bytes();
    Some(match b.strip_suffix(b"/") {
        Some(s) if !s.is_empty() => PathBuf::from(std::ffi::OsStr::from_bytes(s)),
        _ => t,
    })
}

/// Munge `files` (sorted bytewise by path first, duplicates kept). The result is the
/// copy order: every entry's parent directory (or a symlink to it) comes before it, and
/// every directory symlink's target comes before the symlink.
pub fn munge(mut files: Vec<HostFile>, cache: &mut StatCache) -> Vec<HostFile> {
    files.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut out = Vec::with_capacity(files.len() + 16);
    // A stack whose top is the head of supermin's queue.
    let mut stack: Vec<HostFile> = files.into_iter().rev().collect();
    // Each path is inserted at most once, so a dangling or cyclic path cannot loop.
    let mut inserted: HashSet<PathBuf> = HashSet::new();
    while let Some(e) = stack.pop() {
        let p = &e.path;
        if p == Path::new("/") {
            seen.insert(p.clone());
            continue;
        }
        let (is_dir, is_link) = cache.dir_and_link(p);
        if is_dir && seen.contains(p) {
            out.push(e);
            continue;
        }
        let needed = if is_dir && is_link {
            seen.insert(p.clone());
            symlink_dir_target(p, cache).filter(|t| !seen.contains(t))
        } else {
            if is_dir {
                seen.insert(p.clone());
            }
            Some(parent_of(p)).filter(|d| !seen.contains(d))
        };
        match needed {
            // Process the missing directory first, then `e` again.
            Some(d) if inserted.insert(d.clone()) => {
                stack.push(e);
                stack.push(HostFile::same(d));
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rel(root: &Path, v: &[HostFile]) -> Vec<String> {
        v.iter()
            .map(|e| {
                let s = e
                    .path
                    .strip_prefix(root)
                    .map_or_else(|_| e.path.clone(), Path::to_path_buf);
                format!("/{}", s.display())
            })
            .collect()
    }

    #[test]
    fn inserts_parents_and_directory_symlink_targets() {
        let t = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(t.path()).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("usr/lib/x")).unwrap();
        fs::write(r.join("usr/bin/bash"), b"").unwrap();
        fs::write(r.join("usr/lib/x/libc.so"), b"").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink(r.join("usr/lib"), r.join("lib")).unwrap();
        symlink("bash", r.join("usr/bin/sh")).unwrap();
        // The root's ancestors are "seen" already: start from a list that contains them.
        let mut list: Vec<HostFile> = r
            .ancestors()
            .map(|a| HostFile::same(a.to_path_buf()))
            .collect();
        list.push(HostFile::same(r.join("bin/bash")));
        list.push(HostFile::same(r.join("bin/sh")));
        list.push(HostFile::same(r.join("lib/x/libc.so")));
        let n_ancestors = r.ancestors().count() - 1; // `/` itself is dropped
        let out = munge(list, &mut StatCache::default());
        let got = rel(&r, &out[n_ancestors..]);
        assert_eq!(
            got,
            [
                "/usr",
                "/usr/bin",
                "/bin",
                "/bin/bash",
                "/bin/sh",
                "/usr/lib",
                "/lib",
                "/lib/x",
                "/lib/x/libc.so",
            ]
        );
    }

    #[test]
    fn keeps_duplicates_and_missing_paths() {
        let t = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(t.path()).unwrap();
        let mut list: Vec<HostFile> = r
            .ancestors()
            .map(|a| HostFile::same(a.to_path_buf()))
            .collect();
        list.push(HostFile::same(r.join("gone")));
        list.push(HostFile::same(r.join("gone")));
        let out = munge(list, &mut StatCache::default());
        let got = rel(&r, &out);
        assert_eq!(got.iter().filter(|p| p.ends_with("/gone")).count(), 2);
    }
}
