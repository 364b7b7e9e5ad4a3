//! Saved VM start states of a slot (`kiln run`'s warm start): `state-<key>-<shape>`
//! files next to `slot-<key>`, one per VM shape (`tcg-512m-1c`: accelerator, memory,
//! CPUs). What is inside is the caller's business (kiln-boot's header and qemu's
//! migration stream); this module owns where they live, who may write one, and that
//! none is ever seen half-written.
//!
//! Invariants:
//! - A state appears by one rename of a complete file, written privately
//!   (mode 0600; first as an unnamed `O_TMPFILE`, so a writer killed by SIGKILL leaves
//!   nothing; where the file system has no `O_TMPFILE`, as a `tmp-` file locked by its
//!   writer, which gc removes once the lock is free).
//! - One writer per state at a time: `lock-state-<key>-<shape>` is taken without
//!   waiting; a run that does not get it boots without saving (concurrent first runs
//!   save one state).
//! - Opening goes through the checked cache directory handle with `O_NOFOLLOW`; a
//!   state that is not a regular file of the effective UID, or that group or other can
//!   write, is refused (`security:`), never read.
//! - A reader keeps its open descriptor: a gc or a replacing writer that unlinks the
//!   name cannot change what a running VM reads (this is the pin of a state).
//! - gc removes a slot's states with the slot, and any state whose slot is gone.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::cache::Result;
use crate::cache::{Cache, LOCK, TMP, next_seq};
use crate::error::CacheError;
use crate::fsx::{self, file_type};
use crate::slot_key::Key;

pub(crate) const STATE: &str = "state-";

/// The saved start states of one slot.
#[derive(Debug, Clone)]
pub struct States {
    cache: Cache,
    key: Key,
}

/// A state being written: a private file, published by [`StateWriter::publish`],
/// gone without a trace when dropped unpublished. What is written must carry its own
/// checksum (the file is not synced).
#[derive(Debug)]
pub struct StateWriter {
    cache: Cache,
    key: Key,
    file: File,
    name: String,
    /// `Some` when the file already has a `tmp-` name (no `O_TMPFILE` here).
    tmp: Option<String>,
    _lock: File,
}

