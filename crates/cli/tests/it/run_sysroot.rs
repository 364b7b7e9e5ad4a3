//! `kiln run --sysroot DIR`: a command run from another installed system's files and
//! kernel (a Debian 13 root made by mmdebstrap, merged /usr, 6.12 kernel whose modules
//! are xz-compressed and whose virtio_console is built in), on real qemu.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::roots;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{kiln, text};

fn run(cachedir: &Path, sysroot: &Path, args: &[&str]) -> Output {
    Command::new(kiln())
        .arg("run")
        .arg("--cachedir")
        .arg(cachedir)
        .arg("--sysroot")
        .arg(sysroot)
        .args(["--timeout", "600"])
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The root's kernel, its merged-/usr links and its own files: `uname -r` prints the
/// Debian 13 kernel's release (not the host's), `/lib64` holds the loader, and a file
/// named with `--include` is the root's.
#[test]
fn run_from_a_debian_13_root_uses_its_kernel_and_files() {
    let Some(root) = roots::trixie() else { return };
    let release = std::fs::read_dir(root.join("usr/lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .next()
        .unwrap();
    assert!(release.starts_with("6.12."), "{release}");
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &root,
        &[
            "--packages",
            "coreutils",
            "--include",
            "/etc/debian_version",
            "--",
            "sh",
            "-c",
            "uname -r; ls /lib64/; readlink /bin; cat /etc/debian_version",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let version = std::fs::read_to_string(root.join("etc/debian_version")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{release}\nld-linux-x86-64.so.2\nusr/bin\n{version}"),
        "{}",
        text(&o)
    );
}

/// What cannot be found is named with the root it was looked for in, before any VM.
#[test]
fn errors_name_the_sysroot() {
    let cache = tempfile::tempdir().unwrap();
    let missing = cache.path().join("no-such-root");
    let o = run(cache.path(), &missing, &["--", "sh"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--sysroot") && err.contains("not a directory"),
        "{err}"
    );

    let Some(root) = roots::trixie() else { return };
    let o = run(cache.path(), &root, &["--", "kiln-no-such-command"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("kiln-no-such-command: command not found in")
            && err.contains(&root.display().to_string()),
        "{err}"
    );
    let o = run(
        cache.path(),
        &root,
        &["--packages", "kiln-no-such-pkg", "--", "sh"],
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kiln-no-such-pkg"), "{err}");
}
