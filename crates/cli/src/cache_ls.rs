//! `kiln cache ls`: the appliances in the per-user cache.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln::cache::Cache;

use kiln_size::human;

/// Inspect the per-user appliance cache.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// List cached appliances: key, size, last use and the processes pinning them.
    Ls {
        /// Cache root; the cache is DIR/.guestfs-$EUID.
        #[arg(long, value_name = "DIR")]
        cachedir: Option<PathBuf>,
        /// Print JSON (one array of {key, size, last_use, pinned_by}; last_use in
        /// seconds since the epoch).
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
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    if json {
        let v: Vec<_> = slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key": s.key.as_str(),
                    "size": s.size,
                    "last_use": secs(s.last_use),
                    "pinned_by": s.pinned_by,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!(
        "{:<32}  {:>10}  {:>12}  PINNED BY",
        "KEY", "SIZE", "LAST USE"
    );
    let now = SystemTime::now();
    for s in slots {
        let ago = now
            .duration_since(s.last_use)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let ago = match ago {
            0..=119 => format!("{ago}s ago"),
            120..=7199 => format!("{}m ago", ago / 60),
            7200..=172_799 => format!("{}h ago", ago / 3600),
            _ => format!("{}d ago", ago / 86400),
        };
        let pins: Vec<String> = s.pinned_by.iter().map(|p| p.to_string()).collect();
        println!(
            "{:<32}  {:>10}  {:>12}  {}",
            s.key,
            human(s.size),
            ago,
            pins.join(",")
        );
    }
    Ok(())
}