/// Is `shape` a name kiln makes (`[a-z0-9]` words joined by `-`)?
fn valid_shape(shape: &str) -> bool {
    !shape.is_empty()
        && shape.len() <= 64
        && shape
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The key of a `state-<key>-<shape>` name.
pub(crate) fn state_key(name: &str) -> Option<Key> {
    let rest = name.strip_prefix(STATE)?;
    Key::new(rest.split('-').next()?).ok()
}

/// The key of a `lock-state-<key>-<shape>` name.
pub(crate) fn state_lock_key(name: &str) -> Option<Key> {
    state_key(name.strip_prefix(LOCK)?)
}

impl Cache {
    /// The saved start states of the slot of `key`.
    pub fn states(&self, key: &Key) -> States {
        States {
            cache: self.clone(),
            key: key.clone(),
        }
    }

    /// Remove every state of `key` (its slot is gone). Returns the bytes freed.
    pub(crate) fn remove_states(&self, names: &[String], key: &Key) -> u64 {
        let mut freed = 0;
        for n in names {
            if state_key(n).as_ref() == Some(key) {
                match fsx::remove_tree_freeing(self.fd(), n) {
                    Ok(f) => freed += f,
                    Err(e) => tracing::debug!("gc: {}: {e}", self.path.join(n).display()),
                }
            }
        }
        freed
    }

    /// The states among `names`: (key, allocated bytes) each.
    pub(crate) fn state_sizes(&self, names: &[String]) -> Vec<(Key, u64)> {
        names
            .iter()
            .filter_map(|n| {
                let key = state_key(n)?;
                let st = fsx::lstat_at(self.fd(), n).ok()?;
                (file_type(&st) == FileType::RegularFile)
                    .then_some((key, (st.st_blocks as u64).saturating_mul(512)))
            })
            .collect()
    }
}

impl States {
    fn name(&self, shape: &str) -> Result<String> {
        if !valid_shape(shape) {
            return Err(CacheError::io(
                self.cache.path.join(format!("{STATE}{}-{shape}", self.key)),
                "name a state",
                io::Error::new(io::ErrorKind::InvalidInput, "not a state shape kiln makes"),
            ));
        }
        Ok(format!("{STATE}{}-{shape}", self.key))
    }

    /// Where the state of `shape` is (for messages).
    pub fn path(&self, shape: &str) -> PathBuf {
        self.cache.path.join(format!("{STATE}{}-{shape}", self.key))
    }

    /// The saved state of `shape`, opened for reading; `None` when there is none.
    pub fn open(&self, shape: &str) -> Result<Option<File>> {
        let name = self.name(shape)?;
        let path = self.cache.path.join(&name);
        let f = match fsx::open_file_ro(self.cache.fd(), &name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if crate::security::is_loop_or_notdir(&e) => {
                return Err(CacheError::Security(format!(
                    "saved state {} is a symbolic link; kiln did not make it: remove it and try again",
                    path.display()
                )));
            }
            Err(e) => return Err(CacheError::io(path, "open", e)),
        };
        let st = rustix::fs::fstat(&f).map_err(|e| CacheError::io(&path, "stat", e))?;
        if file_type(&st) != FileType::RegularFile {
            return Err(CacheError::Security(format!(
                "saved state {} is a {}, not a file; kiln did not make it: remove it and try again",
                path.display(),
                crate::security::describe(file_type(&st))
            )));
        }
        self.cache.check_owned(&path, &st)?;
        // Opened with O_NONBLOCK (a planted FIFO must not hang the open); reads of a
        // regular file ignore it, and qemu inherits this descriptor.
        let fl = rustix::fs::fcntl_getfl(&f).map_err(|e| CacheError::io(&path, "fcntl", e))?;
        rustix::fs::fcntl_setfl(&f, fl - OFlags::NONBLOCK)
            .map_err(|e| CacheError::io(&path, "fcntl", e))?;
        Ok(Some(f))
    }

    /// Start writing the state of `shape`: `None` when another process is writing it
    /// right now (boot without saving; it will be there for the next run).
    pub fn begin_save(&self, shape: &str) -> Result<Option<StateWriter>> {
        let name = self.name(shape)?;
        let lock_name = format!("{LOCK}{name}");
        let lock_path = self.cache.path.join(&lock_name);
        let lock = fsx::open_lock_file(self.cache.fd(), &lock_name)
            .map_err(|e| CacheError::io(&lock_path, "open", e))?;
        let st = rustix::fs::fstat(&lock).map_err(|e| CacheError::io(&lock_path, "stat", e))?;
        if file_type(&st) != FileType::RegularFile {
            return Err(CacheError::Security(format!(
                "lock file {} is a {}; kiln did not make it: remove it and try again",
                lock_path.display(),
                crate::security::describe(file_type(&st))
            )));
        }
        self.cache.check_owned(&lock_path, &st)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(CacheError::io(lock_path, "lock", e));
            }
        }
        let dir_path = self.cache.path.clone();
        let (file, tmp) = match rustix::fs::openat(
            self.cache.fd(),
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => (File::from(fd), None),
            // No O_TMPFILE on this file system: a named private file, locked, so gc
            // leaves it alone while this writer lives.
            Err(rustix::io::Errno::OPNOTSUPP)
            | Err(rustix::io::Errno::ISDIR)
            | Err(rustix::io::Errno::INVAL) => {
                let tmp = format!("{TMP}{}-{}-{}", self.key, std::process::id(), next_seq());
                // Write-only is enough: the writer hashes what it writes, never reads.
                let f = fsx::create_file(self.cache.fd(), &tmp, 0o600)
                    .map_err(|e| CacheError::io(dir_path.join(&tmp), "create", e))?;
                f.try_lock().map_err(|e| {
                    CacheError::io(dir_path.join(&tmp), "lock", io::Error::other(e))
                })?;
                (f, Some(tmp))
            }
            Err(e) => return Err(CacheError::io(dir_path, "create a private file in", e)),
        };
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))
            .map_err(|e| CacheError::io(&dir_path, "chmod", e))?;
        Ok(Some(StateWriter {
            cache: self.cache.clone(),
            key: self.key.clone(),
            file,
            name,
            tmp,
            _lock: lock,
        }))
    }
}

impl StateWriter {
    /// The private file to write the state into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The state's path once published (for messages).
    pub fn path(&self) -> PathBuf {
        self.cache.path.join(&self.name)
    }

