//! supermin's `--build` contract, done kiln's way: what `supermin --build … -o OUT`
//! (kiln's front end) does, as a library call ([`build`]).
//!
//! supermin's contract is kept: `OUT/{kernel,initrd,root}` for ext2 (a tree for chroot),
//! `--if-newer` skips a build that is not needed, and `OUT` is replaced as a whole. On
//! top of it:
//!
//! - **Keyed builds.** ext2 from one `supermin.d` (without `/packagelist`, which the key
//!   does not cover) is keyed by [`appliance_key`], which covers everything that ends up
//!   in the appliance. `OUT/.kiln-key` ([`KEY_FILE`]) records the key `OUT` holds, so
//!   `--if-newer` detects every change (supermin only compares a few mtimes) and skips
//!   the build when the key is unchanged.
//! - **The cache, when asked for.** With `--if-newer` (libguestfs's call) the appliance
//!   comes from the per-user cache, the same slot `kiln locate` uses
//!   ([`crate::locate::cached_build`]), and `OUT` is filled with hard links to it. When
//!   `OUT` cannot share the cache's filesystem, a cached slot is copied sparsely and a
//!   missing one is built straight into `OUT`: never a copy of gigabytes of zeros.
//!   Without `--if-newer` (supermin always builds then) the build goes straight into
//!   `OUT` and leaves nothing in the cache.
//! - **Atomic output.** `OUT` is filled in a private staging directory beside it and
//!   replaced with `RENAME_EXCHANGE` (`kiln-outdir`): there is no moment where it is
//!   missing or half-written. `OUT` must be a directory or absent, and must not be,
//!   contain or lie inside an input ([`crate::guard`]); anything else is refused
//!   before any work.
//! - Other builds (`chroot`, several inputs, `--include-packagelist`) run the pipeline
//!   into `OUT`; `--if-newer` then uses supermin's own mtime rule ([`up_to_date_by_mtime`]).
//!
//! Invariant: an error leaves `OUT` as it was and nothing beside it (the staging
//! directory is removed when dropped).
//!
//! # Example
//!
//! `supermin --build --if-newer -f ext2 supermin.d -o OUT`, twice: the second call finds
//! `OUT` current. (The builder here writes placeholder files; the default one runs
//! kiln's pipeline.)
//!
//! ```
//! use std::sync::Arc;
//! use kiln::supermin::{Outcome, SuperminOptions, build};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let t = tempfile::tempdir()?;
//! let supermin_d = t.path().join("supermin.d");
//! std::fs::create_dir(&supermin_d)?;
//! std::fs::write(supermin_d.join("packages"), "bash\n")?;
//!
//! let mut opts = SuperminOptions::new(
//!     vec![supermin_d],
//!     kiln::Format::Ext2,
//!     t.path().join("appliance.d"),
//! );
//! opts.if_newer = true;
//! opts.cachedir = Some(t.path().to_path_buf());
//! opts.builder = Some(Arc::new(|_req, dir| {
//!     for f in ["kernel", "initrd", "root"] {
//!         std::fs::write(dir.join(f), f)?;
//!     }
//!     Ok(kiln::cache::BuildMeta::default())
//! }));
//!
//! let first = build(&opts)?;
//! assert_eq!(first.outcome, Outcome::FromCache { built: true, copied: false });
//! assert!(opts.output.join("root").is_file());
//! assert_eq!(build(&opts)?.outcome, Outcome::UpToDate);
//! # Ok(()) }
//! ```

mod place;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cache::{CacheError, GetOptions, Key};
use kiln_outdir::{OutdirError, Staging};

use crate::key::{KeyError, KeyOptions, appliance_key};
use crate::locate::{BuildFn, cached_build, open_cache, pipeline_builder};
use crate::pipeline::{self, BuildError, Format};

pub use place::{KEY_FILE, holds_key, sparse_copy};

