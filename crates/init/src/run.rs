//! Run mode (`kiln.run` on the kernel command line, used by `kiln run`): instead of
//! exec'ing the root's `/init`, PID 1 runs one command and powers the VM off.
//!
//! The root comes mounted read-only (see `main`), so the guest reaches its *ready
//! point* without writing to the disk: `/proc`, `/sys` and `/dev` mounted, the
//! virtio-serial and 9p modules loaded, the ports open. There it tells the host `W`
//! (with whether the root is still untouched: an appliance without those mount points
//! had to have them made) and waits for the spec; the host may save the VM's state at
//! that moment and start later VMs from it. With the spec come the host's clock, set
//! at once, and random bytes, written to `/dev/urandom` with the generator reseeded
//! (`RNDRESEEDCRNG`); then the root is remounted read-write (its writes go to qemu's
//! throw-away overlay) and the shares are mounted.
//!
//! After the switch to the appliance root it mounts `/proc`, `/sys`, `/dev`, `/dev/pts`
//! and `/dev/shm`, loads `virtio_console` from the root's `/lib/modules/RELEASE` (with its
//! `modules.dep` dependencies), and opens four virtio-serial ports named by the host:
//! - `kiln.ctl`: framed messages both ways (below): the command spec from the host,
//!   window-size changes and signals; `R`eady, `F`ailure text and the e`X`it status
//!   from the guest. Kernel messages never reach it (they stay on the console), so the
//!   status cannot be corrupted by them;
//! - `kiln.stdin`, `kiln.stdout`, `kiln.stderr`: raw bytes, copied unchanged between the
//!   ports and the command's pipes (or its pty in terminal mode).
//!
//! The frames and messages are defined once, in the `kiln-wire` crate, for both ends;
//! a frame longer than its cap is refused before anything is allocated, and a
//! malformed or oversize frame is reported on the console and ends the run cleanly
//! (status 125 to the host, or the command killed), never a panic of PID 1.
//!
//! Output streams have pipeline semantics: when the host says a stream's consumer is
//! gone (`P`), the command's end of that pipe is closed, so its next write gets
//! SIGPIPE/EPIPE as it would locally (in terminal mode its process group gets SIGHUP,
//! as when a terminal hangs up).
//!
//! Invariants: the command is PID 1's only direct child besides reparented orphans,
//! which are reaped; once the command exits every remaining process is killed, the
//! output pipes are drained, the byte counts are sent with the status, and the VM powers
//! off only after the host acknowledged that it has every byte, however long a slow
//! consumer on the host takes (the host bounds the whole run: it stops qemu at its
//! timeout, and qemu dies with it), or once the control channel is lost. Every other
//! wait is bounded.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_wire::{Exit, RecvError, Spec, Stream, ToGuest, ToHost, recv_to_guest};
use rustix::fs::{CWD, FileType, Mode};
use rustix::mount::MountFlags;
use rustix::process::{Pid, Signal, WaitOptions};

/// The kernel command-line word that selects run mode.
const WORD: &str = "kiln.run";
const PORTS: [&str; 4] = ["kiln.ctl", "kiln.stdin", "kiln.stdout", "kiln.stderr"];
/// How long to wait for the host's acknowledgement of a failure (no output is owed
/// then) before powering off anyway.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Is run mode asked for on this kernel command line?
pub fn wanted(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == WORD)
}

fn say(msg: &str) {
    let _ = writeln!(io::stderr(), "kiln-init: run: {msg}");
}

fn mount(fstype: &str, target: &str, data: &std::ffi::CStr) {
    let _ = fs::create_dir_all(target);
    if let Err(e) = rustix::mount::mount(fstype, target, fstype, MountFlags::empty(), data)
        && e != rustix::io::Errno::BUSY
    {
        say(&format!("mount {fstype} on {target}: {e}"));
    }
}

