//! Locate (and if needed build) the appliance a VM launcher should boot.
//!
//! The search path (`--path`, else `LIBGUESTFS_PATH`, else libguestfs's default
//! directories) is split on `:` (an empty element means `.`). Each element is tried in
//! order, and within it, as libguestfs does since 1.36:
//! 1. a supermin appliance (`supermin.d/` with a `packages` list): its key is computed
//!    and the cache hands out a pinned slot, building it first on a miss (libguestfs
//!    also wants `supermin.d/base.tar.gz`; kiln's own appliances need no base image);
//! 2. a fixed appliance (`README.fixed`, `kernel`, `initrd`, `root`): used as it is;
//! 3. an old-style appliance (`vmlinuz.$cpu`, `initramfs.$cpu.img`): used as it is,
//!    without a root disk.
//!
//! Nothing found is an error naming the whole search path. A failed build is an error
//! too; later elements are not tried (libguestfs behaves the same).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cache::{BuildError, BuildMeta, Cache, CacheError, GcPolicy, GetOptions, Key};

use crate::key::{KeyError, KeyOptions, appliance_key};

/// What [`locate`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(
        "cannot find any suitable supermin, fixed or old-style appliance on the search path {path:?}; \
         point --path or LIBGUESTFS_PATH at a directory holding supermin.d/ (with a packages list), \
         a fixed appliance (README.fixed, kernel, initrd, root) or vmlinuz.{cpu} + initramfs.{cpu}.img"
    )]
    NotFound { path: OsString, cpu: String },
    /// `pin_to` names a process that is not running or that never exits (init, a
    /// kernel thread): its pin would vanish at once or never be released.
    #[error(
        "cannot pin the appliance to PID {pid}: {why}; pin it to the process that uses the files \
         (by default kiln's parent), or run that command under `kiln locate -- CMD ARGS...`"
    )]
    PinTarget { pid: u32, why: &'static str },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What the caller asks a builder for.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    /// The `supermin.d` directory.
    pub supermin_d: &'a Path,
    pub key: &'a Key,
    /// Host CPU, size, kernel overrides, … (the same options the key was made from).
    pub options: &'a KeyOptions,
}

/// A builder: write `kernel`, `initrd` and `root` for the request into the directory.
pub type BuildFn = dyn Fn(&BuildRequest<'_>, &Path) -> Result<BuildMeta, BuildError> + Send + Sync;

/// Options of [`locate`]. `LocateOptions::default()` behaves like libguestfs: search
/// `LIBGUESTFS_PATH`, cache under `LIBGUESTFS_CACHEDIR`/`TMPDIR`//var/tmp, pin to the
/// calling process.
#[derive(Clone)]
pub struct LocateOptions {
    /// The search path; `None` means `LIBGUESTFS_PATH`, else [`default_path`].
    pub path: Option<OsString>,
    /// The cache root; `None` means [`kiln_cache::default_root`].
    pub cachedir: Option<PathBuf>,
    /// Pin to this process instead of the caller (see [`kiln_cache::GetOptions::pin_to`]).
    pub pin_to: Option<u32>,
    /// Rebuild even on a hit.
    pub force_rebuild: bool,
    /// Options that go into the key and the build.
    pub key: KeyOptions,
    /// Bounds of the cheap gc run after locating (default: [`GcPolicy::default`]);
    /// `None` skips it.
    pub gc: Option<GcPolicy>,
    /// The builder; `None` means [`default_builder`].
    pub builder: Option<Arc<BuildFn>>,
}

impl Default for LocateOptions {
    fn default() -> Self {
        LocateOptions {
            path: None,
            cachedir: None,
            pin_to: None,
            force_rebuild: false,
            key: KeyOptions::default(),
            gc: Some(GcPolicy::default()),
            builder: None,
        }
    }
}

impl std::fmt::Debug for LocateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocateOptions")
            .field("path", &self.path)
            .field("cachedir", &self.cachedir)
            .field("pin_to", &self.pin_to)
            .field("force_rebuild", &self.force_rebuild)
            .field("key", &self.key)
            .field("gc", &self.gc)
            .field("builder", &self.builder.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Which kind of appliance was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplianceKind {
    /// Built from `supermin.d` and handed out from the cache, pinned.
    Supermin,
    /// A fixed appliance, used in place.
    Fixed,
    /// An old-style kernel + initramfs, no root disk.
    OldStyle,
}

/// A located appliance. For a supermin appliance the paths are per-process pins in the
/// cache: they stay valid and belong to one build until the handle is dropped (or, with
/// `pin_to`, until that process exits).
#[derive(Debug)]
pub struct Pinned {
    kernel: PathBuf,
    initrd: PathBuf,
    root: Option<PathBuf>,
    root_uuid: Option<String>,
    key: Option<Key>,
    built: bool,
    kind: ApplianceKind,
    element: PathBuf,
    pin: Option<kiln_cache::Pinned>,
}

impl Pinned {
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }
    /// The root disk; `None` for an old-style appliance.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }
    /// The root filesystem's UUID (for `root=UUID=`), if the root is an ext filesystem.
    pub fn root_uuid(&self) -> Option<&str> {
        self.root_uuid.as_deref()
    }
    /// The cache key (supermin appliances only).
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }
    /// True if this call built the appliance.
    pub fn built(&self) -> bool {
        self.built
    }
    pub fn kind(&self) -> ApplianceKind {
        self.kind
    }
    /// The search path element the appliance was found in.
    pub fn element(&self) -> &Path {
        &self.element
    }
    /// The cache pin, for supermin appliances.
    pub fn cache_pin(&self) -> Option<&kiln_cache::Pinned> {
        self.pin.as_ref()
    }
    /// Leave the pin in place after the handle is dropped (gc removes it once the
    /// owning process has exited).
    pub fn keep(mut self) {
        if let Some(p) = self.pin.take() {
            p.keep();
        }
    }
}

