//! Real boots under qemu (TCG here) with the host kernel, kiln's initrd and a fixture
//! root made with `mke2fs -d` whose /init is a busybox script. One qemu at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use kiln_boot::{BootOptions, boot};

static ONE_QEMU: Mutex<()> = Mutex::new(());

const UUID: [u8; 16] = [
    0x6b, 0x69, 0x6c, 0x6e, 0x2d, 0x74, 0x65, 0x73, 0x74, 0x2d, 0x72, 0x6f, 0x6f, 0x74, 0x00, 0x01,
];

fn copy_with_libs(bin: &Path, tree: &Path) {
    let dst = tree.join(bin.strip_prefix("/").unwrap());
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::copy(bin, &dst).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = l.split_whitespace().find(|w| w.starts_with('/'));
        if let Some(p) = path {
            let p = Path::new(p);
            let d = tree.join(p.strip_prefix("/").unwrap());
            fs::create_dir_all(d.parent().unwrap()).unwrap();
            fs::copy(fs::canonicalize(p).unwrap(), &d).unwrap();
        }
    }
}

/// An appliance dir: kernel (symlink to the host kernel), kiln's initrd, and an ext2 root
/// whose /init greets with `uname -r` and powers off.
fn appliance(dir: &Path) -> kiln_kernel::Kernel {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox is needed (scripts/setup-host installs it)"
    );
    let k = kiln_kernel::choose_host("x86_64").unwrap();
    kiln_kernel::install(&k, dir, false).unwrap();
    kiln_initrd::build(&k.modules, &dir.join("initrd")).unwrap();
    let tree = dir.join("tree");
    copy_with_libs(busybox, &tree);
    fs::write(
        tree.join("init"),
        "#!/bin/busybox sh\nbusybox echo \"hello from the fixture root on $(busybox uname -r)\"\nbusybox poweroff -f\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tree.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
    let uuid = kiln_boot::uuid_string(&UUID);
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-U", &uuid, "-d"])
        .arg(&tree)
        .arg(dir.join("root"))
        .arg("32M")
        .status()
        .unwrap();
    assert!(st.success());
    k
}

fn opts() -> BootOptions {
    BootOptions {
        timeout: Duration::from_secs(300),
        echo: false,
        ..Default::default()
    }
}

#[test]
fn boots_fixture_root_and_ignores_uuid_twin_without_magic() {
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let k = appliance(dir.path());
    // A disk with the root's UUID bytes at 0x468 but no ext magic, attached first (vda):
    // the init must not take it.
    let twin = dir.path().join("twin");
    let mut b = vec![0u8; 1 << 20];
    b[0x468..0x478].copy_from_slice(&UUID);
    fs::write(&twin, &b).unwrap();
    let o = BootOptions {
        extra_disks: vec![twin],
        append: std::env::var("KILN_TEST_APPEND")
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        ..opts()
    };
    let out = boot(dir.path(), &o).unwrap();
    eprintln!("accel {} in {:?}:\n{}", out.accel, out.elapsed, out.console);
    let c = &out.console;
    assert!(out.init_ran, "init did not run:\n{c}\n{}", out.qemu_stderr);
    assert!(!out.timed_out);
    assert!(c.contains("root is vdb"), "wrong root device:\n{c}");
    assert!(
        c.contains(&format!("hello from the fixture root on {}", k.version)),
        "no greeting:\n{c}"
    );
    // The twin was looked at and refused for the right reason.
    assert!(!c.contains("root is vda"), "{c}");
}

#[test]
fn missing_root_names_what_it_waited_for() {
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    appliance(dir.path());
    let uuid = kiln_boot::uuid_string(&UUID);
    let o = BootOptions {
        no_root_disk: true,
        append: vec![
            format!("root=UUID={uuid}"),
            "kiln.rootwait=3".into(),
            "quiet".into(),
        ],
        ..opts()
    };
    let out = boot(dir.path(), &o).unwrap();
    let c = &out.console;
    assert!(!out.init_ran, "{c}");
    assert!(!out.timed_out, "the init did not give up on its own:\n{c}");
    let line = c
        .lines()
        .find(|l| l.contains("kiln-init: error: gave up after"))
        .unwrap_or_else(|| panic!("no give-up message:\n{c}"));
    assert!(line.contains(&format!("root UUID={uuid}")), "{line}");
    // `quiet` silences the progress lines, not the fatal error.
    assert!(
        !c.contains("kiln-init: ["),
        "progress lines despite quiet:\n{c}"
    );
    // It gave up at the requested bound (3 s), not at the default 30 s.
    let secs: f64 = line
        .split("gave up after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((3.0..10.0).contains(&secs), "{line}");
}

/// libguestfs, unmodified, runs on kiln's initrd + init: its own appliance root (built by
/// supermin from libguestfs's supermin.d) with kiln's initrd in place of supermin's,
/// used as a "fixed appliance". The root is attached on virtio-scsi, as libguestfs does.
#[test]
fn libguestfs_test_tool_passes_with_kiln_initrd() {
    let supermin_d = Path::new("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d");
    assert!(
        supermin_d.exists(),
        "libguestfs-tools is needed (scripts/setup-host)"
    );
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let st = Command::new("supermin")
        .args(["--build", "-f", "ext2"])
        .arg(supermin_d)
        .arg("-o")
        .arg(&app)
        .env("TMPDIR", dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let k = kiln_kernel::choose_host("x86_64").unwrap();
    kiln_initrd::build(&k.modules, &app.join("initrd")).unwrap();
    fs::write(app.join("README.fixed"), "").unwrap();
    let out = Command::new("libguestfs-test-tool")
        .env("LIBGUESTFS_PATH", &app)
        .env("LIBGUESTFS_CACHEDIR", dir.path())
        .env("TMPDIR", dir.path())
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        all.contains("kiln-init: exec /init"),
        "kiln's init did not run:\n{all}"
    );
    assert!(all.contains("===== TEST FINISHED OK ====="), "{all}");
}