/// `modules.dep` of the running kernel: module name → (path, dependency paths).
fn modules_dep(dir: &Path) -> HashMap<String, (String, Vec<String>)> {
    let mut m = HashMap::new();
    let Ok(text) = fs::read_to_string(dir.join("modules.dep")) else {
        return m;
    };
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        m.insert(
            module_name(path),
            (
                path.to_string(),
                deps.split_whitespace().map(String::from).collect(),
            ),
        );
    }
    m
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

/// True when the kernel's `modules.builtin` in `dir` lists module `name`.
fn builtin(dir: &Path, name: &str) -> bool {
    fs::read_to_string(dir.join("modules.builtin"))
        .is_ok_and(|t| t.lines().any(|l| module_name(l.trim()) == name))
}

/// `MODULE_INIT_COMPRESSED_FILE` for a compressed module file (`.ko.xz`, `.ko.zst`,
/// `.ko.gz`: Debian 13 ships them so), which the kernel then decompresses itself.
fn compressed_flag(path: &str) -> std::ffi::c_int {
    const MODULE_INIT_COMPRESSED_FILE: std::ffi::c_int = 4;
    if [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| path.ends_with(s))
    {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    }
}

/// Load modules (dependencies first, in `modules.dep`'s order, which lists the deepest
/// last). Built-in or already loaded modules are fine.
fn load_modules(names: &[&str]) -> Result<(), String> {
    let release = rustix::system::uname();
    let release = release.release().to_string_lossy().into_owned();
    let dir = PathBuf::from(format!("/lib/modules/{release}"));
    let dep = modules_dep(&dir);
    for name in names {
        if Path::new("/sys/module").join(name).exists() {
            continue;
        }
        // Built in without parameters: no /sys/module entry, but modules.builtin names
        // it (Debian 13's kernel builds virtio_console in).
        if builtin(&dir, name) {
            continue;
        }
        let Some((path, deps)) = dep.get(*name) else {
            return Err(format!(
                "module {name} is neither built into kernel {release} nor in {}/modules.dep",
                dir.display()
            ));
        };
        for p in deps.iter().rev().chain(std::iter::once(path)) {
            if Path::new("/sys/module").join(module_name(p)).exists() {
                continue;
            }
            let full = dir.join(p);
            let res = fs::File::open(&full)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    rustix::system::finit_module(&f, c"", compressed_flag(p)).or_else(|e| {
                        if e == rustix::io::Errno::EXIST {
                            Ok(())
                        } else {
                            Err(e.to_string())
                        }
                    })
                });
            res.map_err(|e| format!("loading module {}: {e}", full.display()))?;
        }
    }
    Ok(())
}

/// Wait (bounded) for the host's ports and open them, in [`PORTS`] order.
fn open_ports() -> Result<Vec<fs::File>, String> {
    let start = Instant::now();
    let mut found: HashMap<String, String> = HashMap::new();
    loop {
        if let Ok(rd) = fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                if let Ok(n) = fs::read_to_string(e.path().join("name")) {
                    let dev = e.file_name().to_string_lossy().into_owned();
                    found.insert(n.trim().to_string(), dev);
                }
            }
        }
        if PORTS.iter().all(|p| found.contains_key(*p)) {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "virtio-serial ports {PORTS:?} did not appear (found {:?})",
                found.keys().collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut files = Vec::new();
    for p in PORTS {
        let dev = &found[p];
        let path = format!("/dev/{dev}");
        let f = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // devtmpfs may lag behind sysfs: make the node from its number.
            Err(_) => {
                let nums = fs::read_to_string(format!("/sys/class/virtio-ports/{dev}/dev"))
                    .map_err(|e| format!("{dev}: {e}"))?;
                let (a, b) = nums.trim().split_once(':').ok_or("bad dev number")?;
                let (a, b) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
                let _ = fs::remove_file(&path);
                rustix::fs::mknodat(
                    CWD,
                    path.as_str(),
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(a, b),
                )
                .map_err(|e| format!("mknod {path}: {e}"))?;
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("{path}: {e}"))?
            }
        };
        files.push(f);
    }
    Ok(files)
}

