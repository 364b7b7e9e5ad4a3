//! `kiln run` on real qemu (KVM where it runs guests, else TCG: kiln falls back),
//! the real Debian kernel and the host's dpkg database. Each test boots a VM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{kiln, text};

/// One cache for the whole file, so tests sharing an appliance build it once.
fn cachedir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    crate::common::shared_tempdir(&DIR)
}

fn run_in(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut c = Command::new(kiln());
    c.arg("run")
        .arg("--cachedir")
        .arg(cachedir())
        .args(if args.contains(&"--timeout") {
            &[][..]
        } else {
            &["--timeout", "600"][..]
        })
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_in(Path::new("/"), args, stdin)
}

/// The kernel releases the appliance may boot: those of the host's /boot.
fn boot_releases() -> Vec<String> {
    std::fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().ok()?;
            n.strip_prefix("vmlinuz-").map(String::from)
        })
        .collect()
}

#[test]
fn uname_prints_the_appliance_kernel_release() {
    let o = run(&["--", "uname", "-r"], b"");
    assert!(o.status.success(), "{}", text(&o));
    let release = String::from_utf8(o.stdout.clone()).unwrap();
    let releases = boot_releases();
    assert!(
        releases.iter().any(|r| release == format!("{r}\n")),
        "{release:?} is none of /boot's kernels {releases:?}\n{}",
        text(&o)
    );
    // Only the command's output on stdout: no kernel or init messages, no CR.
    assert_eq!(release.lines().count(), 1, "{}", text(&o));
}

#[test]
fn stdout_stderr_and_status_are_separate() {
    let o = run(&["--", "sh", "-c", "echo out; echo err >&2; exit 7"], b"");
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert_eq!(o.stdout, b"out\n", "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.ends_with("err\n") && !err.contains('\r'),
        "{}",
        text(&o)
    );

    // Killed by a signal: 128+N.
    let o = run(&["--", "sh", "-c", "kill -TERM $$"], b"");
    assert_eq!(o.status.code(), Some(128 + 15), "{}", text(&o));
}

#[test]
fn stdin_is_passed_through_binary_safe() {
    // 1 MiB of every byte value, CR and NUL included, echoed back by cat.
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let o = run(&["--", "cat"], &data);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        o.stdout.len(),
        data.len(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout == data, "the bytes differ");
}

#[test]
fn shared_cwd_and_cached_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let o = run_in(
        &cwd,
        &[
            "-v",
            "--",
            "sh",
            "-c",
            "pwd; echo written-in-the-vm > from-guest",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{}\n", cwd.display())
    );
    assert_eq!(
        std::fs::read_to_string(cwd.join("from-guest")).unwrap(),
        "written-in-the-vm\n"
    );

    // The same command line again: the cached appliance, nothing built.
    let t = Instant::now();
    let o = run_in(
        &cwd,
        &[
            "-v",
            "--",
            "sh",
            "-c",
            "pwd; echo written-in-the-vm > from-guest",
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        err.contains("(cached)") && !err.contains("building appliance"),
        "{err}"
    );
    eprintln!("second run: {:.1} s", t.elapsed().as_secs_f64());

    // --no-cwd: the command starts in / and the directory is not shared.
    let o = run_in(
        &cwd,
        &["--no-cwd", "--", "sh", "-c", "pwd; ls from-guest"],
        b"",
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(o.stdout, b"/\n", "{}", text(&o));
}

#[test]
fn errors_name_what_failed() {
    // Not found on the host: 127, as `env` and `docker run` (not kiln's own 125).
    let o = run(&["--", "kiln-no-such-command"], b"");
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("kiln-no-such-command: command not found on the host"),
        "{}",
        text(&o)
    );
    let o = run(&["--qemu", "/nonexistent/qemu", "--", "true"], b"");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot run /nonexistent/qemu"),
        "{}",
        text(&o)
    );
    let o = run(&["--packages", "kiln-no-such-package", "--", "true"], b"");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("kiln-no-such-package"),
        "{}",
        text(&o)
    );
}

#[test]
fn timeout_and_guest_panic_are_reported() {
    // A command that cannot finish in time however fast the guest boots.
    let o = run(&["--timeout", "2", "--", "sleep", "600"], b"");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not finish within 2 s"),
        "{}",
        text(&o)
    );
    let o = run(&["--", "sh", "-c", "echo c > /proc/sysrq-trigger"], b"");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the guest kernel panicked") && err.contains("Kernel panic"),
        "{}",
        text(&o)
    );
}

/// A pty for kiln: (master, slave). Both close on exec: the other tests of this binary
/// start children too, and none of them may hold the terminal open.
pub(crate) fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    use rustix::pty::OpenptFlags;
    let m = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .unwrap();
    rustix::pty::grantpt(&m).unwrap();
    rustix::pty::unlockpt(&m).unwrap();
    let name = rustix::pty::ptsname(&m, Vec::new()).unwrap();
    let s = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&m, ws).unwrap();
    (m, s)
}

