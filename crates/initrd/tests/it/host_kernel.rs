//! The initrd of the host's own kernel (linux-image-amd64 is installed by
//! scripts/setup-host), read back with cpio(1).

use std::fs;

use kiln_initrd::{INIT, ModuleDb, build, module_name, select_modules};

#[test]
fn real_kernel_selection() {
    // The host kernel's modules tree (linux-image-amd64 is installed by setup-host).
    let k = kiln_kernel::choose_host("x86_64").unwrap();
    let sel = select_modules(&k.modules).unwrap();
    let names: Vec<String> = sel.iter().map(|k| module_name(k)).collect();
    let pos = |n: &str| names.iter().position(|g| g == n);
    for want in [
        "virtio_pci",
        "virtio_blk",
        "virtio_scsi",
        "sd_mod",
        "ext4",
        "crc32c_generic",
        "jbd2",
        "nd_pmem",
        "ata_piix",
        "ahci",
        "virtio_console",
        "virtio_rng",
    ] {
        assert!(pos(want).is_some(), "{want} missing from {names:?}");
    }
    assert!(
        pos("crc32c_generic") < pos("ext4"),
        "softdep order: {names:?}"
    );
    assert!(pos("scsi_mod") < pos("sd_mod") && pos("virtio") < pos("virtio_blk"));
    for unwanted in ["virtio_gpu", "xfs", "btrfs"] {
        assert!(
            pos(unwanted).is_none(),
            "{unwanted} should not be in {names:?}"
        );
    }
    // Dependency order: every dep of a module precedes it.
    let db = ModuleDb::load(&k.modules).unwrap();
    for (i, key) in sel.iter().enumerate() {
        for d in &db.deps[key] {
            let j = sel.iter().position(|s| s == d).unwrap();
            assert!(j < i, "{d} after {key}");
        }
    }
}

#[test]
fn real_initrd_reads_back_and_is_reproducible() {
    let k = kiln_kernel::choose_host("x86_64").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let rep = build(&k.modules, &a).unwrap();
    build(&k.modules, &b).unwrap();
    let bytes = fs::read(&a).unwrap();
    assert_eq!(bytes, fs::read(&b).unwrap(), "not reproducible");
    assert_eq!(bytes.len() as u64, rep.bytes);
    assert_eq!(bytes.len() % 512, 0);
    let out = std::process::Command::new("cpio")
        .args(["-itv", "--quiet", "--numeric-uid-gid"])
        .stdin(fs::File::open(&a).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries not sorted");
    for l in listing.lines() {
        // mode links uid gid size date… name; owners 0 0, epoch dates.
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("0", "0"), "{l}");
        assert!(l.contains("1970"), "{l}");
    }
    assert!(
        names.contains(&"init") && names.contains(&"modules") && names.contains(&"dev/console")
    );
    for m in &rep.modules {
        assert!(names.contains(&m.as_str()), "{m} not in the archive");
    }
    // /modules lists them in load order.
    let ex = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("cpio")
        .args(["-id", "--quiet", "modules", "init"])
        .current_dir(ex.path())
        .stdin(fs::File::open(&a).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    let list = fs::read_to_string(ex.path().join("modules")).unwrap();
    // One line per module, `NAME.ko: PREREQUISITE.ko … [| BUSES ALIAS …]`, every
    // prerequisite on an earlier line; every module of supermin's set is there: no
    // module is held back for a root on another bus.
    let mut seen: Vec<&str> = Vec::new();
    let mut gated: Vec<&str> = Vec::new();
    for l in list.lines() {
        let (l, gate) = l.split_once('|').unwrap_or((l, ""));
        let (name, pre) = l.split_once(':').unwrap();
        for p in pre.split_whitespace() {
            assert!(seen.contains(&p), "{p} listed after {name}, which needs it");
        }
        if !gate.trim().is_empty() {
            gated.push(name);
        }
        seen.push(name);
    }
    assert_eq!(seen, rep.modules);
    // Drivers of PCI and virtio hardware wait for a device; what the root needs, class
    // drivers and filesystems (fuse for ntfs-3g) do not.
    for m in [
        "ahci.ko",
        "ata_piix.ko",
        "virtio_blk.ko",
        "virtio_console.ko",
    ] {
        assert!(gated.contains(&m), "{m} not gated: {list}");
    }
    for m in ["ext4.ko", "jbd2.ko", "fuse.ko", "sd_mod.ko", "scsi_mod.ko"] {
        assert!(!gated.contains(&m), "{m} gated: {list}");
    }
    for m in [
        "ext4.ko",
        "virtio_blk.ko",
        "virtio_pci.ko",
        "crc32c_generic.ko",
        "virtio_console.ko",
        "virtio-rng.ko",
        "virtio_scsi.ko",
        "sd_mod.ko",
        "ata_piix.ko",
        "ahci.ko",
        "libnvdimm.ko",
    ] {
        assert!(seen.contains(&m), "{m} not in /modules: {seen:?}");
    }
    // Disks keep supermin's names: ATA disks are bound before virtio-scsi ones appear.
    let line = |n: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{n}:")))
            .unwrap()
    };
    assert!(line("sd_mod.ko").contains(" ata_piix.ko"), "{list}");
    assert!(line("virtio_scsi.ko").contains(" sd_mod.ko"), "{list}");
    assert!(line("ext4.ko").contains(" crc32c_generic.ko"), "{list}");
    assert_eq!(fs::read(ex.path().join("init")).unwrap(), INIT);
}

#[test]
fn a_dynamic_executable_is_refused() {
    let dynamic = fs::read("/bin/true").unwrap();
    let e = kiln_initrd::check_static_init(&dynamic)
        .unwrap_err()
        .to_string();
    assert!(e.contains("PT_INTERP"), "{e}");
}
