//! The build pipeline: inputs → file set → output, one call per stage.
//!
//! ```text
//! read_inputs ─► resolve (packages, globs, excludes, munging, base images)
//!             ─► [+ /packagelist] ─► finish (validated FileSet) ─► write (chroot)
//! ```
//! An output that is, contains or lies inside an input is refused first
//! ([`crate::guard`]). The ext2 format chooses the kernel first (so a missing kernel fails before any work),
//! adds its modules tree to the file set at `/lib/modules/VERSION`, then writes
//! `OUT/root` (ext2 image), `OUT/initrd` (mini initrd) and `OUT/kernel` into a private
//! staging directory that replaces `OUT` atomically.

use std::path::{Path, PathBuf};

use kiln_fileset::{Counts, Meta, Options, ResolveError, SetError};
use kiln_image::chroot::{ChrootError, ChrootStats};
use kiln_image::{ImageError, ImageOptions};
use kiln_inputs::InputError;
use kiln_outdir::{OutdirError, Staging};

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain directory tree (supermin's `chroot`, `fs`, `filesystem`).
    Chroot,
    /// `OUT/kernel`, `OUT/initrd` and `OUT/root` (an ext2 image): a bootable appliance.
    Ext2,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// supermin.d directories and/or input files, in order.
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    /// The output directory (replaced atomically).
    pub output: PathBuf,
    /// Add `/packagelist` (the resolved packages, `name_version_arch`).
    pub include_packagelist: bool,
    /// Stop after the file set is resolved (benchmarks, debugging): nothing is written.
    pub resolve_only: bool,
    /// The installed system the appliance is made from (the host's `/` by default):
    /// its package database, package files and hostfiles (the cache key reads the
    /// same: `KeyOptions::sysroot`). Set it with [`BuildOptions::set_sysroot`] so the
    /// kernel roots follow.
    pub sysroot: kiln_packages::Sysroot,
    /// ext2: image size in bytes.
    pub size: u64,
    /// ext2: the CPU architecture whose kernel to pick (supermin's `--host-cpu`).
    pub host_cpu: String,
    /// ext2: copy the kernel into `OUT` instead of symlinking it.
    pub copy_kernel: bool,
    /// ext2: `SUPERMIN_KERNEL`, `SUPERMIN_KERNEL_VERSION`, `SUPERMIN_MODULES`.
    pub kernel_env: kiln_kernel::KernelEnv,
    /// ext2: where kernels and modules are looked for (`/boot`, `/lib/modules`).
    pub kernel_roots: kiln_kernel::Roots,
}

/// Where the kernel and its modules are looked for in `sysroot`: its `/boot` and
/// `/lib/modules` (resolved inside it; the defaults for `/`).
pub fn kernel_roots(sysroot: &kiln_packages::Sysroot) -> kiln_kernel::Roots {
    if sysroot.is_host() {
        return kiln_kernel::Roots::default();
    }
    let inside = |p: &str| {
        let p = Path::new(p);
        let resolved =
            kiln_pattern::resolve_in(&sysroot.root, p).unwrap_or_else(|_| p.to_path_buf());
        sysroot.host_path(&resolved)
    };
    kiln_kernel::Roots {
        boot: inside("/boot"),
        lib_modules: inside("/lib/modules"),
    }
}

/// The host CPU name supermin uses by default (`x86_64`, `aarch64`, ...).
pub fn default_host_cpu() -> String {
    std::env::consts::ARCH.to_string()
}

impl BuildOptions {
    /// Read everything below `sysroot`: the package database, package files,
    /// hostfiles, and the kernel from its `/boot` and `/lib/modules`.
    pub fn set_sysroot(&mut self, sysroot: kiln_packages::Sysroot) {
        self.kernel_roots = kernel_roots(&sysroot);
        self.sysroot = sysroot;
    }

