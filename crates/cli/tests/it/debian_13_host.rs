//! kiln on Debian 13 as a host: a Debian 13 root with its kernel, qemu and libguestfs
//! (bootstrapped once by mmdebstrap and cached, see `roots`), and kiln run *inside* it
//! (chroot with `/proc`, `/sys` and `/dev`; the kiln binary copied in): `kiln run`,
//! `kiln build` + `kiln boot` of the example, and trixie's own libguestfs using kiln as
//! its supermin (bind-mounted over `/usr/bin/supermin`, as the libguestfs tests do on
//! the host). Everything happens in a private mount namespace, so nothing stays mounted,
//! and in a per-test directory of the root's `/tmp`, removed afterwards.
//!
//! The VMs boot under TCG (KVM stalls on these machines; kiln falls back by itself,
//! libguestfs is told `force_tcg`), one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::roots;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::common::{example_dir, kiln, text};

/// One VM at a time: two TCG guests on two cores only slow each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// The packages of the root besides minbase.
const INCLUDE: &str = "linux-image-amd64,busybox,qemu-system-x86,libguestfs-tools";

/// The root and a private work directory in it (`/tmp/kiln-test-…` inside), holding the
/// kiln binary and the example's supermin.d.
struct Chroot {
    root: PathBuf,
    work: tempfile::TempDir,
}

impl Chroot {
    fn new() -> Option<Chroot> {
        let root = roots::debian_13("trixie-host", INCLUDE)?;
        let work = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir_in(root.join("tmp"))
            .unwrap();
        fs::copy(kiln(), work.path().join("kiln")).unwrap();
        fs::set_permissions(work.path().join("kiln"), fs::Permissions::from_mode(0o755)).unwrap();
        let sd = work.path().join("hello/supermin.d");
        fs::create_dir_all(&sd).unwrap();
        for e in fs::read_dir(example_dir().join("supermin.d")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), sd.join(e.file_name())).unwrap();
        }
        Some(Chroot { root, work })
    }

    /// The work directory as the chroot sees it.
    fn inside(&self) -> PathBuf {
        Path::new("/").join(self.work.path().strip_prefix(&self.root).unwrap())
    }

    /// The kernel release of the root (its only kernel).
    fn release(&self) -> String {
        let r = fs::read_dir(self.root.join("usr/lib/modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .next()
            .unwrap();
        assert!(r.starts_with("6.12."), "{r}");
        r
    }

    /// Run `script` with bash inside the root, in a private mount namespace with `/dev`,
    /// `/proc` and `/sys`, kiln as `/usr/bin/supermin`, `$W` the work directory and the
    /// caches in it.
    fn run(&self, script: &str) -> Output {
        let w = self.inside();
        let setup = r#"set -e
R="$KILN_TEST_ROOT"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --bind "$R$W/kiln" "$R/usr/bin/supermin"
exec chroot "$R" /bin/bash -c "$KILN_TEST_SCRIPT"
"#;
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", setup])
            .env_clear()
            .env("KILN_TEST_ROOT", &self.root)
            .env("KILN_TEST_SCRIPT", format!("set -e\ncd /\n{script}"))
            .env("W", &w)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("TMPDIR", &w)
            .env("LIBGUESTFS_CACHEDIR", &w)
            .env("LIBGUESTFS_BACKEND", "direct")
            .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
            .output()
            .expect("run unshare")
    }
}

/// `kiln run` in Debian 13 boots Debian 13's kernel from Debian 13's files, with the
/// merged-/usr links; the example built there boots too.
#[test]
#[ignore = "needs root"]
fn kiln_run_build_and_boot_inside_debian_13() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = Chroot::new() else { return };
    let release = c.release();
    let o =
        c.run(r#"$W/kiln run --timeout 600 --packages coreutils -- sh -c 'uname -r; ls /lib64/'"#);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{release}\nld-linux-x86-64.so.2\n"),
        "{}",
        text(&o)
    );

    let o = c.run(r#"$W/kiln build -f ext2 $W/hello/supermin.d -o $W/out; $W/kiln boot $W/out"#);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(
        all.contains(&format!(
            "Hello from the kiln example appliance, running Linux {release}"
        )),
        "{all}"
    );
}

/// trixie's libguestfs with kiln as its supermin: `libguestfs-test-tool` passes, and a
/// guestfish session partitions, formats, writes and reads back a file.
#[test]
#[ignore = "needs root"]
fn libguestfs_on_kiln_inside_debian_13() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = Chroot::new() else { return };
    let release = c.release();
    let o = c.run("libguestfs-test-tool");
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("===== TEST FINISHED OK ====="), "{all}");
    // kiln built the appliance (as supermin it prints its own version) and its
    // initrd started the root.
    assert!(
        all.contains("(kiln ") && all.contains("kiln-init: exec /init"),
        "kiln did not build the appliance:\n{all}"
    );
    assert!(all.contains(&release), "not Debian 13's kernel:\n{all}");

    let o = c.run(
        r#"truncate -s 64M $W/scratch.img
guestfish -a $W/scratch.img <<'EOF'
run
part-disk /dev/sda mbr
mkfs ext4 /dev/sda1
mount /dev/sda1 /
write /hello.txt "written by guestfish on a kiln appliance in Debian 13\n"
cat /hello.txt
umount-all
EOF"#,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("written by guestfish on a kiln appliance in Debian 13"),
        "{}",
        text(&o)
    );
}
