//! `kiln locate`, `kiln gc`, `kiln cache ls` and `kiln checksum` on the real libguestfs
//! appliance (built by the default builder), pinned to a real parent shell.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const GUESTFS: &str = "/usr/lib/x86_64-linux-gnu/guestfs";

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(KILN).args(args).output().unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn locate_pins_to_the_parent_shell_and_concurrent_callers_wait_for_one_builder() {
    let t = tempfile::tempdir().unwrap();
    let cachedir = t.path().to_str().unwrap();
    let dir: PathBuf = t
        .path()
        .join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));

    // A: a shell that runs kiln locate, then stays alive until we close its stdin.
    let script = format!("{KILN} locate --path {GUESTFS} --cachedir {cachedir} --json; read x");
    let mut a = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once A is building, B must wait for it and say so.
    wait_for("a build directory", || {
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("tmp-"))
            })
            .unwrap_or(false)
    });
    let a_pid = a.id().to_string();
    let b = Command::new(KILN)
        .args([
            "locate",
            "--path",
            GUESTFS,
            "--cachedir",
            cachedir,
            "--json",
            "--pin-to",
            &a_pid,
        ])
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let b_err = String::from_utf8_lossy(&b.stderr);
    let b_json = json(&b.stdout);
    assert_eq!(b_json["built"], false);
    let key = b_json["key"].as_str().unwrap().to_owned();
    assert!(
        b_err.contains("waiting for PID ") && b_err.contains(&format!("building {key}")),
        "{b_err}"
    );

    let mut line = String::new();
    BufReader::new(a.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let a_json = json(line.as_bytes());
    assert_eq!(a_json["built"], true);
    assert_eq!(a_json["key"], b_json["key"]);
    assert_eq!(a_json["root_uuid"], b_json["root_uuid"]);
    let kernel = PathBuf::from(a_json["kernel"].as_str().unwrap());
    // Pinned to the shell, not to kiln (which has exited).
    let pin = kernel
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(pin.starts_with(&format!("pin-{}-", a.id())), "{pin}");
    assert!(kernel.exists());
    let root = PathBuf::from(a_json["root"].as_str().unwrap());
    assert_eq!(root.parent(), kernel.parent());

    // `kiln checksum` prints the key locate used.
    let c = kiln(&["checksum", &format!("{GUESTFS}/supermin.d")]);
    assert_eq!(String::from_utf8(c.stdout).unwrap().trim(), key);

    // `kiln cache ls` shows the slot pinned by the shell; gc keeps it while it lives.
    let ls = json(&kiln(&["cache", "ls", "--cachedir", cachedir, "--json"]).stdout);
    assert_eq!(ls[0]["key"], key.as_str());
    assert_eq!(ls[0]["pinned_by"], serde_json::json!([a.id()]));
    assert!(ls[0]["size"].as_u64().unwrap() > 100 << 20);
    let gc = json(&kiln(&["gc", "--cachedir", cachedir, "--keep", "0", "--json"]).stdout);
    assert_eq!(gc["removed"], serde_json::json!([]));
    assert!(kernel.exists());

    // The shell exits: its pin is dead; with --keep 0 the slot goes too.
    a.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(a.wait().unwrap().success());
    let gc = json(&kiln(&["gc", "--cachedir", cachedir, "--keep", "0", "--json"]).stdout);
    assert_eq!(gc["dead_pins"], 2, "{gc}");
    assert_eq!(gc["removed"], serde_json::json!([key]));
    assert!(!kernel.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let t = tempfile::tempdir().unwrap();
    let dir = t
        .path()
        .join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = kiln(&[
        "locate",
        "--path",
        GUESTFS,
        "--cachedir",
        t.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kiln: error: security: cache directory"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let missing = t.path().join("nowhere");
    let path = format!("{}:", missing.display());
    let out = kiln(&[
        "locate",
        "--path",
        &path,
        "--cachedir",
        t.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{path:?}")), "{err}");

    let out = kiln(&[
        "gc",
        "--max-size",
        "4X",
        "--cachedir",
        Path::new("/").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "bad size is a usage error");
}

#[test]
fn fixed_and_old_style_appliances_are_printed_as_they_are() {
    let t = tempfile::tempdir().unwrap();
    let fixed = t.path().join("fixed");
    std::fs::create_dir(&fixed).unwrap();
    for f in ["README.fixed", "kernel", "initrd", "root"] {
        std::fs::write(fixed.join(f), f).unwrap();
    }
    let old = t.path().join("old");
    std::fs::create_dir(&old).unwrap();
    let cpu = std::env::consts::ARCH;
    std::fs::write(old.join(format!("vmlinuz.{cpu}")), "k").unwrap();
    std::fs::write(old.join(format!("initramfs.{cpu}.img")), "i").unwrap();
    let cachedir = t.path().to_str().unwrap();

    let out = kiln(&[
        "locate",
        "--path",
        fixed.to_str().unwrap(),
        "--cachedir",
        cachedir,
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let f = |n: &str| fixed.join(n).display().to_string();
    assert_eq!(
        text,
        format!("{}\n{}\n{}\n", f("kernel"), f("initrd"), f("root"))
    );

    let path = format!("{}:{}", t.path().join("empty").display(), old.display());
    let out = kiln(&["locate", "--path", &path, "--cachedir", cachedir, "--json"]);
    assert!(out.status.success());
    let v = json(&out.stdout);
    assert_eq!(
        v["kernel"],
        old.join(format!("vmlinuz.{cpu}")).display().to_string()
    );
    assert_eq!(v["root"], serde_json::Value::Null);
    assert_eq!(v["root_uuid"], serde_json::Value::Null);
    assert_eq!(v["key"], serde_json::Value::Null);
    assert_eq!(v["built"], false);
    // No cache was needed, so none was made.
    assert!(
        !t.path()
            .join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()))
            .exists()
    );
}

#[test]
fn cache_root_is_libguestfs_cachedir_else_tmpdir() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let name = format!(".guestfs-{}", rustix::process::geteuid().as_raw());
    let ls = |envs: &[(&str, &Path)]| {
        let mut c = Command::new(KILN);
        c.args(["cache", "ls"])
            .env_remove("LIBGUESTFS_CACHEDIR")
            .env_remove("TMPDIR");
        for (k, v) in envs {
            c.env(k, v);
        }
        assert!(c.output().unwrap().status.success());
    };
    ls(&[("LIBGUESTFS_CACHEDIR", &a), ("TMPDIR", &b)]);
    assert!(a.join(&name).is_dir() && !b.join(&name).exists());
    std::fs::remove_dir(a.join(&name)).unwrap();
    // An empty LIBGUESTFS_CACHEDIR is ignored, as libguestfs does.
    ls(&[("LIBGUESTFS_CACHEDIR", Path::new("")), ("TMPDIR", &b)]);
    assert!(b.join(&name).is_dir() && !a.join(&name).exists());
}
