//! Which modules go into the initrd, and what each must wait for when the init loads
//! them concurrently: supermin's module patterns (the floor) plus what kiln adds, each
//! with its prerequisites (hard dependencies, softdeps, and the order that gives disks
//! supermin's names).
//!
//! Invariants: every selected module's hard dependencies are selected too; the list is
//! in an order that satisfies every prerequisite (a sequential loader can go line by
//! line), prerequisites name only selected modules and never form a cycle; the rules
//! here are constants, covered by [`crate::fingerprint`], so a cache key changes
//! whenever they do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::Result;
use crate::moddb::{ModuleDb, module_name};

/// supermin's module patterns (fnmatch on the basename, as supermin 5's
/// `src/format_ext2_initrd.ml` has them): the
/// floor of what kiln's initrd holds. libguestfs depends on it: its `/init` runs
/// `udevadm trigger` with the default `change` action, which does not autoload drivers,
/// so e.g. virtio_console (its channel) must be loaded by the initrd.
pub const SUPERMIN_PATTERNS: &[&str] = &[
    "ext2.ko*",
    "ext4.ko*",
    "virtio*.ko*",
    "libata*.ko*",
    "piix*.ko*",
    "sd_mod.ko*",
    "ata_piix.ko*",
    "crc*.ko*",
    "libcrc*.ko*",
    "ibmvscsic.ko*",
    "ibmvscsi.ko*",
    "libnvdimm.ko*",
    "nd_pmem.ko*",
    "nd_btt.ko*",
    "nfit.ko*",
];
/// supermin's exclusion.
pub const EXCLUDED_PATTERNS: &[&str] = &["virtio-gpu.ko*"];

/// Modules kiln loads beyond supermin's patterns: AHCI, so that SATA disks on q35
/// machines are visible too.
pub const KILN_PATTERNS: &[&str] = &["ahci.ko*"];

/// Started first, so that the slow, partly sleeping probes of the ATA ports (IDE on
/// i440fx, SATA on q35) and the virtio PCI devices overlap the loading of the rest.
pub const EARLY: &[&str] = &["ata_piix", "ahci", "virtio_pci"];

/// Extra ordering, `(module, loaded after these)`, so that disks get the names they get
/// with supermin's initrd (which loads ata_piix, then sd_mod, then virtio_scsi, and
/// binds virtio devices last): disks on the ATA controllers are bound by sd_mod before
/// any virtio-scsi disk appears, so an IDE or SATA disk is `sda` and virtio-scsi disks
/// follow. Without it the two would race when loaded concurrently.
pub const ORDER_AFTER: &[(&str, &[&str])] = &[
    ("sd_mod", &["ata_piix", "ahci"]),
    ("virtio_scsi", &["sd_mod"]),
];

/// fnmatch(3) of a name (no `/` in it) against a supermin pattern.
fn glob_match(pat: &str, s: &str) -> bool {
    kiln_pattern::fnmatch(pat.as_bytes(), s.as_bytes())
}

fn basename_matches(key: &str, pats: &[&str]) -> bool {
    let base = key.rsplit('/').next().unwrap_or(key);
    pats.iter().any(|p| glob_match(p, base))
}

/// The modules of an initrd: modules.dep keys (relative to the modules tree) in a load
/// order that satisfies every prerequisite, and for each key the keys it must wait for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub order: Vec<String>,
    pub prerequisites: BTreeMap<String, Vec<String>>,
}

/// The modules of `modules_dir` kiln puts into the initrd (see [`Selection`]).
pub fn select(modules_dir: &Path) -> Result<Selection> {
    Ok(ModuleDb::load(modules_dir)?.selection())
}

/// [`select`]'s load order alone.
pub fn select_modules(modules_dir: &Path) -> Result<Vec<String>> {
    Ok(select(modules_dir)?.order)
}

