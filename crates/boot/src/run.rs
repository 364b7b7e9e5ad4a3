//! Run one command in a VM (`kiln run`): the host side of kiln-init's run mode.
//!
//! qemu boots the appliance with `kiln.run quiet` on the kernel command line and a
//! virtio-serial device carrying four ports, each backed by one end of a socketpair
//! handed to qemu as an inherited fd (no socket files, nothing to clean up):
//! `kiln.ctl` (framed messages: the command spec, window sizes, signals, the exit
//! status), `kiln.stdin`, `kiln.stdout` and `kiln.stderr` (raw bytes). The serial console
//! carries only kernel (and init) messages; it is kept in memory and shown when the guest
//! panics or stops early, never mixed into the command's output. The frame format is
//! documented in kiln-init's `run` module; the two sides are tested together by booting.
//!
//! Ordering: stdin is read only once the guest said the command started (`R`), so a
//! failed KVM start (retried with TCG, as [`crate::boot`] does) loses no input; the exit
//! status `X` carries the byte counts the guest wrote to stdout and stderr, and the host
//! acknowledges (`A`, which lets the guest power off) only once it has copied that many
//! bytes, so qemu never exits with output still in its buffers.
//!
//! Invariants: one qemu at a time, killed at the timeout and always reaped; qemu gets
//! `PR_SET_PDEATHSIG` so it never outlives kiln (e.g. after Ctrl-C), and runs in its own
//! process group so terminal signals reach kiln (and through it the guest) only.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::accel::{self, Memo, Plan};
use crate::{Accel, base_cmdline, root_uuid};

mod relay;
mod wire;
pub use relay::terminal_size;
use relay::{spawn_out, spawn_stdin, spawn_winsize};
use wire::{encode_spec, frame, read_frame, share_tag};

/// A host directory shared with the guest (9p, read-write).
#[derive(Debug, Clone)]
pub struct Share {
    pub host: PathBuf,
    /// Where it is mounted in the guest (absolute).
    pub guest: PathBuf,
}

/// What to run in the guest.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// The command and its arguments (looked up on the guest's `PATH` when the first
    /// word has no `/`).
    pub argv: Vec<OsString>,
    /// The command's whole environment, `NAME=VALUE`.
    pub env: Vec<OsString>,
    /// Its working directory in the guest (default `/`).
    pub cwd: Option<PathBuf>,
    pub shares: Vec<Share>,
    /// Terminal mode: the command gets a pty of this many rows and columns as its
    /// controlling terminal, and stdin/stdout are relayed through it.
    pub tty: Option<(u16, u16)>,
    /// In terminal mode, stderr goes to the pty too (else to the stderr port).
    pub stderr_tty: bool,
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub qemu: PathBuf,
    /// Where [`Accel::Auto`] remembers that KVM does not run guests on this host.
    pub memo: Option<Memo>,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// Copy the console to stderr as it arrives (debugging).
    pub echo_console: bool,
    /// A signal number stored here (by the caller's signal thread) is forwarded to the
    /// command's process group in the guest; a second one a second later, or one
    /// before the command started, stops the VM ([`RunError::Interrupted`]).
    pub interrupt: Option<Arc<AtomicI32>>,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exited(u32),
    Signaled(u32),
}

impl Status {
    /// The shell convention: the exit code, or 128+N when killed by signal N.
    pub fn code(self) -> u8 {
        match self {
            Status::Exited(c) => (c & 0xff) as u8,
            Status::Signaled(s) => 128u32.saturating_add(s).min(255) as u8,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: Status,
    /// What the guest said went wrong before the command could run (then `status` is
    /// 125, 126 or 127).
    pub guest_error: Option<String>,
    /// "kvm" or "tcg".
    pub accel: &'static str,
    pub elapsed: Duration,
    /// Time from qemu's start to the guest's `R` (the command started).
    pub to_ready: Option<Duration>,
    pub console: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("appliance file {path}")]
    Missing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the appliance root has no ext2/3/4 UUID")]
    Root(#[from] crate::Error),
    #[error("cannot run {qemu}; install qemu-system-x86 (scripts/setup-host) or give --qemu")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting up the VM's channels")]
    Io(#[source] io::Error),
    #[error(
        "the VM did not finish within {secs} s and was stopped; its console ended with:\n{tail}"
    )]
    Timeout { secs: f64, tail: String },
    #[error(
        "the VM did not start the command within {secs} s and was stopped (the boot stalled){tail}"
    )]
    BootTimeout { secs: u64, tail: String },
    #[error("the guest kernel panicked:\n{panic}")]
    Panic { panic: String },
    #[error(
        "the VM stopped before the command finished (qemu {status}){qemu_said}; its console ended with:\n{tail}"
    )]
    Stopped {
        status: String,
        qemu_said: String,
        tail: String,
    },
    #[error("interrupted by signal {signal}; the VM was stopped")]
    Interrupted { signal: i32 },
    #[error("the output of the command was cut short: {got} of {sent} bytes on {stream}")]
    Truncated {
        stream: &'static str,
        got: u64,
        sent: u64,
    },
}

