//! Which devices the VM has: the `modalias` of every device on a sysfs bus, matched
//! against a driver's modules.alias patterns with fnmatch(3), as modprobe matches them.
//!
//! Invariants: read-only; a bus directory that cannot be read means "unknown", never
//! "no device", so that a driver is skipped only when the VM provably lacks its devices
//! (a device without a `modalias` file matches nothing, as for modprobe).

use std::fs;
use std::path::Path;

/// Does a device on one of `buses` (under `sys`, normally `/sys`) have a modalias
/// matching one of `aliases`? `None` when a bus's device directory cannot be read.
pub(crate) fn any_matches(sys: &Path, buses: &[String], aliases: &[String]) -> Option<bool> {
    let set = kiln_pattern::FnMatchSet::new(aliases.iter().map(|a| a.as_bytes()));
    let mut unknown = false;
    for bus in buses {
        let Ok(rd) = fs::read_dir(sys.join("bus").join(bus).join("devices")) else {
            unknown = true;
            continue;
        };
        for dev in rd.flatten() {
            if let Ok(m) = fs::read(dev.path().join("modalias"))
                && set.matches(m.trim_ascii_end())
            {
                return Some(true);
            }
        }
    }
    if unknown { None } else { Some(false) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(sys: &Path, bus: &str, name: &str, modalias: Option<&str>) {
        let d = sys.join("bus").join(bus).join("devices").join(name);
        fs::create_dir_all(&d).unwrap();
        if let Some(m) = modalias {
            fs::write(d.join("modalias"), format!("{m}\n")).unwrap();
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn drivers_match_the_devices_present_and_only_them() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        // i440fx's IDE function and a virtio-blk device, as qemu presents them.
        dev(
            sys,
            "pci",
            "0000:00:01.1",
            Some("pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"),
        );
        dev(
            sys,
            "pci",
            "0000:00:02.0",
            Some("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
        );
        dev(sys, "pci", "0000:00:00.0", None);
        dev(sys, "virtio", "virtio0", Some("virtio:d00000002v00001AF4"));
        dev(sys, "acpi", "LNXSYSTM:00", Some("acpi:LNXSYSTM:"));
        // ata_piix (a class-and-ID pattern), virtio_pci, virtio_blk: present.
        let pci = s(&["pci"]);
        assert_eq!(
            any_matches(sys, &pci, &s(&["pci:v00008086d00007010sv*sd*bc*sc*i*"])),
            Some(true)
        );
        assert_eq!(
            any_matches(sys, &pci, &s(&["pci:v00001AF4d*sv*sd*bc*sc*i*"])),
            Some(true)
        );
        assert_eq!(
            any_matches(sys, &s(&["virtio"]), &s(&["virtio:d00000002v*"])),
            Some(true)
        );
        // ahci (SATA class 01/06/01), virtio_net, nfit: absent.
        assert_eq!(
            any_matches(sys, &pci, &s(&["pci:v*d*sv*sd*bc01sc06i01*"])),
            Some(false)
        );
        assert_eq!(
            any_matches(sys, &s(&["virtio"]), &s(&["virtio:d00000001v*"])),
            Some(false)
        );
        assert_eq!(
            any_matches(sys, &s(&["acpi", "platform"]), &s(&["acpi*:ACPI0012:*"])),
            None,
            "no platform bus here: unknown, so the driver is loaded"
        );
        dev(sys, "platform", "serial8250", Some("platform:serial8250"));
        assert_eq!(
            any_matches(sys, &s(&["acpi", "platform"]), &s(&["acpi*:ACPI0012:*"])),
            Some(false)
        );
        dev(sys, "acpi", "ACPI0012:00", Some("acpi:ACPI0012:"));
        assert_eq!(
            any_matches(sys, &s(&["acpi", "platform"]), &s(&["acpi*:ACPI0012:*"])),
            Some(true)
        );
        // A bus that is not there (virtio.ko failed to load, say) is unknown.
        assert_eq!(any_matches(sys, &s(&["nosuchbus"]), &s(&["x:*"])), None);
    }
}
