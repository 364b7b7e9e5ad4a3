//! The bundled example (examples/hello) built with `kiln build -f ext2` and booted with
//! `kiln boot` under qemu (TCG here): the README's demo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args);
    c
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn example_builds_and_boots_to_its_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hello");
    let o = kiln(&["build", "-f", "ext2", "-o"])
        .arg(&out)
        .arg(example())
        .env_remove("SUPERMIN_KERNEL")
        .env_remove("SUPERMIN_MODULES")
        .env_remove("SUPERMIN_KERNEL_VERSION")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let kernel = fs::read_link(out.join("kernel")).unwrap();
    assert!(
        kernel.starts_with("/boot") || kernel.starts_with("/lib/modules"),
        "{kernel:?}"
    );
    let version = kiln_boot_version(&kernel);
    // The modules tree is in the root at /lib/modules/VERSION, as supermin does.
    let ls = Command::new("debugfs")
        .args(["-R", &format!("ls /lib/modules/{version}")])
        .arg(out.join("root"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("modules.dep"),
        "{}",
        text(&ls)
    );

    let o = kiln(&["boot", "--timeout", "300"])
        .arg(&out)
        .output()
        .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let greeting = stdout
        .lines()
        .find(|l| l.starts_with("Hello from the kiln example appliance"))
        .unwrap_or_else(|| panic!("no greeting:\n{all}"));
    assert!(
        greeting.contains(&format!("running Linux {version} (up ")),
        "{greeting}"
    );
    assert!(stdout.contains("kiln-init: exec /init"), "{all}");
    // The demo ends in the greeting: nothing after it on the console kiln shows.
    assert_eq!(stdout.lines().last(), Some(greeting), "{all}");
}

fn kiln_boot_version(kernel: &Path) -> String {
    // bzImage header: the version string at 0x200 + the u16 at 0x20E.
    let b = fs::read(kernel).unwrap();
    assert_eq!(&b[0x202..0x206], b"HdrS");
    let off = u16::from_le_bytes([b[0x20e], b[0x20f]]) as usize + 0x200;
    let s = &b[off..off + 132];
    let end = s.iter().position(|&c| c == 0 || c == b' ').unwrap();
    String::from_utf8(s[..end].to_vec()).unwrap()
}

#[test]
fn bad_kernel_override_and_missing_appliance_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let bogus = dir.path().join("no-such-kernel");
    let o = kiln(&["build", "-f", "ext2", "-o"])
        .arg(&out)
        .arg(example())
        .env("SUPERMIN_KERNEL", &bogus)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&*bogus.to_string_lossy()) && err.contains("SUPERMIN_KERNEL"),
        "{err}"
    );
    assert!(!out.exists(), "a failed build left {}", out.display());

    let o = kiln(&["boot"]).arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("kernel"), "{err}");
}