fn mount_shares(spec: &Spec) -> Result<(), String> {
    if spec.mounts.is_empty() {
        return Ok(());
    }
    load_modules(&["9pnet_virtio", "9p"])?;
    for m in &spec.mounts {
        let guest = PathBuf::from(std::ffi::OsStr::from_bytes(&m.guest));
        let tag = String::from_utf8_lossy(&m.tag).into_owned();
        fs::create_dir_all(&guest).map_err(|e| format!("mkdir {}: {e}", guest.display()))?;
        let data = std::ffi::CString::new("trans=virtio,version=9p2000.L,msize=262144")
            .map_err(|e| e.to_string())?;
        rustix::mount::mount(
            tag.as_str(),
            &guest,
            "9p",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| format!("mounting share {tag} on {}: {e}", guest.display()))?;
    }
    Ok(())
}

/// What a pump does once the host said the stream's consumer is gone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnClose {
    /// Close the command's end of the pipe (its next write gets SIGPIPE/EPIPE).
    Close,
    /// Keep reading and drop what comes (a pty master: the process group got SIGHUP).
    Discard,
}

/// Copy `from` to `to` until EOF (or EIO: a pty whose slaves are all closed), counting
/// what reached `to`; once `closed` is set, stop writing (see [`OnClose`]).
fn pump(
    mut from: fs::File,
    mut to: fs::File,
    count: Arc<AtomicU64>,
    closed: Option<(Arc<AtomicBool>, OnClose)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some((flag, how)) = &closed
            && flag.load(Ordering::SeqCst)
        {
            match how {
                OnClose::Close => return,
                OnClose::Discard => continue,
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
}

fn file(fd: OwnedFd) -> fs::File {
    fs::File::from(fd)
}

/// Run mode's entry: never returns (the VM powers off).
pub fn main() -> ! {
    let pristine = make_mount_points();
    mount("proc", "/proc", c"");
    mount("sysfs", "/sys", c"");
    mount("devtmpfs", "/dev", c"");
    mount("devpts", "/dev/pts", c"gid=5,mode=620,ptmxmode=666");
    mount("tmpfs", "/dev/shm", c"mode=1777");
    let status = match setup_and_run(pristine) {
        Ok(()) => 0,
        Err(e) => {
            say(&e);
            1
        }
    };
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    std::process::exit(status)
}

/// Kiln run's guest side, step by step: open the host's ports, take the command spec,
/// start the command on the ports, serve the control channel while it runs, then
/// report its status once its output is all sent.
fn setup_and_run(pristine: bool) -> Result<(), String> {
    let (mut ctl, streams) = open_channel()?;
    // Loaded before the ready point, so a VM started from a saved state has them.
    // An appliance without them fails later, and only if the host asks for shares.
    let _ = load_modules(&["9pnet_virtio", "9p"]);
    // The ready point: the host may save the VM's state now, before anything of the
    // command's is here.
    let _ = ctl.writer.write_all(&ToHost::Waiting { pristine }.encode());
    let spec = match receive_spec(&mut ctl.reader) {
        Ok(spec) => spec,
        Err(NoSpec::Closed) => return Err("the host closed the control channel".into()),
        Err(NoSpec::Bad(m)) => return ctl.fail(m, 125),
    };
    if let Err(e) = fresh_start(&spec) {
        return ctl.fail(e, 125);
    }
    if let Err(e) = mount_shares(&spec) {
        return ctl.fail(e, 125);
    }
    let _ = rustix::system::sethostname(b"kiln");

    let mut cmd = command(&spec);
    let master = attach_stdio(&mut cmd, &spec)?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let (msg, code) = spawn_failure(&spec.argv[0], &e);
            return ctl.fail(msg, code);
        }
    };
    drop(cmd);
    let pid = child.id() as i32;
    let _ = ctl.writer.write_all(&ToHost::Ready.encode());

    let mut pumps = Pumps::start(&mut child, master.as_ref(), streams)?;
    let acks = serve_control(
        ctl.reader,
        pid,
        master.as_ref().and_then(|m| m.try_clone().ok()),
        Arc::clone(&pumps.out_closed),
        Arc::clone(&pumps.err_closed),
    );

    let status = wait_for_command(pid)?;
    stop_the_rest(master, child);
    let (out, err) = pumps.join();
    let (signaled, code) = exit_of(status);
    send_exit(&mut ctl.writer, signaled, code, out, err);
    // Unbounded on purpose: a slow consumer on the host (a pager, `| (sleep 60; wc)`)
    // is still owed the output qemu buffers. The host bounds the run; the reader thread
    // ending (channel lost) ends this wait too.
    let _ = acks.recv();
    Ok(())
}

