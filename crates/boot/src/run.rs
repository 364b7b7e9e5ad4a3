//! Run one command in a VM (`kiln run`): the host side of kiln-init's run mode.
//!
//! qemu boots the appliance with `kiln.run quiet` on the kernel command line and a
//! virtio-serial device carrying four ports, each backed by one end of a socketpair
//! handed to qemu as an inherited fd (no socket files, nothing to clean up):
//! `kiln.ctl` (framed messages: the command spec, window sizes, signals, closed
//! streams, the exit status; defined once in `kiln-wire`), `kiln.stdin`, `kiln.stdout`
//! and `kiln.stderr` (raw bytes, relayed with pipeline semantics by [`relay`]). The
//! serial console carries only kernel (and init) messages; its end is kept (bounded,
//! [`console`]) and shown when the guest panics or stops early, never mixed into the
//! command's output.
//!
//! Ordering: stdin is read only once the guest said the command started (`R`), so a
//! failed KVM start (retried with TCG) loses no input; the exit status `X` carries the
//! byte counts the guest wrote to stdout and stderr, and the host acknowledges (`A`,
//! which lets the guest power off) only once it has copied that many bytes, however
//! long a slow consumer takes, so qemu never exits with output still in its buffers.
//!
//! The run loop is one poll(2) over qemu's pidfd, the control channel, the relays'
//! wake-up pipe and the caller's [`Interrupt`], with the nearest deadline (the
//! `--timeout` from qemu's start, the KVM watchdog, the boot limit) as its timeout: no
//! sleeps, and nothing before it can block (the spec goes through the control writer
//! thread).
//!
//! Invariants: one qemu at a time, owned by a guard ([`qemu::Qemu`]) from spawn to
//! reap, which kills and reaps it on every way out (errors, panics, timeouts,
//! interrupts); qemu gets `PR_SET_PDEATHSIG` so it never outlives kiln's process, and
//! runs in its own process group so terminal signals reach kiln (and through it the
//! guest) only; every relay thread ends when the attempt does; memory for what qemu
//! and the guest print is bounded.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kiln_wire::{Stream, ToGuest, ToHost};
use rustix::event::{PollFd, PollFlags};

use crate::accel::{self, Memo, Plan};
use crate::{Accel, base_cmdline, root_uuid};

mod console;
pub(crate) mod qemu;
mod relay;
mod wire;
use console::Console;
use qemu::Qemu;
pub use relay::terminal_size;
use relay::{Stop, Waker, spawn_ctl_writer, spawn_out, spawn_stdin, spawn_winsize};

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
    /// Stop the VM after this long from qemu's start (at most a year, see
    /// [`crate::limits`]).
    pub timeout: Option<Duration>,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// Copy the console to stderr as it arrives (debugging).
    pub echo_console: bool,
    /// A signal raised here (by the caller's signal thread) is forwarded to the
    /// command's process group in the guest; a second one a second later, or one
    /// before the command started, stops the VM ([`RunError::Interrupted`]).
    pub interrupt: Option<Arc<Interrupt>>,
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
    #[error("watching the VM")]
    Watch(#[source] io::Error),
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    #[error("the command cannot be sent to the guest")]
    Spec(#[source] kiln_wire::EncodeError),
    #[error("the guest broke the control channel's protocol; the VM was stopped")]
    Protocol(#[source] kiln_wire::RecvError),
    /// `tail` is what [`console_said`] gives: the console's last lines or that there
    /// were none.
    #[error("the VM did not finish within {secs} s and was stopped{tail}")]
    Timeout { secs: f64, tail: String },
    #[error(
        "the VM did not start the command within {secs} s and was stopped (the boot stalled){tail}"
    )]
    BootTimeout { secs: u64, tail: String },
    #[error("the guest kernel panicked:\n{panic}")]
    Panic { panic: String },
    #[error("the VM stopped before the command finished ({status}){qemu_said}{tail}")]
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
    /// Writing the command's output failed (not a consumer that went away, which ends
    /// the command as in a pipeline): the output is incomplete.
    #[error("writing the command's {stream}")]
    Output {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
}

/// How long the boot may take, from qemu's start to the guest's word that the command
/// started (or could not be), whatever `--timeout` says: a boot that stalls (a kernel
/// that hangs, a root that never comes) ends with an error instead of a silent wait.
/// TCG on a loaded two-core machine boots in under a minute.
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// How long qemu may take to power off once the host acknowledged every byte.
const POWER_OFF_WAIT: Duration = Duration::from_secs(10);

/// Without pidfds (kernels before 5.3) the loop looks at qemu this often.
pub(crate) const NO_PIDFD_TICK: Duration = Duration::from_millis(100);

/// A signal for the guest's command, raised by the caller's signal-handling thread;
/// the run loop wakes on it (a self-pipe), no polling of a flag.
#[derive(Debug)]
pub struct Interrupt {
    sig: AtomicI32,
    r: OwnedFd,
    w: OwnedFd,
}

impl Interrupt {
    pub fn new() -> io::Result<Interrupt> {
        use rustix::pipe::PipeFlags;
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Interrupt {
            sig: AtomicI32::new(0),
            r,
            w,
        })
    }

    /// Ask the run to forward signal `sig` (the latest one wins).
    pub fn raise(&self, sig: i32) {
        self.sig.store(sig, Ordering::SeqCst);
        // A full pipe already holds a wake-up.
        let _ = rustix::io::write(&self.w, &[1]);
    }

    fn take(&self) -> i32 {
        let mut b = [0u8; 64];
        while matches!(rustix::io::read(&self.r, &mut b), Ok(n) if n > 0) {}
        self.sig.swap(0, Ordering::SeqCst)
    }
}

