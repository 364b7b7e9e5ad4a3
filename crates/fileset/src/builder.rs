//! [`SetBuilder`]: merge entries from base images and the host into one tree, then
//! [`SetBuilder::finish`] it into a validated [`FileSet`].
//!
//! Paths are placed *inside the set*: an entry's parent is resolved through the
//! symlinks already in the set (`/lib/x` lands in `/usr/lib/x` when `/lib -> usr/lib` is
//! in the set), never through the host's symlinks, and resolution cannot leave the set's
//! root (`..` at `/` stays at `/`, absolute targets are relative to the set's root).
//!
//! Merge rules ([`Source`]):
//! - a later base image member replaces an earlier one (directories: its metadata);
//!   missing parent directories of members are created (0755, 0:0, time 0);
//! - host directories take [`SetBuilder::host_dir_time`] when it is set instead of their
//!   own time: a host directory's time changes with any file created in it (`/tmp`,
//!   `/var/tmp`), which says nothing about the appliance and is not in its cache key;
//! - host entries come after all base images; a host non-directory replaces whatever is
//!   there; a host directory over an existing directory replaces its **metadata** (so
//!   `/usr` gets the host's owner, not the tarball builder's uid: the same result as
//!   `supermin -f chroot`, which chowns directories to host values at the end; supermin's
//!   ext2 output keeps the first writer's metadata instead, reference §9.5);
//! - a host symlink over a base-image directory (e.g. `/lib -> usr/lib` over a tarball's
//!   `lib/`) moves the directory's contents through the symlink, where existing entries
//!   win; any other non-directory over a directory drops the directory's subtree.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::entry::{Content, Entry, FileSet, Kind, Meta, SetError};
use crate::scan::{self, ScanError};

/// Who writes an entry; decides what happens when the path exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A base image member (before any host entry).
    Base,
    /// A host object or a generated file.
    Host,
    /// Only fill in when nothing is there (entries moved through a symlink).
    Fill,
}

/// An entry that could not be placed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceError {
    #[error("{path}: parent directory {parent} is not a directory in the appliance")]
    NoParent { path: PathBuf, parent: PathBuf },
    #[error("{path}: {blocker} is not a directory in the appliance")]
    Blocked { path: PathBuf, blocker: PathBuf },
    #[error("{path}: not an absolute, normalised path")]
    BadPath { path: PathBuf },
}

/// Symlink hops allowed when resolving a path inside the set (as the kernel's 40).
const MAX_HOPS: u32 = 40;

/// A file set under construction. See the module doc for the merge rules.
#[derive(Debug, Clone)]
pub struct SetBuilder {
    /// Keys are where entries landed, so every key is a canonical in-set path.
    map: HashMap<PathBuf, Entry>,
    /// Host inode (device, inode) of host files with more than one link, by landing
    /// path, recorded by [`SetBuilder::insert_host`] for hard link detection.
    inodes: HashMap<PathBuf, (u64, u64, PathBuf)>,
    /// Entries dropped while merging (a directory replaced by a non-directory...).
    pub warnings: Vec<String>,
    /// The modification time (seconds, nanoseconds) given to every host directory,
    /// `None` to keep the host's.
    pub host_dir_time: Option<(i64, u32)>,
}

impl Default for SetBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SetBuilder {
    /// A set with only `/` (0755, 0:0, time 0).
    pub fn new() -> SetBuilder {
        let mut map = HashMap::new();
        map.insert(
            PathBuf::from("/"),
            Entry {
                path: "/".into(),
                kind: Kind::Dir,
                meta: Meta::new(0o755),
            },
        );
        SetBuilder {
            map,
            inodes: HashMap::new(),
            warnings: Vec::new(),
            host_dir_time: None,
        }
    }

    /// Continue building from a finished set.
    pub fn from_set(set: FileSet) -> SetBuilder {
        SetBuilder {
            map: set
                .into_entries()
                .into_iter()
                .map(|e| (e.path.clone(), e))
                .collect(),
            inodes: HashMap::new(),
            warnings: Vec::new(),
            host_dir_time: None,
        }
    }