/// The mount points run mode needs on the root, made if the appliance lacks them.
/// The root is read-only until the spec comes; making one writes to it, so the VM is
/// then no longer pristine (its state must not be saved). True when nothing was made.
fn make_mount_points() -> bool {
    let missing: Vec<&str> = ["/proc", "/sys", "/dev"]
        .into_iter()
        .filter(|p| !Path::new(p).is_dir())
        .collect();
    if missing.is_empty() {
        return true;
    }
    remount_rw();
    for p in missing {
        if let Err(e) = fs::create_dir_all(p) {
            say(&format!("mkdir {p}: {e}"));
        }
    }
    false
}

/// The root read-write again (with `noatime`, as it was mounted).
fn remount_rw() {
    if let Err(e) = rustix::mount::mount_remount("/", MountFlags::NOATIME, c"") {
        say(&format!("remounting the root read-write: {e}"));
    }
}

/// What makes this start of the VM its own, whether it booted or was started from a
/// saved state: the host's clock, the host's random bytes mixed into the entropy pool
/// and the random generator reseeded from it (qemu's vmgenid device also tells the
/// kernel of the new start), and the root writable (over the host's fresh overlay).
fn fresh_start(spec: &Spec) -> Result<(), String> {
    if let Some((secs, nanos)) = spec.time {
        let t = rustix::time::Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        };
        rustix::time::clock_settime(rustix::time::ClockId::Realtime, t)
            .map_err(|e| format!("setting the clock from the host's: {e}"))?;
    }
    if !spec.entropy.is_empty() {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        f.write_all(&spec.entropy)
            .map_err(|e| format!("writing the host's entropy to /dev/urandom: {e}"))?;
        reseed(&f).map_err(|e| format!("reseeding the random generator: {e}"))?;
    }
    remount_rw();
    Ok(())
}

/// `RNDRESEEDCRNG`: reseed the kernel's random generator from its input pool now,
/// which holds the host's bytes just written (otherwise they wait for the next
/// scheduled reseed).
fn reseed(urandom: &fs::File) -> io::Result<()> {
    // _IO('R', 0x07)
    const RNDRESEEDCRNG: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(b'R', 0x07);
    // SAFETY: RNDRESEEDCRNG takes no argument, which is what `NoArg` passes, on a
    // descriptor of /dev/urandom that stays open for the call.
    unsafe { rustix::ioctl::ioctl(urandom, rustix::ioctl::NoArg::<RNDRESEEDCRNG>::new()) }
        .map_err(io::Error::from)
}

/// The control port (`kiln.ctl`) before the command runs: read inline, no thread yet.
struct Control {
    reader: fs::File,
    writer: fs::File,
}

impl Control {
    /// Tell the host the command did not run: the failure text, then an exit status
    /// `code` with no output owed, then wait (bounded) for its acknowledgement. The
    /// run itself ends cleanly: the host has what it needs to report.
    fn fail(&mut self, msg: String, code: u32) -> Result<(), String> {
        let _ = self
            .writer
            .write_all(&ToHost::Fail(msg.into_bytes()).encode());
        send_exit(&mut self.writer, false, code, 0, 0);
        wait_ack(&mut self.reader);
        Ok(())
    }
}

/// The three raw byte ports, in the host's order.
struct Streams {
    stdin: fs::File,
    stdout: fs::File,
    stderr: fs::File,
}