/// What the console says for an error message: its last lines, or that there were
/// none (so no message ever points at a console that is not there).
fn console_said(c: &Console) -> String {
    let t = c.last_lines(15);
    if t.is_empty() {
        "; the guest printed nothing on its console".to_string()
    } else {
        format!("; its console ended with:\n{t}")
    }
}

/// qemu's exit status in words.
fn qemu_status(st: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match st {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("qemu exited with status {c}"),
            (None, Some(n)) => format!("qemu was killed by signal {n}"),
            _ => "qemu ended".to_string(),
        },
        None => "qemu's status is unknown".to_string(),
    }
}

/// Boot the appliance, run `spec`, and report how the command ended. The command's
/// stdin, stdout and stderr are this process's.
pub fn run(opts: &RunOptions, spec: &RunSpec) -> Result<RunOutcome, RunError> {
    crate::limits::memory(opts.memory_mib)?;
    crate::limits::cpus(opts.cpus)?;
    if let Some(t) = opts.timeout {
        crate::limits::timeout_duration(t)?;
    }
    let spec_msg = ToGuest::Spec(wire::spec(spec));
    spec_msg.encode().map_err(RunError::Spec)?;
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
    let a = Attempt {
        opts,
        spec,
        spec_msg: &spec_msg,
        cmdline: &cmdline,
        start,
    };
    match a.run(plan.accel(), watchdog)? {
        Outcome::Done(o) => Ok(o),
        Outcome::KvmFailed(why) if opts.accel == Accel::Auto => {
            if let Some(m) = &opts.memo {
                m.remember(&opts.qemu, &why);
            }
            accel::announce_fallback(&why);
            match a.run("tcg", None)? {
                Outcome::Done(o) => Ok(o),
                Outcome::KvmFailed(why) => Err(RunError::Stopped {
                    status: "qemu exited at start".into(),
                    qemu_said: format!("; qemu said: {why}"),
                    tail: String::new(),
                }),
            }
        }
        Outcome::KvmFailed(why) => Err(RunError::Stopped {
            status: "qemu exited at start".into(),
            qemu_said: format!("; qemu said: {why}"),
            tail: String::new(),
        }),
    }
}

enum Outcome {
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
    cmd.args(["-smp", &opts.cpus.to_string()])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&opts.kernel)
        .arg("-initrd")
        .arg(&opts.initrd)
        .args(["-append", &cmdline.join(" ")])
        .arg("-drive")
        .arg(crate::drive_arg(&opts.root, "root"))
        .args([
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
        cmd.arg("-virtfs").arg(qemu::virtfs_arg(
            &s.host,
            &wire::share_tag(i),
            &format!("kfs{i}"),
        ));
    }
    cmd
}

/// Copy what qemu prints on `from` into `keep` (and to stderr with `echo`), until EOF.
fn spawn_reader(
    from: Option<impl Read + Send + 'static>,
    keep: Arc<Mutex<Console>>,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(mut from) = from else { return };
        let mut buf = [0u8; 8192];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if echo {
                let _ = io::stderr().write_all(&buf[..n]);
            }
            if let Ok(mut c) = keep.lock() {
                c.push(&buf[..n]);
            }
        }
    })
}