    /// Give the file its name, replacing an older state of the same shape (a reader of
    /// that one keeps reading it). The file is not synced first: a state carries its
    /// own checksum, which its reader verifies before use, so one torn by a crash of
    /// the machine is refused and replaced, and the run that saved it does not wait for
    /// the disk.
    pub fn publish(mut self) -> Result<()> {
        let path = self.path();
        crate::cache::fault("state-before-publish");
        let tmp = match self.tmp.take() {
            Some(t) => t,
            None => {
                let t = format!("{TMP}{}-{}-{}", self.key, std::process::id(), next_seq());
                link_tmpfile(self.file.as_fd(), self.cache.fd(), &t)
                    .map_err(|e| CacheError::io(self.cache.path.join(&t), "link", e))?;
                t
            }
        };
        let res = rustix::fs::renameat(self.cache.fd(), &tmp, self.cache.fd(), &self.name);
        if let Err(e) = res {
            let _ = rustix::fs::unlinkat(self.cache.fd(), &tmp, AtFlags::empty());
            return Err(CacheError::io(path, "rename", e));
        }
        Ok(())
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        if let Some(t) = &self.tmp {
            let _ = rustix::fs::unlinkat(self.cache.fd(), t.as_str(), AtFlags::empty());
        }
    }
}

/// Give the unnamed `O_TMPFILE` file `f` the name `name` in `dir`. `AT_EMPTY_PATH`
/// needs CAP_DAC_READ_SEARCH; the `/proc/self/fd` link works for every user.
fn link_tmpfile(f: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let p = format!("/proc/self/fd/{}", f.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        p.as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};

    fn cache() -> (tempfile::TempDir, Cache) {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        (d, c)
    }

    fn names(c: &Cache) -> Vec<String> {
        let mut v = fsx::list(c.fd()).unwrap();
        v.sort();
        v
    }

    #[test]
    fn a_state_appears_whole_and_private() {
        let (_d, c) = cache();
        let key = Key::new("0123456789abcdef").unwrap();
        let s = c.states(&key);
        assert!(s.open("tcg-512m-1c").unwrap().is_none());
        let mut w = s.begin_save("tcg-512m-1c").unwrap().unwrap();
        // A second writer of the same state does not get to write.
        assert!(s.begin_save("tcg-512m-1c").unwrap().is_none());
        w.file().write_all(b"state bytes").unwrap();
        w.file.flush().unwrap();
        // Nothing named yet but the lock.
        assert_eq!(names(&c), ["lock-state-0123456789abcdef-tcg-512m-1c"]);
        w.publish().unwrap();
        let mut f = s.open("tcg-512m-1c").unwrap().unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "state bytes");
        let st = rustix::fs::fstat(&f).unwrap();
        assert_eq!(st.st_mode & 0o777, 0o600);
        // The lock is free again: a later run may replace the state.
        assert!(s.begin_save("tcg-512m-1c").unwrap().is_some());
    }

    #[test]
    fn an_unpublished_state_leaves_nothing() {
        let (_d, c) = cache();
        let key = Key::new("0123456789abcdef").unwrap();
        let s = c.states(&key);
        let w = s.begin_save("kvm-512m-2c").unwrap().unwrap();
        w.file().write_all(&[7u8; 4096]).unwrap();
        drop(w);
        assert_eq!(names(&c), ["lock-state-0123456789abcdef-kvm-512m-2c"]);
        assert!(s.open("kvm-512m-2c").unwrap().is_none());
    }

    #[test]
    fn links_and_foreign_shapes_are_refused() {
        let (_d, c) = cache();
        let key = Key::new("0123456789abcdef").unwrap();
        let s = c.states(&key);
        std::os::unix::fs::symlink("/etc/passwd", c.path().join(format!("{STATE}{key}-x")))
            .unwrap();
        let e = s.open("x").unwrap_err();
        assert!(e.is_security(), "{e}");
        assert!(s.open("../x").is_err());
        assert!(s.begin_save("A/B").is_err());
    }

    #[test]
    fn names_parse() {
        let k = state_key("state-0123456789abcdef-tcg-512m-1c").unwrap();
        assert_eq!(k.as_str(), "0123456789abcdef");
        assert!(state_key("slot-0123456789abcdef").is_none());
        assert_eq!(
            state_lock_key("lock-state-0123456789abcdef-tcg-1m-1c")
                .unwrap()
                .as_str(),
            "0123456789abcdef"
        );
    }
}