/// Load `virtio_console` and open the host's four ports: the control channel (with a
/// second handle for writing, so a reader thread can own the first) and the streams.
fn open_channel() -> Result<(Control, Streams), String> {
    load_modules(&["virtio_console"])?;
    let mut ports = open_ports()?.into_iter();
    let (Some(ctl), Some(stdin), Some(stdout), Some(stderr)) =
        (ports.next(), ports.next(), ports.next(), ports.next())
    else {
        return Err("ports missing".into());
    };
    let writer = ctl.try_clone().map_err(|e| e.to_string())?;
    let ctl = Control {
        reader: ctl,
        writer,
    };
    Ok((
        ctl,
        Streams {
            stdin,
            stdout,
            stderr,
        },
    ))
}

/// Why no command spec came.
enum NoSpec {
    /// The host closed the control channel: nobody is left to tell.
    Closed,
    /// The host sent something else or something broken: told to the host as a failure.
    Bad(String),
}

/// The host's first message, which must be the command spec. A broken spec is said on
/// the console too: the host may not be listening.
fn receive_spec(ctl: &mut fs::File) -> Result<Spec, NoSpec> {
    let m = match recv_to_guest(ctl) {
        Ok(ToGuest::Spec(s)) => return Ok(s),
        Ok(_) => "the host's first message was not the command spec".to_string(),
        Err(RecvError::Closed) => return Err(NoSpec::Closed),
        Err(e) => format!("reading the command spec: {e}"),
    };
    say(&m);
    Err(NoSpec::Bad(m))
}

/// The command of `spec`: its argv, exactly its environment (nothing inherited from
/// PID 1) and its working directory (`/` unless given).
fn command(spec: &Spec) -> Command {
    let argv0 = std::ffi::OsStr::from_bytes(&spec.argv[0]).to_owned();
    let mut cmd = Command::new(&argv0);
    cmd.args(
        spec.argv[1..]
            .iter()
            .map(|a| std::ffi::OsStr::from_bytes(a)),
    )
    .env_clear();
    for e in &spec.env {
        let i = e.iter().position(|&b| b == b'=').unwrap_or(e.len());
        cmd.env(
            std::ffi::OsStr::from_bytes(&e[..i]),
            std::ffi::OsStr::from_bytes(e.get(i + 1..).unwrap_or_default()),
        );
    }
    let cwd = spec.cwd.clone().unwrap_or_else(|| b"/".to_vec());
    cmd.current_dir(std::ffi::OsStr::from_bytes(&cwd));
    cmd
}

/// Give the command its standard streams, in a session of its own: a pty as its
/// controlling terminal in terminal mode (the master is returned; stderr stays a pipe
/// unless the host's stderr is a terminal too), else three pipes. The slave's handles
/// live only in `cmd`, so dropping `cmd` after the spawn leaves the command the only
/// holder: the master then reads EIO once the command's side is all closed.
fn attach_stdio(cmd: &mut Command, spec: &Spec) -> Result<Option<fs::File>, String> {
    let Some((rows, cols)) = spec.tty else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setsid is an async-signal-safe syscall; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                Ok(())
            });
        }
        return Ok(None);
    };
    let (m, slave) = open_pty(rows, cols).map_err(|e| format!("opening a pty: {e}"))?;
    let slave = file(slave);
    let s = |f: &fs::File| f.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    cmd.stdin(s(&slave)?).stdout(s(&slave)?);
    if spec.stderr_tty {
        cmd.stderr(s(&slave)?);
    } else {
        cmd.stderr(Stdio::piped());
    }
    let master = file(m);
    // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe syscalls on fds
    // the child owns; nothing is allocated between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    Ok(Some(master))
}

/// The failure text and exit status for a command that could not be started, as a
/// shell gives them: 127 when it is not found, 126 when it cannot be run.
fn spawn_failure(argv0: &[u8], e: &io::Error) -> (String, u32) {
    let name = String::from_utf8_lossy(argv0);
    match e.kind() {
        io::ErrorKind::NotFound => (
            format!(
                "{name}: command not found in the appliance (PATH and working directory as given)"
            ),
            127,
        ),
        _ => (format!("{name}: cannot run it in the appliance: {e}"), 126),
    }
}