/// What to build, as supermin's command line says it.
#[derive(Clone)]
pub struct SuperminOptions {
    /// supermin.d directories and/or input files.
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    /// `-o`: the output directory.
    pub output: PathBuf,
    /// `--if-newer`: build only when `OUT` does not already hold this appliance.
    pub if_newer: bool,
    /// `--copy-kernel` (ext2): copy the kernel instead of symlinking it. Appliances from
    /// the cache always hold a copy (a hard link needs a file).
    pub copy_kernel: bool,
    /// `--include-packagelist`: add `/packagelist`.
    pub include_packagelist: bool,
    /// Host CPU, size (`None`: 4 GiB), kernel overrides and package database: the key
    /// and every build use these.
    pub key: KeyOptions,
    /// The cache root (`None`: [`kiln_cache::default_root`]).
    pub cachedir: Option<PathBuf>,
    /// How a cache slot is built (`None`: [`pipeline_builder`]).
    pub builder: Option<Arc<BuildFn>>,
}

impl std::fmt::Debug for SuperminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperminOptions")
            .field("inputs", &self.inputs)
            .field("format", &self.format)
            .field("output", &self.output)
            .field("if_newer", &self.if_newer)
            .field("copy_kernel", &self.copy_kernel)
            .field("include_packagelist", &self.include_packagelist)
            .field("key", &self.key)
            .field("cachedir", &self.cachedir)
            .field("builder", &self.builder.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl SuperminOptions {
    /// supermin's defaults: always build, symlink the kernel, the host's CPU, 4 GiB.
    pub fn new(inputs: Vec<PathBuf>, format: Format, output: PathBuf) -> SuperminOptions {
        SuperminOptions {
            inputs,
            format,
            output,
            if_newer: false,
            copy_kernel: false,
            include_packagelist: false,
            key: KeyOptions::default(),
            cachedir: None,
            builder: None,
        }
    }
}

/// What [`build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `--if-newer` and `OUT` already holds this appliance: nothing was touched.
    UpToDate,
    /// `OUT` was filled from the cache slot: hard links, or (`copied`) a sparse copy when
    /// `OUT` is on another filesystem. `built` when this call built the slot.
    FromCache { built: bool, copied: bool },
    /// Built straight into `OUT`; the cache was not touched.
    Direct,
}

/// The result of [`build`].
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// The key `OUT` holds (keyed builds only).
    pub key: Option<Key>,
    /// The root filesystem UUID, when known (ext2).
    pub root_uuid: Option<String>,
}

