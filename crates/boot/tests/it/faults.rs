//! Faults around qemu, with a stand-in for qemu (a shell script that sleeps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_boot::{Accel, BootOptions, Error, boot};

/// When polling qemu fails (`try_wait` returns an error), boot kills and reaps qemu
/// before returning the error: no qemu keeps running, no zombie is left. The failure is
/// injected (`KILN_BOOT_FAULT=try-wait`) in a child process of this test binary.
#[test]
fn a_failed_poll_kills_and_reaps_qemu() {
    if std::env::var_os("KILN_BOOT_FAULT").is_none() {
        let st = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "faults::a_failed_poll_kills_and_reaps_qemu",
                "--nocapture",
            ])
            .env("KILN_BOOT_FAULT", "try-wait")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&st.stdout);
        assert!(
            st.status.success(),
            "child test failed: {}\n{out}{}",
            st.status,
            String::from_utf8_lossy(&st.stderr)
        );
        // An --exact filter that matches nothing passes too: the test must have run.
        assert!(out.contains("1 passed"), "the child ran no test:\n{out}");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    fs::write(dir.join("kernel"), b"k").unwrap();
    fs::write(dir.join("initrd"), b"i").unwrap();
    let pidfile = dir.join("qemu.pid");
    let qemu = dir.join("fake-qemu");
    fs::write(
        &qemu,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 1000\n",
            pidfile.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
    let opts = BootOptions {
        qemu: qemu.clone(),
        accel: Accel::Tcg,
        echo: false,
        no_root_disk: true,
        timeout: Duration::from_secs(60),
        ..BootOptions::default()
    };
    let start = Instant::now();
    let err = boot(dir, &opts).unwrap_err();
    assert!(matches!(err, Error::Wait(_)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "waited for the timeout"
    );
    let pid = fs::read_to_string(&pidfile).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    assert!(
        !Path::new(&proc_dir).exists(),
        "qemu (PID {}) is still running or a zombie",
        pid.trim()
    );
}
