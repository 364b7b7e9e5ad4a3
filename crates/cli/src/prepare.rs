//! `kiln prepare`: write a supermin appliance (supermin.d) from package names.

use std::path::PathBuf;

use anyhow::Context;

/// Write a supermin.d for the given packages (`supermin --prepare`): a `packages` list
/// and `base.tar.gz` with the configuration files of the packages and their dependencies,
/// taken from the installed system. `kiln build` turns the result into an appliance.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  kiln prepare -o /tmp/bash.d bash coreutils\n  kiln build -f ext2 /tmp/bash.d -o /tmp/appliance"
)]
pub struct Args {
    /// Output directory; replaced atomically if it exists.
    #[arg(short = 'o', value_name = "DIR")]
    output: PathBuf,

    /// Print what was written as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Read the installed system below DIR instead of `/` (package database, files,
    /// /boot, /lib/modules).
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,

    /// Installed package names (dependencies are resolved at build time).
    #[arg(value_name = "PACKAGE", required = true)]
    packages: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.json {
        crate::locate::json_path(&args.output)?;
    }
    let mut opts = kiln::prepare::PrepareOptions::default();
    if let Some(dir) = args.sysroot {
        opts.root = kiln::Sysroot::open(&dir).context("--sysroot")?.root;
    }
    // The supermin.d replaces -o: it must not be, hold or lie inside the system read.
    kiln::guard::check(
        &[kiln::guard::Named::new(&args.output, "the output")],
        &[kiln::guard::Named::new(&opts.root, "the sysroot")],
    )?;
    let r = kiln::prepare::prepare(&args.packages, &args.output, &opts)
        .with_context(|| format!("preparing {}", args.output.display()))?;
    if args.json {
        let v = serde_json::json!({
            "output": crate::locate::json_path(&args.output)?,
            "packages": r.packages,
            "missing": r.missing,
            "closure": r.closure,
            "config_files": r.config_files,
            // Informational: a name that is not UTF-8 is shown with U+FFFD and flagged.
            "unreadable": r.unreadable.iter().map(|(p, e)| match p.to_str() {
                Some(s) => serde_json::json!({"path": s, "error": e}),
                None => serde_json::json!({"path": p.to_string_lossy(), "lossy": true, "error": e}),
            }).collect::<Vec<_>>(),
        });
        println!("{v}");
    }
    Ok(())
}