    /// Options with defaults: no package list, write the output, the host's database.
    pub fn new(inputs: Vec<PathBuf>, format: Format, output: PathBuf) -> BuildOptions {
        BuildOptions {
            inputs,
            format,
            output,
            include_packagelist: false,
            resolve_only: false,
            sysroot: kiln_packages::Sysroot::default(),
            size: kiln_image::DEFAULT_SIZE,
            host_cpu: default_host_cpu(),
            copy_kernel: false,
            kernel_env: kiln_kernel::KernelEnv::from_process(),
            kernel_roots: kiln_kernel::Roots::default(),
        }
    }
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub counts: Counts,
    /// The package closure, `name_version_arch`, sorted.
    pub packages: Vec<String>,
    /// Entries of the final file set (including `/`).
    pub entries: usize,
    /// Bytes of regular file content in the set.
    pub content_bytes: u64,
    /// Set when a chroot was written.
    pub chroot: Option<ChrootStats>,
    /// Set when an ext2 appliance was written.
    pub appliance: Option<ApplianceReport>,
}

/// What an ext2 build wrote.
#[derive(Debug, Clone)]
pub struct ApplianceReport {
    /// The kernel file chosen (what `OUT/kernel` links to or was copied from).
    pub kernel: PathBuf,
    pub kernel_version: String,
    /// The root filesystem UUID, `8-4-4-4-12` lowercase (as libguestfs reads it).
    pub root_uuid: String,
    pub image: kiln_image::ImageReport,
    /// Modules in the initrd, in load order.
    pub initrd_modules: Vec<String>,
    pub initrd_bytes: u64,
}