/// libguestfs's default appliance directories for this architecture, colon-separated.
pub fn default_path() -> OsString {
    let arch = std::env::consts::ARCH;
    OsString::from(format!(
        "/usr/lib/{arch}-linux-gnu/guestfs:/usr/lib64/guestfs:/usr/lib/guestfs"
    ))
}

/// The search path `opts` resolves to.
pub fn search_path(opts: &LocateOptions) -> OsString {
    opts.path
        .clone()
        .or_else(|| std::env::var_os("LIBGUESTFS_PATH"))
        .unwrap_or_else(default_path)
}

/// The elements of a search path; an empty element means the current directory.
pub fn split_path(path: &OsStr) -> Vec<PathBuf> {
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|e| {
            if e.is_empty() {
                PathBuf::from(".")
            } else {
                PathBuf::from(OsStr::from_bytes(e))
            }
        })
        .collect()
}

fn exists(dir: &Path, names: &[&str]) -> bool {
    names.iter().all(|n| dir.join(n).exists())
}

/// Find the appliance on the search path; build and cache it if it is a supermin one.
///
/// ```no_run
/// use kiln::locate::{LocateOptions, locate};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let appliance = locate(&LocateOptions::default())?;
/// // Boot it: the three files stay exactly as they are until `appliance` is dropped.
/// let mut qemu = std::process::Command::new("qemu-system-x86_64");
/// qemu.arg("-kernel").arg(appliance.kernel()).arg("-initrd").arg(appliance.initrd());
/// if let (Some(root), Some(uuid)) = (appliance.root(), appliance.root_uuid()) {
///     qemu.arg("-drive")
///         .arg(format!("file={},snapshot=on,format=raw,if=virtio", root.display()))
///         .arg("-append")
///         .arg(format!("root=UUID={uuid} console=ttyS0"));
/// }
/// # Ok(()) }
/// ```
pub fn locate(opts: &LocateOptions) -> Result<Pinned, LocateError> {
    if let Some(pid) = opts.pin_to {
        check_pin_target(pid)?;
    }
    let path = search_path(opts);
    let cpu = &opts.key.host_cpu;
    for element in split_path(&path) {
        let supermin_d = element.join("supermin.d");
        if exists(&supermin_d, &["packages"]) {
            return locate_supermin(opts, &element, &supermin_d);
        }
        if exists(&element, &["README.fixed", "kernel", "initrd", "root"]) {
            let root = element.join("root");
            let root_uuid = ext_uuid(&root);
            return Ok(Pinned {
                kernel: element.join("kernel"),
                initrd: element.join("initrd"),
                root: Some(root),
                root_uuid,
                key: None,
                built: false,
                kind: ApplianceKind::Fixed,
                element,
                pin: None,
            });
        }
        let (k, i) = (format!("vmlinuz.{cpu}"), format!("initramfs.{cpu}.img"));
        if exists(&element, &[&k, &i]) {
            return Ok(Pinned {
                kernel: element.join(k),
                initrd: element.join(i),
                root: None,
                root_uuid: None,
                key: None,
                built: false,
                kind: ApplianceKind::OldStyle,
                element,
                pin: None,
            });
        }
    }
    Err(LocateError::NotFound {
        path,
        cpu: cpu.clone(),
    })
}

