//! The real client: unmodified libguestfs, with kiln bind-mounted over
//! `/usr/bin/supermin` in a private mount namespace, must launch its appliance and work.
//!
//! These tests need root (for `unshare -m` and the bind mount), qemu, and libguestfs
//! (`libguestfs-tools`); `scripts/setup-host` installs them. They boot under TCG, so they
//! take tens of seconds each; they run one after another to keep the machine's two cores
//! for the guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{kiln, text};

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

/// One libguestfs launch at a time: two TCG guests on two cores only slow each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// Run `script` with bash in a private mount namespace where `/usr/bin/supermin` is kiln,
/// with a fresh libguestfs cache directory and TCG forced.
fn with_kiln_as_supermin(cachedir: &Path, script: &str) -> Output {
    let wrapped = format!(
        "set -e; mount --bind '{kiln}' /usr/bin/supermin; {script}",
        kiln = kiln()
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &wrapped])
        .env("LIBGUESTFS_CACHEDIR", cachedir)
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .env("LIBGUESTFS_BACKEND", "direct")
        .env_remove("LIBGUESTFS_PATH")
        .output()
        .expect("run unshare")
}

#[test]
fn libguestfs_test_tool_finishes_ok_on_kiln() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = tempfile::tempdir().unwrap();
    let o = with_kiln_as_supermin(cache.path(), "libguestfs-test-tool");
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("===== TEST FINISHED OK ====="), "{all}");
    // The appliance really came from kiln, not from a supermin left on the machine.
    assert!(
        all.contains("kiln"),
        "kiln did not build the appliance:\n{all}"
    );
}

#[test]
fn guestfish_partitions_formats_writes_and_reads_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = tempfile::tempdir().unwrap();
    let disk = cache.path().join("scratch.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let script = format!(
        "guestfish -a '{disk}' <<'EOF'
run
part-disk /dev/sda mbr
mkfs ext4 /dev/sda1
mount /dev/sda1 /
write /hello.txt \"written by guestfish on a kiln appliance\\n\"
cat /hello.txt
umount-all
EOF",
        disk = disk.display()
    );
    let o = with_kiln_as_supermin(cache.path(), &script);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("written by guestfish on a kiln appliance"),
        "{all}"
    );
    // The filesystem guestfish made is a real ext4 the host can check.
    let fsck = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "off=$((512*$(sfdisk -d '{d}' | sed -n 's/.*start= *\\([0-9]*\\).*/\\1/p' | head -1))); \
             dd if='{d}' of='{d}.part' bs=512 skip=$((off/512)) status=none && e2fsck -fn '{d}.part'",
            d = disk.display()
        ))
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}", text(&fsck));
}

/// kiln's initrd loads only the drivers of devices the VM has: libguestfs's own devices
/// (its channel, the random number source, the disks, and the NIC with `--network`) and
/// every module tied to no device (fuse for ntfs-3g) are there, drivers for hardware
/// libguestfs never adds are not.
#[test]
fn the_appliance_has_the_drivers_of_its_devices_and_the_network_works() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = tempfile::tempdir().unwrap();
    let o = with_kiln_as_supermin(
        cache.path(),
        "guestfish --network -a /dev/null run : debug sh \
         'for m in $(cut -d\" \" -f1 /proc/modules); do echo MOD $m; done; \
          ls /sys/class/net; test -c /dev/fuse && echo FUSE-OK; ls /dev/virtio-ports'",
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let has = |m: &str| all.lines().any(|l| l.trim() == format!("MOD {m}"));
    for m in [
        "virtio_console",
        "virtio_rng",
        "virtio_scsi",
        "virtio_net",
        "sd_mod",
        "ata_piix",
        "fuse",
        "ext4",
    ] {
        assert!(has(m), "{m} not loaded:\n{all}");
    }
    for m in ["ahci", "nfit", "virtio_balloon", "virtio_input", "virtiofs"] {
        assert!(!has(m), "{m} loaded without its device:\n{all}");
    }
    for l in ["eth0", "FUSE-OK", "org.libguestfs.channel.0"] {
        assert!(all.lines().any(|x| x.trim() == l), "no {l}:\n{all}");
    }
}
