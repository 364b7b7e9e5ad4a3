//! The file set: the exact list of entries of an appliance root.
//!
//! This is the contract between the file set stage and every writer after it (chroot,
//! ext2 image). Writers never look at packages or inputs; they only see [`FileSet`].
//!
//! Invariants of a [`FileSet`] (checked by [`FileSet::new`]):
//! - every path is absolute and normalised (no `.`/`..` components, no trailing `/`);
//! - the first entry is `/` and is a directory;
//! - paths are unique and sorted in [`Path`] order (component-wise, bytewise within a
//!   component), which is a depth-first pre-order walk: a directory comes before
//!   everything inside it;
//! - the parent of every entry is a [`Kind::Dir`] entry of the set;
//! - a [`Kind::HardLink`] names an earlier [`Kind::File`] entry of the set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use kiln_inputs::spill::Region;

/// Errors from constructing a [`FileSet`].
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("file set path {0:?} is not absolute and normalised")]
    BadPath(PathBuf),
    #[error("file set has {0:?} twice")]
    Duplicate(PathBuf),
    #[error("file set entry {path:?} has no parent directory {parent:?} in the set")]
    NoParent { path: PathBuf, parent: PathBuf },
    #[error("file set has no root directory entry `/`")]
    NoRoot,
    #[error("hard link {path:?} points to {target:?}, which is not an earlier regular file")]
    BadHardLink { path: PathBuf, target: PathBuf },
}

/// An extended attribute, name in full (`security.capability`, `user.foo`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Inode metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`); never the type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
}

impl Meta {
    /// Metadata with the given permission bits, owned by 0:0, time 0, no xattrs.
    pub fn new(perm: u32) -> Meta {
        Meta {
            perm: perm & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }
}

/// Where the bytes of a regular file come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Content {
    /// A file on the host, copied at write time. `len` is the size seen when the set was
    /// made; a writer must notice if the file has changed size since (error, not
    /// silent truncation).
    Host { path: PathBuf, len: u64 },
    /// Bytes held in memory (generated files, procfs/sysfs snapshots).
    Bytes(Arc<[u8]>),
    /// Bytes in a spill file (base image members), sparse: copy it with
    /// [`Region::data_blocks`] to keep its holes.
    Spilled(Region),
}

impl Content {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Host { len, .. } => *len,
            Content::Bytes(b) => b.len() as u64,
            Content::Spilled(r) => r.len(),
        }
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kind of an entry, with what it needs beyond [`Meta`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File(Content),
    /// Target bytes, verbatim.
    Symlink(Vec<u8>),
    /// Device number in the kernel's `dev_t` encoding (`libc::makedev`).
    CharDev(u64),
    BlockDev(u64),
    Fifo,
    Socket,
    /// Another name for an earlier [`Kind::File`] entry (same inode). The entry's own
    /// [`Meta`] is ignored by writers: the inode's metadata is the target's.
    HardLink(PathBuf),
}

/// One entry of the appliance root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub meta: Meta,
}

/// A validated, sorted file set. See the module doc for the invariants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSet {
    entries: Vec<Entry>,
}

/// True when `p` is absolute and has no `.`/`..` components or trailing slash.
pub fn is_normal_abs(p: &Path) -> bool {
    let bytes = p.as_os_str().as_encoded_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes.len() > 1 && (bytes.ends_with(b"/") || bytes.windows(2).any(|w| w == b"//")) {
        return false;
    }
    bytes[1..]
        .split(|&b| b == b'/')
        .all(|c| c != b"." && c != b"..")
}

