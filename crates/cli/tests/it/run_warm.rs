//! `kiln run` started from a saved VM state (the warm start), on real qemu, the real
//! Debian kernel and the host's dpkg database: the first run of an appliance and VM
//! shape boots and saves the VM at the guest's ready point; later runs start from it.
//!
//! Each test proves a warm run was not booted independently of kiln's own word: the
//! guest has been up longer than the whole `kiln run` took (its uptime continues from
//! the boot that was saved), which no VM booted by that run can show. Tests that damage
//! or race for a state use a VM shape of their own (`--memory`), so they never touch
//! the state the others start from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{kiln, text};

fn cachedir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    crate::common::shared_tempdir(&DIR)
}

/// The appliance of these tests: a shell and coreutils.
const APPLIANCE: [&str; 2] = ["--packages", "coreutils"];

struct Ran {
    out: Output,
    wall: Duration,
}

impl Ran {
    /// stderr without kiln's `-v` lines: what the command wrote.
    fn command_stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr)
            .lines()
            .filter(|l| !is_log_line(l))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn started_warm(&self) -> bool {
        self.log().contains("started from its saved state")
    }

    fn saved(&self) -> bool {
        self.log().contains("saved the VM start state:")
    }
}

/// A line of kiln's log (`   0.123456789s  INFO …`).
fn is_log_line(l: &str) -> bool {
    let t = l.trim_start();
    let Some((secs, rest)) = t.split_once("s ") else {
        return false;
    };
    secs.parse::<f64>().is_ok()
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
            .iter()
            .any(|lvl| rest.trim_start().starts_with(lvl))
}

fn run_in(dir: &Path, cache: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Ran {
    let mut c = Command::new(kiln());
    c.arg("run")
        .arg("--cachedir")
        .arg(cache)
        .args(["-v", "--timeout", "600"])
        .args(APPLIANCE)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let wall = t0.elapsed();
    w.join().unwrap();
    Ran { out, wall }
}

fn run(args: &[&str], stdin: &[u8]) -> Ran {
    run_in(Path::new("/"), cachedir(), args, stdin, &[])
}

/// The default shape's state, saved once for all tests of this file (the first run
/// boots; every test after it may rely on the state being there).
fn saved() {
    static SAVED: OnceLock<()> = OnceLock::new();
    SAVED.get_or_init(|| {
        let r = run(&["--", "sh", "-c", "true"], b"");
        assert!(r.out.status.success(), "{}", text(&r.out));
        assert!(
            r.saved() || r.started_warm(),
            "the first run neither saved nor used a state:\n{}",
            r.log()
        );
    });
}

/// Run `script` (under `sh -c`) warm and check it was: it also prints the guest's
/// uptime first, which must exceed the run's whole wall time.
fn warm(args: &[&str], script: &str, stdin: &[u8]) -> (Ran, String) {
    warm_in(Path::new("/"), args, script, stdin)
}

fn warm_in(dir: &Path, args: &[&str], script: &str, stdin: &[u8]) -> (Ran, String) {
    saved();
    // (A test with shares saved their shape's state itself.)
    let full = format!("read up idle < /proc/uptime; echo \"uptime $up\"; {script}");
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--", "sh", "-c", &full]);
    let r = run_in(dir, cachedir(), &a, stdin, &[]);
    assert!(
        r.started_warm(),
        "not started from the saved state:\n{}",
        r.log()
    );
    let out = r.stdout();
    let (first, rest) = out.split_once('\n').unwrap_or((&out, ""));
    let up: f64 = first
        .strip_prefix("uptime ")
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uptime line: {out:?}\n{}", r.log()));
    assert!(
        up > r.wall.as_secs_f64(),
        "the guest was up {up} s, the run took {:?}: it booted\n{}",
        r.wall,
        r.log()
    );
    let rest = rest.to_string();
    (r, rest)
}

fn states(cache: &Path, shape: &str) -> Vec<PathBuf> {
    let dir = cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("state-") && n.ends_with(shape)
        })
        .collect();
    v.sort();
    v
}

