//! The security checks of the cache directory and of the entries in it.
//!
//! The per-user directory must be a real directory (not a link), owned by the
//! effective UID and not writable by group or other; it is checked by `lstat`, opened
//! with `O_NOFOLLOW`, and checked again through the handle, so a directory swapped in
//! between is refused. Entries kiln reads (slot files, lock files) must be regular
//! files or directories owned by the effective UID and not writable by others. Every
//! refusal is a [`CacheError::Security`] whose message says how to fix it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::cache::{FILES, META, Result};
use crate::fsx::{file_type, ident, lstat_at, open_dir};
use crate::{Cache, CacheError};

/// What kind of file `ft` is, for messages.
pub(crate) fn describe(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "an unknown kind of file",
    }
}

/// `ELOOP` or `ENOTDIR` from an `O_NOFOLLOW | O_DIRECTORY` open: not a real directory.
pub(crate) fn is_loop_or_notdir(e: &io::Error) -> bool {
    let c = e.raw_os_error();
    c == Some(Errno::LOOP.raw_os_error()) || c == Some(Errno::NOTDIR.raw_os_error())
}

/// Open (creating if needed) `<root>/.guestfs-<euid>` and check it: its handle, its
/// path and the effective UID.
pub(crate) fn open_checked(root: &Path) -> Result<(OwnedFd, PathBuf, u32)> {
    let root = std::path::absolute(root).map_err(|source| CacheError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let root_fd = rustix::fs::open(
        &root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CacheError::Root {
        path: root.clone(),
        source: e.into(),
    })?;
    let euid = rustix::process::geteuid().as_raw();
    let name = format!(".guestfs-{euid}");
    let path = root.join(&name);
    let created = match rustix::fs::mkdirat(&root_fd, &name, Mode::from_raw_mode(0o755)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(CacheError::io(&path, "mkdir", e)),
    };
    let st = lstat_at(root_fd.as_fd(), &name).map_err(|e| CacheError::io(&path, "lstat", e))?;
    check_cache_dir(&path, &st, euid, !created)?;
    let fd = match open_dir(root_fd.as_fd(), &name) {
        Ok(fd) => fd,
        Err(e) if is_loop_or_notdir(&e) => {
            return Err(CacheError::Security(format!(
                "cache directory {} was replaced while kiln checked it; remove it and try again",
                path.display()
            )));
        }
        Err(e) => return Err(CacheError::io(&path, "open", e)),
    };
    let st2 = rustix::fs::fstat(&fd).map_err(|e| CacheError::io(&path, "fstat", e))?;
    if ident(&st2) != ident(&st) {
        return Err(CacheError::Security(format!(
            "cache directory {} was replaced while kiln checked it; remove it and try again",
            path.display()
        )));
    }
    if created {
        // mkdir honours the umask; the directory must be 0755 so qemu running as
        // another user (libvirt) can read the appliance.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
            .map_err(|e| CacheError::io(&path, "chmod", e))?;
    }
    let st3 = rustix::fs::fstat(&fd).map_err(|e| CacheError::io(&path, "fstat", e))?;
    check_cache_dir(&path, &st3, euid, true)?;
    Ok((fd, path, euid))
}

fn check_cache_dir(path: &Path, st: &Stat, euid: u32, check_mode: bool) -> Result<()> {
    let ft = file_type(st);
    let elsewhere = "or use another cache directory (--cachedir or LIBGUESTFS_CACHEDIR)";
    if ft == FileType::Symlink {
        return Err(CacheError::Security(format!(
            "cache directory {} is a symbolic link, not a directory; remove it (rm {}) {elsewhere}",
            path.display(),
            path.display()
        )));
    }
    if ft != FileType::Directory {
        return Err(CacheError::Security(format!(
            "cache directory {} is {}, not a directory; remove it {elsewhere}",
            path.display(),
            describe(ft)
        )));
    }
    if st.st_uid != euid {
        return Err(CacheError::Security(format!(
            "cache directory {} is owned by UID {}, not by the effective UID {euid}; remove it (rm -rf {}) {elsewhere}",
            path.display(),
            st.st_uid,
            path.display()
        )));
    }
    if check_mode && st.st_mode & 0o022 != 0 {
        return Err(CacheError::Security(format!(
            "cache directory {} is writable by group or other (mode {:o}); fix it with chmod go-w {} {elsewhere}",
            path.display(),
            st.st_mode & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

impl Cache {
    /// An entry kiln made: owned by the effective UID, not writable by group or other.
    pub(crate) fn check_owned(&self, path: &Path, st: &Stat) -> Result<()> {
        if st.st_uid != self.euid {
            return Err(CacheError::Security(format!(
                "cache entry {} is owned by UID {}, not by the effective UID {}; kiln did not make it: remove it and try again",
                path.display(),
                st.st_uid,
                self.euid
            )));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(CacheError::Security(format!(
                "cache entry {} is writable by group or other (mode {:o}); kiln did not make it so: remove it and try again",
                path.display(),
                st.st_mode & 0o7777
            )));
        }
        Ok(())
    }

    /// Check kernel/initrd/root/meta of a slot: regular files, ours, not writable by
    /// others. `None` when one is missing (a tmp cleaner ate it: rebuild).
    pub(crate) fn check_slot_files(
        &self,
        slot: BorrowedFd<'_>,
        slot_path: &Path,
    ) -> Result<Option<[Stat; 3]>> {
        let mut out = Vec::with_capacity(3);
        for f in FILES.iter().chain([&META]) {
            let p = slot_path.join(f);
            let st = match lstat_at(slot, f) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(CacheError::io(&p, "lstat", e)),
            };
            let ft = file_type(&st);
            if ft != FileType::RegularFile {
                return Err(CacheError::Security(format!(
                    "cache entry {} is {}, not a regular file kiln made; remove {} and try again",
                    p.display(),
                    describe(ft),
                    slot_path.display()
                )));
            }
            self.check_owned(&p, &st)?;
            out.push(st);
        }
        out.truncate(3);
        Ok(out.try_into().ok())
    }
}
