//! kiln's supermin-compatible front end against the real supermin 5: the same exit codes
//! and messages for the command line, and supermin's output contract with kiln's
//! improvements (change detection through the cache key, atomic replacement of OUT,
//! reproducible rebuilds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{example_dir, kiln, text};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds here write 4 GiB sparse images and share a per-test cache; keep them serial.
static SERIAL: Mutex<()> = Mutex::new(());

fn example() -> PathBuf {
    example_dir().join("supermin.d")
}

/// `kiln supermin ARGS` with a private cache directory.
fn front(cache: &Path, args: &[&str]) -> Output {
    Command::new(kiln())
        .arg("supermin")
        .args(args)
        .env("LIBGUESTFS_CACHEDIR", cache)
        .env_remove("SUPERMIN_KERNEL")
        .env_remove("SUPERMIN_MODULES")
        .env_remove("SUPERMIN_KERNEL_VERSION")
        .output()
        .unwrap()
}

fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn command_line_matches_real_supermin() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o").display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--bogus"],
        vec!["--bogus", "-V"],
        vec!["-o"],
        vec!["--version=1"],
        vec!["--"],
        vec!["--help"],
        vec!["-help"],
        vec!["--build", "--build"],
        vec!["--build", "-o", &out],
        vec!["--prepare", "-f", "ext2", "-o", &out],
        vec!["--build", "-f", "ext2"],
        vec!["--build", "-f", "tar", "-o", &out],
        vec!["--size", "4096"],
        vec!["--size", "10k"],
        vec!["--names"],
        vec!["--dtb", "x"],
        vec!["--build", "-f", "ext2", "-o", &out],
        vec!["--prepare", "-o", &out],
    ];
    for args in cases {
        let real = Command::new("supermin")
            .args(&args)
            .env("TMPDIR", t.path())
            .output()
            .unwrap();
        let ours = front(t.path(), &args);
        assert_eq!(
            real.status.code(),
            ours.status.code(),
            "exit code for {args:?}\nsupermin: {}\nkiln: {}",
            text(&real),
            text(&ours)
        );
        assert_eq!(
            first_line(&real.stderr),
            first_line(&ours.stderr),
            "first stderr line for {args:?}"
        );
        if args == ["--help"] || args == ["-help"] {
            assert_eq!(real.stdout, ours.stdout, "usage text");
        }
        assert!(!Path::new(&out).exists(), "{args:?} left {out}");
    }
    // A missing input is an error naming it (supermin throws an OCaml exception).
    let o = front(
        t.path(),
        &[
            "--build",
            "-f",
            "ext2",
            "/nonexistent/supermin.d",
            "-o",
            &out,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/supermin.d"));
    assert!(!Path::new(&out).exists());
}

#[test]
fn invoked_as_supermin_by_name() {
    let t = tempfile::tempdir().unwrap();
    let link = t.path().join("supermin");
    std::os::unix::fs::symlink(kiln(), &link).unwrap();
    let o = Command::new(&link).arg("--version").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.starts_with("supermin 5.") && v.contains("kiln"), "{v}");
    let o = Command::new(&link).arg("--bogus").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn build_args<'a>(lock: &'a str, input: &'a str, out: &'a str, if_newer: bool) -> Vec<&'a str> {
    let mut v = vec!["--build", "--lock", lock, "--copy-kernel", "-f", "ext2"];
    if if_newer {
        v.push("--if-newer");
    }
    v.extend(["--host-cpu", "x86_64", input, "-o", out]);
    v
}

fn root_uuid(root: &Path) -> [u8; 16] {
    let mut f = fs::File::open(root).unwrap();
    let mut buf = [0u8; 16];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0x468)).unwrap();
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    buf
}

