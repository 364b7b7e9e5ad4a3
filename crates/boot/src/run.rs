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
//! The guest says `W` when it reaches its ready point (root mounted read-only, modules
//! loaded, waiting for the spec); the host sends the spec then, stamped with the host's
//! clock and 64 random bytes for the guest's entropy pool.
//!
//! Warm start ([`RunOptions::states`]): the first run of an appliance and VM shape
//! boots in the *saved layout* (the usual devices plus qemu's `vmgenid` and a QMP
//! monitor on a fifth socketpair; the number of shares is part of the shape) and,
//! at `W`, has qemu migrate the running VM into a private file of the cache ([`qmp`]),
//! resumes it and sends the spec; the file is sealed (header, BLAKE3, [`state`]) and
//! published by rename in a thread while the command runs. Later runs start qemu with
//! `-S -incoming fd:N` on that file, check its hash while qemu loads it, and only then
//! `cont` and send the spec: the guest mounts the shares, sets the clock, reseeds its
//! random generator (vmgenid also tells its kernel), remounts the root read-write over
//! qemu's fresh `snapshot=on` overlay and runs the command. A state that cannot be used
//! (missing, truncated, damaged, made for another qemu or kernel; qemu refuses it; the
//! VM does not answer within [`WARM_LIMIT`]) makes the run boot and save a new one,
//! said in one `-v` line; nothing of the user's was consumed by then (stdin is read
//! only after `R`). A run holds its state open from the start, so a gc or a newer
//! state replacing it cannot change what its qemu reads.
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
mod qmp;
mod relay;
mod state;
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
    /// The appliance's saved VM start states: a run starts from the one of its VM's
    /// shape, or boots and saves it at the guest's ready point. `None` boots every
    /// time (`--no-snapshot`).
    pub states: Option<kiln_cache::States>,
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
    /// The VM started from a saved state instead of booting.
    pub warm: bool,
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
    match a.start(plan.accel(), watchdog)? {
        Outcome::Done(o) => Ok(o),
        Outcome::KvmFailed(why) if opts.accel == Accel::Auto => {
            if let Some(m) = &opts.memo {
                m.remember(&opts.qemu, &why);
            }
            accel::announce_fallback(&why);
            match a.start("tcg", None)? {
                Outcome::Done(o) => Ok(o),
                Outcome::KvmFailed(why) | Outcome::StateFailed(why) => Err(RunError::Stopped {
                    status: "qemu exited at start".into(),
                    qemu_said: format!("; qemu said: {why}"),
                    tail: String::new(),
                }),
            }
        }
        Outcome::KvmFailed(why) | Outcome::StateFailed(why) => Err(RunError::Stopped {
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
    /// The VM could not start from its saved state (qemu refused it, its checksum is
    /// wrong, the guest did not answer): why. Nothing of the user's was consumed.
    StateFailed(String),
}

/// How one attempt starts the VM.
enum Mode {
    /// Boot, as without saved states.
    Cold,
    /// Boot in the saved layout and save the VM's state at the guest's ready point.
    Save {
        writer: kiln_cache::StateWriter,
        shape: state::Shape,
    },
    /// Start from a saved state (checked header; the stream is verified while qemu
    /// loads it, before the VM runs).
    Warm {
        file: fs::File,
        header: state::Header,
    },
}

impl Mode {
    /// The saved layout: vmgenid and a monitor besides the usual devices.
    fn saved_layout(&self) -> bool {
        !matches!(self, Mode::Cold)
    }
}

/// How long a VM started from a saved state may take to answer the spec: it was
/// ready when saved, so a silent one is broken (and boots instead).
const WARM_LIMIT: Duration = Duration::from_secs(30);

/// How long saving a VM's state may take (a few hundred MiB written to a file).
const SAVE_LIMIT: Duration = Duration::from_secs(120);

/// Descriptors of the saved layout, for [`qemu_command`].
struct Layout {
    /// qemu's end of the monitor socketpair.
    monitor: i32,
    /// The state to start from (`-S -incoming fd:N`, positioned at the stream).
    incoming: Option<i32>,
}

fn qemu_command(
    opts: &RunOptions,
    spec: &RunSpec,
    cmdline: &[String],
    accel: &str,
    guest_fds: &[i32; 4],
    layout: Option<&Layout>,
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
    // One 9p device per share. The number is part of a saved state's shape; the host
    // paths are not (9p keeps no state until the guest mounts it, after the start).
    for (i, s) in spec.shares.iter().enumerate() {
        cmd.arg("-virtfs").arg(qemu::virtfs_arg(
            &s.host,
            &wire::share_tag(i),
            &format!("kfs{i}"),
        ));
    }
    let Some(layout) = layout else {
        return cmd;
    };
    cmd.args(["-device", "vmgenid"]).args([
        "-chardev",
        &format!("socket,id=kmon,fd={}", layout.monitor),
        "-mon",
        "chardev=kmon,mode=control",
    ]);
    if let Some(fd) = layout.incoming {
        cmd.arg("-S").args(["-incoming", &format!("fd:{fd}")]);
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

impl Heard {
    /// The guest answered the spec (the command started, or could not).
    fn answered(&self) -> bool {
        self.ready.is_some() || self.error.is_some() || self.exit.is_some()
    }
}

/// The saved state's writer: (bytes, time from the migration's start to the
/// published file, time the VM was paused).
type Saving = std::thread::JoinHandle<Result<(u64, Duration, Duration), String>>;

/// Start a VM loaded from a state (`-S -incoming`): check the stream's hash while
/// qemu loads it, then let it run.
fn resume(
    monitor: Option<UnixStream>,
    file: &fs::File,
    header: state::Header,
    t0: Instant,
) -> Result<(), String> {
    let mon = monitor.ok_or("no monitor")?;
    let deadline = t0 + WARM_LIMIT;
    let f = file.try_clone().map_err(|e| e.to_string())?;
    let check = std::thread::spawn(move || state::stream_hash(&f, header.stream_len));
    let q = qmp::Qmp::connect(mon, deadline).map_err(|e| format!("qemu's monitor: {e}"));
    let hash = check
        .join()
        .map_err(|_| "its check panicked".to_string())?
        .map_err(|e| format!("it cannot be read ({e})"))?;
    if hash != header.hash {
        return Err("its checksum does not match: the file is damaged".into());
    }
    q?.execute("cont", serde_json::json!({}), None, deadline)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Save the running VM's state through `writer` (qemu's migration to the file,
/// after the header), resume the VM, and seal and publish the file in a thread.
/// On error: why, and whether the VM runs (else it must be stopped).
fn save_state(
    monitor: Option<UnixStream>,
    writer: kiln_cache::StateWriter,
    shape: state::Shape,
) -> Result<Saving, (String, bool)> {
    use serde_json::json;
    let t = Instant::now();
    let deadline = t + SAVE_LIMIT;
    let mon = monitor.ok_or(("no monitor".to_string(), true))?;
    let mut q = qmp::Qmp::connect(mon, deadline).map_err(|e| (e.to_string(), true))?;
    // qemu writes into a pipe; a thread copies it into the file and hashes it on the
    // way. The pipe's only write end is qemu's (ours goes once qemu has it), so the
    // copy ends when qemu closes it: at the end of the migration or of qemu.
    let (from, to) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| (e.to_string(), true))?;
    let _ = rustix::pipe::fcntl_setpipe_size(&to, 1 << 20);
    let file = writer
        .file()
        .try_clone()
        .map_err(|e| (e.to_string(), true))?;
    let copier = std::thread::spawn(move || state::copy_in(from, &file));
    let mut to = Some(to);
    let setup = |q: &mut qmp::Qmp, to: &mut Option<OwnedFd>| -> io::Result<()> {
        q.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
            None,
            deadline,
        )?;
        // The default (32 MiB/s) is for networks; this is a local file.
        q.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": 1u64 << 40}),
            None,
            deadline,
        )?;
        if let Some(w) = to.as_ref() {
            q.execute(
                "getfd",
                json!({"fdname": "kiln-state"}),
                Some(w.as_fd()),
                deadline,
            )?;
        }
        *to = None;
        q.execute("migrate", json!({"uri": "fd:kiln-state"}), None, deadline)?;
        Ok(())
    };
    if let Err(e) = setup(&mut q, &mut to) {
        // qemu may hold the pipe's end until it exits: the copier is left to end then.
        drop(to);
        return Err((e.to_string(), true));
    }
    let end = q.wait_event(
        |e| {
            e["event"] == "MIGRATION"
                && matches!(
                    e["data"]["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
        },
        deadline,
    );
    if fault("kill-while-saving") {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    let paused = t.elapsed();
    // After a completed migration qemu leaves the VM paused; after a failed one it
    // runs again. Either way it must run now. qemu announces the completion a moment
    // before its migration thread leaves the finishing state, in which it refuses
    // `cont`, and sends no event when it does: ask until it has (each answer waits for
    // qemu's main loop, so this is not a busy wait on kiln's side).
    while q
        .execute("query-status", json!({}), None, deadline)
        .is_ok_and(|s| s["status"] == "finish-migrate")
    {}
    let resumed = q.execute("cont", json!({}), None, deadline);
    let status = match end {
        Ok(e) => e["data"]["status"].as_str().unwrap_or("").to_string(),
        Err(e) => {
            return Err((
                format!("waiting for qemu's migration: {e}"),
                resumed.is_ok(),
            ));
        }
    };
    if let Err(e) = resumed {
        return Err((format!("the VM did not resume: {e}"), false));
    }
    if status != "completed" {
        return Err((format!("qemu's migration {status}"), true));
    }
    Ok(std::thread::spawn(move || {
        let (len, hash) = copier
            .join()
            .map_err(|_| "its copier panicked".to_string())?
            .map_err(|e| format!("writing {}: {e}", writer.path().display()))?;
        let bytes = state::seal(writer.file(), &shape, len, hash)?;
        writer.publish().map_err(|e| e.to_string())?;
        Ok((bytes, t.elapsed(), paused))
    }))
}

impl Attempt<'_> {
    /// One start with `accel`: from the saved state when there is a usable one (and
    /// booting if the VM cannot start from it), else a boot that saves it.
    fn start(&self, accel: &'static str, watchdog: Option<Duration>) -> Result<Outcome, RunError> {
        let mut mode = self.mode(accel);
        // At most: from the state, then a boot that saves it, then a plain boot.
        for _ in 0..2 {
            let warm = matches!(mode, Mode::Warm { .. });
            match self.run(accel, watchdog, mode)? {
                Outcome::StateFailed(why) if warm => {
                    tracing::info!("booting: the VM could not start from its saved state: {why}");
                    mode = match (self.opts.states.as_ref(), self.shape(accel)) {
                        (Some(states), Some(shape)) => self.saver(states, shape),
                        _ => Mode::Cold,
                    };
                }
                Outcome::StateFailed(why) => {
                    tracing::info!("booting again without saving: {why}");
                    mode = Mode::Cold;
                }
                o => return Ok(o),
            }
        }
        self.run(accel, watchdog, mode)
    }

    fn shape(&self, accel: &str) -> Option<state::Shape> {
        let o = self.opts;
        state::Shape::new(
            &o.qemu,
            accel,
            o.memory_mib,
            o.cpus,
            self.spec.shares.len(),
            &o.kernel,
            &o.initrd,
            &o.root,
            self.cmdline,
        )
        .map_err(|e| tracing::info!("booting without a saved state: {e}"))
        .ok()
    }

    /// How to start: the saved state if it is usable, else boot (saving one when
    /// this run may); one `-v` line says why it boots.
    fn mode(&self, accel: &str) -> Mode {
        let Some(states) = self.opts.states.as_ref() else {
            return Mode::Cold;
        };
        let Some(shape) = self.shape(accel) else {
            return Mode::Cold;
        };
        let path = states.path(&shape.name);
        match states.open(&shape.name) {
            Ok(Some(file)) => match state::check(&file, &shape) {
                Ok(header) => {
                    return Mode::Warm { file, header };
                }
                Err(why) => tracing::info!(
                    "booting: the saved VM start state {} is not used: {why}",
                    path.display()
                ),
            },
            Ok(None) => tracing::info!("booting: no saved VM start state yet ({})", path.display()),
            Err(e) => tracing::info!("booting: the saved VM start state is not used: {e}"),
        }
        self.saver(states, shape)
    }

    /// Boot and save the state, unless another process is saving it right now.
    fn saver(&self, states: &kiln_cache::States, shape: state::Shape) -> Mode {
        match states.begin_save(&shape.name) {
            Ok(Some(writer)) => Mode::Save { writer, shape },
            Ok(None) => {
                tracing::info!("another kiln is saving this VM's start state; not saving it twice");
                Mode::Cold
            }
            Err(e) => {
                tracing::info!("the VM's start state will not be saved: {e}");
                Mode::Cold
            }
        }
    }

    /// The spec as sent now: with the host's clock and fresh random bytes.
    fn spec_now(&self) -> ToGuest {
        let mut m = self.spec_msg.clone();
        if let ToGuest::Spec(s) = &mut m {
            if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                s.time = Some((d.as_secs().min(i64::MAX as u64) as i64, d.subsec_nanos()));
            }
            let mut r = vec![0u8; 64];
            if rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty())
                .is_ok_and(|n| n == r.len())
            {
                s.entropy = r;
            }
        }
        m
    }

    fn run(
        &self,
        accel: &'static str,
        watchdog: Option<Duration>,
        mode: Mode,
    ) -> Result<Outcome, RunError> {
        let opts = self.opts;
        let warm = matches!(mode, Mode::Warm { .. });
        // A VM started from a state printed its boot long ago: no console to watch.
        let watchdog = if warm { None } else { watchdog };
        let pair = || UnixStream::pair().map_err(RunError::Io);
        let (ctl, g0) = pair()?;
        let (stdin, g1) = pair()?;
        let (stdout, g2) = pair()?;
        let (stderr, g3) = pair()?;
        let (monitor, g4) = pair()?;
        let guest: [OwnedFd; 5] = [g0.into(), g1.into(), g2.into(), g3.into(), g4.into()];
        let raw = [
            guest[0].as_raw_fd(),
            guest[1].as_raw_fd(),
            guest[2].as_raw_fd(),
            guest[3].as_raw_fd(),
        ];
        let mut inherit = raw.to_vec();
        // Everything that can fail is set up before qemu exists.
        let mut stop = Stop::new().map_err(RunError::Io)?;
        let waker = Waker::new().map_err(RunError::Io)?;
        let ctl_w = ctl.try_clone().map_err(RunError::Io)?;
        let stdin_keep = stdin.try_clone().map_err(RunError::Io)?;
        let incoming = match &mode {
            Mode::Warm { file, .. } => {
                use std::io::Seek;
                (&*file)
                    .seek(io::SeekFrom::Start(state::HEADER_LEN))
                    .map_err(RunError::Io)?;
                Some(file.as_raw_fd())
            }
            _ => None,
        };
        let layout = mode.saved_layout().then(|| Layout {
            monitor: guest[4].as_raw_fd(),
            incoming,
        });
        if layout.is_some() {
            inherit.push(guest[4].as_raw_fd());
        }
        inherit.extend(incoming);
        let mut cmd = qemu_command(opts, self.spec, self.cmdline, accel, &raw, layout.as_ref());
        tracing::debug!("running {:?}", cmd);
        let t0 = Instant::now();
        // The guard: from here every return (and unwinding) kills and reaps qemu.
        let mut qemu = Qemu::spawn(&mut cmd, &inherit).map_err(|e| RunError::Spawn {
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
        // The spec goes when the guest waits for it (`W`), so its clock is the
        // host's of that moment; a VM started from a state waits already.
        let mut spec_sent = false;
        let mut saving = None;
        let mut monitor = Some(monitor);
        if fault("oversize-frame") {
            // A header announcing 4 GiB where the spec belongs: the init must refuse
            // it without allocating, say so and end cleanly. The socket is empty, so
            // these five bytes never block.
            let _ = (&ctl_w).write_all(b"S\xff\xff\xff\xff");
            spec_sent = true;
        }
        let mode = match mode {
            Mode::Warm { file, header } => {
                let m = monitor.take();
                match resume(m, &file, header, t0) {
                    Ok(()) => {}
                    Err(why) => {
                        qemu.kill();
                        stop.stop();
                        join_all(readers);
                        let said = lock(&qemu_err, |c| c.last_lines(3));
                        let said = said.trim();
                        return Ok(Outcome::StateFailed(if said.is_empty() {
                            why
                        } else {
                            format!("{why}; qemu said: {said}")
                        }));
                    }
                }
                let _ = to_guest.send(self.spec_now());
                spec_sent = true;
                None
            }
            Mode::Save { writer, shape } => Some((writer, shape)),
            Mode::Cold => None,
        };
        let mut save = mode;
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
            if warm && !heard.answered() {
                soonest(t0 + WARM_LIMIT);
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
                        ToHost::Waiting { pristine } => {
                            heard.any = true;
                            if spec_sent {
                                continue;
                            }
                            if let Some((writer, shape)) = save.take() {
                                if pristine {
                                    match save_state(monitor.take(), writer, shape) {
                                        Ok(s) => saving = Some(s),
                                        Err((why, true)) => tracing::info!(
                                            "the VM's start state was not saved: {why}"
                                        ),
                                        Err((why, false)) => {
                                            qemu.kill();
                                            stop.stop();
                                            join_all(readers);
                                            return Ok(Outcome::StateFailed(format!(
                                                "saving its start state stopped the VM: {why}"
                                            )));
                                        }
                                    }
                                } else {
                                    tracing::info!(
                                        "the VM's start state is not saved: the appliance has no /proc, /sys or /dev, so the guest wrote to its root before the ready point"
                                    );
                                }
                            }
                            let _ = to_guest.send(self.spec_now());
                            spec_sent = true;
                        }
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
                        ToHost::Ready | ToHost::Waiting { .. } => heard.any = true,
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
            if warm && !heard.answered() && now >= t0 + WARM_LIMIT {
                qemu.kill();
                stop.stop();
                join_all(readers);
                return Ok(Outcome::StateFailed(format!(
                    "the VM started from it did not answer within {} s",
                    WARM_LIMIT.as_secs()
                )));
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

        if warm && !heard.answered() {
            let said = lock(&qemu_err, |c| c.last_lines(3));
            let said = said.trim();
            return Ok(Outcome::StateFailed(if said.is_empty() {
                format!(
                    "qemu stopped before the guest answered ({})",
                    status_words(status)
                )
            } else {
                format!("qemu could not start from it: {said}")
            }));
        }
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
        if let Some(s) = saving {
            match s.join() {
                Ok(Ok((bytes, took, paused))) => tracing::info!(
                    "saved the VM start state: {bytes} bytes in {:.2} s (the VM paused {:.2} s)",
                    took.as_secs_f64(),
                    paused.as_secs_f64()
                ),
                Ok(Err(why)) => tracing::info!("the VM's start state was not saved: {why}"),
                Err(_) => tracing::info!("the VM's start state was not saved: its writer panicked"),
            }
        }
        Ok(Outcome::Done(RunOutcome {
            warm,
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
