//! `kiln gc`: clean the per-user appliance cache, and the uncompressed kernels `kiln
//! run` extracted beside it ([`crate::kernels`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::SystemTime;

use kiln::cache::{Cache, DEFAULT_KEEP, GcPolicy};

use crate::size::{human, parse as parse_size};

use crate::kernels;

/// Remove pins of exited processes, leftovers of interrupted builds, and the least
/// recently used appliances beyond --keep / --max-size. An appliance pinned by a
/// running process is never removed. Then the uncompressed kernels `kiln run`
/// extracted whose kernel is in no appliance left, once unused for 10 minutes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cache root; the cache is DIR/.guestfs-$EUID.
    #[arg(long, value_name = "DIR")]
    cachedir: Option<PathBuf>,

    /// Keep the appliances of at most N sources (a supermin.d with its options), the
    /// most recently used (default 4, unless --max-size is given). Older builds of a
    /// source go anyway once nothing pins them.
    #[arg(long, value_name = "N")]
    keep: Option<usize>,

    /// Keep at most this much disk space of appliances (e.g. 2G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,

    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cache = match &args.cachedir {
        Some(d) => Cache::open(d)?,
        None => Cache::open_default()?,
    };
    let policy = GcPolicy {
        keep: args.keep.or(if args.max_size.is_none() {
            Some(DEFAULT_KEEP)
        } else {
            None
        }),
        max_size: args.max_size,
    };
    let r = cache.gc(&policy)?;

    // Extracted kernels follow their appliances: kept while one that is left (pinned or
    // within the bounds) has that kernel.
    let kdir = kernels::dir(&kernels::root(args.cachedir.as_deref()));
    let used: HashSet<String> = if kdir.exists() {
        kernels::users(&cache, &cache.list()?).into_keys().collect()
    } else {
        HashSet::new()
    };
    let k = match kiln_boot::vmlinux::remove_unused(&kdir, &used, SystemTime::now()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "kiln: warning: {}: {e}; its kernels were not collected",
                kdir.display()
            );
            Vec::new()
        }
    };
    let kfreed: u64 = k.iter().map(|x| x.size).sum();
    let freed = r.freed + kfreed;
    if args.json {
        let v = serde_json::json!({
            "dead_pins": r.dead_pins,
            "debris": r.debris,
            "removed": r.removed.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "vmlinux_removed": k.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            "freed": freed,
            "slots": r.slots,
            "bytes": r.bytes,
        });
        println!("{v}");
    } else {
        println!(
            "removed {} dead pins, {} leftovers, {} appliances, {} extracted kernels ({} freed); {} appliances kept",
            r.dead_pins,
            r.debris,
            r.removed.len(),
            k.len(),
            human(freed),
            r.slots
        );
    }
    Ok(())
}