#[test]
fn if_newer_detects_changes_inside_supermin_d_and_rebuilds_reproducibly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let user = cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    // A private copy of the example, so it can be edited.
    let sd = t.path().join("supermin.d");
    fs::create_dir(&sd).unwrap();
    for f in fs::read_dir(example()).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), sd.join(f.file_name())).unwrap();
    }
    let lock = t.path().join("lock").display().to_string();
    let input = sd.display().to_string();
    let out_p = t.path().join("appliance.d");
    let out = out_p.display().to_string();

    let o = front(&cache, &build_args(&lock, &input, &out, true));
    assert!(o.status.success(), "{}", text(&o));
    for f in ["kernel", "initrd", "root"] {
        assert!(out_p.join(f).is_file(), "{f}");
    }
    let ino1 = fs::metadata(out_p.join("root")).unwrap().ino();
    let uuid1 = root_uuid(&out_p.join("root"));
    // The kernel is a copy that belongs to this build (--copy-kernel).
    assert!(
        !fs::symlink_metadata(out_p.join("kernel"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Nothing changed: no rebuild, same files.
    let o = front(&cache, &{
        let mut a = build_args(&lock, &input, &out, true);
        a.insert(1, "-v");
        a
    });
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("if-newer: output does not need rebuilding"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::metadata(out_p.join("root")).unwrap().ino(), ino1);

    // Rewriting a file *inside* supermin.d in place (supermin does not notice this):
    // kiln rebuilds, and the new appliance has the new content.
    fs::write(sd.join("packages"), "busybox\nbusybox\n").unwrap();
    fs::write(sd.join("hostfiles"), "/etc/hostname\n").unwrap();
    let o = front(&cache, &build_args(&lock, &input, &out, true));
    assert!(o.status.success(), "{}", text(&o));
    let ino2 = fs::metadata(out_p.join("root")).unwrap().ino();
    assert_ne!(ino2, ino1, "edited supermin.d must rebuild");
    let uuid2 = root_uuid(&out_p.join("root"));
    assert_ne!(uuid1, uuid2, "different content, different UUID");
    let listing = Command::new("debugfs")
        .args(["-R", "ls -l /etc"])
        .arg(out_p.join("root"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("hostname"));

    // Without --if-newer supermin always rebuilds; the rebuild of unchanged inputs is
    // byte-identical (same root UUID), so a caller holding the UUID is not broken.
    let o = front(&cache, &build_args(&lock, &input, &out, false));
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        fs::metadata(out_p.join("root")).unwrap().ino(),
        ino2,
        "rebuilt"
    );
    assert_eq!(root_uuid(&out_p.join("root")), uuid2);

    // Nothing left beside OUT but the lock file and the cache.
    let mut names: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["appliance.d", "cache", "lock", "supermin.d"]);
    assert!(user.is_dir());
}

#[test]
fn output_is_never_missing_while_it_is_replaced() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let lock = t.path().join("lock").display().to_string();
    let input = example().display().to_string();
    let out_p = t.path().join("appliance.d");
    let out = out_p.display().to_string();
    let o = front(&cache, &build_args(&lock, &input, &out, false));
    assert!(o.status.success(), "{}", text(&o));

    let stop = Arc::new(AtomicBool::new(false));
    let missing = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, missing, out_p) = (stop.clone(), missing.clone(), out_p.clone());
        std::thread::spawn(move || {
            let mut checks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for f in ["kernel", "initrd", "root"] {
                    if fs::metadata(out_p.join(f)).is_err() {
                        missing.lock().unwrap().push(f);
                    }
                }
                checks += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            checks
        })
    };
    for _ in 0..3 {
        let o = front(&cache, &build_args(&lock, &input, &out, false));
        assert!(o.status.success(), "{}", text(&o));
    }
    stop.store(true, Ordering::Relaxed);
    let checks = watcher.join().unwrap();
    assert!(checks > 10, "the watcher ran ({checks} checks)");
    assert!(
        missing.lock().unwrap().is_empty(),
        "OUT files missing during replacement: {:?}",
        missing.lock().unwrap()
    );
}

#[test]
fn lock_excludes_a_concurrent_builder() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let lock_p = t.path().join("lock");
    let lock = lock_p.display().to_string();
    let input = example().display().to_string();
    let out1 = t.path().join("a").display().to_string();
    let out2 = t.path().join("b").display().to_string();
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_p)
        .unwrap();
    // This process holds the record lock; a child kiln must wait for it.
    rustix::fs::fcntl_lock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let mut child = Command::new(kiln())
        .arg("supermin")
        .args(build_args(&lock, &input, &out1, true))
        .env("LIBGUESTFS_CACHEDIR", &cache)
        .spawn()
        .unwrap();
    // Wait until the kernel lists kiln as blocked on our lock (a `->` line of
    // /proc/locks with its PID): then it is waiting, however slow its start was.
    let pid = child.id();
    let start = std::time::Instant::now();
    while !blocked_in_proc_locks(pid) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln did not wait for the lock"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "kiln (PID {pid}) never blocked on the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "kiln did not wait for the lock"
    );
    assert!(!Path::new(&out1).exists(), "built while the lock was held");
    drop(holder);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(Path::new(&out1).join("root").is_file());
    // And with the lock free, a second build goes straight through.
    let o = front(&cache, &build_args(&lock, &input, &out2, true));
    assert!(o.status.success(), "{}", text(&o));
}

/// Whether /proc/locks shows `pid` waiting for a POSIX record lock (a `->` entry).
fn blocked_in_proc_locks(pid: u32) -> bool {
    fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let mut w = l.split_whitespace().skip(1);
        w.next() == Some("->")
            && w.next() == Some("POSIX")
            && w.nth(2) == Some(pid.to_string().as_str())
    })
}
