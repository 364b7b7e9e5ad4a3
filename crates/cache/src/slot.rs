//! Slots: finding and checking one, building into a private directory, sealing and
//! publishing it, and the slot record.
//!
//! A build happens in `tmp-<key>-<pid>-<n>/` (0700, locked by its builder so gc can
//! tell it from debris). When the builder returns, the files are checked, made 0644,
//! the record `slot-meta` is written, the caller's pin is taken, and the directory
//! becomes `slot-<key>` by one rename (`RENAME_NOREPLACE`, or `RENAME_EXCHANGE` over
//! an older slot, with plain renames where the filesystem refuses those flags). A slot
//! is never modified after.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, RenameFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::cache::{FILES, META, Result, SLOT, TMP, TRASH, fault, next_seq};
use crate::fsx::{self, file_type, lstat_at, open_dir, still_named};
use crate::pin::{PinSource, Pinned};
use crate::proc::ProcessId;
use crate::security::{describe, is_loop_or_notdir};
use crate::{BuildError, BuildMeta, Cache, CacheError, Key};

pub(crate) enum Probe {
    Hit(Box<Pinned>),
    Missing,
    Broken,
}

/// kiln's record in a slot: `kiln-slot 1`, `key K`, `root_uuid U|-`, then optionally
/// `source S` and `built NANOS` (records without them, from older kiln versions, are
/// their own source).
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotMeta {
    pub(crate) root_uuid: Option<String>,
    /// What the slot was built from ([`crate::GetOptions::source`]).
    pub(crate) source: Option<Key>,
    /// When it was built, nanoseconds since the epoch (0: unknown).
    pub(crate) built: u64,
}

