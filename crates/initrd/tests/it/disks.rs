//! Every disk of the VM is visible before the root's `/init` runs, as with supermin's
//! initrd (libguestfs relies on it for the disks a user adds): real boots under qemu
//! (TCG) with the host kernel and kiln's initrd, an IDE (i440fx) or SATA (q35) disk and
//! a virtio disk next to the root, the root on virtio-blk (`kiln boot`) and on
//! virtio-scsi (libguestfs). The root is a fixture made with `mke2fs -d` whose `/init`
//! lists `/sys/block` and `/proc/modules`: the drivers of the VM's devices are loaded,
//! those for hardware it lacks are not, and modules tied to no device always are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One qemu at a time: TCG boots are CPU-bound.
static ONE_QEMU: Mutex<()> = Mutex::new(());

const UUID: &str = "6b696c6e-2d64-6973-6b73-2d726f6f7401";

fn copy_with_libs(bin: &Path, tree: &Path) {
    let dst = tree.join(bin.strip_prefix("/").unwrap());
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::copy(bin, &dst).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            let p = Path::new(p);
            let d = tree.join(p.strip_prefix("/").unwrap());
            fs::create_dir_all(d.parent().unwrap()).unwrap();
            fs::copy(fs::canonicalize(p).unwrap(), &d).unwrap();
        }
    }
}

