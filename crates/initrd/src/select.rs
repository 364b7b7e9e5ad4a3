//! Which modules go into the initrd, and what each must wait for when the init loads
//! them concurrently: supermin's module patterns (the floor) plus what kiln adds, each
//! with its prerequisites (hard dependencies, softdeps, and the order that gives disks
//! supermin's names), and which of them are device drivers the init loads only when the
//! VM has a matching device (their *gate*).
//!
//! Gating: a driver for hardware the VM does not have binds nothing, so loading it only
//! costs time (under TCG most of the initrd phase is the kernel's work of loading
//! modules, signature check included). A module is gated when every device alias it has
//! is on a bus whose devices are all known when the init decides: PCI and ACPI (the
//! firmware's, enumerated before `/init` runs) and virtio (known once the virtio
//! transports are loaded, which a gated virtio driver therefore waits for). Everything
//! else is loaded as supermin loads it: libraries, filesystems, crc and crypto modules,
//! class drivers such as `sd_mod`, and any module another selected module depends on,
//! so skipping a driver never leaves a dependent without its symbols, and nothing that
//! is not tied to a device (e.g. `fuse`, which ntfs-3g needs in libguestfs's appliance)
//! is ever skipped. A device added later is still served: the appliance's udev loads its
//! driver from the root's modules tree, as for any hotplug.
//!
//! Invariants: every selected module's hard dependencies are selected too; the list is
//! in an order that satisfies every prerequisite (a sequential loader can go line by
//! line), prerequisites name only selected modules and never form a cycle; a gated
//! module is one no selected module hard-depends on; the rules here are constants,
//! covered by [`crate::fingerprint`], so a cache key changes whenever they do.

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

/// Buses whose devices gate drivers: `(alias prefix, sysfs buses whose devices'
/// `modalias` files the init matches such an alias against)`. ACPI IDs appear on the
/// `acpi` bus and on ACPI-enumerated `platform` devices.
pub const GATED_BUSES: &[(&str, &[&str])] = &[
    ("pci:", &["pci"]),
    ("virtio:", &["virtio"]),
    ("acpi:", &["acpi", "platform"]),
    ("acpi*:", &["acpi", "platform"]),
];

/// The modules that create virtio devices: a gated virtio driver decides after them.
pub const VIRTIO_TRANSPORTS: &[&str] = &["virtio_pci", "virtio_mmio"];

/// Is this modules.alias pattern one of a device (`BUS:…`), rather than a name for
/// modprobe (`fs-ext4`, `crypto-crc32c`, `char-major-10-229`, `devname:fuse`)?
fn is_device_alias(a: &str) -> bool {
    a.contains(':') && !a.starts_with("devname:") && !a.starts_with("symbol:")
}

/// The sysfs buses for a device alias, if its bus is gated.
fn gated_buses(alias: &str) -> Option<&'static [&'static str]> {
    GATED_BUSES
        .iter()
        .find(|(prefix, _)| alias.starts_with(prefix))
        .map(|(_, buses)| *buses)
}