/// A failed front-end build. Each error prints only itself; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum SuperminError {
    #[error("build: no input supermin appliance specified")]
    NoInputs,
    #[error("build")]
    Overlap(#[source] crate::guard::OverlapError),
    #[error(
        "build: input {} does not exist: give a supermin.d directory or input file",
        path.display()
    )]
    MissingInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("computing the key of {}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("opening the appliance cache")]
    OpenCache(#[source] CacheError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("building {}", out.display())]
    Build {
        out: PathBuf,
        #[source]
        source: Box<BuildError>,
    },
    #[error(transparent)]
    Output(#[from] OutdirError),
    #[error("placing {} as {}", src.display(), dst.display())]
    Place {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the key file {}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("if-newer: {}", path.display())]
    IfNewer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock file {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Build as `supermin --build` would, kiln's way (see the module doc).
pub fn build(opts: &SuperminOptions) -> Result<Report, SuperminError> {
    if opts.inputs.is_empty() {
        return Err(SuperminError::NoInputs);
    }
    for i in &opts.inputs {
        if let Err(source) = fs::metadata(i) {
            return Err(SuperminError::MissingInput {
                path: i.clone(),
                source,
            });
        }
    }
    // Before any work: OUT must be something a build can replace, and replacing it must
    // not remove or write into an input.
    crate::guard::check(
        &[crate::guard::Named::new(opts.output.clone(), "the output")],
        &crate::guard::build_inputs(&opts.inputs, &opts.key.sysroot),
    )
    .map_err(SuperminError::Overlap)?;
    check_output(&opts.output)?;
    let keyed = opts.format == Format::Ext2
        && opts.inputs.len() == 1
        && !opts.include_packagelist
        && fs::metadata(&opts.inputs[0]).is_ok_and(|m| m.is_dir());
    if keyed {
        build_keyed(opts, &opts.inputs[0])
    } else {
        build_direct(opts)
    }
}

/// The pipeline options the front end's direct builds use.
fn pipeline_options(opts: &SuperminOptions) -> pipeline::BuildOptions {
    let mut o = pipeline::BuildOptions::new(opts.inputs.clone(), opts.format, opts.output.clone());
    if let Some(size) = opts.key.size {
        o.size = size;
    }
    o.host_cpu = opts.key.host_cpu.clone();
    o.copy_kernel = opts.copy_kernel;
    o.include_packagelist = opts.include_packagelist;
    o.kernel_env = opts.key.kernel.clone();
    o.kernel_roots = opts.key.roots.clone();
    o.sysroot = opts.key.sysroot.clone();
    o
}

fn build_direct(opts: &SuperminOptions) -> Result<Report, SuperminError> {
    if opts.if_newer && up_to_date_by_mtime(opts)? {
        return Ok(Report {
            outcome: Outcome::UpToDate,
            key: None,
            root_uuid: None,
        });
    }
    let report =
        pipeline::build(&pipeline_options(opts)).map_err(|source| SuperminError::Build {
            out: opts.output.clone(),
            source: Box::new(source),
        })?;
    Ok(Report {
        outcome: Outcome::Direct,
        key: None,
        root_uuid: report.appliance.map(|a| a.root_uuid),
    })
}

fn build_keyed(opts: &SuperminOptions, supermin_d: &Path) -> Result<Report, SuperminError> {
    let key = appliance_key(supermin_d, &opts.key).map_err(|source| SuperminError::Key {
        path: supermin_d.to_path_buf(),
        source,
    })?;
    if opts.if_newer && holds_key(&opts.output, &key) {
        return Ok(Report {
            outcome: Outcome::UpToDate,
            key: Some(key),
            root_uuid: None,
        });
    }
    // The staging directory first: it validates OUT, and tells which filesystem OUT is on.
    let staging = Staging::new(&opts.output)?;
    // Without --if-newer supermin always builds; so does kiln, straight into OUT, without
    // making a cache slot nobody asked for.
    let pinned = if opts.if_newer {
        cached_slot(opts, supermin_d, &key, staging.path())?
    } else {
        None
    };
    let (outcome, root_uuid) = match &pinned {
        Some(pin) => (
            fill_from_slot(pin, staging.path())?,
            pin.root_uuid().map(str::to_owned),
        ),
        None => {
            let report = pipeline::build_into(&pipeline_options(opts), staging.path()).map_err(
                |source| SuperminError::Build {
                    out: opts.output.clone(),
                    source: Box::new(source),
                },
            )?;
            (Outcome::Direct, report.appliance.map(|a| a.root_uuid))
        }
    };
    place::write_key(staging.path(), &key).map_err(|source| SuperminError::KeyFile {
        path: opts.output.join(KEY_FILE),
        source,
    })?;
    staging.publish()?;
    Ok(Report {
        outcome,
        key: Some(key),
        root_uuid,
    })
}

/// The cache slot for `key`, pinned to this process: built if missing when `staging` is
/// on the cache's filesystem (it will be linked); when it is not, only an existing slot
/// (it will be copied sparsely) — `None` means build straight into `staging`.
fn cached_slot(
    opts: &SuperminOptions,
    supermin_d: &Path,
    key: &Key,
    staging: &Path,
) -> Result<Option<kiln_cache::Pinned>, SuperminError> {
    let cache = open_cache(opts.cachedir.as_deref()).map_err(SuperminError::OpenCache)?;
    if !same_filesystem(staging, cache.path()) {
        return Ok(cache.lookup(key, None)?);
    }
    let get = GetOptions {
        pin_to: None,
        force_rebuild: false,
        ..GetOptions::default()
    };
    let builder = opts.builder.clone().unwrap_or_else(pipeline_builder);
    Ok(Some(cached_build(
        &cache, supermin_d, key, &opts.key, &get, &*builder,
    )?))
}

/// Put the slot's three files into `dir`; the outcome says whether any was copied.
fn fill_from_slot(pin: &kiln_cache::Pinned, dir: &Path) -> Result<Outcome, SuperminError> {
    let mut copied = false;
    for (name, src) in [
        ("kernel", pin.kernel()),
        ("initrd", pin.initrd()),
        ("root", pin.root()),
    ] {
        let dst = dir.join(name);
        let placed = place::link_or_copy(src, &dst).map_err(|source| SuperminError::Place {
            src: src.to_path_buf(),
            dst: dst.clone(),
            source,
        })?;
        copied |= placed == place::Placed::Copied;
    }
    Ok(Outcome::FromCache {
        built: pin.built(),
        copied,
    })
}

/// True when `a` and `b` are on one filesystem (so hard links between them can work).
fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Refuse an output that exists and is not a directory (the text `kiln-outdir` uses),
/// before anything is built.
fn check_output(out: &Path) -> Result<(), SuperminError> {
    let why = match fs::symlink_metadata(out) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(md) if md.file_type().is_symlink() => {
            "is a symlink: give the real directory, or remove the link"
        }
        Ok(_) => "exists and is not a directory: remove it first",
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OutdirError::Io {
                path: out.to_path_buf(),
                source,
            }
            .into());
        }
    };
    Err(OutdirError::Refused {
        path: out.to_path_buf(),
        why,
    }
    .into())
}

/// supermin's `--if-newer` rule: every input and the package database strictly older
/// than every output (`OUT`, and for ext2 its three files); a missing output means
/// rebuild.
pub fn up_to_date_by_mtime(opts: &SuperminOptions) -> Result<bool, SuperminError> {
    let out = &opts.output;
    let mut outputs = vec![out.clone()];
    if opts.format == Format::Ext2 {
        outputs.extend(place::FILES.iter().map(|f| out.join(f)));
    }
    let mtime = |p: &Path| -> Result<Option<i128>, SuperminError> {
        match fs::symlink_metadata(p) {
            Ok(m) => Ok(Some(
                m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SuperminError::IfNewer {
                path: p.to_path_buf(),
                source,
            }),
        }
    };
    let mut oldest_out = i128::MAX;
    for o in &outputs {
        match mtime(o)? {
            Some(t) => oldest_out = oldest_out.min(t),
            None => return Ok(false),
        }
    }
    // supermin compares the package database's own file; the database's fingerprint
    // paths are those files for whichever database the key reads.
    let db = kiln_packages::fingerprint(&opts.key.sysroot)
        .map(|(_, paths)| paths)
        .unwrap_or_default();
    for i in opts.inputs.iter().chain(db.iter()) {
        if let Some(t) = mtime(i)?
            && t >= oldest_out
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Open (creating it 0644) and take a blocking exclusive POSIX record lock on `path`,
/// like supermin's `lockf(F_LOCK)` (so it excludes a real supermin too). The lock is
/// held until the file is closed.
pub fn lock_file(path: &Path) -> Result<File, SuperminError> {
    let err = |source| SuperminError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(err)?;
    loop {
        match rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(f),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(err(e.into())),
        }
    }
}

/// For tests and callers that want to know the key `OUT` would hold.
pub fn key_of(opts: &SuperminOptions, supermin_d: &Path) -> Result<Key, SuperminError> {
    appliance_key(supermin_d, &opts.key).map_err(|source| SuperminError::Key {
        path: supermin_d.to_path_buf(),
        source,
    })
}