/// The threads that copy the command's output to the host's ports and the host's
/// stdin to the command, with the byte counts of each output stream (sent with the
/// status, so the host knows when it has every byte) and the flags the control
/// channel sets when the host says a stream's consumer is gone.
struct Pumps {
    /// The output pumps, joined once the command is gone. The stdin pump is not kept:
    /// it may be blocked on a host that never closes stdin.
    threads: Vec<std::thread::JoinHandle<()>>,
    out_n: Arc<AtomicU64>,
    err_n: Arc<AtomicU64>,
    out_closed: Arc<AtomicBool>,
    err_closed: Arc<AtomicBool>,
    /// Ports no pump copies (stderr when it is the terminal too): held open until the
    /// run ends, like the ports in use.
    _idle: Vec<fs::File>,
}

impl Pumps {
    /// Start the pumps between the `child`'s pipes (or the pty `master`) and the ports.
    fn start(
        child: &mut std::process::Child,
        master: Option<&fs::File>,
        streams: Streams,
    ) -> Result<Pumps, String> {
        let Streams {
            stdin,
            stdout,
            stderr,
        } = streams;
        let out_n = Arc::new(AtomicU64::new(0));
        let err_n = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (out_src, in_dst) = match master {
            Some(m) => (
                m.try_clone().map_err(|e| e.to_string())?,
                Some(m.try_clone().map_err(|e| e.to_string())?),
            ),
            None => (
                child
                    .stdout
                    .take()
                    .map(|o| file(OwnedFd::from(o)))
                    .ok_or("no stdout pipe")?,
                child.stdin.take().map(|i| file(OwnedFd::from(i))),
            ),
        };
        let out_closed = Arc::new(AtomicBool::new(false));
        let err_closed = Arc::new(AtomicBool::new(false));
        {
            let n = Arc::clone(&out_n);
            let how = if master.is_some() {
                OnClose::Discard
            } else {
                OnClose::Close
            };
            let c = Some((Arc::clone(&out_closed), how));
            threads.push(std::thread::spawn(move || pump(out_src, stdout, n, c)));
        }
        let mut idle = Vec::new();
        if let Some(e) = child.stderr.take() {
            let n = Arc::clone(&err_n);
            let src = file(OwnedFd::from(e));
            let c = Some((Arc::clone(&err_closed), OnClose::Close));
            threads.push(std::thread::spawn(move || pump(src, stderr, n, c)));
        } else {
            idle.push(stderr);
        }
        if let Some(dst) = in_dst {
            // Not joined: it may be blocked on a host that never closes stdin.
            std::thread::spawn(move || pump(stdin, dst, Arc::new(AtomicU64::new(0)), None));
        } else {
            idle.push(stdin);
        }
        Ok(Pumps {
            threads,
            out_n,
            err_n,
            out_closed,
            err_closed,
            _idle: idle,
        })
    }

    /// Wait for the output pumps to drain and return the bytes sent on stdout and
    /// stderr. The idle ports stay open until `self` is dropped.
    fn join(&mut self) -> (u64, u64) {
        for p in std::mem::take(&mut self.threads) {
            let _ = p.join();
        }
        (
            self.out_n.load(Ordering::SeqCst),
            self.err_n.load(Ordering::SeqCst),
        )
    }
}