fn locate_supermin(
    opts: &LocateOptions,
    element: &Path,
    supermin_d: &Path,
) -> Result<Pinned, LocateError> {
    let key = appliance_key(supermin_d, &opts.key)?;
    let cache = open_cache(opts.cachedir.as_deref())?;
    let get = GetOptions {
        pin_to: opts.pin_to,
        force_rebuild: opts.force_rebuild,
        gc: opts.gc.clone(),
        source: None, // cached_build names it
    };
    let builder = opts.builder.clone().unwrap_or_else(default_builder);
    let pin = cached_build(&cache, supermin_d, &key, &opts.key, &get, &*builder)?;
    Ok(Pinned {
        kernel: pin.kernel().to_path_buf(),
        initrd: pin.initrd().to_path_buf(),
        root: Some(pin.root().to_path_buf()),
        root_uuid: pin.root_uuid().map(str::to_owned),
        key: Some(key),
        built: pin.built(),
        kind: ApplianceKind::Supermin,
        element: element.to_path_buf(),
        pin: Some(pin),
    })
}

/// Refuse a pin owner that will hold a pin forever or not at all: PID 1 (this PID
/// namespace's init), kernel threads (PID 2 and its children), and processes that are
/// not running.
pub fn check_pin_target(pid: u32) -> Result<(), LocateError> {
    let why = if pid == 1 {
        "it is init, which never exits, so the pin would never be released"
    } else {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) if pid != 0 => "no such running process",
            Err(_) => "no such process",
            Ok(stat) => match stat_state_and_ppid(&stat) {
                None => "its /proc entry cannot be read",
                Some(('Z', _)) => "no such running process (it has exited)",
                Some((_, ppid)) if pid == 2 || ppid == 2 => {
                    "it is a kernel thread, which never exits"
                }
                Some(_) => return Ok(()),
            },
        }
    };
    Err(LocateError::PinTarget { pid, why })
}