impl FileSet {
    /// Sort `entries` and check the invariants of the module doc.
    pub fn new(mut entries: Vec<Entry>) -> Result<FileSet, SetError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut kinds: HashMap<&Path, (usize, bool)> = HashMap::with_capacity(entries.len());
        match entries.first() {
            Some(e) if e.path == Path::new("/") && e.kind == Kind::Dir => {}
            _ => return Err(SetError::NoRoot),
        }
        for (i, e) in entries.iter().enumerate() {
            if !is_normal_abs(&e.path) {
                return Err(SetError::BadPath(e.path.clone()));
            }
            if i > 0 && entries[i - 1].path == e.path {
                return Err(SetError::Duplicate(e.path.clone()));
            }
            if let Some(parent) = e.path.parent() {
                match kinds.get(parent) {
                    Some((_, true)) => {}
                    _ => {
                        return Err(SetError::NoParent {
                            path: e.path.clone(),
                            parent: parent.to_path_buf(),
                        });
                    }
                }
            }
            if let Kind::HardLink(target) = &e.kind {
                let ok = kinds
                    .get(target.as_path())
                    .is_some_and(|&(j, _)| matches!(entries[j].kind, Kind::File(_)));
                if !ok {
                    return Err(SetError::BadHardLink {
                        path: e.path.clone(),
                        target: target.clone(),
                    });
                }
            }
            kinds.insert(&e.path, (i, e.kind == Kind::Dir));
        }
        Ok(FileSet { entries })
    }

    /// The entries, in order (parents before children).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Consume the set, giving back its entries.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// Number of entries, including `/`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when only... never: a valid set always has `/`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of regular file content (hard links counted once).
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                Kind::File(c) => c.len(),
                _ => 0,
            })
            .sum()
    }

    /// A digest of the whole set: paths, kinds, metadata, symlink targets, in-memory
    /// bytes (spilled bytes by their hash), and for host files their path and length (not their bytes: reading 600 MB
    /// to name an image would cost more than writing it).
    ///
    /// Two sets with equal fingerprints produce identical images; writers derive the
    /// filesystem UUID and hash seed from it so output is reproducible.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"kiln-fileset-v1\0");
        for e in &self.entries {
            let p = e.path.as_os_str().as_encoded_bytes();
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
            let m = &e.meta;
            h.update(&m.perm.to_le_bytes());
            h.update(&m.uid.to_le_bytes());
            h.update(&m.gid.to_le_bytes());
            h.update(&m.mtime.to_le_bytes());
            h.update(&m.mtime_nsec.to_le_bytes());
            h.update(&(m.xattrs.len() as u64).to_le_bytes());
            for x in &m.xattrs {
                h.update(&(x.name.len() as u64).to_le_bytes());
                h.update(&x.name);
                h.update(&(x.value.len() as u64).to_le_bytes());
                h.update(&x.value);
            }
            match &e.kind {
                Kind::Dir => {
                    h.update(b"d");
                }
                Kind::File(Content::Host { path, len }) => {
                    h.update(b"h");
                    let p = path.as_os_str().as_encoded_bytes();
                    h.update(&(p.len() as u64).to_le_bytes());
                    h.update(p);
                    h.update(&len.to_le_bytes());
                }
                Kind::File(Content::Bytes(b)) => {
                    h.update(b"b");
                    h.update(&(b.len() as u64).to_le_bytes());
                    h.update(b);
                }
                // The hash of the bytes, taken while they were spilled.
                Kind::File(Content::Spilled(r)) => {
                    h.update(b"s");
                    h.update(&r.len().to_le_bytes());
                    h.update(&r.hash());
                }
                Kind::Symlink(t) => {
                    h.update(b"l");
                    h.update(&(t.len() as u64).to_le_bytes());
                    h.update(t);
                }
                Kind::CharDev(d) => {
                    h.update(b"c");
                    h.update(&d.to_le_bytes());
                }
                Kind::BlockDev(d) => {
                    h.update(b"B");
                    h.update(&d.to_le_bytes());
                }
                Kind::Fifo => {
                    h.update(b"p");
                }
                Kind::Socket => {
                    h.update(b"s");
                }
                Kind::HardLink(t) => {
                    h.update(b"H");
                    let p = t.as_os_str().as_encoded_bytes();
                    h.update(&(p.len() as u64).to_le_bytes());
                    h.update(p);
                }
            }
        }
        *h.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> Entry {
        Entry {
            path: p.into(),
            kind: Kind::Dir,
            meta: Meta::new(0o755),
        }
    }
    fn file(p: &str, b: &[u8]) -> Entry {
        Entry {
            path: p.into(),
            kind: Kind::File(Content::Bytes(b.into())),
            meta: Meta::new(0o644),
        }
    }

    #[test]
    fn sorts_parents_first() {
        let s = FileSet::new(vec![
            file("/a-b", b"x"),
            file("/a/b", b"y"),
            dir("/a"),
            dir("/"),
        ])
        .unwrap();
        let paths: Vec<_> = s.entries().iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                Path::new("/"),
                "/a".as_ref(),
                "/a/b".as_ref(),
                "/a-b".as_ref()
            ]
        );
    }

    #[test]
    fn rejects_missing_parent_duplicates_and_bad_paths() {
        assert!(matches!(
            FileSet::new(vec![dir("/"), file("/x/y", b"")]),
            Err(SetError::NoParent { .. })
        ));
        assert!(matches!(
            FileSet::new(vec![dir("/"), file("/x", b""), file("/x", b"")]),
            Err(SetError::Duplicate(_))
        ));
        assert!(matches!(
            FileSet::new(vec![dir("/"), file("/x/../y", b"")]),
            Err(SetError::BadPath(_))
        ));
        assert!(matches!(
            FileSet::new(vec![file("/x", b"")]),
            Err(SetError::NoRoot)
        ));
        // A file is not a parent.
        assert!(matches!(
            FileSet::new(vec![dir("/"), file("/x", b""), file("/x/y", b"")]),
            Err(SetError::NoParent { .. })
        ));
    }

    #[test]
    fn hard_links_must_name_an_earlier_file() {
        let link = |p: &str, t: &str| Entry {
            path: p.into(),
            kind: Kind::HardLink(t.into()),
            meta: Meta::new(0),
        };
        assert!(FileSet::new(vec![dir("/"), file("/a", b"1"), link("/b", "/a")]).is_ok());
        assert!(matches!(
            FileSet::new(vec![dir("/"), file("/b", b"1"), link("/a", "/b")]),
            Err(SetError::BadHardLink { .. })
        ));
        assert!(matches!(
            FileSet::new(vec![dir("/"), dir("/d"), link("/e", "/d")]),
            Err(SetError::BadHardLink { .. })
        ));
    }

    #[test]
    fn fingerprint_follows_content_and_metadata() {
        let a = FileSet::new(vec![dir("/"), file("/a", b"1")]).unwrap();
        let b = FileSet::new(vec![dir("/"), file("/a", b"2")]).unwrap();
        let mut c = a.clone().into_entries();
        c[1].meta.uid = 7;
        let c = FileSet::new(c).unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn normal_abs() {
        assert!(is_normal_abs(Path::new("/")));
        assert!(is_normal_abs(Path::new("/a/b")));
        assert!(!is_normal_abs(Path::new("a/b")));
        assert!(!is_normal_abs(Path::new("/a/")));
        assert!(!is_normal_abs(Path::new("/a//b")));
        assert!(!is_normal_abs(Path::new("/a/./b")));
    }
}
