//! The per-user cache directory, slots, build locks and pins.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::fsx::{self, file_type, ident, lstat_at, open_dir, still_named};
use crate::gc::GcPolicy;
use crate::proc::ProcessId;
use crate::{BuildError, CacheError, Key};

type Result<T, E = CacheError> = std::result::Result<T, E>;

/// The three files of an appliance, in every slot and every pin.
pub(crate) const FILES: [&str; 3] = ["kernel", "initrd", "root"];
/// kiln's own record in each slot (key and root UUID).
pub(crate) const META: &str = "slot-meta";
pub(crate) const SLOT: &str = "slot-";
pub(crate) const LOCK: &str = "lock-";
pub(crate) const TMP: &str = "tmp-";
pub(crate) const TRASH: &str = "trash-";
pub(crate) const PIN: &str = "pin-";

/// Makes names of private directories unique within this process; `EEXIST` moves on.
static SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// What a build closure reports about the appliance it wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildMeta {
    /// The root filesystem UUID (`8-4-4-4-12` lowercase hex), which libguestfs puts on
    /// the kernel command line. The builder knows it; the cache only records it (it
    /// never parses `root`). `None` records that the root has no UUID.
    pub root_uuid: Option<String>,
}

/// How [`Cache::get_or_build`] should behave.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Pin the files to this process instead of the caller (`kiln locate` pins to its
    /// parent, the shell that will use the paths). Such pins outlive the returned
    /// handle; `kiln gc` removes them once that process has exited.
    pub pin_to: Option<u32>,
    /// Build even if the slot exists, then replace it atomically (readers that pinned
    /// the old build keep it).
    pub force_rebuild: bool,
    /// Run a garbage collection with this policy after pinning (cheap: one directory
    /// listing). `None` skips it.
    pub gc: Option<GcPolicy>,
}

impl Default for GetOptions {
    fn default() -> Self {
        GetOptions {
            pin_to: None,
            force_rebuild: false,
            gc: Some(GcPolicy::default()),
        }
    }
}

