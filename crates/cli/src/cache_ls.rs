//! `kiln cache ls`: the appliances in the per-user cache, and the uncompressed kernels
//! `kiln run` extracted beside it ([`crate::kernels`]).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln::cache::Cache;

use crate::size::human;

use crate::kernels;

/// Inspect the per-user appliance cache.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// List cached appliances (key, size with their saved VM start states, the number
    /// of those states, last use, the processes pinning them) and
    /// the uncompressed kernels `kiln run` extracted beside them (name, size, last use,
    /// the appliances using them).
    Ls {
        /// Cache root; the cache is DIR/.guestfs-$EUID.
        #[arg(long, value_name = "DIR")]
        cachedir: Option<PathBuf>,
        /// Print JSON: one array of {kind, key, size, states, last_use, pinned_by}, kind
        /// "appliance" (first) or "vmlinux" (an extracted kernel, key its file name,
        /// with used_by: appliance keys); last_use in seconds since the epoch.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Sub::Ls { cachedir, json } = args.command;
    let cache = match &cachedir {
        Some(d) => Cache::open(d)?,
        None => Cache::open_default()?,
    };
    let slots = cache.list()?;
    let kdir = kernels::dir(&kernels::root(cachedir.as_deref()));
    let extracted = match kiln_boot::vmlinux::list(&kdir) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "kiln: warning: {}: {e}; its kernels are not listed",
                kdir.display()
            );
            Vec::new()
        }
    };
    let users = if extracted.is_empty() {
        Default::default()
    } else {
        kernels::users(&cache, &slots)
    };
    let used_by = |name: &str| users.get(name).cloned().unwrap_or_default();
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    if json {
        let mut v: Vec<_> = slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "kind": "appliance",
                    "key": s.key.as_str(),
                    "size": s.size,
                    "states": s.states,
                    "last_use": secs(s.last_use),
                    "pinned_by": s.pinned_by,
                })
            })
            .collect();
        v.extend(extracted.iter().map(|x| {
            serde_json::json!({
                "kind": "vmlinux",
                "key": x.name,
                "size": x.size,
                "last_use": secs(x.last_use),
                "pinned_by": [],
                "used_by": used_by(&x.name),
            })
        }));
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!(
        "{:<32}  {:>10}  {:>6}  {:>12}  PINNED BY",
        "KEY", "SIZE", "STATES", "LAST USE"
    );
    for s in slots {
        let pins: Vec<String> = s.pinned_by.iter().map(|p| p.to_string()).collect();
        println!(
            "{:<32}  {:>10}  {:>6}  {:>12}  {}",
            s.key,
            human(s.size),
            s.states,
            kernels::ago(s.last_use),
            pins.join(",")
        );
    }
    if !extracted.is_empty() {
        println!();
        println!(
            "{:<40}  {:>10}  {:>12}  USED BY (appliances)",
            format!("EXTRACTED KERNEL (in {})", kdir.display()),
            "SIZE",
            "LAST USE"
        );
        for x in &extracted {
            println!(
                "{:<40}  {:>10}  {:>12}  {}",
                x.name,
                human(x.size),
                kernels::ago(x.last_use),
                used_by(&x.name).join(",")
            );
        }
    }
    Ok(())
}