/// One boot: what does not change between the KVM try and the TCG retry.
struct Attempt<'a> {
    opts: &'a RunOptions,
    spec: &'a RunSpec,
    spec_msg: &'a ToGuest,
    cmdline: &'a [String],
    /// When `run` was called: `--timeout` counts from here, across both tries.
    start: Instant,
}

/// What the guest said so far.
#[derive(Default)]
struct Heard {
    any: bool,
    ready: Option<Duration>,
    error: Option<String>,
    exit: Option<kiln_wire::Exit>,
}

impl Attempt<'_> {
    fn run(&self, accel: &'static str, watchdog: Option<Duration>) -> Result<Outcome, RunError> {
        let opts = self.opts;
        let pair = || UnixStream::pair().map_err(RunError::Io);
        let (ctl, g0) = pair()?;
        let (stdin, g1) = pair()?;
        let (stdout, g2) = pair()?;
        let (stderr, g3) = pair()?;
        let guest: [OwnedFd; 4] = [g0.into(), g1.into(), g2.into(), g3.into()];
        let raw = [
            guest[0].as_raw_fd(),
            guest[1].as_raw_fd(),
            guest[2].as_raw_fd(),
            guest[3].as_raw_fd(),
        ];
        // Everything that can fail is set up before qemu exists.
        let mut stop = Stop::new().map_err(RunError::Io)?;
        let waker = Waker::new().map_err(RunError::Io)?;
        let ctl_w = ctl.try_clone().map_err(RunError::Io)?;
        let stdin_keep = stdin.try_clone().map_err(RunError::Io)?;
        let mut cmd = qemu_command(opts, self.spec, self.cmdline, accel, &raw);
        tracing::debug!("running {:?}", cmd);
        let t0 = Instant::now();
        // The guard: from here every return (and unwinding) kills and reaps qemu.
        let mut qemu = Qemu::spawn(&mut cmd, &raw).map_err(|e| RunError::Spawn {
            qemu: opts.qemu.clone(),
            source: e,
        })?;
        drop(guest);
        let console = Arc::new(Mutex::new(Console::default()));
        let qemu_err = Arc::new(Mutex::new(Console::default()));
        let (qout, qerr) = qemu.take_output();
        let readers = [
            spawn_reader(qout, Arc::clone(&console), opts.echo_console),
            spawn_reader(qerr, Arc::clone(&qemu_err), false),
        ];

        let (to_guest, rx) = mpsc::channel::<ToGuest>();
        if fault("oversize-frame") {
            // A header announcing 4 GiB where the spec belongs: the init must refuse
            // it without allocating, say so and end cleanly. The socket is empty, so
            // these five bytes never block.
            let _ = (&ctl_w).write_all(b"S\xff\xff\xff\xff");
        } else {
            let _ = to_guest.send(self.spec_msg.clone());
        }
        spawn_ctl_writer(ctl_w, rx);
        let out_n = Arc::new(AtomicU64::new(0));
        let err_n = Arc::new(AtomicU64::new(0));
        let pumps = [
            spawn_out(
                stdout,
                Stream::Stdout,
                Arc::clone(&out_n),
                to_guest.clone(),
                &waker,
                &stop,
            ),
            spawn_out(
                stderr,
                Stream::Stderr,
                Arc::clone(&err_n),
                to_guest.clone(),
                &waker,
                &stop,
            ),
        ];

        let mut heard = Heard::default();
        let mut stdin = Some(stdin);
        let mut ctl_buf: Vec<u8> = Vec::new();
        let mut ctl_open = true;
        let mut forwarded: Option<Instant> = None;
        let mut acked: Option<Instant> = None;
        let deadline = opts.timeout.map(|t| self.start + t);
        let status = loop {
            let now = Instant::now();
            let mut next = deadline;
            let mut soonest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
            if !heard.any {
                if let Some(w) = watchdog {
                    soonest(t0 + w);
                }
                soonest(t0 + BOOT_LIMIT);
            }
            if let Some(a) = acked {
                soonest(a + POWER_OFF_WAIT);
            }
            if qemu.exit_fd().is_none() {
                soonest(now + NO_PIDFD_TICK);
            }
            {
                let mut fds = vec![PollFd::from_borrowed_fd(waker.fd(), PollFlags::IN)];
                if ctl_open {
                    fds.push(PollFd::new(&ctl, PollFlags::IN));
                }
                if let Some(i) = &opts.interrupt {
                    fds.push(PollFd::new(&i.r, PollFlags::IN));
                }
                if let Some(p) = qemu.exit_fd() {
                    fds.push(PollFd::from_borrowed_fd(p, PollFlags::IN));
                }
                let wait = next.map(|n| {
                    let d = n.saturating_duration_since(now);
                    rustix::event::Timespec {
                        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
                        tv_nsec: d.subsec_nanos().into(),
                    }
                });
                match rustix::event::poll(&mut fds, wait.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(RunError::Watch(e.into())),
                }
            }
            waker.drain();

            if ctl_open {
                ctl_open = read_ctl(&ctl, &mut ctl_buf).map_err(RunError::Watch)?;
                while let Some(m) = next_message(&mut ctl_buf).map_err(RunError::Protocol)? {
                    match m {
                        ToHost::Ready => {
                            heard.any = true;
                            heard.ready = Some(t0.elapsed());
                            if let Some(s) = stdin.take() {
                                spawn_stdin(s, &stop);
                            }
                            if self.spec.tty.is_some() {
                                spawn_winsize(to_guest.clone(), self.spec.tty, &stop);
                            }
                        }
                        ToHost::Fail(m) => {
                            heard.any = true;
                            heard.error = Some(String::from_utf8_lossy(&m).into_owned());
                        }
                        ToHost::Exit(x) => {
                            heard.any = true;
                            heard.exit = Some(x);
                        }
                    }
                }
            }

            if let Some(i) = &opts.interrupt {
                let sig = i.take();
                if sig != 0 {
                    if heard.ready.is_none()
                        || forwarded.is_some_and(|t| t.elapsed() > Duration::from_secs(1))
                    {
                        qemu.kill();
                        return Err(RunError::Interrupted { signal: sig });
                    }
                    forwarded.get_or_insert_with(Instant::now);
                    let _ = to_guest.send(ToGuest::Signal(sig as u32));
                }
            }

            // Every byte the guest counted is through: it may power off.
            if let Some(x) = heard.exit
                && acked.is_none()
                && out_n.load(Ordering::SeqCst) >= x.out
                && err_n.load(Ordering::SeqCst) >= x.err
            {
                let _ = to_guest.send(ToGuest::Ack);
                acked = Some(Instant::now());
            }

            if let Some(st) = qemu.try_wait().map_err(RunError::Watch)? {
                // Its last frames are in the socket: read them to the end.
                while read_ctl(&ctl, &mut ctl_buf).map_err(RunError::Watch)? {}
                while let Ok(Some(m)) = next_message(&mut ctl_buf) {
                    match m {
                        ToHost::Fail(m) => {
                            heard.any = true;
                            heard.error = Some(String::from_utf8_lossy(&m).into_owned());
                        }
                        ToHost::Exit(x) => heard.exit = Some(x),
                        ToHost::Ready => heard.any = true,
                    }
                }
                break Some(st);
            }

            let now = Instant::now();
            if let Some(a) = acked
                && now >= a + POWER_OFF_WAIT
            {
                // Every byte is through; a guest that does not power off is stopped.
                break qemu.kill();
            }
            if let Some(w) = watchdog
                && !heard.any
                && now >= t0 + w
                && !console.lock().map(|c| c.alive()).unwrap_or(false)
            {
                // KVM did not run the guest: nothing of the user's was consumed yet
                // (stdin is read only after `R`), so TCG can start over.
                qemu.kill();
                return Ok(Outcome::KvmFailed(accel::stalled(w)));
            }
            if !heard.any && now >= t0 + BOOT_LIMIT {
                qemu.kill();
                stop.stop();
                join_all(readers);
                return Err(RunError::BootTimeout {
                    secs: BOOT_LIMIT.as_secs(),
                    tail: lock(&console, console_said),
                });
            }
            if let Some(d) = deadline
                && now >= d
            {
                qemu.kill();
                stop.stop();
                join_all(readers);
                return Err(RunError::Timeout {
                    secs: opts.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0),
                    tail: lock(&console, console_said),
                });
            }
        };
        // qemu is gone: its output pipes end, so the readers do.
        drop(to_guest);
        join_all(readers);

        let Some(x) = heard.exit else {
            // qemu ended by itself before the guest printed anything at all: KVM could
            // not start it (a kernel that ran and then died, e.g. a panic, printed
            // something).
            let quiet = lock(&console, |c| c.last_lines(1).is_empty());
            if accel == "kvm" && !heard.any && quiet {
                let said = lock(&qemu_err, |c| c.last_lines(10));
                let said = said.lines().find(|l| !l.trim().is_empty());
                return Ok(Outcome::KvmFailed(match said {
                    Some(l) => format!("qemu failed with KVM ({})", l.trim()),
                    None => "qemu failed with KVM before the guest said anything".to_string(),
                }));
            }
            if let Some(panic) = lock(&console, Console::panic) {
                return Err(RunError::Panic { panic });
            }
            let qemu_said = lock(&qemu_err, |c| c.last_lines(10));
            let qemu_said = qemu_said.trim();
            return Err(RunError::Stopped {
                status: status_words(status),
                qemu_said: if let Some(m) = heard.error {
                    format!("; the guest said: {m}")
                } else if qemu_said.is_empty() {
                    String::new()
                } else {
                    format!("; qemu said: {qemu_said}")
                },
                tail: lock(&console, console_said),
            });
        };

        // The pumps read the ports to their end (qemu closed them), then stop.
        stop.stop();
        let mut failure = None;
        for (p, stream) in pumps.into_iter().zip(["stdout", "stderr"]) {
            if let Ok(r) = p.join()
                && let Some(e) = r.error
            {
                failure.get_or_insert(RunError::Output { stream, source: e });
            }
        }
        drop(stdin_keep);
        if let Some(f) = failure {
            return Err(f);
        }
        for (stream, got, sent) in [
            ("stdout", out_n.load(Ordering::SeqCst), x.out),
            ("stderr", err_n.load(Ordering::SeqCst), x.err),
        ] {
            if got < sent {
                return Err(RunError::Truncated { stream, got, sent });
            }
        }
        Ok(Outcome::Done(RunOutcome {
            status: if x.signaled {
                Status::Signaled(x.code)
            } else {
                Status::Exited(x.code)
            },
            guest_error: heard.error,
            accel,
            elapsed: self.start.elapsed(),
            to_ready: heard.ready,
            console: lock(&console, Console::text),
        }))
    }
}

