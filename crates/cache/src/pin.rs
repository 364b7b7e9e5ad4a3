//! Pins: one process's hard links to the three files of one slot.
//!
//! `pin-<pid>-<start>-<n>-<key>/{kernel,initrd,root}` names the owner by PID *and*
//! start time, so a reused PID does not keep a pin alive. The links are made from one
//! slot directory handle while holding a shared lock on it, and each link is checked
//! to be the file that was verified, so a pin's three files come from one build.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Stat};
use rustix::io::Errno;

use crate::cache::{FILES, PIN, Result, fault, next_seq};
use crate::fsx::{self, file_type, ident, lstat_at};
use crate::proc::ProcessId;
use crate::slot::SlotMeta;
use crate::{Cache, CacheError, Key};

/// A kernel, initrd and root of one build, hard-linked under names private to one
/// process (`<cache>/pin-<pid>-<start>-<n>-<key>/{kernel,initrd,root}`). The files stay
/// exactly as they are while the pin exists, whatever other processes build or
/// collect meanwhile.
///
/// Dropping the handle removes the pin if it belongs to this process; pins made for
/// another process (`pin_to`) stay until that process has exited and a gc runs.
#[derive(Debug)]
pub struct Pinned {
    kernel: PathBuf,
    initrd: PathBuf,
    root: PathBuf,
    root_uuid: Option<String>,
    key: Key,
    built: bool,
    pub(crate) waited_for: Option<u32>,
    owner: ProcessId,
    cache: Cache,
    pin_name: String,
    remove_on_drop: bool,
    /// Removes the pin if a signal ends its (this) process first.
    cleanup: Option<kiln_outdir::cleanup::Guard>,
}

impl Pinned {
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The root filesystem UUID recorded when the slot was built.
    pub fn root_uuid(&self) -> Option<&str> {
        self.root_uuid.as_deref()
    }
    pub fn key(&self) -> &Key {
        &self.key
    }
    /// True if this call built the appliance (a miss), false for a cache hit.
    pub fn built(&self) -> bool {
        self.built
    }
    /// The PID of the builder this call waited for, if it had to wait (0 if unknown).
    pub fn waited_for(&self) -> Option<u32> {
        self.waited_for
    }
    /// The process the pin belongs to.
    pub fn owner(&self) -> ProcessId {
        self.owner
    }
    /// The pin directory's name inside the cache directory.
    pub fn pin_name(&self) -> &str {
        &self.pin_name
    }
    /// Leave the pin in place when the handle is dropped; gc removes it after the owner
    /// process has exited.
    pub fn keep(mut self) {
        self.remove_on_drop = false;
        self.cleanup = None;
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Only the owner removes it: a forked child dropping its copy must not.
        if self.remove_on_drop && std::process::id() == self.owner.pid {
            let _ = fsx::remove_tree(self.cache.fd(), &self.pin_name);
            // A newer build of the same source may be waiting for this pin to go.
            self.cache.remove_if_superseded(&self.key);
        }
    }
}

/// Where a pin comes from and for whom.
pub(crate) struct PinSource<'a> {
    /// The slot (or the sealed build directory), locked by the caller.
    pub(crate) slot: BorrowedFd<'a>,
    pub(crate) key: &'a Key,
    pub(crate) owner: ProcessId,
    /// The owner is this process: remove the pin on drop.
    pub(crate) mine: bool,
    /// The stats of the slot's three files, checked under the caller's lock.
    pub(crate) stats: &'a [Stat; 3],
    pub(crate) meta: SlotMeta,
    pub(crate) built: bool,
}

impl Cache {
    /// Make a pin directory `pin-<pid>-<start>-<n>-<key>` holding hard links to the
    /// three files of `src.slot`.
    pub(crate) fn pin_from(&self, src: PinSource<'_>) -> Result<Pinned> {
        let PinSource {
            slot,
            key,
            owner,
            mine,
            stats,
            meta,
            built,
        } = src;
        let mut tries = 0;
        let (pin_name, pin_fd, cleanup) = loop {
            let name = format!("{PIN}{}-{}-{}-{key}", owner.pid, owner.start, next_seq());
            tries += 1;
            let made = kiln_outdir::cleanup::create(|| {
                let fd = fsx::make_dir(self.fd(), &name, 0o755)?;
                // Only this process's own pins go when it is interrupted.
                let (dir, n) = (self.dir.clone(), name.clone());
                let cleanup = move || match mine {
                    true => fsx::remove_tree(dir.as_fd(), &n),
                    false => Ok(()),
                };
                Ok::<_, io::Error>((fd, cleanup))
            });
            match made {
                Ok((fd, guard)) => break (name, fd, guard),
                // NotFound: gc removed it at once, so the owner has just exited.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10_000 => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 100 => continue,
                Err(e) => return Err(CacheError::io(self.path.join(&name), "mkdir", e)),
            }
        };
        let pin_path = self.path.join(&pin_name);
        let res = (|| {
            for (i, f) in FILES.iter().enumerate() {
                rustix::fs::linkat(slot, *f, &pin_fd, *f, AtFlags::empty())
                    .map_err(|e| {
                        let op = match e {
                            Errno::PERM | Errno::OPNOTSUPP | Errno::MLINK => {
                                "hard link (the cache needs a filesystem with hard links: set --cachedir or LIBGUESTFS_CACHEDIR)"
                            }
                            _ => "hard link",
                        };
                        CacheError::io(pin_path.join(f), op, e)
                    })?;
                if i == 0 {
                    fault("pin-partial");
                }
                let st = lstat_at(pin_fd.as_fd(), f)
                    .map_err(|e| CacheError::io(pin_path.join(f), "lstat", e))?;
                if ident(&st) != ident(&stats[i]) || file_type(&st) != FileType::RegularFile {
                    return Err(CacheError::Security(format!(
                        "cache pin {} changed while kiln made it; remove {} and try again",
                        pin_path.join(f).display(),
                        pin_path.display()
                    )));
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fsx::remove_tree(self.fd(), &pin_name);
            return Err(e);
        }
        Ok(Pinned {
            kernel: pin_path.join("kernel"),
            initrd: pin_path.join("initrd"),
            root: pin_path.join("root"),
            root_uuid: meta.root_uuid,
            key: key.clone(),
            built,
            waited_for: None,
            owner,
            cache: self.clone(),
            pin_name,
            remove_on_drop: mine,
            cleanup: mine.then_some(cleanup),
        })
    }
}
