//! The build pipeline: inputs → file set → output, one call per stage.
//!
//! ```text
//! read_inputs ─► resolve (dpkg, globs, excludes, munging, base images)
//!             ─► [+ /packagelist] ─► finish (validated FileSet) ─► write (chroot)
//! ```
//! The ext2 format adds its stages: the kernel is chosen ([`kiln_kernel::choose`]) and
//! its modules tree added at `/lib/modules/VERSION` (via `SetBuilder::add_host_tree`)
//! before `finish`; then `OUT/kernel`, `OUT/root` (kiln-image) and `OUT/initrd`
//! (kiln-initrd) are written into a staging directory that replaces `OUT` in one rename.

use std::path::{Path, PathBuf};

use kiln_fileset::chroot::{ChrootError, ChrootStats};
use kiln_fileset::{Counts, Meta, Options, ResolveError, SetError};
use kiln_inputs::InputError;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain directory tree (supermin's `chroot`, `fs`, `filesystem`).
    Chroot,
    /// A bootable appliance: `OUT/kernel`, `OUT/initrd` and the ext2 image `OUT/root`.
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
    /// Root of the dpkg database (`/` for the host).
    pub dpkg_root: PathBuf,
    /// ext2: `--host-cpu` (kernel choice patterns). Default: this machine's architecture.
    pub host_cpu: String,
    /// ext2: copy the kernel into `OUT/kernel` instead of symlinking it.
    pub copy_kernel: bool,
    /// ext2: image size in bytes (default 4 GiB, sparse).
    pub size: Option<u64>,
    /// ext2: `SUPERMIN_KERNEL`, `SUPERMIN_KERNEL_VERSION`, `SUPERMIN_MODULES`.
    pub kernel_env: kiln_kernel::KernelEnv,
    /// ext2: where kernels and modules are looked for (`/boot`, `/lib/modules`).
    pub kernel_roots: kiln_kernel::Roots,
}

impl BuildOptions {
    /// Options with defaults: no package list, write the output, the host's database.
    pub fn new(inputs: Vec<PathBuf>, format: Format, output: PathBuf) -> BuildOptions {
        BuildOptions {
            inputs,
            format,
            output,
            include_packagelist: false,
            resolve_only: false,
            dpkg_root: PathBuf::from("/"),
            host_cpu: std::env::consts::ARCH.to_string(),
            copy_kernel: false,
            size: None,
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
    /// ext2: the kernel chosen.
    pub kernel: Option<kiln_kernel::Kernel>,
    /// ext2: the root image written.
    pub image: Option<kiln_image::ImageReport>,
    /// ext2: the initrd written.
    pub initrd: Option<kiln_initrd::Report>,
}

/// A failed build; every variant names the input or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no input supermin appliance given")]
    NoInputs,
    #[error(transparent)]
    Inputs(#[from] InputError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("the appliance file set is inconsistent: {0}")]
    Set(#[from] SetError),
    #[error("adding /packagelist: {0}")]
    Packagelist(#[from] kiln_fileset::builder::PlaceError),
    #[error(transparent)]
    Chroot(#[from] ChrootError),
    #[error(transparent)]
    Kernel(#[from] kiln_kernel::Error),
    #[error("adding the kernel modules tree {path}: {source}")]
    Modules {
        path: PathBuf,
        source: kiln_fileset::builder::TreeError,
    },
    #[error(transparent)]
    Image(#[from] kiln_image::ImageError),
    #[error(transparent)]
    Initrd(#[from] kiln_initrd::Error),
    #[error(transparent)]
    Output(#[from] kiln_outdir::OutdirError),
}

/// Run the pipeline.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    if opts.inputs.is_empty() {
        return Err(BuildError::NoInputs);
    }
    let names: Vec<String> = opts
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    tracing::info!("build: {}", names.join(" "));

    tracing::info!("reading the supermin appliance");
    let inputs = kiln_inputs::read_inputs(&opts.inputs)?;

    let mut resolved = kiln_fileset::resolve(
        &inputs,
        &Options {
            dpkg_root: opts.dpkg_root.clone(),
        },
    )?;
    if opts.include_packagelist {
        let data = kiln_fileset::resolve::packagelist(&resolved.packages);
        resolved
            .builder
            .add_bytes("/packagelist".as_ref(), data, Meta::new(0o644))?;
    }
    let kernel = match opts.format {
        Format::Ext2 => {
            let k = kiln_kernel::choose(&opts.host_cpu, &opts.kernel_env, &opts.kernel_roots)?;
            tracing::info!(
                "kernel: {} (version {}, modules {})",
                k.path.display(),
                k.version,
                k.modules.display()
            );
            let dest = Path::new("/lib/modules").join(&k.version);
            resolved
                .builder
                .add_host_tree(&k.modules, &dest)
                .map_err(|source| BuildError::Modules {
                    path: k.modules.clone(),
                    source,
                })?;
            Some(k)
        }
        Format::Chroot => None,
    };
    let set = resolved.builder.finish()?;
    let mut report = BuildReport {
        counts: resolved.counts,
        packages: resolved.packages,
        entries: set.len(),
        content_bytes: set.content_bytes(),
        chroot: None,
        kernel: None,
        image: None,
        initrd: None,
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
            report.chroot = Some(kiln_fileset::write_chroot(&set, &opts.output)?);
        }
        Format::Ext2 => {
            let Some(k) = kernel else {
                unreachable!("the kernel is chosen above for ext2")
            };
            let staging = kiln_outdir::Staging::new(&opts.output)?;
            let dir = staging.path();
            kiln_kernel::install(&k, dir, opts.copy_kernel)?;
            let mut io = kiln_image::ImageOptions::default();
            if let Some(size) = opts.size {
                io.size = size;
            }
            tracing::info!("ext2: writing the root image");
            let img = kiln_image::write_image(&set, &dir.join("root"), &io)?;
            tracing::info!("ext2: root UUID {}", img.uuid_string());
            let initrd = kiln_initrd::build(&k.modules, &dir.join("initrd"))?;
            tracing::info!(
                "ext2: wrote {} modules to the mini initrd ({} bytes)",
                initrd.modules.len(),
                initrd.bytes
            );
            staging.publish()?;
            report.kernel = Some(k);
            report.image = Some(img);
            report.initrd = Some(initrd);
        }
    }
    Ok(report)
}
