//! Write a host directory tree as an ext2 image: `write-tree SRC OUT [SIZE]`.
//!
//! Used by scripts/bench-image and for poking at images by hand. Prints the report and
//! the time of the scan and of the write.

use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: write-tree SRC OUT [SIZE]".into());
    }
    let mut opts = kiln_image::ImageOptions::default();
    if let Some(s) = args.get(3) {
        opts.size = kiln_image::parse_size(s)?;
    }
    if let Ok(t) = std::env::var("KILN_IMAGE_THREADS") {
        opts.threads = t.parse()?;
    }
    let t0 = Instant::now();
    let entries = kiln_fileset::scan::scan_tree(Path::new(&args[1]), Path::new("/"))?;
    let set = kiln_fileset::FileSet::new(entries)?;
    let t1 = Instant::now();
    let report = kiln_image::write_image(&set, Path::new(&args[2]), &opts)?;
    let t2 = Instant::now();
    eprintln!(
        "scan {:.3}s, write {:.3}s; {} entries, {} data bytes; uuid {}; blocks {}/{}, inodes {}/{}, fallback copy: {}",
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