impl SlotMeta {
    pub(crate) fn to_text(&self, key: &Key) -> String {
        let mut t = format!(
            "kiln-slot 1\nkey {key}\nroot_uuid {}\n",
            self.root_uuid.as_deref().unwrap_or("-")
        );
        if let Some(s) = &self.source {
            t.push_str(&format!("source {s}\nbuilt {}\n", self.built));
        }
        t
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn read_meta(slot: BorrowedFd<'_>, key: &Key) -> io::Result<SlotMeta> {
    let mut f = fsx::open_file_ro(slot, META)?;
    let mut text = String::new();
    (&mut f).take(4096).read_to_string(&mut text)?;
    let bad = || io::Error::other(format!("{META} is not a kiln slot record"));
    let mut lines = text.lines();
    if lines.next() != Some("kiln-slot 1") {
        return Err(bad());
    }
    if lines.next() != Some(&format!("key {key}")) {
        return Err(bad());
    }
    let uuid = lines
        .next()
        .and_then(|l| l.strip_prefix("root_uuid "))
        .ok_or_else(bad)?;
    let root_uuid = match uuid {
        "-" => None,
        u if valid_uuid(u) => Some(u.to_owned()),
        _ => return Err(bad()),
    };
    let mut meta = SlotMeta {
        root_uuid,
        ..SlotMeta::default()
    };
    for line in lines {
        if let Some(s) = line.strip_prefix("source ") {
            meta.source = Some(Key::new(s).map_err(|_| bad())?);
        } else if let Some(n) = line.strip_prefix("built ") {
            meta.built = n.parse().map_err(|_| bad())?;
        }
    }
    Ok(meta)
}

fn valid_uuid(u: &str) -> bool {
    let parts: Vec<&str> = u.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && u.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cache {
    /// Find slot `key`, check it, and pin it while holding a shared lock on it (so
    /// neither GC nor a rebuild can remove it half-way through the three links).
    pub(crate) fn probe(&self, key: &Key, owner: ProcessId, mine: bool) -> Result<Probe> {
        let name = format!("{SLOT}{key}");
        let path = self.path.join(&name);
        for _ in 0..1000 {
            let fd = match open_dir(self.fd(), &name) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
                Err(e) if is_loop_or_notdir(&e) => {
                    let what = lstat_at(self.fd(), &name)
                        .map(|st| describe(file_type(&st)))
                        .unwrap_or("not a directory");
                    return Err(CacheError::Security(format!(
                        "cache slot {} is {what}, not a directory kiln made; remove it (rm {}) and try again",
                        path.display(),
                        path.display()
                    )));
                }
                Err(e) => return Err(CacheError::io(&path, "open", e)),
            };
            let slot = File::from(fd);
            slot.lock_shared()
                .map_err(|e| CacheError::io(&path, "lock", e))?;
            if !still_named(self.fd(), &name, slot.as_fd())
                .map_err(|e| CacheError::io(&path, "lstat", e))?
            {
                continue; // replaced or removed since we opened it
            }
            let st = rustix::fs::fstat(&slot).map_err(|e| CacheError::io(&path, "fstat", e))?;
            self.check_owned(&path, &st)?;
            let Some(stats) = self.check_slot_files(slot.as_fd(), &path)? else {
                tracing::info!(
                    "cache slot {} is incomplete (tmp cleaner?); rebuilding",
                    path.display()
                );
                return Ok(Probe::Broken);
            };
            let meta = match read_meta(slot.as_fd(), key) {
                Ok(m) => m,
                Err(e) => {
                    tracing::info!("cache slot {}: {e}; rebuilding", path.display());
                    return Ok(Probe::Broken);
                }
            };
            let pinned = self.pin_from(PinSource {
                slot: slot.as_fd(),
                key,
                owner,
                mine,
                stats: &stats,
                meta,
                built: false,
            })?;
            // Last use, for the LRU bound of gc (and against tmp cleaners).
            let now = Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            };
            let _ = rustix::fs::futimens(
                &slot,
                &Timestamps {
                    last_access: now,
                    last_modification: now,
                },
            );
            return Ok(Probe::Hit(Box::new(pinned)));
        }
        Err(CacheError::io(
            &path,
            "open",
            io::Error::other("slot kept being replaced"),
        ))
    }

    /// Make a private build directory `tmp-<key>-<pid>-<n>` (0700) and lock it: while
    /// the lock is held, gc knows its builder is alive.
    /// Its removal is registered with `kiln_outdir::cleanup`, so a SIGINT, SIGTERM or SIGHUP
    /// during the build removes it before the process exits.
    fn make_private(&self, key: &Key) -> Result<(String, File, kiln_outdir::cleanup::Guard)> {
        loop {
            let name = format!("{TMP}{key}-{}-{}", std::process::id(), next_seq());
            let made = kiln_outdir::cleanup::create(|| {
                let fd = fsx::make_dir(self.fd(), &name, 0o700)?;
                let (dir, n) = (self.dir.clone(), name.clone());
                Ok::<_, io::Error>((fd, move || fsx::remove_tree(dir.as_fd(), &n)))
            });
            let (fd, cleanup) = match made {
                Ok(made) => made,
                // NotFound: a racing gc took it for debris before we locked it.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(CacheError::io(self.path.join(&name), "mkdir", e)),
            };
            let f = File::from(fd);
            f.lock()
                .map_err(|e| CacheError::io(self.path.join(&name), "lock", e))?;
            // A racing gc may have taken it for debris between mkdir and lock.
            if still_named(self.fd(), &name, f.as_fd())
                .map_err(|e| CacheError::io(self.path.join(&name), "lstat", e))?
            {
                return Ok((name, f, cleanup));
            }
        }
    }

    pub(crate) fn build_locked<F, E>(
        &self,
        key: &Key,
        source: Option<&Key>,
        owner: ProcessId,
        mine: bool,
        build: F,
    ) -> Result<Pinned>
    where
        F: FnOnce(&Path) -> Result<BuildMeta, E>,
        E: Into<BuildError>,
    {
        let (tmp_name, tmp, cleanup) = self.make_private(key)?;
        let tmp_path = self.path.join(&tmp_name);
        tracing::info!("building appliance {key} in {}", tmp_path.display());
        let result = build(&tmp_path);
        fault("after-build");
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = fsx::remove_tree(self.fd(), &tmp_name);
                return Err(CacheError::Build {
                    key: key.to_string(),
                    source: e.into(),
                });
            }
        };
        let pinned = match self.seal(key, source, owner, mine, tmp.as_fd(), &tmp_path, meta) {
            Ok(p) => p,
            Err(e) => {
                let _ = fsx::remove_tree(self.fd(), &tmp_name);
                return Err(e);
            }
        };
        fault("before-publish");
        let replaced = match self.publish(key, &tmp_name) {
            Ok(r) => r,
            Err(e) => {
                let _ = fsx::remove_tree(self.fd(), pinned.pin_name());
                let _ = fsx::remove_tree(self.fd(), &tmp_name);
                return Err(e);
            }
        };
        fault("after-publish");
        // Published: `tmp_name` is gone or names an old slot that readers may still be
        // pinning from, which only gc (under its lock) may remove after a signal.
        drop(cleanup);
        // Let readers at the new slot before clearing away the old one.
        drop(tmp);
        if replaced {
            // After RENAME_EXCHANGE `tmp_name` names the old slot.
            self.discard(&tmp_name);
        }
        Ok(pinned)
    }

    /// Check what the builder wrote, fix modes, write the slot record and pin it.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &self,
        key: &Key,
        source: Option<&Key>,
        owner: ProcessId,
        mine: bool,
        tmp: BorrowedFd<'_>,
        tmp_path: &Path,
        meta: BuildMeta,
    ) -> Result<Pinned> {
        let bad = |msg: String| CacheError::BadBuild {
            key: key.to_string(),
            msg,
        };
        let mut stats = Vec::with_capacity(3);
        for f in FILES {
            let st = match lstat_at(tmp, f) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(bad(format!("the builder did not write {f}")));
                }
                Err(e) => return Err(CacheError::io(tmp_path.join(f), "lstat", e)),
            };
            if file_type(&st) != FileType::RegularFile || st.st_uid != self.euid {
                return Err(bad(format!(
                    "{f} is {} owned by UID {}, expected a regular file owned by {} (copy the kernel, do not symlink it)",
                    describe(file_type(&st)),
                    st.st_uid,
                    self.euid
                )));
            }
            let file = fsx::open_file_ro(tmp, f)
                .map_err(|e| CacheError::io(tmp_path.join(f), "open", e))?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))
                .map_err(|e| CacheError::io(tmp_path.join(f), "chmod", e))?;
            stats.push(
                rustix::fs::fstat(&file)
                    .map_err(|e| CacheError::io(tmp_path.join(f), "fstat", e))?,
            );
        }
        let stats: [Stat; 3] = stats
            .try_into()
            .map_err(|_| bad("internal: wrong number of files".into()))?;
        let root_uuid = meta.root_uuid;
        if let Some(u) = &root_uuid
            && !valid_uuid(u)
        {
            return Err(bad(format!(
                "root UUID {u:?} is not of the form 8-4-4-4-12 hex"
            )));
        }
        let record = SlotMeta {
            root_uuid,
            source: source.cloned(),
            built: now_nanos(),
        };
        let text = record.to_text(key);
        let mut f = fsx::create_file(tmp, META, 0o644)
            .map_err(|e| CacheError::io(tmp_path.join(META), "create", e))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .map_err(|e| CacheError::io(tmp_path.join(META), "write", e))?;
        drop(f);
        rustix::fs::fchmod(tmp, Mode::from_raw_mode(0o755))
            .map_err(|e| CacheError::io(tmp_path, "chmod", e))?;
        fault("before-pin");
        self.pin_from(PinSource {
            slot: tmp,
            key,
            owner,
            mine,
            stats: &stats,
            meta: record,
            built: true,
        })
    }

    /// Make the private directory the slot of `key` with one rename. If a slot is
    /// already there (forced rebuild, or a broken slot) swap them atomically with
    /// `RENAME_EXCHANGE` and delete the old one once no reader is pinning from it.
    /// Returns true when an old slot was swapped out to `tmp_name` (to be discarded).
    fn publish(&self, key: &Key, tmp_name: &str) -> Result<bool> {
        let slot_name = format!("{SLOT}{key}");
        let slot_path = self.path.join(&slot_name);
        let d = self.fd();
        match rustix::fs::renameat_with(d, tmp_name, d, &slot_name, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(false),
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {}
            Err(Errno::INVAL) => {
                // No RENAME_NOREPLACE here; we hold the build lock, and renaming a
                // directory over a non-empty one fails anyway.
                match rustix::fs::renameat(d, tmp_name, d, &slot_name) {
                    Ok(()) => return Ok(false),
                    Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {}
                    Err(e) => return Err(CacheError::io(&slot_path, "rename", e)),
                }
            }
            Err(e) => return Err(CacheError::io(&slot_path, "rename", e)),
        }
        match rustix::fs::renameat_with(d, tmp_name, d, &slot_name, RenameFlags::EXCHANGE) {
            Ok(()) => {
                fault("after-exchange");
                Ok(true)
            }
            Err(Errno::INVAL) => {
                // No RENAME_EXCHANGE (e.g. some overlayfs): move the old slot aside
                // under its exclusive lock, then rename ours in. Readers that miss it
                // in between queue on the build lock we hold.
                let trash = format!("{TRASH}{key}-{}-{}", std::process::id(), next_seq());
                let old =
                    open_dir(d, &slot_name).map_err(|e| CacheError::io(&slot_path, "open", e))?;
                let old = File::from(old);
                old.lock()
                    .map_err(|e| CacheError::io(&slot_path, "lock", e))?;
                rustix::fs::renameat(d, &slot_name, d, &trash)
                    .map_err(|e| CacheError::io(&slot_path, "rename", e))?;
                rustix::fs::renameat(d, tmp_name, d, &slot_name)
                    .map_err(|e| CacheError::io(&slot_path, "rename", e))?;
                let _ = fsx::remove_tree(d, &trash);
                Ok(false)
            }
            Err(e) => Err(CacheError::io(&slot_path, "rename", e)),
        }
    }

    /// Remove a directory no longer named as a slot, waiting for pinning readers.
    fn discard(&self, name: &str) {
        let Ok(fd) = open_dir(self.fd(), name) else {
            return;
        };
        let f = File::from(fd);
        if f.lock().is_ok()
            && still_named(self.fd(), name, f.as_fd()).unwrap_or(false)
            && let Err(e) = fsx::remove_tree(self.fd(), name)
        {
            tracing::warn!("cannot remove {}: {e}", self.path.join(name).display());
        }
    }
}
