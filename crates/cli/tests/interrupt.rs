//! Interrupted builds leave nothing behind: SIGINT, SIGTERM and SIGHUP at several points
//! of `kiln build` and of the supermin front end (with the cache) remove the staging
//! directory beside `-o` and the cache's build directory before the process exits by
//! that signal; what SIGKILL leaves is removed by the next build into the same place,
//! and a build running meanwhile is never disturbed. Real binary, real libguestfs
//! appliance inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::kiln;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

/// Builds of the libguestfs appliance take a few seconds of CPU each; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SUPERMIN_D: &str = "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d";

fn supermin_d() -> &'static Path {
    let p = Path::new(SUPERMIN_D);
    assert!(
        p.is_dir(),
        "libguestfs's appliance is missing: run scripts/setup-host"
    );
    p
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Start kiln with ARGS; the three signals at their default action whatever this test
/// inherited (a background job's SIGINT is ignored, and that would be kept).
fn start(args: &[&str], cache: &Path) -> Child {
    Command::new("env")
        .arg("--default-signal=INT,TERM,HUP")
        .arg(kiln())
        .args(args)
        .env("LIBGUESTFS_CACHEDIR", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    kill_process(pid, sig).unwrap();
}

/// Wait for `child`; true if it ended by `sig` (false if it finished first).
fn ended_by(child: Child, sig: Signal) -> bool {
    let out = child.wait_with_output().unwrap();
    match out.status.signal() {
        Some(s) => {
            assert_eq!(s, sig.as_raw(), "ended by another signal: {:?}", out.status);
            true
        }
        None => {
            assert!(
                out.status.success(),
                "failed instead of being interrupted: {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
    }
}

const SIGNALS: [Signal; 3] = [Signal::INT, Signal::TERM, Signal::HUP];
/// Resolving, writing the image, the initrd, the end.
const DELAYS_MS: [u64; 4] = [60, 400, 1000, 1800];

#[test]
fn signals_during_kiln_build_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    let mut interrupted = 0;
    for sig in SIGNALS {
        for ms in DELAYS_MS {
            let child = start(
                &["build", "-f", "ext2", "-o", out_s, SUPERMIN_D],
                &t.path().join("cache"),
            );
            supermin_d();
            std::thread::sleep(Duration::from_millis(ms));
            signal(&child, sig);
            if ended_by(child, sig) {
                interrupted += 1;
                assert_eq!(names(t.path()), Vec::<String>::new(), "{sig:?} at {ms} ms");
            } else {
                assert_eq!(names(t.path()), ["out"], "{sig:?} at {ms} ms");
                fs::remove_dir_all(&out).unwrap();
            }
        }
    }
    assert!(
        interrupted >= 6,
        "only {interrupted} builds were interrupted"
    );

    // Over an existing output: it stays as it was, complete, and alone.
    let ok = start(&["build", "-f", "ext2", "-o", out_s, SUPERMIN_D], t.path());
    assert!(!ended_by(ok, Signal::TERM));
    let before = names(&out);
    let child = start(&["build", "-f", "ext2", "-o", out_s, SUPERMIN_D], t.path());
    std::thread::sleep(Duration::from_millis(800));
    signal(&child, Signal::TERM);
    if ended_by(child, Signal::TERM) {
        assert_eq!(names(t.path()), ["out"]);
        assert_eq!(names(&out), before);
    }
}

/// The front end building through the cache (`--if-newer`): neither the staging beside
/// `-o` nor the cache's `tmp-` directory nor this process's pin survive a signal.
#[test]
fn signals_during_the_supermin_front_end_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let cache = t.path().join("cache");
    fs::create_dir(&work).unwrap();
    fs::create_dir(&cache).unwrap();
    let out = work.join("appliance.d");
    let out_s = out.to_str().unwrap();
    let mut interrupted = 0;
    for (sig, ms) in [
        (Signal::INT, 100),
        (Signal::TERM, 700),
        (Signal::HUP, 1400),
        (Signal::TERM, 2000),
    ] {
        let child = start(
            &[
                "supermin",
                "--build",
                "--if-newer",
                "-f",
                "ext2",
                SUPERMIN_D,
                "-o",
                out_s,
            ],
            &cache,
        );
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(ms));
        signal(&child, sig);
        let was_interrupted = ended_by(child, sig);
        let user_dir: PathBuf = fs::read_dir(&cache)
            .unwrap()
            .next()
            .map(|e| e.unwrap().path())
            .unwrap_or_else(|| cache.join("none"));
        let left: Vec<String> = names(&user_dir)
            .into_iter()
            .filter(|n| n.starts_with("tmp-") || n.starts_with(&format!("pin-{pid}-")))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "{sig:?} at {ms} ms");
        if was_interrupted {
            interrupted += 1;
            assert!(
                names(&work).iter().all(|n| n == "appliance.d"),
                "{sig:?} at {ms} ms: {:?}",
                names(&work)
            );
        } else {
            fs::remove_dir_all(&out).unwrap();
            // Start from an empty cache again, so the next run builds.
            fs::remove_dir_all(&user_dir).unwrap();
        }
    }
    assert!(interrupted >= 2, "only {interrupted} runs were interrupted");
}

/// SIGKILL cannot be caught: its staging directory stays, is recognised (nobody holds
/// its lock) and removed by the next build into the same place. A build that is running
/// meanwhile keeps its staging directory and finishes.
#[test]
fn sigkill_debris_goes_with_the_next_build_live_builds_are_left_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    let cache = t.path().join("cache");
    let args = ["build", "-f", "ext2", "-o", out_s, SUPERMIN_D];
    let mut killed = start(&args, &cache);
    std::thread::sleep(Duration::from_millis(1000));
    signal(&killed, Signal::KILL);
    let st = killed.wait().unwrap();
    assert_eq!(st.signal(), Some(Signal::KILL.as_raw()));
    let debris: Vec<String> = names(t.path())
        .into_iter()
        .filter(|n| n.starts_with(".out.kiln-"))
        .collect();
    assert_eq!(debris.len(), 1, "SIGKILL left {:?}", names(t.path()));

    // A long build (A) and, while it runs, a second one (B) into the same place: B
    // removes the dead build's directory but not A's.
    let a = start(&args, &cache);
    std::thread::sleep(Duration::from_millis(300));
    let b = start(&args, &cache);
    let b_out = b.wait_with_output().unwrap();
    assert!(
        b_out.status.success(),
        "{}",
        String::from_utf8_lossy(&b_out.stderr)
    );
    let a_out = a.wait_with_output().unwrap();
    assert!(
        a_out.status.success(),
        "the running build was disturbed: {}",
        String::from_utf8_lossy(&a_out.stderr)
    );
    assert_eq!(names(t.path()), ["out"], "debris left");
    assert_eq!(names(&out), ["initrd", "kernel", "root"]);
}
