//! The uncompressed kernels `kiln run` keeps beside the appliance cache
//! (`kiln_boot::vmlinux`, `.kiln-vmlinux-$EUID`, one per bzImage): which appliances use
//! each, for `kiln cache ls` and `kiln gc`. An extracted kernel is named by the hash of
//! its bzImage, so it belongs to the appliances whose kernel file hashes the same.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln::cache::{Cache, SlotInfo};

/// The cache root: `--cachedir`, else the cache's default.
pub fn root(cachedir: Option<&Path>) -> PathBuf {
    cachedir
        .map(Path::to_path_buf)
        .unwrap_or_else(kiln::cache::default_root)
}

/// The extracted-kernel directory beside the cache under `root`.
pub fn dir(root: &Path) -> PathBuf {
    kiln_boot::state_dir(root)
}

/// For the appliances in `slots`: the extracted kernel name of each one's kernel, and
/// the keys of the appliances using it.
pub fn users(cache: &Cache, slots: &[SlotInfo]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for s in slots {
        // A slot removed meanwhile has no kernel to keep.
        if let Ok(n) = kiln_boot::vmlinux::name_for(&cache.slot_kernel(&s.key)) {
            out.entry(n).or_default().push(s.key.as_str().to_string());
        }
    }
    out
}

/// `last_use` as "N s/m/h/d ago".
pub fn ago(t: std::time::SystemTime) -> String {
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match ago {
        0..=119 => format!("{ago}s ago"),
        120..=7199 => format!("{}m ago", ago / 60),
        7200..=172_799 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86400),
    }
}