/// The cache root: `LIBGUESTFS_CACHEDIR`, else `TMPDIR`, else `/var/tmp` (empty values
/// are ignored, as libguestfs does).
pub fn default_root() -> PathBuf {
    for var in ["LIBGUESTFS_CACHEDIR", "TMPDIR"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    PathBuf::from("/var/tmp")
}

/// An opened, checked per-user cache directory (`<root>/.guestfs-<euid>`).
///
/// All work happens relative to the directory handle taken after the security checks,
/// so renaming or replacing the path afterwards cannot redirect kiln elsewhere.
#[derive(Debug, Clone)]
pub struct Cache {
    pub(crate) dir: Arc<OwnedFd>,
    pub(crate) path: PathBuf,
    pub(crate) euid: u32,
}

/// Kill this process with SIGKILL when `KILN_CACHE_CRASH_AT` names `point`: fault
/// injection for the crash tests (a real crash at exactly that step).
pub(crate) fn fault(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("KILN_CACHE_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

fn describe(ft: FileType) -> &'static str {
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

impl Cache {
    /// Open the cache under [`default_root`].
    pub fn open_default() -> Result<Cache> {
        Cache::open(&default_root())
    }

    /// Open (creating if needed) `<root>/.guestfs-<euid>` and check that it is a real
    /// directory owned by the effective UID and not writable by group or other.
    pub fn open(root: &Path) -> Result<Cache> {
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
        Ok(Cache {
            dir: Arc::new(fd),
            path,
            euid,
        })
    }

    /// The per-user directory, `<root>/.guestfs-<euid>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    fn owner(&self, pin_to: Option<u32>) -> Result<(ProcessId, bool)> {
        let me = std::process::id();
        let pid = pin_to.unwrap_or(me);
        let id = ProcessId::of(pid).ok_or(CacheError::NoProcess(pid))?;
        Ok((id, pid == me))
    }

    /// The appliance for `key` if it is in the cache, pinned; `None` if it is not.
    pub fn lookup(&self, key: &Key, pin_to: Option<u32>) -> Result<Option<Pinned>> {
        let (owner, mine) = self.owner(pin_to)?;
        match self.probe(key, owner, mine)? {
            Probe::Hit(p) => Ok(Some(p)),
            Probe::Missing | Probe::Broken => Ok(None),
        }
    }

    /// The appliance for `key`, built by `build` if it is not cached yet, pinned for the
    /// caller (or `opts.pin_to`).
    ///
    /// `build` gets a private, empty directory inside the cache and must write
    /// `kernel`, `initrd` and `root` there as regular files. Concurrent callers with the
    /// same key cause one build; the others wait for it ("waiting for PID N building
    /// KEY" is logged) and then use it. If `build` fails or the process dies, nothing
    /// becomes visible and the next call starts again.
    pub fn get_or_build<F, E>(&self, key: &Key, opts: &GetOptions, build: F) -> Result<Pinned>
    where
        F: FnOnce(&Path) -> Result<BuildMeta, E>,
        E: Into<BuildError>,
    {
        let (owner, mine) = self.owner(opts.pin_to)?;
        let pinned = self.get_or_build_inner(key, opts.force_rebuild, owner, mine, build)?;
        if let Some(policy) = &opts.gc
            && let Err(e) = self.gc(policy)
        {
            tracing::debug!("opportunistic gc of {}: {e}", self.path.display());
        }
        Ok(pinned)
    }

    fn get_or_build_inner<F, E>(
        &self,
        key: &Key,
        force: bool,
        owner: ProcessId,
        mine: bool,
        build: F,
    ) -> Result<Pinned>
    where
        F: FnOnce(&Path) -> Result<BuildMeta, E>,
        E: Into<BuildError>,
    {
        if !force && let Probe::Hit(p) = self.probe(key, owner, mine)? {
            return Ok(p);
        }
        let (lock, waited_for) = self.lock_build(key)?;
        if !force {
            // Whoever we waited for has probably built it.
            if let Probe::Hit(mut p) = self.probe(key, owner, mine)? {
                p.waited_for = waited_for;
                return Ok(p);
            }
        }
        let mut p = self.build_locked(key, owner, mine, build)?;
        p.waited_for = waited_for;
        drop(lock);
        Ok(p)
    }

    /// Find slot `key`, check it, and pin it while holding a shared lock on it (so
    /// neither GC nor a rebuild can remove it half-way through the three links).
    fn probe(&self, key: &Key, owner: ProcessId, mine: bool) -> Result<Probe> {
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
            let pinned = self.pin_from(slot.as_fd(), key, owner, mine, &stats, meta, false)?;
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
            return Ok(Probe::Hit(pinned));
        }
        Err(CacheError::io(
            &path,
            "open",
            io::Error::other("slot kept being replaced"),
        ))
    }

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
    fn check_slot_files(
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

    /// Make a pin directory `pin-<pid>-<start>-<n>-<key>` holding hard links to the
    /// three files of `slot` (whose stats were checked under the lock we hold).
    #[allow(clippy::too_many_arguments)]
    fn pin_from(
        &self,
        slot: BorrowedFd<'_>,
        key: &Key,
        owner: ProcessId,
        mine: bool,
        stats: &[Stat; 3],
        meta: SlotMeta,
        built: bool,
    ) -> Result<Pinned> {
        let mut tries = 0;
        let (pin_name, pin_fd) = loop {
            let name = format!("{PIN}{}-{}-{}-{key}", owner.pid, owner.start, next_seq());
            tries += 1;
            match fsx::make_dir(self.fd(), &name, 0o755) {
                Ok(fd) => break (name, fd),
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
            dir: self.dir.clone(),
            pin_name,
            remove_on_drop: mine,
        })
    }

    /// Take the exclusive build lock of `key`; if someone holds it, say whom we wait
    /// for and wait. Returns the lock and the PID waited for.
    fn lock_build(&self, key: &Key) -> Result<(BuildLock, Option<u32>)> {
        let name = format!("{LOCK}{key}");
        let path = self.path.join(&name);
        let mut waited = None;
        loop {
            let f = match fsx::open_lock_file(self.fd(), &name) {
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
            self.check_owned(&path, &st)?;
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
                    match holder {
                        Some(pid) => tracing::info!("waiting for PID {pid} building {key}"),
                        None => tracing::info!("waiting for another process building {key}"),
                    }
                    waited = Some(holder.unwrap_or(0));
                    f.lock().map_err(|e| CacheError::io(&path, "lock", e))?;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(CacheError::io(&path, "lock", e));
                }
            }
            if !still_named(self.fd(), &name, f.as_fd())
                .map_err(|e| CacheError::io(&path, "lstat", e))?
            {
                continue; // gc removed this lock file; take the new one
            }
            let me = ProcessId::current().map(|p| p.start).unwrap_or(0);
            let line = format!("{} {me}\n", std::process::id());
            let _ = f.set_len(0);
            let _ = f.write_all_at(line.as_bytes(), 0);
            return Ok((BuildLock(f), waited));
        }
    }

    /// Make a private build directory `tmp-<key>-<pid>-<n>` (0700) and lock it: while
    /// the lock is held, gc knows its builder is alive.
    fn make_private(&self, key: &Key) -> Result<(String, File)> {
        loop {
            let name = format!("{TMP}{key}-{}-{}", std::process::id(), next_seq());
            let fd = match fsx::make_dir(self.fd(), &name, 0o700) {
                Ok(fd) => fd,
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
                return Ok((name, f));
            }
        }
    }

    fn build_locked<F, E>(
        &self,
        key: &Key,
        owner: ProcessId,
        mine: bool,
        build: F,
    ) -> Result<Pinned>
    where
        F: FnOnce(&Path) -> Result<BuildMeta, E>,
        E: Into<BuildError>,
    {
        let (tmp_name, tmp) = self.make_private(key)?;
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
        let pinned = match self.seal(key, owner, mine, tmp.as_fd(), &tmp_path, meta) {
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
        // Let readers at the new slot before clearing away the old one.
        drop(tmp);
        if replaced {
            // After RENAME_EXCHANGE `tmp_name` names the old slot.
            self.discard(&tmp_name);
        }
        Ok(pinned)
    }

    /// Check what the builder wrote, fix modes, write the slot record and pin it.
    fn seal(
        &self,
        key: &Key,
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
        let record = SlotMeta { root_uuid };
        let text = record.to_text(key);
        let mut f = fsx::create_file(tmp, META, 0o644)
            .map_err(|e| CacheError::io(tmp_path.join(META), "create", e))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .map_err(|e| CacheError::io(tmp_path.join(META), "write", e))?;
        drop(f);
        rustix::fs::fchmod(tmp, Mode::from_raw_mode(0o755))
            .map_err(|e| CacheError::io(tmp_path, "chmod", e))?;
        fault("before-pin");
        self.pin_from(tmp, key, owner, mine, &stats, record, true)
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

pub(crate) fn is_loop_or_notdir(e: &io::Error) -> bool {
    let c = e.raw_os_error();
    c == Some(Errno::LOOP.raw_os_error()) || c == Some(Errno::NOTDIR.raw_os_error())
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

/// The PID written into a lock file by its holder.
pub(crate) fn read_holder(f: &File) -> Option<u32> {
    let mut buf = [0u8; 64];
    let n = f.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// The held build lock; its PID record is cleared on release so a later waiter never
/// names a builder that has finished.
struct BuildLock(File);

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = self.0.set_len(0);
    }
}

enum Probe {
    Hit(Pinned),
    Missing,
    Broken,
}

/// kiln's record in a slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotMeta {
    pub(crate) root_uuid: Option<String>,
}

impl SlotMeta {
    fn to_text(&self, key: &Key) -> String {
        format!(
            "kiln-slot 1\nkey {key}\nroot_uuid {}\n",
            self.root_uuid.as_deref().unwrap_or("-")
        )
    }
}

fn read_meta(slot: BorrowedFd<'_>, key: &Key) -> io::Result<SlotMeta> {
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
    Ok(SlotMeta { root_uuid })
}

fn valid_uuid(u: &str) -> bool {
    let parts: Vec<&str> = u.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && u.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

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
    waited_for: Option<u32>,
    owner: ProcessId,
    dir: Arc<OwnedFd>,
    pin_name: String,
    remove_on_drop: bool,
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
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Only the owner removes it: a forked child dropping its copy must not.
        if self.remove_on_drop && std::process::id() == self.owner.pid {
            let _ = fsx::remove_tree(self.dir.as_fd(), &self.pin_name);
        }
    }
}
