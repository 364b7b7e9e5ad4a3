//! The build pipeline: inputs → file set → output, one call per stage.
//!
//! ```text
//! read_inputs ─► resolve (dpkg, globs, excludes, munging, base images)
//!             ─► [+ /packagelist] ─► finish (validated FileSet) ─► write (chroot)
//! ```
//! The ext2 format adds its stages (kernel, modules tree via
//! `SetBuilder::add_host_tree`, image, initrd) between `resolve` and `write`.

use std::path::PathBuf;

use kiln_fileset::chroot::{ChrootError, ChrootStats};
use kiln_fileset::{Counts, Meta, Options, ResolveError, SetError};
use kiln_inputs::InputError;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain directory tree (supermin's `chroot`, `fs`, `filesystem`).
    Chroot,
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
    let set = resolved.builder.finish()?;
    let mut report = BuildReport {
        counts: resolved.counts,
        packages: resolved.packages,
        entries: set.len(),
        content_bytes: set.content_bytes(),
        chroot: None,
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
    }
    Ok(report)
}
