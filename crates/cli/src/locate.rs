//! `kiln locate`: find (building and caching if needed) the appliance to boot, and print
//! its paths pinned to the calling shell.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;

use kiln_size::parse as parse_size;

/// Locate the appliance on the search path and print kernel, initrd and root.
///
/// The search path is --path, else LIBGUESTFS_PATH, else libguestfs's default
/// directories; each element is tried for a supermin appliance (built once and cached
/// under --cachedir / LIBGUESTFS_CACHEDIR / TMPDIR / /var/tmp), then a fixed appliance,
/// then an old-style one. The printed files of a supermin appliance are hard links
/// private to the parent process (the shell running kiln, or --pin-to): they stay
/// exactly as they are until that process exits, whatever is rebuilt meanwhile.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Output: three lines, the kernel, initrd and root paths (the root line is empty \
for an old-style appliance); with --json one object {kernel, initrd, root, root_uuid, key, built}.\n\n\
Example:\n  { read -r kernel; read -r initrd; read -r root; } < <(kiln locate)"
)]
pub struct Args {
    /// Search path (colon-separated; an empty element means the current directory).
    #[arg(long, value_name = "PATH")]
    path: Option<OsString>,

    /// Cache root; the cache is DIR/.guestfs-$EUID.
    #[arg(long, value_name = "DIR")]
    cachedir: Option<PathBuf>,

    /// Pin the files to this process instead of kiln's parent.
    #[arg(long, value_name = "PID")]
    pin_to: Option<u32>,

    /// Print JSON.
    #[arg(long)]
    json: bool,

    /// Host CPU of the appliance (kernel choice).
    #[arg(long, value_name = "ARCH", default_value = std::env::consts::ARCH)]
    host_cpu: String,

    /// Size of the root filesystem image (e.g. 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,

    /// Rebuild even if the appliance is cached.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pin_to = match args.pin_to {
        Some(p) => p,
        None => rustix::process::getppid()
            .map(|p| p.as_raw_nonzero().get() as u32)
            .context("kiln has no parent process to pin the appliance to; use --pin-to PID")?,
    };
    let key = kiln::key::KeyOptions {
        host_cpu: args.host_cpu,
        size: args.size,
        ..Default::default()
    };
    let opts = kiln::LocateOptions {
        path: args.path,
        cachedir: args.cachedir,
        pin_to: Some(pin_to),
        force_rebuild: args.force,
        key,
        ..Default::default()
    };
    let a = kiln::locate(&opts)?;
    let root = a.root().map(|r| r.display().to_string());
    if args.json {
        let v = serde_json::json!({
            "kernel": a.kernel(),
            "initrd": a.initrd(),
            "root": root,
            "root_uuid": a.root_uuid(),
            "key": a.key().map(|k| k.as_str()),
            "built": a.built(),
        });
        println!("{v}");
    } else {
        println!("{}", a.kernel().display());
        println!("{}", a.initrd().display());
        println!("{}", root.unwrap_or_default());
    }
    // The pin belongs to the parent; it must outlive us.
    a.keep();
    Ok(())
}
