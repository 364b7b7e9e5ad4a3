//! Write a file set as an ext2 image, for benchmarks and for poking at images by hand.
//!
//! `write-tree SRC OUT [SIZE]`: the host directory tree SRC becomes the image's root.
//! `write-tree --supermin-d DIR OUT [SIZE]`: the file set of a supermin appliance
//! (DIR = e.g. libguestfs's supermin.d, plus the newest kernel's modules tree), as the
//! build pipeline makes it.
//!
//! `write-tree --supermin-d DIR --chroot OUTDIR`: write that set as a directory tree
//! instead (the same files, for comparing with `cp -a` and `mke2fs -d`).
//!
//! Prints the time of making the set and of writing the image, and the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn newest_modules() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/lib/modules")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("modules.dep").exists())
        .collect();
    v.sort();
    v.pop()
        .ok_or_else(|| "no kernel modules in /lib/modules".into())
}

/// SIZE as bytes with an optional K, M or G suffix (binary units); the kiln command line
/// has the full grammar.
fn parse_size(s: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse()?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("size {s} is too large").into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (set_src, rest) = match args.first().map(String::as_str) {
        Some("--supermin-d") if args.len() >= 3 => ((true, &args[1]), &args[2..]),
        Some(_) if args.len() >= 2 => ((false, &args[0]), &args[1..]),
        _ => return Err("usage: write-tree [--supermin-d] SRC OUT [SIZE]".into()),
    };
    let chroot = rest[0] == "--chroot" && rest.len() >= 2;
    let mut opts = kiln_image::ImageOptions::default();
    if let Some(s) = rest.get(1).filter(|_| !chroot) {
        opts.size = parse_size(s)?;
    }
    if let Ok(t) = std::env::var("KILN_IMAGE_THREADS") {
        opts.threads = t.parse()?;
    }
    let t0 = Instant::now();
    let set = if set_src.0 {
        let inputs = kiln_inputs::read_inputs(&[PathBuf::from(set_src.1)])?;
        let db = kiln_packages::open(&kiln_packages::Sysroot::default())?;
        let mut r = kiln_fileset::resolve(&inputs, db.as_ref(), &kiln_fileset::Options::default())?;
        let m = newest_modules()?;
        r.builder.add_host_tree(&m, &m)?;
        r.builder.finish()?
    } else {
        let entries = kiln_fileset::scan::scan_tree(Path::new(set_src.1), Path::new("/"))?;
        kiln_fileset::FileSet::new(entries)?
    };
    let t1 = Instant::now();
    if chroot {
        let st = kiln_image::chroot::write_chroot(&set, Path::new(&rest[1]))?;
        eprintln!("chroot: {st:?}");
        return Ok(());
    }
    let report = kiln_image::write_image(&set, Path::new(&rest[0]), &opts)?;
    let t2 = Instant::now();
    eprintln!(
        "set {:.3}s, write {:.3}s; {} entries, {} data bytes; uuid {}; blocks {}/{}, inodes {}/{}, fallback copy: {}",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        set.len(),
        report.data_bytes,
        report.uuid_string(),
        report.blocks_used,
        report.blocks_count,
        report.inodes_used,
        report.inodes_count,
        report.used_fallback_copy,
    );
    Ok(())
}
