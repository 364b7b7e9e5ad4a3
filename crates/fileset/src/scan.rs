//! Reading host objects into [`Entry`] values: one path ([`host_entry`]) or a whole tree
//! ([`scan_tree`]).
//!
//! Used for package and host files, for the kernel's modules tree, and by writers' tests
//! to turn a directory on disk into a file set. Everything is read with `lstat`
//! semantics: a symlink is an entry of its own, never followed.
//!
//! Regular files on pseudo filesystems (procfs, sysfs and their kin, told by `statfs`
//! magic) report a size that has nothing to do with what `read` returns (0 for
//! `/proc/version`, 4096 for any sysfs attribute). Their bytes are read once, when the
//! entry is made, into [`Content::Bytes`] (at most [`PSEUDO_MAX`] bytes): the set holds
//! what the read returned, as supermin copies it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::entry::{Content, Entry, Kind, Meta, Xattr};

/// The most bytes read from one pseudo file; a larger one (`/proc/kcore`) is an error
/// naming it, so the caller leaves it out with a warning.
pub const PSEUDO_MAX: u64 = 16 << 20;

/// An error reading a host object, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{path}")]
pub struct ScanError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError {
        path: path.to_path_buf(),
        source,
    }
}

/// The extended attributes of `path` (not following a final symlink), sorted by name.
///
/// Filesystems without xattr support give an empty list rather than an error.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let vlen = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                // Removed between list and get: not there any more.
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(e.into()),
            }
        };
        if vlen != usize::MAX {
            value.truncate(vlen);
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Metadata of a host object as file set [`Meta`].
pub fn meta_of(md: &fs::Metadata, xattrs: Vec<Xattr>) -> Meta {
    Meta {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        xattrs,
    }
}

/// Read one host object (lstat semantics) as an entry placed at `dest`.
///
/// Regular files become [`Content::Host`] referring to `src`, except on pseudo
/// filesystems, whose files are read now into [`Content::Bytes`] (see the module doc).
pub fn host_entry(src: &Path, dest: PathBuf) -> Result<Entry, ScanError> {
    let md = fs::symlink_metadata(src).map_err(err(src))?;
    entry_from(src, dest, &md)
}

/// [`host_entry`] with the lstat result already at hand.
pub fn host_entry_from(src: &Path, dest: PathBuf, md: &fs::Metadata) -> Result<Entry, ScanError> {
    entry_from(src, dest, md)
}

/// `statfs` magic numbers of filesystems whose files are generated on read.
const PSEUDO_MAGICS: [u32; 11] = [
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0x7363_6673, // securityfs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x6265_6570, // configfs
    0xde5e_81e4, // efivarfs
    0xcafe_4a11, // bpf
    0x6165_676c, // pstore
];

/// True when the regular file `src` (on device `dev`) lives on a pseudo filesystem.
/// One `statfs` per device, remembered for the life of the process.
fn is_pseudo(src: &Path, dev: u64) -> bool {
    static SEEN: Mutex<Option<HashMap<u64, bool>>> = Mutex::new(None);
    if let Ok(g) = SEEN.lock()
        && let Some(&v) = g.as_ref().and_then(|m| m.get(&dev))
    {
        return v;
    }
    let Ok(st) = rustix::fs::statfs(src) else {
        return false;
    };
    // f_type is a C long; the magic numbers are 32-bit values.
    let pseudo = PSEUDO_MAGICS.contains(&(st.f_type as u32));
    if let Ok(mut g) = SEEN.lock() {
        g.get_or_insert_with(HashMap::new).insert(dev, pseudo);
    }
    pseudo
}

/// Read a pseudo file's bytes as `read` returns them, without blocking (a file such as
/// `/proc/kmsg` would wait for data forever) and at most [`PSEUDO_MAX`] bytes.
fn read_pseudo(src: &Path) -> io::Result<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        src,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let mut data = Vec::new();
    fs::File::from(fd)
        .take(PSEUDO_MAX + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > PSEUDO_MAX {
        return Err(io::Error::other(format!(
            "a generated file of more than {PSEUDO_MAX} bytes: not copied"
        )));
    }
    Ok(data)
}

fn entry_from(src: &Path, dest: PathBuf, md: &fs::Metadata) -> Result<Entry, ScanError> {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() && is_pseudo(src, md.dev()) {
        let data = read_pseudo(src).map_err(err(src))?;
        Kind::File(Content::Bytes(Arc::from(data)))
    } else if ft.is_file() {
        Kind::File(Content::Host {
            path: src.to_path_buf(),
            len: md.len(),
        })
    } else if ft.is_symlink() {
        let t = fs::read_link(src).map_err(err(src))?;
        Kind::Symlink(t.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        Kind::CharDev(md.rdev())
    } else if ft.is_block_device() {
        Kind::BlockDev(md.rdev())
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let xattrs = read_xattrs(src).map_err(err(src))?;
    Ok(Entry {
        path: dest,
        kind,
        meta: meta_of(md, xattrs),
    })
}

/// Walk the host tree at `src` (not following symlinks, the root included) and return its
/// entries placed under `dest`, in file set order. Files sharing an inode within the tree
/// become [`Kind::HardLink`]s to the first of them in that order.
///
/// `src` itself becomes the entry `dest`; if `src` is a symlink to a directory, the
/// directory it points to is walked (as `supermin` does for the modules path).
pub fn scan_tree(src: &Path, dest: &Path) -> Result<Vec<Entry>, ScanError> {
    let root_md = fs::metadata(src).map_err(err(src))?;
    let mut out = Vec::new();
    let mut stack = vec![(src.to_path_buf(), dest.to_path_buf(), root_md)];
    while let Some((s, d, md)) = stack.pop() {
        let is_dir = md.is_dir();
        out.push(entry_from(&s, d.clone(), &md)?);
        if is_dir {
            let mut children = Vec::new();
            for de in fs::read_dir(&s).map_err(err(&s))? {
                let de = de.map_err(err(&s))?;
                let cs = de.path();
                let cmd = fs::symlink_metadata(&cs).map_err(err(&cs))?;
                children.push((cs, d.join(de.file_name()), cmd));
            }
            // Reverse order on the stack pops them in ascending order.
            children.sort_by(|a, b| b.1.cmp(&a.1));
            stack.extend(children);
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    link_hard_links(&mut out);
    Ok(out)
}

/// Turn later names of a host inode (same device and inode number, link count > 1)
/// into [`Kind::HardLink`]s to the first name in `entries`' order.
pub fn link_hard_links(entries: &mut [Entry]) {
    let mut first: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for e in entries.iter_mut() {
        let Kind::File(Content::Host { path, .. }) = &e.kind else {
            continue;
        };
        let Ok(md) = fs::symlink_metadata(path) else {
            continue;
        };
        if md.nlink() < 2 {
            continue;
        }
        match first.get(&(md.dev(), md.ino())) {
            Some(p) => e.kind = Kind::HardLink(p.clone()),
            None => {
                first.insert((md.dev(), md.ino()), e.path.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileSet;
    use std::os::unix::fs::symlink;

    #[test]
    fn scans_a_tree_with_links() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("d")).unwrap();
        fs::write(r.join("d/f"), b"hello").unwrap();
        fs::hard_link(r.join("d/f"), r.join("g")).unwrap();
        symlink("d/f", r.join("s")).unwrap();
        let mut entries = scan_tree(r, Path::new("/")).unwrap();
        entries[0].meta = Meta::new(0o755);
        let set = FileSet::new(entries).unwrap();
        let kinds: Vec<_> = set
            .entries()
            .iter()
            .map(|e| (e.path.to_str().unwrap().to_string(), e.kind.clone()))
            .collect();
        assert_eq!(kinds[0], ("/".into(), Kind::Dir));
        assert_eq!(kinds[1], ("/d".into(), Kind::Dir));
        assert!(matches!(&kinds[2].1, Kind::File(c) if c.len() == 5));
        assert_eq!(kinds[3], ("/g".into(), Kind::HardLink("/d/f".into())));
        assert_eq!(kinds[4], ("/s".into(), Kind::Symlink(b"d/f".to_vec())));
    }

    /// procfs reports size 0 and sysfs 4096 whatever the content: the entry holds what
    /// the read returns.
    #[test]
    fn pseudo_files_hold_what_the_read_returns() {
        for p in ["/proc/version", "/sys/devices/system/cpu/possible"] {
            let e = host_entry(Path::new(p), p.into()).unwrap();
            let want = fs::read(p).unwrap();
            assert!(!want.is_empty() && want.len() != 4096, "{p}: {want:?}");
            assert_eq!(e.kind, Kind::File(Content::Bytes(want.into())), "{p}");
        }
        // An ordinary file stays a reference to the host.
        let t = tempfile::NamedTempFile::new().unwrap();
        let e = host_entry(t.path(), "/f".into()).unwrap();
        assert!(matches!(e.kind, Kind::File(Content::Host { .. })));
    }

    #[test]
    fn missing_source_names_the_path() {
        let e = host_entry(Path::new("/nonexistent/kiln"), "/x".into()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kiln"));
    }
}