fn debris(cache: &Path) -> Vec<String> {
    let dir = cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        // A state being written is a file; another test's appliance build is a
        // directory.
        .filter(|n| dir.join(n).symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect()
}

#[test]
fn stdio_status_env_and_signals_behave_as_on_a_boot() {
    // stdout, stderr and the exit status stay apart.
    let (r, out) = warm(&[], "echo out; echo err >&2; exit 7", b"");
    assert_eq!(r.out.status.code(), Some(7), "{}", text(&r.out));
    assert_eq!(out, "out\n");
    assert_eq!(r.command_stderr(), "err\n", "{}", text(&r.out));

    // stdin: every byte value, through cat.
    let data: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    saved();
    let r = run(&["--", "sh", "-c", "cat"], &data);
    assert!(r.started_warm(), "{}", r.log());
    assert!(r.out.status.success(), "{}", text(&r.out));
    assert!(r.out.stdout == data, "the bytes differ");

    // --env, and nothing else of the host's.
    let (r, out) = warm(&["--env", "KILN_WARM=v1"], "echo \"$KILN_WARM\"", b"");
    assert!(r.out.status.success(), "{}", text(&r.out));
    assert_eq!(out, "v1\n");

    // Killed by a signal: 128+N.
    let (r, _) = warm(&[], "kill -TERM $$", b"");
    assert_eq!(r.out.status.code(), Some(128 + 15), "{}", text(&r.out));

    // The same command booted (--no-snapshot) says the same.
    let b = run(
        &[
            "--no-snapshot",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        b"",
    );
    assert!(!b.started_warm() && !b.saved(), "{}", b.log());
    assert_eq!(b.out.status.code(), Some(7), "{}", text(&b.out));
    assert_eq!(b.stdout(), "out\n");
    assert_eq!(b.command_stderr(), "err\n");
}

#[test]
fn shares_and_the_cwd_are_mounted_at_start() {
    // The number of shares is part of a state's shape: one share's state first.
    let prime = tempfile::tempdir().unwrap();
    let spec = format!("{}:/mnt/prime", prime.path().display());
    let r = run(&["--share", &spec, "--", "sh", "-c", "true"], b"");
    assert!(r.out.status.success(), "{}", text(&r.out));
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("in.txt"), "from the host\n").unwrap();
    let spec = format!("{}:/mnt/warm", share.path().display());
    let (r, out) = warm(
        &["--share", &spec],
        "cat /mnt/warm/in.txt; echo written > /mnt/warm/out.txt",
        b"",
    );
    assert!(r.out.status.success(), "{}", text(&r.out));
    assert_eq!(out, "from the host\n");
    assert_eq!(
        std::fs::read_to_string(share.path().join("out.txt")).unwrap(),
        "written\n"
    );

    // The current directory is shared (and is the command's) by default.
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path().canonicalize().unwrap();
    std::fs::write(cwd.join("here.txt"), "here\n").unwrap();
    let (r, out) = warm_in(&cwd, &[], "pwd; cat here.txt; echo back > back.txt", b"");
    assert!(r.out.status.success(), "{}", text(&r.out));
    assert_eq!(out, format!("{}\nhere\n", cwd.display()));
    assert_eq!(
        std::fs::read_to_string(cwd.join("back.txt")).unwrap(),
        "back\n"
    );
}

#[test]
fn every_warm_run_is_fresh_and_its_own() {
    let script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; \
                  if [ -e /kiln-warm-marker ]; then echo seen; else echo fresh; fi; \
                  touch /kiln-warm-marker";
    let mut randoms = Vec::new();
    for _ in 0..2 {
        let (r, out) = warm(&[], script, b"");
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(r.out.status.success(), "{}", text(&r.out));
        let l: Vec<&str> = out.lines().collect();
        assert_eq!(l.len(), 3, "{out}");
        assert_eq!(l[0].len(), 64, "{out}");
        let guest: f64 = l[1].parse().unwrap();
        // The guest's clock is the host's (it was saved long ago).
        assert!(
            (host - guest).abs() <= 2.0 + r.wall.as_secs_f64(),
            "guest {guest}, host {host}"
        );
        // A file the last run wrote to the root is not there.
        assert_eq!(l[2], "fresh", "{out}");
        randoms.push(l[0].to_string());
    }
    assert_ne!(
        randoms[0], randoms[1],
        "two warm runs read the same random bytes"
    );
}

/// `sh -c 'tty; stty size; echo pty-ok'` on a 31x97 pty: success and what it showed.
fn on_a_pty() -> (bool, String) {
    let mut args = vec!["-v", "--timeout", "600"];
    args.extend(APPLIANCE);
    args.extend(["--", "sh", "-c", "tty; stty size; echo pty-ok"]);
    let (mut child, mut m) = crate::run::spawn_on_pty(cachedir(), &args, 31, 97);
    let mut seen = Vec::new();
    crate::run::expect(&mut m, &mut seen, "pty-ok", Duration::from_secs(600));
    // kiln's last -v line comes once the VM is gone.
    crate::run::expect(
        &mut m,
        &mut seen,
        "command started after",
        Duration::from_secs(60),
    );
    let st = child.wait().unwrap();
    (st.success(), String::from_utf8_lossy(&seen).into_owned())
}

#[test]
fn a_pty_works_on_a_warm_start() {
    // A terminal brings its terminfo entry: an appliance of its own, saved first.
    let (ok, first) = on_a_pty();
    assert!(ok, "{first}");
    let (ok, s) = on_a_pty();
    assert!(ok, "{s}");
    assert!(s.contains("/dev/pts/0") && s.contains("31 97"), "{s}");
    assert!(
        s.contains("started from its saved state"),
        "{first}\n---\n{s}"
    );
}

#[test]
fn a_damaged_truncated_or_foreign_state_boots_and_is_replaced() {
    // A shape of its own: nothing else starts from this state.
    let shape = ["--memory", "448"];
    let go = |what: &str| {
        let mut a = shape.to_vec();
        a.extend(["--", "echo", what]);
        let r = run(&a, b"");
        assert!(r.out.status.success(), "{}", text(&r.out));
        assert_eq!(r.stdout(), format!("{what}\n"), "{}", text(&r.out));
        r
    };
    let first = go("first");
    assert!(first.saved() || first.started_warm(), "{}", first.log());
    let st = states(cachedir(), "-448m-1c-0s");
    assert_eq!(st.len(), 1, "{st:?}");
    let state = &st[0];
    assert!(go("warm").started_warm());

    // A byte of the stream flipped: the checksum catches it before the VM runs.
    let len = std::fs::metadata(state).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(state).unwrap();
    let mut b = [0u8; 1];
    std::fs::File::open(state)
        .unwrap()
        .read_exact_at(&mut b, len / 2)
        .unwrap();
    f.write_all_at(&[!b[0]], len / 2).unwrap();
    drop(f);
    let r = go("damaged");
    assert!(!r.started_warm(), "{}", r.log());
    assert!(
        r.log().contains("its checksum does not match"),
        "{}",
        r.log()
    );
    assert!(r.saved(), "not replaced:\n{}", r.log());
    assert!(go("replaced").started_warm());

    // Truncated: refused from its length.
    let len = std::fs::metadata(state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(state)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let r = go("truncated");
    assert!(r.log().contains("truncated"), "{}", r.log());
    assert!(r.saved(), "not replaced:\n{}", r.log());
    assert!(go("replaced").started_warm());

    // Made for another VM (here: another qemu binary in its header).
    let mut head = vec![0u8; 4096];
    std::fs::File::open(state)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    let text_at = head.windows(5).position(|w| w == b"qemu ").unwrap() + 5;
    std::fs::OpenOptions::new()
        .write(true)
        .open(state)
        .unwrap()
        .write_all_at(b"X", text_at as u64)
        .unwrap();
    let r = go("foreign");
    assert!(r.log().contains("it was made for"), "{}", r.log());
    assert!(r.saved(), "not replaced:\n{}", r.log());
    assert!(go("replaced").started_warm());
    assert_eq!(states(cachedir(), "-448m-1c-0s").len(), 1);
}

#[test]
fn a_run_killed_while_saving_leaves_nothing_half_written() {
    for (var, val, mem) in [
        ("KILN_RUN_FAULT", "kill-while-saving", "384"),
        ("KILN_CACHE_CRASH_AT", "state-before-publish", "416"),
    ] {
        let shape = format!("-{mem}m-1c-0s");
        let r = run_in(
            Path::new("/"),
            cachedir(),
            &["--memory", mem, "--", "echo", "never"],
            b"",
            &[(var, val)],
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(r.out.status.signal(), Some(9), "{var}: {}", text(&r.out));
        assert_eq!(states(cachedir(), &shape), Vec::<PathBuf>::new(), "{var}");
        assert_eq!(debris(cachedir()), Vec::<String>::new(), "{var}");
        // The next run saves it whole.
        let r = run(&["--memory", mem, "--", "echo", "ok"], b"");
        assert!(r.out.status.success() && r.saved(), "{}", text(&r.out));
        assert_eq!(states(cachedir(), &shape).len(), 1);
        let r = run(&["--memory", mem, "--", "echo", "ok"], b"");
        assert!(r.started_warm(), "{}", r.log());
    }
}

#[test]
fn concurrent_first_runs_save_one_state() {
    let spawn = || std::thread::spawn(|| run(&["--memory", "320", "--", "echo", "both"], b""));
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    for r in [&a, &b] {
        assert!(r.out.status.success(), "{}", text(&r.out));
        assert_eq!(r.stdout(), "both\n");
    }
    assert_eq!(
        [&a, &b].iter().filter(|r| r.saved()).count(),
        1,
        "{}\n---\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(states(cachedir(), "-320m-1c-0s").len(), 1);
}

#[test]
fn gc_removes_states_with_their_appliance_and_cache_ls_counts_them() {
    let cache = tempfile::tempdir().unwrap();
    let r = run_in(Path::new("/"), cache.path(), &["--", "true"], b"", &[]);
    assert!(r.out.status.success() && r.saved(), "{}", text(&r.out));
    assert_eq!(states(cache.path(), "-512m-1c-0s").len(), 1);
    let ls = Command::new(kiln())
        .args(["cache", "ls", "--json", "--cachedir"])
        .arg(cache.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", text(&ls));
    });
    let slots: Vec<&serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "appliance")
        .collect();
    assert_eq!(slots.len(), 1, "{v}");
    assert_eq!(slots[0]["states"], 1, "{v}");
    let gc = Command::new(kiln())
        .args(["gc", "--keep", "0", "--cachedir"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}", text(&gc));
    assert_eq!(states(cache.path(), "").len(), 0);
    let dir = cache
        .path()
        .join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("state"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
