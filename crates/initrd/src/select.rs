//! Which modules go into the initrd and in which stages (see the crate doc): supermin's
//! module patterns as the floor, the root's modules first, other disk buses after.
//!
//! Invariant: the rules here are constants, covered by [`crate::fingerprint`], so a cache
//! key changes whenever they do.

use std::collections::BTreeSet;
use std::path::Path;

use crate::Result;
use crate::moddb::ModuleDb;

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

/// Loaded first, always: the root filesystem (ext4 mounts ext2/ext3 too; crc32c_generic
/// named because ext4's softdep is only a hint) and virtio-blk (`kiln boot`), together
/// with the rest of supermin's list that is not a disk bus ([`BUS_STAGES`]).
pub const ROOT_MODULES: &[&str] = &["crc32c_generic", "ext4", "ext2", "virtio_pci", "virtio_blk"];

/// Drivers for the other root disk buses, one stage each, with how long the init waits
/// for the root to appear after loading the stage before it loads the next one (their
/// disks are found asynchronously). At each stage boundary the init stops loading if
/// the root is already visible (`kiln.allmodules` loads them anyway): probing the ATA
/// controller alone costs ~0.2 s under TCG, SCSI ~50 ms, and an appliance whose root is
/// on virtio-blk needs neither to boot. libguestfs's root is on virtio-scsi: it gets
/// stage 0 and SCSI.
pub const BUS_STAGES: &[(&[&str], u32)] = &[
    // SCSI disks on virtio-scsi (libguestfs attaches every disk there)
    (&["sd_mod.ko*", "virtio_scsi.ko*"], 250),
    // ATA/SATA (kiln adds ahci for q35 machines)
    (
        &["libata*.ko*", "piix*.ko*", "ata_piix.ko*", "ahci.ko*"],
        250,
    ),
    // NVDIMM, virtio-pmem, and IBM vSCSI (ppc64)
    (
        &[
            "libnvdimm.ko*",
            "nd_pmem.ko*",
            "nd_btt.ko*",
            "nfit.ko*",
            "virtio_pmem.ko*",
            "nd_virtio.ko*",
            "ibmvscsic.ko*",
            "ibmvscsi.ko*",
        ],
        0,
    ),
];

/// Lines in `/modules` that separate stages start with this, followed by a space and
/// the grace time in milliseconds (see [`BUS_STAGES`]).
pub const STAGE_SEPARATOR: &str = "-";

/// fnmatch(3) of a name (no `/` in it) against a supermin pattern.
fn glob_match(pat: &str, s: &str) -> bool {
    kiln_pattern::fnmatch(pat.as_bytes(), s.as_bytes())
}

fn basename_matches(key: &str, pats: &[&str]) -> bool {
    let base = key.rsplit('/').next().unwrap_or(key);
    pats.iter().any(|p| glob_match(p, base))
}

/// The modules of `modules_dir` kiln puts into the initrd, in load order (modules.dep
/// keys, relative to `modules_dir`), in stages: first [`ROOT_MODULES`] and everything
/// else supermin loads except other root buses, then one stage per [`BUS_STAGES`]
/// entry. A module appears only in the first stage that needs it; empty stages are kept.
pub fn select_stages(modules_dir: &Path) -> Result<Vec<Vec<String>>> {
    let db = ModuleDb::load(modules_dir)?;
    Ok(db.stages())
}

impl ModuleDb {
    /// See [`select_stages`].
    pub fn stages(&self) -> Vec<Vec<String>> {
        let bus: Vec<&str> = BUS_STAGES
            .iter()
            .flat_map(|(p, _)| p.iter().copied())
            .collect();
        let rest: Vec<String> = self
            .deps
            .keys()
            .filter(|k| basename_matches(k, SUPERMIN_PATTERNS))
            .filter(|k| !basename_matches(k, EXCLUDED_PATTERNS))
            .filter(|k| !basename_matches(k, &bus))
            .cloned()
            .collect();
        let mut first = self.closure(ROOT_MODULES);
        first.extend(self.closure_keys(rest));
        let mut all = vec![first];
        for (pats, _) in BUS_STAGES {
            let keys = self
                .deps
                .keys()
                .filter(|k| basename_matches(k, pats))
                .cloned()
                .collect();
            all.push(self.closure_keys(keys));
        }
        let mut seen = BTreeSet::new();
        all.into_iter()
            .map(|st| st.into_iter().filter(|k| seen.insert(k.clone())).collect())
            .collect()
    }
}

/// [`select_stages`] flattened: every module in load order.
pub fn select_modules(modules_dir: &Path) -> Result<Vec<String>> {
    Ok(select_stages(modules_dir)?.concat())
}