    /// Number of entries so far (including `/`).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: `/` is always there.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry at `path` (exact, no symlink resolution).
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.map.get(path)
    }

    /// Resolve `dir` through the set's symlinks; `Some` with the canonical path when it
    /// is a directory of the set.
    pub fn resolve_dir(&self, dir: &Path) -> Option<PathBuf> {
        // Fast path: keys are canonical, so a directory key resolves to itself.
        if let Some(Entry {
            kind: Kind::Dir, ..
        }) = self.map.get(dir)
        {
            return Some(dir.to_path_buf());
        }
        self.resolve_dir_in(Path::new("/"), dir, 0)
    }

    fn resolve_dir_in(&self, start: &Path, dir: &Path, hops: u32) -> Option<PathBuf> {
        if hops > MAX_HOPS {
            return None;
        }
        let mut cur = start.to_path_buf();
        for c in dir.components() {
            match c {
                Component::RootDir => cur = PathBuf::from("/"),
                Component::CurDir => {}
                Component::ParentDir => {
                    cur.pop();
                }
                Component::Normal(n) => {
                    let cand = cur.join(n);
                    match self.map.get(&cand).map(|e| &e.kind) {
                        Some(Kind::Dir) => cur = cand,
                        Some(Kind::Symlink(t)) => {
                            cur = self.resolve_dir_in(
                                &cur,
                                Path::new(OsStr::from_bytes(t)),
                                hops + 1,
                            )?;
                        }
                        _ => return None,
                    }
                }
                Component::Prefix(_) => return None,
            }
        }
        Some(cur)
    }

    /// Where an entry named `path` lands (its parent resolved in the set), if its parent
    /// resolves to a directory.
    pub fn place(&self, path: &Path) -> Option<PathBuf> {
        let name = path.file_name()?;
        Some(self.resolve_dir(path.parent()?)?.join(name))
    }

    /// Create the missing directories of `dir` (0755, 0:0, time 0), following the set's
    /// symlinks; the canonical path of `dir`.
    fn make_dirs(&mut self, path: &Path, dir: &Path) -> Result<PathBuf, PlaceError> {
        let mut cur = PathBuf::from("/");
        for c in dir.components() {
            let Component::Normal(n) = c else { continue };
            let cand = cur.join(n);
            match self.map.get(&cand).map(|e| &e.kind) {
                Some(Kind::Dir) => cur = cand,
                Some(Kind::Symlink(_)) => {
                    cur = self.resolve_dir(&cand).ok_or_else(|| PlaceError::Blocked {
                        path: path.to_path_buf(),
                        blocker: cand.clone(),
                    })?;
                }
                Some(_) => {
                    return Err(PlaceError::Blocked {
                        path: path.to_path_buf(),
                        blocker: cand,
                    });
                }
                None => {
                    self.map.insert(
                        cand.clone(),
                        Entry {
                            path: cand.clone(),
                            kind: Kind::Dir,
                            meta: Meta::new(0o755),
                        },
                    );
                    cur = cand;
                }
            }
        }
        Ok(cur)
    }

    /// Remove `dir`'s descendants (not `dir`), returning them in set order.
    fn take_subtree(&mut self, dir: &Path) -> Vec<Entry> {
        let keys: Vec<PathBuf> = self
            .map
            .keys()
            .filter(|k| k.starts_with(dir) && k.as_path() != dir)
            .cloned()
            .collect();
        let mut out: Vec<Entry> = keys.iter().filter_map(|k| self.map.remove(k)).collect();
        out.sort_by(|a, b| set_order(&a.path, &b.path));
        out
    }

    /// Add one entry (its `path` is where it is *named*; the parent is resolved in the
    /// set). Returns the path where it landed. `/` itself only takes the metadata of a
    /// host directory.
    pub fn insert(&mut self, mut e: Entry, src: Source) -> Result<PathBuf, PlaceError> {
        if !crate::entry::is_normal_abs(&e.path) {
            return Err(PlaceError::BadPath { path: e.path });
        }
        if let (Source::Host, Kind::Dir, Some((t, ns))) = (src, &e.kind, self.host_dir_time) {
            (e.meta.mtime, e.meta.mtime_nsec) = (t, ns);
        }
        let (Some(parent), Some(name)) = (e.path.parent(), e.path.file_name()) else {
            if src == Source::Host
                && e.kind == Kind::Dir
                && let Some(root) = self.map.get_mut(Path::new("/"))
            {
                root.meta = e.meta;
            }
            return Ok(PathBuf::from("/"));
        };
        let pdir = match self.resolve_dir(parent) {
            Some(d) => d,
            None if src == Source::Base => self.make_dirs(&e.path, parent)?,
            None => {
                return Err(PlaceError::NoParent {
                    path: e.path.clone(),
                    parent: parent.to_path_buf(),
                });
            }
        };
        let dest = pdir.join(name);
        let named = std::mem::replace(&mut e.path, dest.clone());
        let old_is_dir = match self.map.get_mut(&dest) {
            None => {
                self.map.insert(dest.clone(), e);
                return Ok(dest);
            }
            Some(_) if src == Source::Fill => return Ok(dest),
            Some(old) if old.kind == Kind::Dir && e.kind == Kind::Dir => {
                old.meta = e.meta;
                return Ok(dest);
            }
            Some(old) => old.kind == Kind::Dir,
        };
        if !old_is_dir {
            self.map.insert(dest.clone(), e);
            return Ok(dest);
        }
        // A non-directory replaces a directory.
        let moved = self.take_subtree(&dest);
        let is_symlink = matches!(e.kind, Kind::Symlink(_));
        self.map.insert(dest.clone(), e);
        if src == Source::Host && is_symlink && self.resolve_dir(&dest).is_some() {
            for mut m in moved {
                let rel = m
                    .path
                    .strip_prefix(&dest)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let p = m.path.clone();
                m.path = dest.join(rel);
                if let Err(err) = self.insert(m, Source::Fill) {
                    self.warnings
                        .push(format!("{}: dropped ({err})", p.display()));
                }
            }
        } else if !moved.is_empty() {
            self.warnings.push(format!(
                "{}: a directory with {} entries was replaced by a non-directory ({})",
                dest.display(),
                moved.len(),
                named.display()
            ));
        }
        Ok(dest)
    }

    /// Add a regular file with in-memory content (e.g. `/packagelist`).
    pub fn add_bytes(
        &mut self,
        path: &Path,
        data: Vec<u8>,
        meta: Meta,
    ) -> Result<PathBuf, PlaceError> {
        self.insert(
            Entry {
                path: path.to_path_buf(),
                kind: Kind::File(Content::Bytes(Arc::from(data))),
                meta,
            },
            Source::Host,
        )
    }

    /// Add a whole host tree: `src` (followed if it is a symlink, then walked without
    /// following symlinks) lands at `dest`, whose missing parents are created like base
    /// image parents. For the kernel's modules tree at `/lib/modules/VERSION`.
    pub fn add_host_tree(&mut self, src: &Path, dest: &Path) -> Result<(), TreeError> {
        let entries = scan::scan_tree(src, dest)?;
        self.add_scanned_tree(dest, entries)
    }

    /// Add the entries of a tree already read with [`scan::scan_tree`] at `dest` (so the
    /// scan can run on another thread while the rest of the set is resolved).
    pub fn add_scanned_tree(&mut self, dest: &Path, entries: Vec<Entry>) -> Result<(), TreeError> {
        if let Some(parent) = dest.parent()
            && self.resolve_dir(parent).is_none()
        {
            self.make_dirs(dest, parent)?;
        }
        for e in entries {
            self.insert(e, Source::Host)?;
        }
        Ok(())
    }

    /// Validate and sort into a [`FileSet`]. Host files sharing an inode become hard
    /// links to the first of them in set order.
    pub fn finish(self) -> Result<FileSet, SetError> {
        let mut entries: Vec<Entry> = self.map.into_values().collect();
        // Presorted with a cheap byte comparison; FileSet::new's sort is then linear.
        entries.sort_unstable_by(|a, b| set_order(&a.path, &b.path));
        let mut first: HashMap<(u64, u64), PathBuf> = HashMap::new();
        for e in entries.iter_mut() {
            let Some((dev, ino, src)) = self.inodes.get(&e.path) else {
                continue;
            };
            // Only if the entry is still the host file recorded (not replaced since).
            if !matches!(&e.kind, Kind::File(Content::Host { path, .. }) if path == src) {
                continue;
            }
            match first.get(&(*dev, *ino)) {
                Some(p) => e.kind = Kind::HardLink(p.clone()),
                None => {
                    first.insert((*dev, *ino), e.path.clone());
                }
            }
        }
        FileSet::new(entries)
    }

    /// Add a host object read with [`scan::host_entry_from`]; `md` is its lstat. Files
    /// with several links are remembered so [`SetBuilder::finish`] turns later names of
    /// the same inode into hard links.
    pub fn insert_host(&mut self, e: Entry, md: &std::fs::Metadata) -> Result<PathBuf, PlaceError> {
        use std::os::unix::fs::MetadataExt;
        let src = match &e.kind {
            Kind::File(Content::Host { path, .. }) if md.nlink() > 1 => Some(path.clone()),
            _ => None,
        };
        let dest = self.insert(e, Source::Host)?;
        if let Some(src) = src {
            self.inodes.insert(dest.clone(), (md.dev(), md.ino(), src));
        }
        Ok(dest)
    }
}

/// File set order (component-wise, bytewise within a component) for normalised absolute
/// paths: bytewise with `/` sorting before every other byte.
pub fn set_order(a: &Path, b: &Path) -> Ordering {
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    let key = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return key(*x).cmp(&key(*y));
        }
    }
    a.len().cmp(&b.len())
}

/// An error adding a host tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Place(#[from] PlaceError),
}

#[cfg(test)]
mod tests;