/// When the init loads a gated module: only if a device on one of `buses` has a
/// `modalias` matching one of `aliases` (fnmatch, as modprobe matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gate {
    pub buses: Vec<String>,
    pub aliases: Vec<String>,
}

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
    /// The gated modules (see the module doc) and their gates.
    pub gates: BTreeMap<String, Gate>,
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
        let gates = self.gates(&preferred);
        let transports: Vec<&String> = VIRTIO_TRANSPORTS
            .iter()
            .filter_map(|t| by_name.get(*t).copied())
            .collect();
        for (k, g) in &gates {
            if g.buses.iter().any(|b| b == "virtio") {
                let p = pre.entry(k.clone()).or_default();
                p.extend(transports.iter().filter(|t| **t != k).map(|t| (*t).clone()));
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
            gates,
        }
    }

    /// The gate of each selected module that has one (see the module doc).
    fn gates(&self, selected: &[String]) -> BTreeMap<String, Gate> {
        // Who needs each selected module (modules.dep lists dependencies transitively).
        let mut users: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
        for k in selected {
            for d in self.deps.get(k).into_iter().flatten() {
                users.entry(d).or_default().push(k);
            }
        }
        let mut out = BTreeMap::new();
        for k in selected.iter().filter(|k| !users.contains_key(k)) {
            let aliases: Vec<&String> = self
                .module_aliases
                .get(&module_name(k))
                .into_iter()
                .flatten()
                .filter(|a| is_device_alias(a))
                .collect();
            let buses: Option<BTreeSet<&str>> =
                aliases
                    .iter()
                    .map(|a| gated_buses(a))
                    .try_fold(BTreeSet::new(), |mut set, b| {
                        set.extend(b?.iter().copied());
                        Some(set)
                    });
            if let Some(buses) = buses
                && !aliases.is_empty()
            {
                out.insert(
                    k.clone(),
                    Gate {
                        buses: buses.into_iter().map(str::to_string).collect(),
                        aliases: aliases.into_iter().cloned().collect(),
                    },
                );
            }
        }
        // A pure library (no alias at all: no device, no name modprobe or a filesystem
        // mount would ask for) serves only the modules that need it: when every one of
        // them is gated, it is loaded when one of them is, i.e. under the union of
        // their gates. modules.dep lists every module's dependencies transitively, so
        // one pass in dependency order settles chains (failover <- net_failover <-
        // virtio_net).
        for k in selected.iter().rev() {
            let Some(us) = users.get(k) else { continue };
            let bare = self
                .module_aliases
                .get(&module_name(k))
                .is_none_or(|a| a.is_empty());
            if !bare || out.contains_key(k) || !us.iter().all(|u| out.contains_key(*u)) {
                continue;
            }
            let mut buses = BTreeSet::new();
            let mut aliases = BTreeSet::new();
            for u in us {
                buses.extend(out[*u].buses.iter().cloned());
                aliases.extend(out[*u].aliases.iter().cloned());
            }
            out.insert(
                k.clone(),
                Gate {
                    buses: buses.into_iter().collect(),
                    aliases: aliases.into_iter().collect(),
                },
            );
        }
        out
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
    fn only_leaf_drivers_on_enumerated_buses_are_gated() {
        let dep = "\
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko
kernel/drivers/ata/libata.ko:
kernel/drivers/scsi/sd_mod.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/nvdimm/libnvdimm.ko:
kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/nvdimm/libnvdimm.ko
kernel/drivers/acpi/nfit/nfit.ko: kernel/drivers/nvdimm/libnvdimm.ko
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/ext4/ext4.ko:
";
        let alias = "\
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias scsi:t-0x00* sd_mod
alias block-major-8-* sd_mod
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias of:N*T*Cvirtio,mmio virtio_mmio
alias acpi*:LNRO0005:* virtio_mmio
alias virtio:d00000002v* virtio_blk
alias devname:fuse fuse
alias char-major-10-229 fuse
alias fs-virtiofs virtiofs
alias virtio:d0000001Av* virtiofs
alias nd:t1* libnvdimm
alias nd:t4* nd_pmem
alias acpi*:ACPI0012:* nfit
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
alias crypto-crc32c crc32c_intel
alias fs-ext4 ext4
";
        let sel = ModuleDb::new(dep, "", alias).selection();
        let gated: BTreeMap<String, Gate> = sel
            .gates
            .iter()
            .map(|(k, g)| (module_name(k), g.clone()))
            .collect();
        let g = |b: &[&str], a: &[&str]| Gate {
            buses: b.iter().map(|s| s.to_string()).collect(),
            aliases: a.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(gated["ahci"], g(&["pci"], &["pci:v*d*sv*sd*bc01sc06i01*"]));
        assert_eq!(
            gated["virtio_pci"],
            g(&["pci"], &["pci:v00001AF4d*sv*sd*bc*sc*i*"])
        );
        assert_eq!(gated["virtio_blk"], g(&["virtio"], &["virtio:d00000002v*"]));
        // fs-virtiofs is a name for modprobe, not a device.
        assert_eq!(gated["virtiofs"], g(&["virtio"], &["virtio:d0000001Av*"]));
        assert_eq!(
            gated["nfit"],
            g(&["acpi", "platform"], &["acpi*:ACPI0012:*"])
        );
        // A library only gated drivers need goes with them.
        assert_eq!(
            gated["libata"],
            g(&["pci"], &["pci:v*d*sv*sd*bc01sc06i01*"])
        );
        // Not gated: libnvdimm (nd_pmem, not gated, needs it), sd_mod and nd_pmem (buses
        // whose devices appear while loading), virtio_mmio (a device-tree alias),
        // crc32c-intel (cpu), fuse (a library of virtiofs, but also a name for
        // modprobe and a device node), virtio (virtio_mmio needs it) and ext4.
        assert_eq!(
            gated.keys().collect::<Vec<_>>(),
            [
                "ahci",
                "libata",
                "nfit",
                "virtio_blk",
                "virtio_pci",
                "virtiofs"
            ]
        );
        // A virtio driver decides once the transports have made the devices.
        let pre = |n: &str| -> Vec<String> {
            let k = sel.order.iter().find(|k| module_name(k) == n).unwrap();
            sel.prerequisites[k]
                .iter()
                .map(|k| module_name(k))
                .collect()
        };
        assert_eq!(pre("virtio_blk"), ["virtio", "virtio_mmio", "virtio_pci"]);
        assert_eq!(pre("virtio_pci"), ["virtio"]);
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
