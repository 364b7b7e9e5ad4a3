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
    after_help = "Example:\n  kiln build -v -f chroot /usr/lib/x86_64-linux-gnu/guestfs/supermin.d -o /tmp/appliance"
)]
pub struct Args {
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum)]
    format: FormatArg,

    /// Output directory; replaced atomically if it exists.
    #[arg(short = 'o', value_name = "DIR")]
    output: PathBuf,

    /// Add /packagelist: the resolved packages, one `name_version_arch` per line.
    #[arg(long)]
    include_packagelist: bool,

    /// Stop after resolving the file set (nothing is written); for benchmarks.
    #[arg(long, hide = true)]
    resolve_only: bool,

    /// Root directory of the dpkg database to use instead of `/`.
    #[arg(long, value_name = "DIR", hide = true, default_value = "/")]
    dpkg_root: PathBuf,

    /// supermin.d directories or input files.
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let format = match args.format {
        FormatArg::Chroot => kiln::Format::Chroot,
    };
    let mut opts = kiln::BuildOptions::new(args.inputs, format, args.output);
    opts.include_packagelist = args.include_packagelist;
    opts.resolve_only = args.resolve_only;
    opts.dpkg_root = args.dpkg_root;
    kiln::build(&opts).with_context(|| format!("building {}", opts.output.display()))?;
    Ok(())
}