/// How long the boot may take, from qemu's start to the guest's word that the command
/// started (or could not be), whatever `--timeout` says: a boot that stalls (a kernel
/// that hangs, a root that never comes) ends with an error instead of a silent wait.
/// TCG on a loaded two-core machine boots in under a minute.
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);

enum Event {
    Ready,
    Fail(String),
    Exit { status: Status, out: u64, err: u64 },
}

/// One end of each channel, kept by kiln.
struct Channels {
    ctl: UnixStream,
    stdin: UnixStream,
    stdout: UnixStream,
    stderr: UnixStream,
}

/// Boot the appliance, run `spec`, and report how the command ended. The command's
/// stdin, stdout and stderr are this process's.
pub fn run(opts: &RunOptions, spec: &RunSpec) -> Result<RunOutcome, RunError> {
    for p in [&opts.kernel, &opts.initrd, &opts.root] {
        fs::metadata(p).map_err(|e| RunError::Missing {
            path: p.clone(),
            source: e,
        })?;
    }
    let uuid = root_uuid(&opts.root)?;
    let mut cmdline = base_cmdline(Some(&uuid));
    cmdline.extend(["quiet".to_string(), "kiln.run".to_string()]);
    cmdline.extend(opts.append.iter().cloned());
    let start = Instant::now();
    let plan = accel::plan(opts.accel, &opts.qemu, opts.memo.as_ref());
    let watchdog = match &plan {
        Plan::Kvm { watchdog } => *watchdog,
        Plan::Tcg { why } => {
            if let Some(why) = why {
                tracing::info!("using TCG: {why}");
            }
            None
        }
    };
    match attempt(opts, spec, &cmdline, plan.accel(), watchdog, start)? {
        Attempt::Done(o) => Ok(o),
        Attempt::KvmFailed(why) if opts.accel == Accel::Auto => {
            if let Some(m) = &opts.memo {
                m.remember(&opts.qemu, &why);
            }
            tracing::warn!("{}", accel::fallback_line(&why));
            match attempt(opts, spec, &cmdline, "tcg", None, start)? {
                Attempt::Done(o) => Ok(o),
                Attempt::KvmFailed(why) => Err(RunError::Stopped {
                    status: "exited at start".into(),
                    qemu_said: format!("; qemu said: {why}"),
                    tail: String::new(),
                }),
            }
        }
        Attempt::KvmFailed(why) => Err(RunError::Stopped {
            status: "exited at start".into(),
            qemu_said: format!("; qemu said: {why}"),
            tail: String::new(),
        }),
    }
}

enum Attempt {
    Done(RunOutcome),
    /// qemu exited before the guest said anything, or the watchdog stopped it (KVM
    /// does not run guests here): why.
    KvmFailed(String),
}

fn qemu_command(
    opts: &RunOptions,
    spec: &RunSpec,
    cmdline: &[String],
    accel: &str,
    guest_fds: &[i32; 4],
) -> Command {
    let mut cmd = crate::qemu_base(&opts.qemu, accel, opts.memory_mib);
    cmd.args(["-smp", &opts.cpus.max(1).to_string()])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&opts.kernel)
        .arg("-initrd")
        .arg(&opts.initrd)
        .args(["-append", &cmdline.join(" ")]);
    let root = opts.root.to_string_lossy().replace(',', ",,");
    cmd.args([
        "-drive",
        &format!("file={root},format=raw,if=none,id=root,snapshot=on,cache=unsafe"),
        "-device",
        "virtio-blk-pci,drive=root",
        "-device",
        "virtio-serial-pci",
    ]);
    for (i, name) in ["kiln.ctl", "kiln.stdin", "kiln.stdout", "kiln.stderr"]
        .iter()
        .enumerate()
    {
        cmd.args([
            "-chardev",
            &format!("socket,id=kc{i},fd={}", guest_fds[i]),
            "-device",
            &format!("virtserialport,chardev=kc{i},name={name}"),
        ]);
    }
    for (i, s) in spec.shares.iter().enumerate() {
        let host = s.host.to_string_lossy().replace(',', ",,");
        cmd.args([
            "-virtfs",
            &format!(
                "local,path={host},mount_tag={},security_model=none,id=kfs{i}",
                share_tag(i)
            ),
        ]);
    }
    cmd
}