/// State and parent PID from `/proc/PID/stat` (fields 3 and 4, counted after the
/// command name's closing parenthesis, which may itself contain spaces).
fn stat_state_and_ppid(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The cache under `root`, else under [`kiln_cache::default_root`].
pub fn open_cache(root: Option<&Path>) -> Result<Cache, CacheError> {
    match root {
        Some(d) => Cache::open(d),
        None => Cache::open_default(),
    }
}

/// The cached build of one `supermin.d`, shared by [`locate`] and the supermin front
/// end ([`crate::supermin`]): the slot for `key` (computed from `supermin_d` and
/// `options`), built by `builder` on a miss (or always, with `get.force_rebuild`), pinned
/// as `get` says.
pub fn cached_build(
    cache: &Cache,
    supermin_d: &Path,
    key: &Key,
    options: &KeyOptions,
    get: &GetOptions,
    builder: &BuildFn,
) -> Result<kiln_cache::Pinned, CacheError> {
    let req = BuildRequest {
        supermin_d,
        key,
        options,
    };
    let mut get = get.clone();
    if get.source.is_none() {
        get.source = Some(source_key(supermin_d, options));
    }
    cache.get_or_build(key, &get, |dir| builder(&req, dir))
}

/// What an appliance is built from, as opposed to its content (the key): the
/// supermin.d directory and every option, including which package database, but not
/// the state of the packages or files. Builds after a package change share it, so the
/// newest one supersedes the older slots in the cache.
pub fn source_key(supermin_d: &Path, options: &KeyOptions) -> Key {
    let mut h = blake3::Hasher::new_derive_key("kiln appliance source v1");
    let dir = std::fs::canonicalize(supermin_d).unwrap_or_else(|_| supermin_d.to_path_buf());
    let dir = dir.as_os_str().as_encoded_bytes();
    h.update(&(dir.len() as u64).to_le_bytes());
    h.update(dir);
    // Every option, as one record (its Debug form names each field).
    h.update(format!("{options:?}").as_bytes());
    Key::from_digest(h.finalize().as_bytes())
}

/// The UUID of an ext2/3/4 root image as libguestfs reads it for `root=UUID=`; `None`
/// when `root` cannot be read or is not an ext filesystem.
fn ext_uuid(root: &Path) -> Option<String> {
    let f = std::fs::File::open(root).ok()?;
    kiln_image::read_uuid(&f)
        .ok()
        .flatten()
        .map(|u| kiln_image::uuid_string(&u))
}

/// The builder used when [`LocateOptions::builder`] is `None`: kiln's own pipeline
/// ([`pipeline_builder`]).
pub fn default_builder() -> Arc<BuildFn> {
    pipeline_builder()
}

/// kiln's build pipeline (`kiln build -f ext2 --copy-kernel`) writing into the slot,
/// with the same host CPU, size and kernel choice the key was made from.
pub fn pipeline_builder() -> Arc<BuildFn> {
    Arc::new(
        |req: &BuildRequest<'_>, dir: &Path| -> Result<BuildMeta, BuildError> {
            let mut o = crate::pipeline::BuildOptions::new(
                vec![req.supermin_d.to_path_buf()],
                crate::pipeline::Format::Ext2,
                dir.to_path_buf(),
            );
            o.host_cpu = req.options.host_cpu.clone();
            if let Some(size) = req.options.size {
                o.size = size;
            }
            // Pins are hard links: the kernel must be a file of the slot, not a symlink.
            o.copy_kernel = true;
            o.kernel_env = req.options.kernel.clone();
            o.kernel_roots = req.options.roots.clone();
            o.sysroot = req.options.sysroot.clone();
            let report = crate::pipeline::build_into(&o, dir)?;
            Ok(BuildMeta {
                root_uuid: report.appliance.map(|a| a.root_uuid),
            })
        },
    )
}

/// A failure of [`supermin_builder`].
#[derive(Debug, thiserror::Error)]
enum ExternalBuildError {
    #[error("cannot run {}", .0.display())]
    Run(PathBuf, #[source] std::io::Error),
    #[error("{} --build failed ({})", .0.display(), .1)]
    Failed(PathBuf, std::process::ExitStatus),
    #[error("moving {} into the cache slot", .0.display())]
    Output(PathBuf, #[source] std::io::Error),
}

/// A builder that runs `supermin --build -f ext2 --copy-kernel` and moves its output
/// into the slot directory.
pub fn supermin_builder(program: PathBuf) -> Arc<BuildFn> {
    Arc::new(
        move |req: &BuildRequest<'_>, dir: &Path| -> Result<BuildMeta, BuildError> {
            let out = dir.join("supermin.out");
            let mut cmd = std::process::Command::new(&program);
            cmd.args(["--build", "-f", "ext2", "--copy-kernel", "--host-cpu"])
                .arg(&req.options.host_cpu);
            if let Some(size) = req.options.size {
                cmd.arg("--size").arg(format!("{size}b"));
            }
            cmd.arg(req.supermin_d).arg("-o").arg(&out);
            let k = &req.options.kernel;
            for (var, v) in [
                ("SUPERMIN_KERNEL", &k.kernel),
                ("SUPERMIN_KERNEL_VERSION", &k.version),
                ("SUPERMIN_MODULES", &k.modules),
            ] {
                match v {
                    Some(v) => cmd.env(var, v),
                    None => cmd.env_remove(var),
                };
            }
            let status = cmd
                .status()
                .map_err(|e| ExternalBuildError::Run(program.clone(), e))?;
            if !status.success() {
                return Err(ExternalBuildError::Failed(program.clone(), status).into());
            }
            for f in ["kernel", "initrd", "root"] {
                std::fs::rename(out.join(f), dir.join(f))
                    .map_err(|e| ExternalBuildError::Output(out.join(f), e))?;
            }
            std::fs::remove_dir_all(&out)
                .map_err(|e| ExternalBuildError::Output(out.clone(), e))?;
            Ok(BuildMeta {
                root_uuid: ext_uuid(&dir.join("root")),
            })
        },
    )
}
