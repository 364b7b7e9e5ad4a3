//! Write a [`FileSet`] as a directory tree (`kiln build -f chroot -o DIR`): the chroot
//! writer, beside the ext2 writer (`kiln-image`); the file set stage (`kiln-fileset`)
//! only decides what the tree holds.
//!
//! - Everything is written into a fresh sibling directory `.DIR.kiln-XXXXXX`, then put in
//!   place atomically: `renameat2(RENAME_EXCHANGE)` when `DIR` exists (the old tree is
//!   then removed), `renameat2(RENAME_NOREPLACE)` otherwise. There is no moment where
//!   `DIR` is missing or half-written. On any error the temporary directory is removed.
//! - `DIR` itself must be a directory or absent: a file or a symlink at `DIR` is refused
//!   (never replaced, never followed); `/` is refused.
//! - Files, directories, symlinks, hard links, FIFOs and sockets are created with their
//!   permission bits (setuid/setgid/sticky included) and mtimes; owners are set when
//!   running as root; device nodes are created only as root (otherwise left out with a
//!   warning); extended attributes are restored best-effort (a failure is logged at
//!   debug level, e.g. `security.*` as non-root).
//! - Absolute symlink targets are rewritten relative (`/etc/rmt -> /usr/sbin/rmt` becomes
//!   `../usr/sbin/rmt`), as supermin's chroot output does, so the tree never points into
//!   the host when looked at from outside.
//! - New files are created with `O_EXCL | O_NOFOLLOW` and directories get their final
//!   permissions only at the end (children first), so nothing in the tree is ever more
//!   open than its final mode and 0555 directories can still be filled.
//!
//! ```
//! use kiln_fileset::{Content, Entry, FileSet, Kind, Meta};
//!
//! let entry = |path: &str, kind, perm| Entry { path: path.into(), kind, meta: Meta::new(perm) };
//! let set = FileSet::new(vec![
//!     entry("/", Kind::Dir, 0o755),
//!     entry("/etc", Kind::Dir, 0o755),
//!     entry("/etc/hostname", Kind::File(Content::Bytes(b"kiln\n"[..].into())), 0o644),
//!     entry("/hostname", Kind::Symlink(b"/etc/hostname".to_vec()), 0o777),
//! ])
//! .unwrap();
//! let t = tempfile::tempdir().unwrap();
//! let out = t.path().join("root");
//! let stats = kiln_image::chroot::write_chroot(&set, &out).unwrap();
//! assert_eq!(stats.entries, 4);
//! assert_eq!(std::fs::read(out.join("etc/hostname")).unwrap(), b"kiln\n");
//! // Absolute link targets are made relative: the tree never points into the host.
//! assert_eq!(std::fs::read_link(out.join("hostname")).unwrap().to_str(), Some("etc/hostname"));
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

use kiln_outdir::{OutdirError, Staging};

use kiln_fileset::{Content, Entry, FileSet, Kind, Meta};

/// An error writing the chroot, naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("output {path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("copying {src} to {dest}")]
    Copy {
        src: PathBuf,
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "copying {src}: its size changed from {expected} to {got} bytes while building; run the build again"
    )]
    Changed {
        src: PathBuf,
        expected: u64,
        got: u64,
    },
}

/// What the writer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChrootStats {
    pub entries: usize,
    pub bytes: u64,
    /// Device nodes left out (not root).
    pub skipped_devices: usize,
    /// Extended attributes that could not be set.
    pub failed_xattrs: usize,
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> ChrootError + '_ {
    move |source| ChrootError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn outdir_err(e: OutdirError) -> ChrootError {
    match e {
        OutdirError::Refused { path, why } => ChrootError::Output {
            path,
            message: why.to_string(),
        },
        OutdirError::Io { path, source } => ChrootError::Write { path, source },
    }
}

