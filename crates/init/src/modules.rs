//! Loading the initrd's kernel modules from the list `/modules` (written by
//! kiln-initrd), in the order and stages the list gives.

use std::fs;
use std::time::Duration;

use crate::Log;
use crate::root::{Root, root_visible_within};

/// Load the modules listed in `/modules` in order. A line `- MS` ends a stage: if the
/// root is visible by then (checked for up to MS milliseconds, [`STAGE_GRACE`] if
/// absent, as SCSI and ATA scans run asynchronously), the remaining stages (drivers for
/// other buses) are skipped unless `all` is set. Returns (loaded, failed, skipped).
pub(crate) fn load_modules(log: &Log, root: Option<&Root>, all: bool) -> (usize, usize, usize) {
    let list = match fs::read_to_string("/modules") {
        Ok(s) => s,
        Err(e) => {
            log.warn(&format!("cannot read /modules: {e}; loading no modules"));
            return (0, 0, 0);
        }
    };
    let lines: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for (i, name) in lines.iter().enumerate() {
        if let Some(rest) = name.strip_prefix('-') {
            let grace = rest
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .unwrap_or(STAGE_GRACE);
            if let Some(r) = root
                && !all
                && root_visible_within(r, grace)
            {
                let skipped = lines[i..].iter().filter(|l| !l.starts_with('-')).count();
                log.info(&format!(
                    "root visible; skipping {skipped} modules for other buses (kiln.allmodules loads them)"
                ));
                return (ok, failed, skipped);
            }
            continue;
        }
        let path = format!("/{name}");
        let res = fs::File::open(&path)
            .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
            .and_then(|f| rustix::system::finit_module(&f, c"", 0));
        if log.debug {
            log.info(&format!("module {name}: {res:?}"));
        }
        match res {
            Ok(()) => ok += 1,
            // Built in or already loaded: nothing to do.
            Err(rustix::io::Errno::EXIST) => ok += 1,
            Err(e) => {
                failed += 1;
                log.warn(&format!("module {name}: {e}"));
            }
        }
    }
    (ok, failed, 0)
}

/// How long a stage boundary without its own grace time waits for the root before
/// loading the next stage.
const STAGE_GRACE: Duration = Duration::from_millis(100);