/// Fault injection for the tests: `KILN_RUN_FAULT=oversize-frame` sends the guest a
/// corrupt frame instead of the spec. Only with the `test-hooks` feature, which the
/// tests enable; a shipped kiln has none.
#[cfg(feature = "test-hooks")]
fn fault(what: &str) -> bool {
    std::env::var_os("KILN_RUN_FAULT").is_some_and(|v| v == what)
}

#[cfg(not(feature = "test-hooks"))]
fn fault(_what: &str) -> bool {
    false
}

fn status_words(st: Option<ExitStatus>) -> String {
    qemu_status(st)
}

fn lock<T>(c: &Mutex<Console>, f: impl FnOnce(&Console) -> T) -> T {
    // A reader thread that panicked leaves what it had.
    match c.lock() {
        Ok(g) => f(&g),
        Err(p) => f(&p.into_inner()),
    }
}

fn join_all(readers: [std::thread::JoinHandle<()>; 2]) {
    for r in readers {
        let _ = r.join();
    }
}

/// Read what the control channel has without blocking; false at its end.
fn read_ctl(ctl: &UnixStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut b = [0u8; 4096];
    loop {
        // MSG_DONTWAIT: the writer thread shares the socket and needs it blocking.
        match rustix::net::recv(ctl.as_fd(), &mut b, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(false),
            Ok((n, _)) => buf.extend_from_slice(&b[..n]),
            Err(rustix::io::Errno::AGAIN) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            // qemu closed its end with our spec unread (it never got to the guest).
            Err(rustix::io::Errno::CONNRESET) | Err(rustix::io::Errno::PIPE) => {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The next whole message at the front of `buf`, removed from it.
fn next_message(buf: &mut Vec<u8>) -> Result<Option<ToHost>, kiln_wire::RecvError> {
    let Some((kind, p, used)) = kiln_wire::split_frame(buf)? else {
        return Ok(None);
    };
    let m = ToHost::decode(kind, p).map_err(kiln_wire::RecvError::Malformed)?;
    buf.drain(..used);
    Ok(Some(m))
}

/// The panic report on the console, from a few lines before "Kernel panic" to the end.
pub fn panic_text(console: &str) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let i = lines.iter().position(|l| l.contains("Kernel panic"))?;
    Some(lines[i.saturating_sub(8)..].join("\n"))
}

#[cfg(test)]
mod tests;
