//! `kiln checksum`: print the cache key of a supermin appliance.

use std::path::PathBuf;

use crate::size::parse as parse_size;

/// Print the checksum kiln caches SUPERMIN_D's appliance under: it changes exactly when
/// something that ends up in the appliance changes (supermin.d content, host files,
/// the package database, the kernel, options, euid/egid).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The supermin.d directory.
    #[arg(value_name = "SUPERMIN_D")]
    supermin_d: PathBuf,

    /// Host CPU of the appliance (kernel choice).
    #[arg(long, value_name = "ARCH", default_value = std::env::consts::ARCH)]
    host_cpu: String,

    /// Size of the root filesystem image (e.g. 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,

    /// Read the installed system below DIR instead of `/` (package database, files,
    /// /boot, /lib/modules).
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,

    /// Print `{"key": …, "supermin_d": …}` as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.json {
        crate::locate::json_path(&args.supermin_d)?;
    }
    let mut opts = kiln::key::KeyOptions {
        host_cpu: args.host_cpu,
        size: args.size,
        ..Default::default()
    };
    if let Some(dir) = args.sysroot {
        opts.set_sysroot(anyhow::Context::context(
            kiln::Sysroot::open(&dir),
            "--sysroot",
        )?);
    }
    let key = kiln::key::appliance_key(&args.supermin_d, &opts)?;
    if args.json {
        let v = serde_json::json!({ "key": key.as_str(), "supermin_d": crate::locate::json_path(&args.supermin_d)? });
        println!("{v}");
    } else {
        println!("{key}");
    }
    Ok(())
}