/// Read from the pty master until `want` was seen (or panic after `limit`).
pub(crate) fn expect(m: &mut std::fs::File, seen: &mut Vec<u8>, want: &str, limit: Duration) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        assert!(
            start.elapsed() < limit,
            "no {want:?} after {limit:?}; the terminal showed:\n{}",
            String::from_utf8_lossy(seen)
        );
        let mut fds = [rustix::event::PollFd::new(m, rustix::event::PollFlags::IN)];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            }),
        );
        if fds[0].revents().contains(rustix::event::PollFlags::IN) {
            match m.read(&mut buf) {
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "reading the pty: {e}; seen:\n{}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    }
}

/// `kiln run ARGS` (in /, `TERM=dumb`) with a new pty of `rows` x `cols` as its
/// controlling terminal and stdin, stdout and stderr: the process and the master.
pub(crate) fn spawn_on_pty(
    cache: &Path,
    args: &[&str],
    rows: u16,
    cols: u16,
) -> (std::process::Child, std::fs::File) {
    let (master, slave) = pty(rows, cols);
    let mut c = Command::new(kiln());
    c.arg("run")
        .arg("--cachedir")
        .arg(cache)
        .args(args)
        .current_dir("/")
        .env("TERM", "dumb")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; nothing is allocated.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    // The slave's last copies go with the Command: EOF and EIO reach the master.
    drop(c);
    (child, std::fs::File::from(master))
}

#[test]
fn interactive_shell_on_a_pty() {
    let (mut child, mut m) = spawn_on_pty(
        cachedir(),
        &["--timeout", "600", "--packages", "coreutils", "--", "sh"],
        33,
        77,
    );
    let mut seen = Vec::new();
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(60);
    // The guest's terminal is a real one with the host's size.
    m.write_all(b"tty; stty size; echo ok$((6*7))\n").unwrap();
    expect(&mut m, &mut seen, "ok42", long);
    let s = String::from_utf8_lossy(&seen).into_owned();
    assert!(s.contains("/dev/pts/0") && s.contains("33 77"), "{s}");

    // A new window size reaches the guest.
    let ws = rustix::termios::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(m.as_fd(), ws).unwrap();
    // kiln passes the change on when it notices it: ask until the guest answers with
    // the new size (each answer is awaited, so nothing depends on how soon that is).
    let start = Instant::now();
    let mut asked = 0;
    loop {
        asked += 1;
        m.write_all(format!("stty size; echo asked-$(({asked}+1000))\n").as_bytes())
            .unwrap();
        expect(&mut m, &mut seen, &format!("asked-{}", asked + 1000), short);
        if String::from_utf8_lossy(&seen).contains("40 100") {
            break;
        }
        assert!(
            start.elapsed() < short,
            "the new size never reached the guest; the terminal showed:\n{}",
            String::from_utf8_lossy(&seen)
        );
    }

    // Ctrl-C stops the guest's foreground process, not the VM. The process says when
    // it runs (it becomes the sleep), so the Ctrl-C cannot arrive before it started.
    m.write_all(b"sh -c 'echo sleeping-$((5*5)); exec sleep 100'\n")
        .unwrap();
    expect(&mut m, &mut seen, "sleeping-25", short);
    m.write_all(b"\x03").unwrap();
    m.write_all(b"echo after-$((1+1))\n").unwrap();
    expect(&mut m, &mut seen, "after-2", short);

    m.write_all(b"exit 3\n").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < short, "kiln did not exit");
        let mut buf = [0u8; 4096];
        let mut fds = [rustix::event::PollFd::new(&m, rustix::event::PollFlags::IN)];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            }),
        );
        if fds[0].revents().contains(rustix::event::PollFlags::IN) {
            let _ = m.read(&mut buf);
        }
    };
    assert_eq!(status.code(), Some(3), "{}", String::from_utf8_lossy(&seen));
}

#[test]
fn sigterm_is_forwarded_to_the_guest_command() {
    let mut child = Command::new(kiln())
        .arg("run")
        .arg("--cachedir")
        .arg(cachedir())
        .args([
            "--timeout",
            "600",
            "--packages",
            "coreutils",
            "--",
            "sh",
            "-c",
        ])
        .arg("trap 'echo got-term; exit 9' TERM; echo started; sleep 100 & wait")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("started\n") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "kiln ended before the command started");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    out.read_to_end(&mut seen).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "started\ngot-term\n",
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(9));
}

#[test]
fn unowned_command_comes_with_its_libraries() {
    use std::os::unix::ffi::OsStrExt;
    // A copy of printf that no package owns, not shared (--no-cwd): it and its shared
    // libraries must be in the appliance. Arguments are bytes, not necessarily UTF-8.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().canonicalize().unwrap().join("kiln-test-printf");
    std::fs::copy("/usr/bin/printf", &exe).unwrap();
    let mut c = Command::new(kiln());
    c.arg("run")
        .arg("--cachedir")
        .arg(cachedir())
        .args(["--timeout", "600", "--no-cwd", "--"])
        .arg(&exe)
        .arg("%s|%s\\n")
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .arg("a\tb")
        .stdin(Stdio::null());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, b"\xff\xfe|a\tb\n", "{}", text(&o));
}
