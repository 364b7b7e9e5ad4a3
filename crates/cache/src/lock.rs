//! The build lock of a key: one RAII type, in the manner of cargo's `util/flock.rs`.
//!
//! `lock-<key>` is a regular file in the cache directory. Its holder has an exclusive
//! `flock(2)` on it and writes `PID START` into it just after locking, so a process
//! that has to wait can say whom it waits for: "waiting for PID N building KEY", to
//! `tracing` and to the callback given to [`Cache::on_wait`]. The kernel drops the lock
//! when its holder dies, however it dies; the record is cleared on release, so a later
//! waiter never names a builder that has finished.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustix::fs::FileType;

use crate::cache::{LOCK, Result};
use crate::fsx::{self, file_type, still_named};
use crate::proc::ProcessId;
use crate::security::{describe, is_loop_or_notdir};
use crate::{Cache, CacheError, Key};

/// Another process holds the build lock of [`Waiting::key`]; the caller waits for it.
/// Its `Display` is the line kiln prints: `waiting for PID N building KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The builder's PID, when it has recorded it (it does so just after locking).
    pub pid: Option<u32>,
    /// The key being built.
    pub key: Key,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "waiting for PID {pid} building {}", self.key),
            None => write!(f, "waiting for another process building {}", self.key),
        }
    }
}

/// The callback of [`Cache::on_wait`].
#[derive(Clone)]
pub(crate) struct OnWait(Arc<dyn Fn(&Waiting) + Send + Sync>);

impl OnWait {
    pub(crate) fn new(f: impl Fn(&Waiting) + Send + Sync + 'static) -> OnWait {
        OnWait(Arc::new(f))
    }
}

impl fmt::Debug for OnWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnWait(..)")
    }
}

/// The held build lock of one key; released (and its PID record cleared) on drop.
pub(crate) struct BuildLock {
    file: File,
    waited_for: Option<u32>,
}

impl BuildLock {
    /// Take the exclusive build lock of `key`. If someone holds it, say whom we wait
    /// for (tracing and the cache's callback) and block until it is ours.
    pub(crate) fn acquire(cache: &Cache, key: &Key) -> Result<BuildLock> {
        let name = format!("{LOCK}{key}");
        let path = cache.path.join(&name);
        let mut waited = None;
        loop {
            let f = match fsx::open_lock_file(cache.fd(), &name) {
                Ok(f) => f,
                Err(e) if is_loop_or_notdir(&e) => {
                    return Err(CacheError::Security(format!(
                        "cache lock {} is a symbolic link; remove it and try again",
                        path.display()
                    )));
                }
                Err(e) => return Err(CacheError::io(&path, "open", e)),
            };
            let st = rustix::fs::fstat(&f).map_err(|e| CacheError::io(&path, "fstat", e))?;
            if file_type(&st) != FileType::RegularFile {
                return Err(CacheError::Security(format!(
                    "cache lock {} is {}, not a regular file; remove it and try again",
                    path.display(),
                    describe(file_type(&st))
                )));
            }
            cache.check_owned(&path, &st)?;
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    // The holder writes its PID just after locking; give it a moment.
                    let mut holder = read_holder(&f);
                    for _ in 0..100 {
                        if holder.is_some() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        holder = read_holder(&f);
                    }
                    let waiting = Waiting {
                        pid: holder,
                        key: key.clone(),
                    };
                    tracing::info!("{waiting}");
                    if let Some(cb) = &cache.on_wait {
                        (cb.0)(&waiting);
                    }
                    waited = Some(holder.unwrap_or(0));
                    f.lock().map_err(|e| CacheError::io(&path, "lock", e))?;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(CacheError::io(&path, "lock", e));
                }
            }
            if !still_named(cache.fd(), &name, f.as_fd())
                .map_err(|e| CacheError::io(&path, "lstat", e))?
            {
                continue; // gc removed this lock file; take the new one
            }
            let me = ProcessId::current().map(|p| p.start).unwrap_or(0);
            let line = format!("{} {me}\n", std::process::id());
            let _ = f.set_len(0);
            let _ = f.write_all_at(line.as_bytes(), 0);
            return Ok(BuildLock {
                file: f,
                waited_for: waited,
            });
        }
    }

    /// The PID of the builder this lock was waited for (0 if it never said), if any.
    pub(crate) fn waited_for(&self) -> Option<u32> {
        self.waited_for
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The PID written into a lock file by its holder.
pub(crate) fn read_holder(f: &File) -> Option<u32> {
    let mut buf = [0u8; 64];
    let n = f.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_ascii_whitespace().next()?.parse().ok()
}

impl Cache {
    /// The PID building `key` right now (0 if it has not said yet), if anyone is.
    pub fn builder_of(&self, key: &Key) -> Option<u32> {
        let f = fsx::open_file_ro(self.fd(), &format!("{LOCK}{key}")).ok()?;
        match f.try_lock_shared() {
            Err(std::fs::TryLockError::WouldBlock) => read_holder(&f).or(Some(0)),
            _ => None,
        }
    }
}