/// Kernel, kiln's initrd and a root whose /init prints `DISK NAME SECTORS` per block
/// device, then powers off.
fn appliance(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let k = kiln_kernel::choose_host("x86_64").unwrap();
    let initrd = dir.join("initrd");
    kiln_initrd::build(&k.modules, &initrd).unwrap();
    let tree = dir.join("tree");
    copy_with_libs(Path::new("/bin/busybox"), &tree);
    fs::write(
        tree.join("init"),
        "#!/bin/busybox sh\n\
         busybox mkdir -p /proc /sys\n\
         busybox mount -t proc proc /proc\n\
         busybox mount -t sysfs sysfs /sys\n\
         for d in /sys/block/*; do busybox echo \"DISK $(busybox basename $d) $(busybox cat $d/size)\"; done\n\
         busybox cut -d' ' -f1 /proc/modules | while read m; do busybox echo \"MOD $m\"; done\n\
         busybox echo DISKS-LISTED\n\
         busybox poweroff -f\n",
    )
    .unwrap();
    fs::set_permissions(tree.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.join("root");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-U", UUID, "-d"])
        .arg(&tree)
        .arg(&root)
        .arg("32M")
        .status()
        .unwrap();
    assert!(st.success());
    (k.path, initrd, root)
}

/// What the root's `/init` saw.
struct Seen {
    disks: Vec<String>,
    modules: Vec<String>,
}

impl Seen {
    fn has(&self, module: &str) -> bool {
        self.modules.iter().any(|m| m == module)
    }

    /// With a virtio-scsi root, as with supermin's initrd: the disk on the ATA
    /// controller (IDE or SATA) is bound first (sda), the root after it (sdb).
    fn assert_ata_disk_then_scsi_root(&self) {
        assert_eq!(
            self.disks,
            [
                format!("sda {IDE_SECTORS}"),
                format!("sdb {ROOT_SECTORS}"),
                format!("vda {VD_SECTORS}"),
            ],
            "{:?}",
            self.disks
        );
    }
}

/// Boot with the root on `bus`, an IDE disk of 100 MiB (SATA on q35) and a virtio disk
/// of 200 MiB, `extra` qemu arguments and `append` kernel arguments.
fn boot_with(dir: &Path, bus: &str, extra: &[&str], append: &str) -> Seen {
    let (kernel, initrd, root) = appliance(dir);
    let ide = dir.join("ide.img");
    let vd = dir.join("vd.img");
    fs::File::create(&ide).unwrap().set_len(100 << 20).unwrap();
    fs::File::create(&vd).unwrap().set_len(200 << 20).unwrap();
    let drive = |p: &Path, how: &str| format!("file={},format=raw,{how}", p.display());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(["-machine", "accel=tcg", "-cpu", "max", "-m", "512"])
    .args(["-serial", "stdio"])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-drive", &drive(&root, "if=none,id=root,snapshot=on")])
    .args(["-drive", &drive(&ide, "if=ide")])
    .args(["-drive", &drive(&vd, "if=virtio")])
    .args(extra);
    if bus == "virtio-scsi" {
        cmd.args(["-device", "virtio-scsi-pci,id=scsi"])
            .args(["-device", "scsi-hd,drive=root,bus=scsi.0"]);
    } else {
        cmd.args(["-device", "virtio-blk-pci,drive=root"]);
    }
    cmd.args([
        "-append",
        &format!("console=ttyS0 panic=1 quiet root=UUID={UUID} {append}"),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let _one = ONE_QEMU.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = cmd
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup-host installs it)");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_t = drain(Box::new(child.stdout.take().unwrap()));
    let err_t = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("qemu did not finish within 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_t.join().unwrap();
    let err = err_t.join().unwrap();
    assert!(
        status.success() && out.contains("DISKS-LISTED"),
        "the root's /init did not run ({status}):\n{out}\n{err}"
    );
    let lines = |prefix: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    };
    Seen {
        disks: lines("DISK "),
        modules: lines("MOD "),
    }
}

/// [`boot_with`] with drivers gated on devices (the default), checked.
fn boot(dir: &Path, bus: &str, extra: &[&str]) -> Seen {
    let seen = boot_with(dir, bus, extra, "");
    // Tied to no device, needed by the root, or a library: always loaded (fuse is what
    // ntfs-3g needs in libguestfs's appliance).
    for m in ["ext4", "fuse", "libnvdimm", "sd_mod", "virtio_pci"] {
        assert!(seen.has(m), "{m} not loaded: {:?}", seen.modules);
    }
    // Drivers for hardware no VM here has.
    for m in [
        "nfit",
        "virtio_input",
        "virtio_balloon",
        "virtiofs",
        "virtio_mem",
    ] {
        assert!(
            !seen.has(m),
            "{m} loaded without its device: {:?}",
            seen.modules
        );
    }
    seen
}

const ROOT_SECTORS: &str = "65536";
const IDE_SECTORS: &str = "204800";
const VD_SECTORS: &str = "409600";

#[test]
fn ide_and_virtio_disks_beside_a_virtio_blk_root() {
    let dir = tempfile::tempdir().unwrap();
    let seen = boot(dir.path(), "virtio-blk", &[]);
    let mut disks = seen.disks.clone();
    disks.sort();
    // i440fx: the PIIX IDE controller, no AHCI, no NIC.
    assert!(
        seen.modules.iter().any(|m| m == "ata_piix"),
        "{:?}",
        seen.modules
    );
    for m in ["ahci", "virtio_net", "virtio_scsi"] {
        assert!(
            !seen.modules.iter().any(|x| x == m),
            "{m}: {:?}",
            seen.modules
        );
    }
    // Which virtio disk is vda depends on qemu's PCI slots, not on the initrd.
    assert_eq!(disks.len(), 3, "{disks:?}");
    assert_eq!(disks[0], format!("sda {IDE_SECTORS}"), "{disks:?}");
    let mut virtio: Vec<&str> = disks[1..]
        .iter()
        .map(|d| d.split(' ').nth(1).unwrap())
        .collect();
    virtio.sort();
    assert_eq!(virtio, [VD_SECTORS, ROOT_SECTORS], "{disks:?}");
    assert!(
        disks[1].starts_with("vda ") && disks[2].starts_with("vdb "),
        "{disks:?}"
    );
}

#[test]
fn sata_and_virtio_disks_and_a_nic_on_q35() {
    let dir = tempfile::tempdir().unwrap();
    let seen = boot(
        dir.path(),
        "virtio-scsi",
        &["-machine", "q35", "-device", "virtio-net-pci"],
    );
    // q35's AHCI controller holds the `if=ide` disk; its driver and the NIC's are loaded.
    assert!(
        seen.has("ahci") && seen.has("virtio_net"),
        "{:?}",
        seen.modules
    );
    seen.assert_ata_disk_then_scsi_root();
}

#[test]
fn ide_and_virtio_disks_beside_a_virtio_scsi_root() {
    let dir = tempfile::tempdir().unwrap();
    let seen = boot(dir.path(), "virtio-scsi", &[]);
    assert!(
        seen.has("virtio_scsi") && !seen.has("ahci"),
        "{:?}",
        seen.modules
    );
    seen.assert_ata_disk_then_scsi_root();
}

#[test]
fn kiln_modules_all_loads_drivers_without_devices_too() {
    let dir = tempfile::tempdir().unwrap();
    let seen = boot_with(dir.path(), "virtio-blk", &[], "kiln.modules=all");
    for m in [
        "ahci",
        "nfit",
        "virtio_input",
        "virtiofs",
        "virtio_scsi",
        "ata_piix",
    ] {
        assert!(seen.has(m), "{m} not loaded: {:?}", seen.modules);
    }
    assert_eq!(seen.disks.len(), 3, "{:?}", seen.disks);
}