fn output_err(path: &Path, message: impl Into<String>) -> ChrootError {
    ChrootError::Output {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The chroot form of a symlink target at `path`: absolute targets made relative.
pub fn chroot_link_target(path: &Path, target: &[u8]) -> Vec<u8> {
    let Some(rest) = target.strip_prefix(b"/") else {
        return target.to_vec();
    };
    let depth = path.as_os_str().as_bytes()[1..]
        .iter()
        .filter(|&&b| b == b'/')
        .count();
    let mut out = b"../".repeat(depth);
    out.extend_from_slice(rest.trim_ascii_start().strip_prefix(b"/").unwrap_or(rest));
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

fn timestamps(m: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: m.mtime,
        tv_nsec: i64::from(m.mtime_nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_times(p: &Path, m: &Meta) -> io::Result<()> {
    rustix::fs::utimensat(CWD, p, &timestamps(m), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn set_owner(p: &Path, m: &Meta) -> io::Result<()> {
    rustix::fs::chownat(
        CWD,
        p,
        Some(rustix::fs::Uid::from_raw(m.uid)),
        Some(rustix::fs::Gid::from_raw(m.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

fn set_xattrs(p: &Path, m: &Meta, stats: &mut ChrootStats) {
    for x in &m.xattrs {
        let name = std::ffi::OsStr::from_bytes(&x.name);
        if let Err(e) = rustix::fs::lsetxattr(p, name, &x.value, rustix::fs::XattrFlags::empty()) {
            stats.failed_xattrs += 1;
            tracing::debug!("{}: xattr {}: {e}", p.display(), name.to_string_lossy());
        }
    }
}

/// Metadata of a non-directory, non-symlink node, after its content is in place.
fn finish_node(p: &Path, m: &Meta, root: bool, stats: &mut ChrootStats) -> io::Result<()> {
    if root {
        set_owner(p, m)?;
    }
    set_xattrs(p, m, stats);
    // After chown, which clears setuid/setgid.
    fs::set_permissions(p, fs::Permissions::from_mode(m.perm))?;
    set_times(p, m)
}

fn copy_host(src: &Path, len: u64, dest: &Path) -> Result<u64, ChrootError> {
    let cerr = |source| ChrootError::Copy {
        src: src.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    };
    let mut from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(cerr)?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(werr(dest))?;
    // std uses copy_file_range/sendfile between files.
    let n = io::copy(&mut (&mut from).take(len + 1), &mut to).map_err(cerr)?;
    if n != len {
        return Err(ChrootError::Changed {
            src: src.to_path_buf(),
            expected: len,
            got: n,
        });
    }
    Ok(n)
}

fn write_entry(
    tmp: &Path,
    e: &Entry,
    root: bool,
    stats: &mut ChrootStats,
) -> Result<(), ChrootError> {
    let rel = e.path.strip_prefix("/").unwrap_or(&e.path);
    let p = tmp.join(rel);
    let m = &e.meta;
    match &e.kind {
        Kind::Dir => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .map_err(werr(&p))?;
        }
        Kind::File(Content::Host { path, len }) => {
            stats.bytes += copy_host(path, *len, &p)?;
            finish_node(&p, m, root, stats).map_err(werr(&p))?;
        }
        Kind::File(Content::Spilled(r)) => {
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(werr(&p))?;
            r.copy_to(&f).map_err(werr(&p))?;
            stats.bytes += r.len();
            finish_node(&p, m, root, stats).map_err(werr(&p))?;
        }
        Kind::File(Content::Bytes(b)) => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(werr(&p))?;
            f.write_all(b).map_err(werr(&p))?;
            stats.bytes += b.len() as u64;
            finish_node(&p, m, root, stats).map_err(werr(&p))?;
        }
        Kind::Symlink(t) => {
            let target = chroot_link_target(&e.path, t);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &p)
                .map_err(werr(&p))?;
            if root {
                set_owner(&p, m).map_err(werr(&p))?;
            }
            set_xattrs(&p, m, stats);
            set_times(&p, m).map_err(werr(&p))?;
        }
        Kind::HardLink(t) => {
            let target = tmp.join(t.strip_prefix("/").unwrap_or(t));
            fs::hard_link(&target, &p).map_err(werr(&p))?;
        }
        Kind::CharDev(_) | Kind::BlockDev(_) if !root => {
            stats.skipped_devices += 1;
            tracing::warn!(
                "{}: device node left out (creating it needs root)",
                e.path.display()
            );
            return Ok(());
        }
        Kind::CharDev(_) | Kind::BlockDev(_) | Kind::Fifo | Kind::Socket => {
            let (ft, dev) = match &e.kind {
                Kind::CharDev(d) => (rustix::fs::FileType::CharacterDevice, *d),
                Kind::BlockDev(d) => (rustix::fs::FileType::BlockDevice, *d),
                Kind::Fifo => (rustix::fs::FileType::Fifo, 0),
                _ => (rustix::fs::FileType::Socket, 0),
            };
            rustix::fs::mknodat(CWD, &p, ft, rustix::fs::Mode::from_raw_mode(0o600), dev)
                .map_err(|e| werr(&p)(e.into()))?;
            finish_node(&p, m, root, stats).map_err(werr(&p))?;
        }
    }
    stats.entries += 1;
    Ok(())
}

/// Write regular files with a few threads; the first error stops the others.
fn copy_parallel(
    tmp: &Path,
    files: &[&Entry],
    root: bool,
    stats: ChrootStats,
) -> Result<ChrootStats, ChrootError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<ChrootStats, ChrootError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut st = ChrootStats::default();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(e) = files.get(i) else { break };
                        if let Err(err) = write_entry(tmp, e, root, &mut st) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(err);
                        }
                    }
                    Ok(st)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(output_err(tmp, "a copying thread panicked")))
            })
            .collect()
    });
    let mut total = stats;
    for r in results {
        let st = r?;
        total.entries += st.entries;
        total.bytes += st.bytes;
        total.skipped_devices += st.skipped_devices;
        total.failed_xattrs += st.failed_xattrs;
    }
    Ok(total)
}

