//! The per-user cache directory and its front door: [`Cache::open`],
//! [`Cache::lookup`] and [`Cache::get_or_build`].
//!
//! The parts live beside this module: the security checks of the directory and its
//! entries (`security`), the build lock (`lock`), slots and their publication (`slot`),
//! pins (`pin`) and garbage collection (`gc`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gc::GcPolicy;
use crate::lock::{BuildLock, OnWait, Waiting};
use crate::pin::Pinned;
use crate::proc::ProcessId;
use crate::slot::Probe;
use crate::{BuildError, CacheError, Key};

pub(crate) type Result<T, E = CacheError> = std::result::Result<T, E>;

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
    /// What the appliance is built from, as opposed to its content: for kiln, the
    /// supermin.d, the options and the package database's root, while the key also
    /// covers the packages' state. A newer build of the same source supersedes the
    /// older slots, which go as soon as no pin holds them; gc's `keep` counts sources.
    /// `None`: the slot is a source of its own.
    pub source: Option<Key>,
}

impl Default for GetOptions {
    fn default() -> Self {
        GetOptions {
            pin_to: None,
            force_rebuild: false,
            gc: Some(GcPolicy::default()),
            source: None,
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
    pub(crate) on_wait: Option<OnWait>,
}

/// Kill this process with SIGKILL when `KILN_CACHE_CRASH_AT` names `point`: fault
/// injection for the crash tests (a real crash at exactly that step). Only in builds
/// with the `test-hooks` feature, which the tests enable; a shipped kiln has none.
#[cfg(feature = "test-hooks")]
pub(crate) fn fault(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("KILN_CACHE_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Without the `test-hooks` feature the crash points do nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn fault(_point: &str) {}

impl Cache {
    /// Open the cache under [`default_root`].
    pub fn open_default() -> Result<Cache> {
        Cache::open(&default_root())
    }

    /// Open (creating if needed) `<root>/.guestfs-<euid>` and check that it is a real
    /// directory owned by the effective UID and not writable by group or other.
    pub fn open(root: &Path) -> Result<Cache> {
        let (fd, path, euid) = crate::security::open_checked(root)?;
        Ok(Cache {
            dir: Arc::new(fd),
            path,
            euid,
            on_wait: None,
        })
    }

    /// Call `f` whenever this cache waits for another process building the same key,
    /// before it blocks ("waiting for PID N building KEY"; see [`Waiting`]). The same
    /// line also goes to `tracing` at level info.
    pub fn on_wait(mut self, f: impl Fn(&Waiting) + Send + Sync + 'static) -> Cache {
        self.on_wait = Some(OnWait::new(f));
        self
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
            Probe::Hit(p) => Ok(Some(*p)),
            Probe::Missing | Probe::Broken => Ok(None),
        }
    }

    /// The appliance for `key`, built by `build` if it is not cached yet, pinned for the
    /// caller (or `opts.pin_to`).
    ///
    /// `build` gets a private, empty directory inside the cache and must write
    /// `kernel`, `initrd` and `root` there as regular files. Concurrent callers with the
    /// same key cause one build; the others wait for it ("waiting for PID N building
    /// KEY" is logged and passed to [`Cache::on_wait`]'s callback) and then use it. If
    /// `build` fails or the process dies, nothing becomes visible and the next call
    /// starts again.
    pub fn get_or_build<F, E>(&self, key: &Key, opts: &GetOptions, build: F) -> Result<Pinned>
    where
        F: FnOnce(&Path) -> Result<BuildMeta, E>,
        E: Into<BuildError>,
    {
        let (owner, mine) = self.owner(opts.pin_to)?;
        let pinned = self.get_or_build_inner(key, opts, owner, mine, build)?;
        if pinned.built()
            && let Some(source) = &opts.source
        {
            self.remove_superseded(source, key);
        }
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
        opts: &GetOptions,
        owner: ProcessId,
        mine: bool,
        build: F,
    ) -> Result<Pinned>
    where
        F: FnOnce(&Path) -> Result<BuildMeta, E>,
        E: Into<BuildError>,
    {
        let force = opts.force_rebuild;
        if !force && let Probe::Hit(p) = self.probe(key, owner, mine)? {
            return Ok(*p);
        }
        let lock = BuildLock::acquire(self, key)?;
        let waited_for = lock.waited_for();
        if !force {
            // Whoever we waited for has probably built it.
            if let Probe::Hit(mut p) = self.probe(key, owner, mine)? {
                p.waited_for = waited_for;
                return Ok(*p);
            }
        }
        let mut p = self.build_locked(key, opts.source.as_ref(), owner, mine, build)?;
        p.waited_for = waited_for;
        drop(lock);
        Ok(p)
    }
}
