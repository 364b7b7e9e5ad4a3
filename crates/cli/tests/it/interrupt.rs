//! Interrupted builds leave nothing behind: SIGINT, SIGTERM and SIGHUP at several points
//! of `kiln build` and of the supermin front end (with the cache) remove the staging
//! directory beside `-o` and the cache's build directory before the process exits by
//! that signal; what SIGKILL leaves is removed by the next build into the same place,
//! and a build running meanwhile is never disturbed. Real binary, real libguestfs
//! appliance inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::kiln;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

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
    command(args, cache).spawn().unwrap()
}

fn command(args: &[&str], cache: &Path) -> Command {
    let mut c = Command::new("env");
    c.arg("--default-signal=INT,TERM,HUP")
        .arg(kiln())
        .args(args)
        .env("LIBGUESTFS_CACHEDIR", cache)
        .env_remove("KILN_STALL_AT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Start kiln with ARGS and return once its build stands still at `point`
/// (`KILN_STALL_AT`), so a signal lands exactly there however fast the machine is.
fn start_stalled(args: &[&str], cache: &Path, point: &str) -> Child {
    stalled(command(args, cache), point)
}

/// Spawn `cmd` with `KILN_STALL_AT=point` and return once it stands still there.
fn stalled(mut cmd: Command, point: &str) -> Child {
    let mut child = cmd.env("KILN_STALL_AT", point).spawn().unwrap();
    let mut r = BufReader::new(child.stderr.take().unwrap());
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).unwrap();
        assert!(n > 0, "kiln ended before it reached {point}");
        if String::from_utf8_lossy(&line).contains(&format!("stalled at {point}")) {
            break;
        }
    }
    // Keep draining stderr so kiln never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    child
}

fn signal(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    kill_process(pid, sig).unwrap();
}

/// Wait for `child` and assert it ended by `sig`.
fn ended_by(child: Child, sig: Signal) {
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(sig.as_raw()),
        "not ended by {sig:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

const SIGNALS: [Signal; 3] = [Signal::INT, Signal::TERM, Signal::HUP];
/// Before the output exists, writing the image, the initrd, just before publishing.
const POINTS: [&str; 4] = ["resolve", "image", "initrd", "publish"];

#[test]
fn signals_during_kiln_build_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    supermin_d();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    let args = ["build", "-f", "ext2", "-o", out_s, SUPERMIN_D];
    for sig in SIGNALS {
        for point in POINTS {
            let child = start_stalled(&args, &t.path().join("cache"), point);
            if point != "resolve" {
                // The staging directory is there while the build stands still.
                assert_eq!(
                    names(t.path())
                        .iter()
                        .filter(|n| n.starts_with(".out.kiln-"))
                        .count(),
                    1,
                    "{point}"
                );
            }
            signal(&child, sig);
            ended_by(child, sig);
            assert_eq!(names(t.path()), Vec::<String>::new(), "{sig:?} at {point}");
        }
    }

    // Over an existing output: it stays as it was, complete, and alone.
    let ok = start(&args, t.path()).wait_with_output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let before = names(&out);
    let child = start_stalled(&args, t.path(), "initrd");
    signal(&child, Signal::TERM);
    ended_by(child, Signal::TERM);
    assert_eq!(names(t.path()), ["out"]);
    assert_eq!(names(&out), before);
}

/// The front end building through the cache (`--if-newer`): neither the staging beside
/// `-o` nor the cache's `tmp-` directory nor this process's pin survive a signal.
#[test]
fn signals_during_the_supermin_front_end_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    supermin_d();
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let cache = t.path().join("cache");
    fs::create_dir(&work).unwrap();
    fs::create_dir(&cache).unwrap();
    let out = work.join("appliance.d");
    let out_s = out.to_str().unwrap();
    for (sig, point) in [
        (Signal::INT, "resolve"),
        (Signal::TERM, "image"),
        (Signal::HUP, "initrd"),
        (Signal::TERM, "publish"),
    ] {
        let child = start_stalled(
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
            point,
        );
        let pid = child.id();
        signal(&child, sig);
        ended_by(child, sig);
        let user_dir: PathBuf = fs::read_dir(&cache)
            .unwrap()
            .next()
            .map(|e| e.unwrap().path())
            .unwrap_or_else(|| cache.join("none"));
        let left: Vec<String> = names(&user_dir)
            .into_iter()
            .filter(|n| n.starts_with("tmp-") || n.starts_with(&format!("pin-{pid}-")))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "{sig:?} at {point}");
        assert!(
            names(&work).iter().all(|n| n == "appliance.d"),
            "{sig:?} at {point}: {:?}",
            names(&work)
        );
    }
}

/// SIGKILL cannot be caught: its staging directory stays, is recognised (nobody holds
/// its lock) and removed by the next build into the same place. A build that is running
/// meanwhile keeps its staging directory.
#[test]
fn sigkill_debris_goes_with_the_next_build_live_builds_are_left_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    supermin_d();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    let cache = t.path().join("cache");
    let args = ["build", "-f", "ext2", "-o", out_s, SUPERMIN_D];
    let staging = || -> Vec<String> {
        names(t.path())
            .into_iter()
            .filter(|n| n.starts_with(".out.kiln-"))
            .collect()
    };
    let mut killed = start_stalled(&args, &cache, "initrd");
    signal(&killed, Signal::KILL);
    let st = killed.wait().unwrap();
    assert_eq!(st.signal(), Some(Signal::KILL.as_raw()));
    let debris = staging();
    assert_eq!(debris.len(), 1, "SIGKILL left {:?}", names(t.path()));

    // A build that stands still (A) and, meanwhile, a second one (B) into the same
    // place: B removes the dead build's directory but not A's.
    let a = start_stalled(&args, &cache, "initrd");
    let live: Vec<String> = staging().into_iter().filter(|n| *n != debris[0]).collect();
    assert_eq!(live.len(), 1, "{:?}", names(t.path()));
    let b_out = start(&args, &cache).wait_with_output().unwrap();
    assert!(
        b_out.status.success(),
        "{}",
        String::from_utf8_lossy(&b_out.stderr)
    );
    assert_eq!(
        staging(),
        live,
        "the dead build's directory goes, the live one stays"
    );
    assert_eq!(names(&out), ["initrd", "kernel", "root"]);
    // A, interrupted now, removes its own.
    signal(&a, Signal::TERM);
    ended_by(a, Signal::TERM);
    assert_eq!(names(t.path()), ["out"], "debris left");
}

/// `kiln run` writes a private supermin.d for its appliance: a signal while the
/// appliance is built from it removes it too.
#[test]
fn signals_while_kiln_run_builds_its_appliance_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    for sig in [Signal::INT, Signal::TERM] {
        let mut cmd = command(&["run", "--", "true"], &cache);
        cmd.env("TMPDIR", &tmp);
        let child = stalled(cmd, "image");
        let during = names(&tmp);
        assert!(
            during.iter().any(|n| n.starts_with("kiln-run-")),
            "no private supermin.d while building: {during:?}"
        );
        signal(&child, sig);
        // Ended by the signal (or with 128+N, the status a shell would show).
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.signal() == Some(sig.as_raw())
                || out.status.code() == Some(128 + sig.as_raw()),
            "{sig:?}: {:?}",
            out.status
        );
        assert_eq!(names(&tmp), Vec::<String>::new(), "{sig:?}");
    }
}