impl ModuleDb {
    /// See [`select`].
    pub fn selection(&self) -> Selection {
        let wanted: Vec<String> = self
            .deps
            .keys()
            .filter(|k| {
                basename_matches(k, SUPERMIN_PATTERNS) || basename_matches(k, KILN_PATTERNS)
            })
            .filter(|k| !basename_matches(k, EXCLUDED_PATTERNS))
            .cloned()
            .collect();
        // Depth-first from the early modules, then the rest: the preferred order.
        let mut preferred = self.closure(EARLY);
        let mut seen: BTreeSet<String> = preferred.iter().cloned().collect();
        for k in self.closure_keys(wanted) {
            if seen.insert(k.clone()) {
                preferred.push(k);
            }
        }
        let by_name: BTreeMap<String, &String> =
            preferred.iter().map(|k| (module_name(k), k)).collect();
        let mut pre: BTreeMap<String, BTreeSet<String>> = preferred
            .iter()
            .map(|k| {
                let b = self.before(k).into_iter().filter(|d| seen.contains(d));
                (k.clone(), b.collect())
            })
            .collect();
        for k in &preferred {
            for later in self.after(k).into_iter().filter(|d| seen.contains(d)) {
                pre.entry(later).or_default().insert(k.clone());
            }
        }
        for (m, afters) in ORDER_AFTER {
            if let Some(&m) = by_name.get(*m) {
                for a in afters.iter().filter_map(|a| by_name.get(*a)) {
                    pre.entry(m.clone()).or_default().insert((*a).clone());
                }
            }
        }
        // Stable topological order: always the first module in the preferred order
        // whose prerequisites are placed. A cycle (only softdeps can make one) is broken
        // at its first module, and the edges that close it are dropped, so the init can
        // never wait forever.
        let mut order: Vec<String> = Vec::with_capacity(preferred.len());
        let mut placed: BTreeSet<String> = BTreeSet::new();
        let mut left = preferred;
        while !left.is_empty() {
            let i = left
                .iter()
                .position(|k| pre[k].iter().all(|p| placed.contains(p)))
                .unwrap_or(0);
            let k = left.remove(i);
            if let Some(p) = pre.get_mut(&k) {
                p.retain(|d| placed.contains(d));
            }
            placed.insert(k.clone());
            order.push(k);
        }
        let prerequisites = pre
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        Selection {
            order,
            prerequisites,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/scsi/scsi_mod.ko:
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/gpu/drm/virtio/virtio-gpu.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/net/dummy.ko:
";

    #[test]
    fn every_module_after_its_prerequisites_and_disks_in_supermins_order() {
        let db = ModuleDb::new(
            DEP,
            "softdep ext4 pre: crypto-crc32c\n",
            "alias crypto-crc32c crc32c_generic\n",
        );
        let sel = db.selection();
        let names: Vec<String> = sel.order.iter().map(|k| module_name(k)).collect();
        let pos = |n: &str| names.iter().position(|g| g == n).unwrap();
        // supermin's patterns plus ahci, minus virtio-gpu; nothing else.
        assert!(
            !names.contains(&"dummy".to_string()) && !names.contains(&"virtio_gpu".to_string())
        );
        assert_eq!(names.len(), 11, "{names:?}");
        // The early ones lead (after their own dependencies).
        assert!(pos("ata_piix") < pos("ext4") && pos("virtio_pci") < pos("ext4"));
        for (i, k) in sel.order.iter().enumerate() {
            for p in &sel.prerequisites[k] {
                let j = sel.order.iter().position(|o| o == p).unwrap();
                assert!(j < i, "{p} must come before {k}");
            }
        }
        let pre = |n: &str| -> Vec<String> {
            sel.prerequisites[&sel.order[pos(n)]]
                .iter()
                .map(|k| module_name(k))
                .collect()
        };
        assert_eq!(pre("ext4"), ["crc32c_generic", "jbd2"]);
        assert_eq!(pre("sd_mod"), ["ahci", "ata_piix", "scsi_mod"]);
        assert_eq!(pre("virtio_scsi"), ["scsi_mod", "sd_mod", "virtio"]);
    }

    #[test]
    fn softdep_cycles_are_broken() {
        let db = ModuleDb::new(
            "a/ext4.ko:\na/crc32c_generic.ko:\n",
            "softdep ext4 pre: crc32c_generic\nsoftdep crc32c_generic pre: ext4\n",
            "",
        );
        let sel = db.selection();
        assert_eq!(sel.order.len(), 2);
        let first = &sel.order[0];
        assert!(sel.prerequisites[first].is_empty(), "{sel:?}");
    }
}