fn attempt(
    opts: &RunOptions,
    spec: &RunSpec,
    cmdline: &[String],
    accel: &'static str,
    watchdog: Option<Duration>,
    start: Instant,
) -> Result<Attempt, RunError> {
    let pair = || UnixStream::pair().map_err(RunError::Io);
    let (ctl, g0) = pair()?;
    let (stdin, g1) = pair()?;
    let (stdout, g2) = pair()?;
    let (stderr, g3) = pair()?;
    let mine = Channels {
        ctl,
        stdin,
        stdout,
        stderr,
    };
    let guest: [OwnedFd; 4] = [g0.into(), g1.into(), g2.into(), g3.into()];
    let raw = [
        guest[0].as_raw_fd(),
        guest[1].as_raw_fd(),
        guest[2].as_raw_fd(),
        guest[3].as_raw_fd(),
    ];
    let mut cmd = qemu_command(opts, spec, cmdline, accel, &raw);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe syscalls (fcntl, prctl, setpgid) on fds that stay
    // open in the parent until spawn returns; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            for fd in raw {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            rustix::process::setpgid(None, None)?;
            Ok(())
        });
    }
    tracing::debug!("running {:?}", cmd);
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn {
        qemu: opts.qemu.clone(),
        source: e,
    })?;
    drop(guest);

    let alive = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let console_rd = {
        let out = child.stdout.take();
        let echo = opts.echo_console;
        let alive = Arc::clone(&alive);
        std::thread::spawn(move || {
            let mut all = Vec::new();
            if let Some(mut o) = out {
                let mut buf = [0u8; 8192];
                while let Ok(n) = o.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if echo {
                        let _ = io::stderr().write_all(&buf[..n]);
                    }
                    all.extend_from_slice(&buf[..n]);
                    if !alive.load(Ordering::Relaxed)
                        && accel::alive(&all[all.len().saturating_sub(n + accel::ALIVE.len())..])
                    {
                        alive.store(true, Ordering::Relaxed);
                    }
                }
            }
            String::from_utf8_lossy(&all).replace('\r', "")
        })
    };
    let qemu_err = {
        let e = child.stderr.take();
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut e) = e {
                let _ = e.read_to_string(&mut s);
            }
            s
        })
    };

    let Channels {
        ctl,
        stdin,
        stdout,
        stderr,
    } = mine;
    let mut ctl_w = ctl.try_clone().map_err(RunError::Io)?;
    ctl_w
        .write_all(&frame(b'S', &encode_spec(spec)))
        .map_err(RunError::Io)?;
    let out_n = Arc::new(AtomicU64::new(0));
    let err_n = Arc::new(AtomicU64::new(0));
    let out_pump = spawn_out(stdout, 1, Arc::clone(&out_n));
    let err_pump = spawn_out(stderr, 2, Arc::clone(&err_n));

    let (tx, rx) = mpsc::channel::<Event>();
    {
        let mut ctl = ctl;
        std::thread::spawn(move || {
            while let Ok((kind, p)) = read_frame(&mut ctl) {
                let ev = match kind {
                    b'R' => Event::Ready,
                    b'F' => Event::Fail(String::from_utf8_lossy(&p).into_owned()),
                    b'X' if p.len() == 21 => {
                        let code = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                        let u64at = |o: usize| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&p[o..o + 8]);
                            u64::from_le_bytes(b)
                        };
                        Event::Exit {
                            status: if p[0] == 1 {
                                Status::Signaled(code)
                            } else {
                                Status::Exited(code)
                            },
                            out: u64at(5),
                            err: u64at(13),
                        }
                    }
                    _ => continue,
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
    }

    let mut heard = false;
    let mut to_ready = None;
    let mut guest_error = None;
    let mut stdin = Some(stdin);
    let mut stdin_keep: Option<UnixStream> = None;
    let mut forwarded: Option<Instant> = None;
    let deadline = opts.timeout.map(|t| start + t);
    let exit = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Ready) => {
                heard = true;
                to_ready = Some(t0.elapsed());
                if let Some(s) = stdin.take() {
                    // A second handle keeps the socket open after the pump's
                    // half-close: a full close would make qemu drop what it has not
                    // read yet.
                    stdin_keep = s.try_clone().ok();
                    spawn_stdin(s);
                }
                if spec.tty.is_some() {
                    spawn_winsize(ctl_w.try_clone().map_err(RunError::Io)?, spec.tty);
                }
            }
            Ok(Event::Fail(m)) => {
                heard = true;
                guest_error = Some(m);
            }
            Ok(Event::Exit { status, out, err }) => break Some((status, out, err)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
        if let Some(flag) = &opts.interrupt {
            let sig = flag.swap(0, Ordering::SeqCst);
            if sig != 0 {
                if to_ready.is_none()
                    || forwarded.is_some_and(|t| t.elapsed() > Duration::from_secs(1))
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RunError::Interrupted { signal: sig });
                }
                forwarded.get_or_insert_with(Instant::now);
                let _ = ctl_w.write_all(&frame(b'K', &(sig as u32).to_le_bytes()));
            }
        }
        if let Some(w) = watchdog
            && !heard
            && t0.elapsed() >= w
            && !alive.load(Ordering::Relaxed)
        {
            // KVM did not run the guest: nothing of the user's was consumed yet (stdin
            // is read only after `R`), so TCG can start over.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Attempt::KvmFailed(accel::stalled(w)));
        }
        if !heard && t0.elapsed() >= BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let console = console_rd.join().unwrap_or_default();
            let t = tail(&console, 15);
            return Err(RunError::BootTimeout {
                secs: BOOT_LIMIT.as_secs(),
                tail: if t.trim().is_empty() {
                    "; the guest printed nothing".to_string()
                } else {
                    format!("; its console ended with:\n{t}")
                },
            });
        }
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            let _ = child.kill();
            let _ = child.wait();
            let console = console_rd.join().unwrap_or_default();
            return Err(RunError::Timeout {
                secs: opts.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0),
                tail: tail(&console, 15),
            });
        }
        if child.try_wait().map_err(RunError::Io)?.is_some() {
            // The ctl reader may still hold the guest's last frames.
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Event::Exit { status, out, err }) => break Some((status, out, err)),
                Ok(Event::Fail(m)) => {
                    guest_error = Some(m);
                    heard = true;
                    break None;
                }
                _ => break None,
            }
        }
    };

    let Some((status, out, err)) = exit else {
        let st = child.wait().map_err(RunError::Io)?;
        let console = console_rd.join().unwrap_or_default();
        let qemu_said = qemu_err.join().unwrap_or_default();
        // qemu ended by itself before the guest printed anything at all: KVM could not
        // start it (a kernel that ran and then died, e.g. a panic, printed something).
        if accel == "kvm" && !heard && console.trim().is_empty() {
            let said = qemu_said.lines().find(|l| !l.trim().is_empty());
            return Ok(Attempt::KvmFailed(match said {
                Some(l) => format!("qemu failed with KVM ({})", l.trim()),
                None => "qemu failed with KVM before the guest said anything".to_string(),
            }));
        }
        if let Some(panic) = panic_text(&console) {
            return Err(RunError::Panic { panic });
        }
        let qemu_said = qemu_said.trim();
        return Err(RunError::Stopped {
            status: st.to_string(),
            qemu_said: if let Some(m) = guest_error {
                format!("; the guest said: {m}")
            } else if qemu_said.is_empty() {
                String::new()
            } else {
                format!("; qemu said: {qemu_said}")
            },
            tail: tail(&console, 15),
        });
    };

    // Every byte the guest counted must be through before it may power off.
    let until = Instant::now() + Duration::from_secs(10);
    while (out_n.load(Ordering::SeqCst) < out || err_n.load(Ordering::SeqCst) < err)
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = ctl_w.write_all(&frame(b'A', &[]));
    let until = Instant::now() + Duration::from_secs(10);
    while child.try_wait().map_err(RunError::Io)?.is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = out_pump.join();
    let _ = err_pump.join();
    drop(stdin_keep);
    let console = console_rd.join().unwrap_or_default();
    for (stream, got, sent) in [
        ("stdout", out_n.load(Ordering::SeqCst), out),
        ("stderr", err_n.load(Ordering::SeqCst), err),
    ] {
        if got < sent {
            return Err(RunError::Truncated { stream, got, sent });
        }
    }
    Ok(Attempt::Done(RunOutcome {
        status,
        guest_error,
        accel,
        elapsed: start.elapsed(),
        to_ready,
        console,
    }))
}

/// The panic report on the console, from a few lines before "Kernel panic" to the end.
pub fn panic_text(console: &str) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let i = lines.iter().position(|l| l.contains("Kernel panic"))?;
    Some(lines[i.saturating_sub(8)..].join("\n"))
}

fn tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests;