/// Write `set` as a directory tree at `out`, replacing an existing directory atomically.
pub fn write_chroot(set: &FileSet, out: &Path) -> Result<ChrootStats, ChrootError> {
    let mut staging = Staging::new(out).map_err(outdir_err)?;
    // The root directory's mode, owner and time come from the set (finished below).
    staging.keep_mode();
    let tmp = staging.path().to_path_buf();
    let root = rustix::process::geteuid().is_root();
    let mut stats = ChrootStats::default();
    let entries = set.entries();
    // Directories first, then regular files on several threads (copying is most of
    // the time), then everything else (hard links need their files).
    for e in entries[1..].iter().filter(|e| e.kind == Kind::Dir) {
        write_entry(&tmp, e, root, &mut stats)?;
    }
    let files: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File(_)))
        .collect();
    stats = copy_parallel(&tmp, &files, root, stats)?;
    for e in entries[1..]
        .iter()
        .filter(|e| !matches!(e.kind, Kind::Dir | Kind::File(_)))
    {
        write_entry(&tmp, e, root, &mut stats)?;
    }
    // Directories last, children before parents, so mtimes and read-only modes stick.
    for e in entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let rel = e.path.strip_prefix("/").unwrap_or(&e.path);
        let p = tmp.join(rel);
        finish_node(&p, &e.meta, root, &mut stats).map_err(werr(&p))?;
    }
    stats.entries += 1;
    staging.publish().map_err(outdir_err)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_fileset::scan::scan_tree;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn absolute_targets_become_relative() {
        assert_eq!(
            chroot_link_target(Path::new("/etc/rmt"), b"/usr/sbin/rmt"),
            b"../usr/sbin/rmt"
        );
        assert_eq!(chroot_link_target(Path::new("/a/b/c"), b"/x"), b"../../x");
        assert_eq!(chroot_link_target(Path::new("/top"), b"/x"), b"x");
        assert_eq!(chroot_link_target(Path::new("/top"), b"/"), b".");
        assert_eq!(chroot_link_target(Path::new("/a/b"), b"rel/x"), b"rel/x");
    }

    fn sample() -> (tempfile::TempDir, FileSet) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("src");
        fs::create_dir_all(r.join("ro/sub")).unwrap();
        fs::write(r.join("ro/sub/f"), b"hello").unwrap();
        fs::write(r.join("suid"), b"#!").unwrap();
        fs::set_permissions(r.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(r.join("suid"), r.join("suid2")).unwrap();
        std::os::unix::fs::symlink("/ro/sub/f", r.join("abs")).unwrap();
        fs::set_permissions(r.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let mut entries = scan_tree(&r, Path::new("/")).unwrap();
        entries[0].meta = Meta::new(0o755);
        fs::set_permissions(r.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        (t, FileSet::new(entries).unwrap())
    }

    #[test]
    fn writes_and_replaces_atomically() {
        let (t, set) = sample();
        let out = t.path().join("out");
        let stats = write_chroot(&set, &out).unwrap();
        assert_eq!(stats.entries, set.len());
        assert_eq!(fs::read(out.join("ro/sub/f")).unwrap(), b"hello");
        assert_eq!(fs::metadata(out.join("ro")).unwrap().mode() & 0o7777, 0o555);
        assert_eq!(
            fs::metadata(out.join("suid")).unwrap().mode() & 0o7777,
            0o4755
        );
        let (a, b) = (
            fs::metadata(out.join("suid")).unwrap(),
            fs::metadata(out.join("suid2")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            fs::read_link(out.join("abs")).unwrap(),
            Path::new("ro/sub/f")
        );
        let src_md = fs::metadata(t.path().join("src/ro/sub/f")).unwrap();
        assert_eq!(
            fs::metadata(out.join("ro/sub/f")).unwrap().mtime(),
            src_md.mtime()
        );
        // Replace: a marker in the old tree disappears, nothing is left beside `out`.
        fs::set_permissions(out.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(out.join("ro/marker"), b"").unwrap();
        fs::set_permissions(out.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        write_chroot(&set, &out).unwrap();
        assert!(!out.join("ro/marker").exists());
        let names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_files_and_symlinks_as_output_and_cleans_up_on_error() {
        let (t, set) = sample();
        let f = t.path().join("file");
        fs::write(&f, b"keep").unwrap();
        assert!(
            write_chroot(&set, &f)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        let l = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &l).unwrap();
        assert!(
            write_chroot(&set, &l)
                .unwrap_err()
                .to_string()
                .contains("symlink")
        );
        assert!(write_chroot(&set, Path::new("/")).is_err());
        // A host file that changed size: error naming it, no temp dir left, old output kept.
        let out = t.path().join("out");
        write_chroot(&set, &out).unwrap();
        fs::write(t.path().join("src/ro/sub/f"), b"hello, longer").unwrap();
        let e = write_chroot(&set, &out).unwrap_err();
        assert!(e.to_string().contains("src/ro/sub/f"), "{e}");
        assert_eq!(fs::read(out.join("ro/sub/f")).unwrap(), b"hello");
        let mut names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["file", "link", "out", "src"]);
    }
}

#[cfg(test)]
mod node_tests {
    use super::*;
    use kiln_fileset::Xattr;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn entry(p: &str, kind: Kind, perm: u32) -> Entry {
        Entry {
            path: p.into(),
            kind,
            meta: Meta::new(perm),
        }
    }

    #[test]
    fn writes_xattrs_fifos_sockets_owners_and_devices_when_root() {
        let t = tempfile::tempdir().unwrap();
        let mut f = entry("/f", Kind::File(Content::Bytes(b"x"[..].into())), 0o640);
        f.meta.xattrs = vec![Xattr {
            name: b"user.kiln".to_vec(),
            value: b"yes".to_vec(),
        }];
        f.meta.uid = 123;
        f.meta.gid = 456;
        f.meta.mtime = 1_000_000;
        f.meta.mtime_nsec = 5;
        let set = FileSet::new(vec![
            entry("/", Kind::Dir, 0o755),
            entry("/dev", Kind::Dir, 0o755),
            entry("/dev/null", Kind::CharDev(0x103), 0o666),
            f,
            entry("/fifo", Kind::Fifo, 0o600),
            entry("/sock", Kind::Socket, 0o755),
        ])
        .unwrap();
        let out = t.path().join("out");
        let stats = write_chroot(&set, &out).unwrap();
        let root = rustix::process::geteuid().is_root();
        let md = fs::metadata(out.join("f")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 5));
        if root {
            assert_eq!((md.uid(), md.gid()), (123, 456));
        }
        // user.* xattrs work on the usual filesystems (tmpfs, ext4); count a failure.
        let mut buf = [0u8; 16];
        match rustix::fs::getxattr(out.join("f"), "user.kiln", &mut buf[..]) {
            Ok(n) => assert_eq!(&buf[..n], b"yes"),
            Err(_) => assert_eq!(stats.failed_xattrs, 1),
        }
        assert!(
            fs::symlink_metadata(out.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert!(
            fs::symlink_metadata(out.join("sock"))
                .unwrap()
                .file_type()
                .is_socket()
        );
        let dev = fs::symlink_metadata(out.join("dev/null"));
        if root {
            let dev = dev.unwrap();
            assert!(dev.file_type().is_char_device());
            assert_eq!(dev.rdev(), 0x103);
        } else {
            assert!(dev.is_err());
            assert_eq!(stats.skipped_devices, 1);
        }
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    #[ignore = "needs root"]
    fn sets_owners_and_creates_devices_as_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "run as root (CI runs the ignored tests as root)"
        );
        let t = tempfile::tempdir().unwrap();
        let mut f = Entry {
            path: "/f".into(),
            kind: Kind::File(Content::Bytes(b"x"[..].into())),
            meta: Meta::new(0o4750),
        };
        (f.meta.uid, f.meta.gid) = (123, 456);
        let dir = |p: &str| Entry {
            path: p.into(),
            kind: Kind::Dir,
            meta: Meta::new(0o755),
        };
        let mut null = dir("/dev/null");
        null.kind = Kind::CharDev(0x103);
        null.meta = Meta::new(0o666);
        let set = FileSet::new(vec![dir("/"), dir("/dev"), null, f]).unwrap();
        let out = t.path().join("out");
        let stats = write_chroot(&set, &out).unwrap();
        assert_eq!(stats.skipped_devices, 0);
        let md = fs::metadata(out.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (123, 456, 0o4750));
        let dev = fs::symlink_metadata(out.join("dev/null")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!((dev.rdev(), dev.mode() & 0o7777), (0x103, 0o666));
    }
}
