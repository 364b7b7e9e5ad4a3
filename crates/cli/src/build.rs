//! `kiln build`: build an appliance from supermin appliance inputs.

use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// A directory tree (also accepted as `fs` and `filesystem`, as supermin does).
    #[value(alias = "fs", alias = "filesystem")]
    Chroot,
    /// A bootable appliance: OUT/kernel, OUT/initrd and OUT/root (ext2 image).
    Ext2,
}

/// Build an appliance from supermin appliance inputs (`supermin --build`).
///
/// Each INPUT is a supermin.d directory (its files are read in byte order of their
/// names) or a single input file. Files are recognised by content, optionally gzip-,
/// xz- or zstd-compressed: a tar archive is a base image; a list whose first line starts
/// with `/` lists host file globs, with `-` exclude patterns, with a letter or digit
/// package names; after the first line, empty lines and `#` comments are ignored.
/// Packages are resolved with their dependencies from the host's dpkg database; names
/// that are not installed, and host files this user cannot read, are reported on stderr
/// and left out.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kiln build -v -f chroot /usr/lib/x86_64-linux-gnu/guestfs/supermin.d -o /tmp/appliance\n  kiln build -f ext2 examples/hello/supermin.d -o /tmp/hello && kiln boot /tmp/hello"
)]
pub struct Args {
    /// Output format.
    #[arg(
        short = 'f',
        long = "format",
        value_enum,
        required_unless_present = "fixed"
    )]
    format: Option<FormatArg>,

    /// Output directory; replaced atomically if it exists.
    #[arg(short = 'o', value_name = "DIR", required_unless_present = "tar")]
    output: Option<PathBuf>,

    /// Write a libguestfs fixed appliance (implies `-f ext2`): README.fixed, kernel (a
    /// copy, not a link), initrd and root, for LIBGUESTFS_PATH or `kiln locate --path`.
    #[arg(long)]
    fixed: bool,

    /// With --fixed: also (or, without -o, only) write the appliance as a reproducible
    /// sparse tarball FILE (.tar, .tar.gz, .tar.xz or .tar.zst), entries under
    /// `appliance/`, times from SOURCE_DATE_EPOCH (else 0).
    #[arg(long, value_name = "FILE", requires = "fixed")]
    tar: Option<PathBuf>,

    /// Add /packagelist: the resolved packages, one `name_version_arch` per line.
    #[arg(long)]
    include_packagelist: bool,

    /// ext2: size of the root image: a number of bytes, optionally followed by b, K, M,
    /// G or T (`4G`, `512M`, `10737418240b`, as supermin; also `1.5GiB`, `4096`). The
    /// file is sparse.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = crate::size::parse)]
    size: u64,

    /// ext2: the CPU architecture whose kernel to pick (default: this machine's).
    #[arg(long, value_name = "ARCH")]
    host_cpu: Option<String>,

    /// ext2: copy the kernel into OUT instead of symlinking it.
    #[arg(long)]
    copy_kernel: bool,

    /// Print a summary of the build as JSON on stdout (see the README for the fields).
    #[arg(long)]
    json: bool,

    /// Stop after resolving the file set (nothing is written); for benchmarks.
    #[arg(long, hide = true)]
    resolve_only: bool,

    /// Build from the installed system below DIR instead of `/`: its package database,
    /// package files, hostfiles, /boot and /lib/modules.
    #[arg(long, value_name = "DIR", alias = "dpkg-root", default_value = "/")]
    sysroot: PathBuf,

    /// supermin.d directories or input files.
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<PathBuf>,
}

impl Args {
    /// True when `--json` was given (no progress display then).
    pub fn json(&self) -> bool {
        self.json
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.fixed && args.format == Some(FormatArg::Chroot) {
        anyhow::bail!("--fixed writes an ext2 appliance: leave out -f chroot");
    }
    let format = match args.format {
        Some(FormatArg::Chroot) => kiln::Format::Chroot,
        Some(FormatArg::Ext2) | None => kiln::Format::Ext2,
    };
    let output = match (&args.output, &args.tar) {
        (Some(o), _) | (None, Some(o)) => o.clone(),
        (None, None) => anyhow::bail!("no output: give -o DIR"),
    };
    if args.json {
        // Before any work: the summary names the output.
        crate::locate::json_path(&output)?;
    }
    let mut opts = kiln::BuildOptions::new(args.inputs, format, output);
    opts.include_packagelist = args.include_packagelist;
    opts.resolve_only = args.resolve_only;
    opts.set_sysroot(kiln::Sysroot::open(&args.sysroot).context("--sysroot")?);
    opts.size = args.size;
    opts.copy_kernel = args.copy_kernel;
    if let Some(cpu) = args.host_cpu {
        opts.host_cpu = cpu;
    }
    let started = std::time::Instant::now();
    if !args.fixed && !opts.resolve_only {
        // Before any work, and said plainly (the pipeline checks it again for library
        // callers, inside its "building OUT" context).
        kiln::guard::check(
            &[kiln::guard::Named::new(&opts.output, "the output")],
            &kiln::guard::build_inputs(&opts.inputs, &opts.sysroot),
        )?;
    }
    let report = if args.fixed {
        crate::fixed::run(&opts, args.output.as_deref(), args.tar.as_deref())?
    } else {
        kiln::build(&opts).with_context(|| format!("building {}", opts.output.display()))?
    };
    if args.json {
        println!(
            "{}",
            summary(&opts, &report, started.elapsed().as_secs_f64())?
        );
    }
    Ok(())
}

/// The `--json` summary; field names are documented in the README and stable.
fn summary(
    opts: &kiln::BuildOptions,
    r: &kiln::BuildReport,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    let ap = r.appliance.as_ref();
    let kernel = ap
        .map(|a| crate::locate::json_path(&a.kernel))
        .transpose()?;
    Ok(serde_json::json!({
        "format": match opts.format {
            kiln::Format::Chroot => "chroot",
            kiln::Format::Ext2 => "ext2",
        },
        "output": crate::locate::json_path(&opts.output)?,
        "written": !opts.resolve_only,
        "packages": r.packages.len(),
        "entries": r.entries,
        "content_bytes": r.content_bytes,
        "kernel": kernel,
        "kernel_version": ap.map(|a| &a.kernel_version),
        "root_uuid": ap.map(|a| &a.root_uuid),
        "root_blocks_used": ap.map(|a| a.image.blocks_used),
        "root_inodes_used": ap.map(|a| a.image.inodes_used),
        "root_size": ap.map(|a| a.image.size),
        "initrd_modules": ap.map(|a| a.initrd_modules.len()),
        "initrd_bytes": ap.map(|a| a.initrd_bytes),
        "seconds": seconds,
    }))
}