/// A failed build; every variant names the input or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no input supermin appliance given")]
    NoInputs,
    #[error("only the ext2 format can be built into a given directory")]
    NotInto,
    #[error(transparent)]
    Overlap(#[from] crate::guard::OverlapError),
    #[error(transparent)]
    Inputs(#[from] InputError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("the appliance file set is inconsistent")]
    Set(#[from] SetError),
    #[error("adding /packagelist")]
    Packagelist(#[from] kiln_fileset::builder::PlaceError),
    #[error(transparent)]
    Chroot(#[from] ChrootError),
    #[error(transparent)]
    Kernel(#[from] kiln_kernel::Error),
    #[error("adding the kernel modules tree")]
    Modules(#[from] kiln_fileset::builder::TreeError),
    #[error(transparent)]
    Output(#[from] OutdirError),
    #[error("writing the root image")]
    Image(#[from] ImageError),
    #[error("writing the initrd")]
    Initrd(#[from] kiln_initrd::Error),
}

/// Run the pipeline.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    run(opts, None)
}

/// Run the pipeline for [`Format::Ext2`] writing `kernel`, `initrd` and `root` straight
/// into `dir`, an existing private directory (a cache slot being built), instead of
/// replacing `opts.output`. `opts.format` must be [`Format::Ext2`].
pub fn build_into(opts: &BuildOptions, dir: &Path) -> Result<BuildReport, BuildError> {
    if opts.format != Format::Ext2 {
        return Err(BuildError::NotInto);
    }
    run(opts, Some(dir))
}

fn run(opts: &BuildOptions, into: Option<&Path>) -> Result<BuildReport, BuildError> {
    if opts.inputs.is_empty() {
        return Err(BuildError::NoInputs);
    }
    // Before any work: replacing the output must not remove or write into an input.
    // (`into` is a private directory the caller made.)
    if into.is_none() && !opts.resolve_only {
        crate::guard::check(
            &[crate::guard::Named::new(opts.output.clone(), "the output")],
            &crate::guard::build_inputs(&opts.inputs, &opts.sysroot),
        )?;
    }
    let names: Vec<String> = opts
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    tracing::info!("build: {}", names.join(" "));

    tracing::info!("reading the supermin appliance");
    let inputs = kiln_inputs::read_inputs(&opts.inputs)?;
    stall("resolve");

    // The kernel first: without one there is nothing to build, and its modules tree
    // belongs to the file set.
    let kernel = match opts.format {
        Format::Ext2 => {
            let k = kiln_kernel::choose(&opts.host_cpu, &opts.kernel_env, &opts.kernel_roots)?;
            tracing::info!(
                "kernel: picked {} (version {}), modules {}",
                k.path.display(),
                k.version,
                k.modules.display()
            );
            Some(k)
        }
        Format::Chroot => None,
    };

    // The kernel's modules tree (thousands of files) is read on another thread while
    // the packages are resolved: the two are independent until they are merged.
    let modules_dest = kernel
        .as_ref()
        .map(|k| PathBuf::from(format!("/lib/modules/{}", k.version)));
    let (resolved, modules) = std::thread::scope(|s| {
        let scan = match (&kernel, &modules_dest) {
            (Some(k), Some(dest)) => {
                tracing::info!(
                    "adding kernel modules {} at {}",
                    k.modules.display(),
                    dest.display()
                );
                Some(s.spawn(|| kiln_fileset::scan::scan_tree(&k.modules, dest)))
            }
            _ => None,
        };
        // The library chooses the database (the one the cache key reads) and hands it
        // to the file set stage.
        let resolved = kiln_packages::open(&opts.sysroot)
            .map_err(ResolveError::from)
            .and_then(|db| {
                kiln_fileset::resolve(
                    &inputs,
                    db.as_ref(),
                    &Options {
                        sysroot: opts.sysroot.clone(),
                    },
                )
            });
        let modules = scan.map(|h| {
            h.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (resolved, modules)
    });
    let mut resolved = resolved?;
    if opts.include_packagelist {
        let data = kiln_fileset::resolve::packagelist(&resolved.packages);
        resolved
            .builder
            .add_bytes("/packagelist".as_ref(), data, Meta::new(0o644))?;
    }
    if let (Some(dest), Some(entries)) = (&modules_dest, modules) {
        let entries = entries.map_err(kiln_fileset::builder::TreeError::from)?;
        resolved.builder.add_scanned_tree(dest, entries)?;
    }
    let set = resolved.builder.finish()?;
    let mut report = BuildReport {
        counts: resolved.counts,
        packages: resolved.packages,
        entries: set.len(),
        content_bytes: set.content_bytes(),
        chroot: None,
        appliance: None,
    };
    tracing::info!(
        "file set: {} entries, {} bytes of file content",
        report.entries,
        report.content_bytes
    );
    if opts.resolve_only {
        return Ok(report);
    }

    match opts.format {
        Format::Chroot => {
            tracing::info!("chroot: writing {}", opts.output.display());
            report.chroot = Some(kiln_image::chroot::write_chroot(&set, &opts.output)?);
        }
        Format::Ext2 => {
            let Some(kernel) = kernel else {
                unreachable!("the kernel is chosen for ext2 above");
            };
            let staging = match into {
                Some(_) => None,
                None => Some(Staging::new(&opts.output)?),
            };
            let dir = match (&staging, into) {
                (Some(s), _) => s.path(),
                (None, Some(d)) => d,
                (None, None) => unreachable!("one of staging or into is set"),
            };
            let root = dir.join("root");
            stall("image");
            tracing::info!("ext2: writing {} ({} bytes)", root.display(), opts.size);
            let image = kiln_image::write_image(
                &set,
                &root,
                &ImageOptions {
                    size: opts.size,
                    ..ImageOptions::default()
                },
            )?;
            tracing::info!(
                "ext2: root UUID {}, {} blocks and {} inodes used",
                image.uuid_string(),
                image.blocks_used,
                image.inodes_used
            );
            let initrd = dir.join("initrd");
            stall("initrd");
            tracing::info!("ext2: creating minimal initrd {}", initrd.display());
            let ir = kiln_initrd::build(&kernel.modules, &initrd)?;
            tracing::info!("ext2: wrote {} modules to minimal initrd", ir.modules.len());
            kiln_kernel::install(&kernel, dir, opts.copy_kernel)?;
            stall("publish");
            if let Some(s) = staging {
                s.publish()?;
            }
            report.appliance = Some(ApplianceReport {
                root_uuid: image.uuid_string(),
                kernel: kernel.path,
                kernel_version: kernel.version,
                image,
                initrd_modules: ir.modules,
                initrd_bytes: ir.bytes,
            });
        }
    }
    Ok(report)
}

/// Fault injection for the interrupt tests: with `KILN_STALL_AT=POINT` the build stops at
/// that point (`resolve`, `image`, `initrd`, `publish`), says so on stderr and waits for
/// a signal, so a test interrupts it exactly there however fast the machine is. Only in
/// builds with the `test-hooks` feature, which the tests enable; a shipped kiln has none.
#[cfg(feature = "test-hooks")]
fn stall(point: &str) {
    if std::env::var_os("KILN_STALL_AT").is_some_and(|v| v == point) {
        eprintln!("kiln: stalled at {point} (KILN_STALL_AT)");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Without the `test-hooks` feature the stall points do nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
fn stall(_point: &str) {}