/// Serve the control channel while the command runs, on a thread of its own that owns
/// the port's reading end: window sizes go to the pty `master_ctl`, signals to the
/// command's process group `pid`, a closed consumer sets `out_closed`/`err_closed`,
/// and each acknowledgement is passed on to the returned receiver. The thread ends
/// when the channel is lost, which ends a wait on the receiver too.
fn serve_control(
    mut ctl: fs::File,
    pid: i32,
    master_ctl: Option<fs::File>,
    out_closed: Arc<AtomicBool>,
    err_closed: Arc<AtomicBool>,
) -> mpsc::Receiver<()> {
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let group = Pid::from_raw(pid);
        let signal = |s: Signal| {
            if let Some(pg) = group {
                let _ = rustix::process::kill_process_group(pg, s);
            }
        };
        loop {
            match recv_to_guest(&mut ctl) {
                Ok(ToGuest::Winsize { rows, cols }) => {
                    if let Some(m) = &master_ctl {
                        let _ = rustix::termios::tcsetwinsize(m.as_fd(), winsize(rows, cols));
                    }
                }
                Ok(ToGuest::Signal(sig)) => {
                    if let Some(s) = i32::try_from(sig).ok().and_then(Signal::from_named_raw) {
                        signal(s);
                    }
                }
                Ok(ToGuest::Closed(Stream::Stdout)) => {
                    out_closed.store(true, Ordering::SeqCst);
                    // A terminal that went away hangs up its session.
                    if master_ctl.is_some() {
                        signal(Signal::HUP);
                    }
                }
                Ok(ToGuest::Closed(Stream::Stderr)) => err_closed.store(true, Ordering::SeqCst),
                Ok(ToGuest::Ack) => {
                    let _ = ack_tx.send(());
                }
                Ok(ToGuest::Spec(_)) => say("a second command spec from the host was ignored"),
                // The frame was read whole: the channel is still in step.
                Err(RecvError::Malformed(m)) => say(&format!("{m} from the host, ignored")),
                Err(RecvError::Closed) => return,
                // Out of step or broken: nothing more can be understood. The command
                // is stopped (its status goes to the host if it still listens) and the
                // VM powers off without waiting for an acknowledgement.
                Err(e) => {
                    say(&format!("{e}; stopping the command"));
                    signal(Signal::KILL);
                    return;
                }
            }
        }
    });
    ack_rx
}

/// Reap every child (orphans are reparented to us) until the command `pid` exits.
fn wait_for_command(pid: i32) -> Result<rustix::process::WaitStatus, String> {
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((p, st))) if p.as_raw_nonzero().get() == pid => return Ok(st),
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// What the command left behind would hold the output open: kill every other
/// process, close PID 1's pty master and child handle, and reap the dead for at most
/// two seconds, so that the output pumps reach their end.
fn stop_the_rest(master: Option<fs::File>, child: std::process::Child) {
    kill_all_but_init();
    drop(master);
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break,
        }
    }
}

/// The command's end as the host reports it: (killed by a signal?, exit code or
/// signal number); 125 if it is neither.
fn exit_of(status: rustix::process::WaitStatus) -> (bool, u32) {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(c), _) => (false, c as u32),
        (None, Some(s)) => (true, s as u32),
        _ => (false, 125),
    }
}

/// SIGKILL every process but PID 1 (`kill(-1, …)` by hand: rustix's `Pid` is positive).
fn kill_all_but_init() {
    let Ok(rd) = fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        if let Some(p) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|&n| n > 1)
            .and_then(Pid::from_raw)
        {
            // Kernel threads ignore it.
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
    }
}

fn send_exit(ctl: &mut fs::File, signaled: bool, code: u32, out: u64, err: u64) {
    let x = Exit {
        signaled,
        code,
        out,
        err,
    };
    let _ = ctl.write_all(&ToHost::Exit(x).encode());
}

fn wait_ack(ctl: &mut fs::File) {
    let deadline = Instant::now() + ACK_WAIT;
    // Before the command ran the ctl port has no reader thread: read inline (the host
    // sends nothing but the ack at this point).
    while Instant::now() < deadline {
        match recv_to_guest(ctl) {
            Ok(ToGuest::Ack) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

fn winsize(rows: u16, cols: u16) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::OpenptFlags;
    let m = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&m)?;
    rustix::pty::unlockpt(&m)?;
    let name = rustix::pty::ptsname(&m, Vec::new())?;
    let s = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::termios::tcsetwinsize(&m, winsize(rows, cols))?;
    Ok((m, s))
}

#[cfg(test)]
mod tests;
