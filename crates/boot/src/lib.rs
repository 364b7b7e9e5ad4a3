//! kiln's boot stage: start qemu on an appliance directory (`DIR/{kernel,initrd,root}`)
//! and tell whether the appliance's `/init` ran.
//!
//! The root is attached as a virtio-blk disk with `snapshot=on` (the guest never writes
//! the cached image, as with libguestfs), the serial console goes to our stdout, and the
//! kernel gets `root=UUID=…` read from `DIR/root` at 0x468 (after checking the ext magic
//! at 0x438). The accelerator is chosen by [`accel`]: KVM when it runs guests, else TCG,
//! detected within a bounded time (a KVM qemu that aborts, prints nothing or stalls is
//! killed and the boot retried once with TCG) and remembered for the host's boot.
//! qemu is `qemu-system-x86_64` as `PATH` finds it, or `KILN_QEMU`. The kernel boots
//! from its uncompressed ELF when one can be extracted ([`vmlinux`], as `kiln run`
//! does), else as the bzImage it is.
//!
//! "The appliance's /init ran" means kiln's init printed its marker line
//! (`kiln-init: exec /init`) and did not report an exec failure after it.
//!
//! Invariants: at most one qemu per [`boot`] call; qemu is killed at the timeout and
//! always reaped; nothing is written to the appliance directory.
//!
//! # Example
//!
//! ```no_run
//! use kiln_boot::{BootOptions, boot};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An appliance made by `kiln build -f ext2 -o /tmp/appliance ...`.
//! let out = boot(std::path::Path::new("/tmp/appliance"), &BootOptions::default())?;
//! assert!(out.init_ran, "{}", out.console);
//! println!("booted with {} in {:?}", out.accel, out.elapsed);
//! # Ok(()) }
//! ```

pub mod accel;
pub mod limits;
pub mod run;
pub mod vmlinux;

pub use accel::{Memo, kvm_usable};

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The line kiln's init prints right before it execs the appliance's `/init`.
pub const INIT_MARKER: &str = "kiln-init: exec /init";
const EXEC_FAILED: &str = "kiln-init: error: exec /init";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("appliance file {path}")]
    Missing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not an ext2/3/4 filesystem (no magic 0xEF53 at 0x438), so it has no root UUID; rebuild the appliance with `kiln build -f ext2`"
    )]
    NotExt { path: PathBuf },
    #[error("cannot run {qemu} (install qemu-system-x86, as scripts/setup-host does)")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("waiting for qemu")]
    Wait(#[source] io::Error),
    #[error(transparent)]
    Limit(#[from] limits::LimitError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when `/dev/kvm` is usable and qemu starts with it, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Extra kernel command-line words (appended after kiln's own).
    pub append: Vec<String>,
    /// Kill qemu after this long.
    pub timeout: Duration,
    pub memory_mib: u32,
    pub accel: Accel,
    pub qemu: PathBuf,
    /// Extra raw disks attached (read-only snapshot) *before* the root disk.
    pub extra_disks: Vec<PathBuf>,
    /// Copy the console to this process's stdout as it arrives.
    pub echo: bool,
    /// Leave out the root disk and `root=` (to test the init's timeout path).
    pub no_root_disk: bool,
    /// Where [`Accel::Auto`] remembers that KVM does not run guests on this host.
    pub memo: Option<Memo>,
    /// Where the uncompressed kernel is kept ([`vmlinux::uncompressed`]: seconds faster
    /// under TCG); `None` boots `DIR/kernel` as it is.
    pub kernel_cache: Option<PathBuf>,
}

/// The qemu kiln runs: `KILN_QEMU` when set, else `qemu-system-x86_64` on `PATH`.
pub fn default_qemu() -> PathBuf {
    std::env::var_os("KILN_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// The per-user directory beside the appliance cache (`CACHE_ROOT/.kiln-vmlinux-$EUID`)
/// where kiln keeps what it derives for booting: extracted kernels
/// ([`vmlinux::uncompressed`]) and the KVM verdict ([`Memo`]).
pub fn state_dir(cache_root: &Path) -> PathBuf {
    let euid = rustix::process::geteuid().as_raw();
    cache_root.join(format!(".kiln-vmlinux-{euid}"))
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            append: Vec::new(),
            timeout: Duration::from_secs(600),
            memory_mib: 512,
            accel: Accel::Auto,
            qemu: default_qemu(),
            extra_disks: Vec::new(),
            echo: true,
            no_root_disk: false,
            memo: Some(Memo::new(state_dir(&kiln_cache::default_root()))),
            kernel_cache: Some(state_dir(&kiln_cache::default_root())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BootOutcome {
    /// kiln's init reached `exec /init` and the exec did not fail.
    pub init_ran: bool,
    /// qemu was killed at the timeout.
    pub timed_out: bool,
    /// qemu's exit code (None when killed by a signal).
    pub qemu_status: Option<i32>,
    /// "kvm" or "tcg".
    pub accel: &'static str,
    /// Why KVM was given up for TCG in this boot, when it was.
    pub kvm_fallback: Option<String>,
    /// The console output (its last [`CONSOLE_CAP`] bytes).
    pub console: String,
    /// qemu's own stderr (its last 64 KiB).
    pub qemu_stderr: String,
    pub elapsed: Duration,
}

/// Where the ext2/3/4 superblock (1024 bytes into the image) keeps `s_magic`, and the
/// value it must hold.
const EXT_MAGIC_OFFSET: u64 = 0x438;
const EXT_MAGIC: [u8; 2] = [0x53, 0xef];
/// Where the superblock keeps `s_uuid` (16 bytes).
const EXT_UUID_OFFSET: u64 = 0x468;

/// The root filesystem UUID of an ext2/3/4 image (bytes at 0x468), checking the magic.
///
/// Read here rather than through the ext2 writer (`kiln-image`): the boot stage takes
/// any appliance directory (a `kiln build -o DIR`, not only a pinned cache entry whose
/// UUID the cache recorded), so it must read the image, and two fixed fields are not
/// worth pulling the whole build pipeline and every package database into the crate
/// that starts qemu. This is how libguestfs reads the UUID it puts on the command line.
pub fn root_uuid(root: &Path) -> Result<[u8; 16]> {
    use std::os::unix::fs::FileExt;
    let missing = |e| Error::Missing {
        path: root.to_path_buf(),
        source: e,
    };
    let not_ext = || Error::NotExt {
        path: root.to_path_buf(),
    };
    let f = fs::File::open(root).map_err(missing)?;
    // A file too short to hold the field is not an ext filesystem, not a read error.
    let read_at = |buf: &mut [u8], at: u64| match f.read_exact_at(buf, at) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(not_ext()),
        r => r.map_err(missing),
    };
    let mut magic = [0u8; 2];
    read_at(&mut magic, EXT_MAGIC_OFFSET)?;
    if magic != EXT_MAGIC {
        return Err(not_ext());
    }
    let mut uuid = [0u8; 16];
    read_at(&mut uuid, EXT_UUID_OFFSET)?;
    Ok(uuid)
}

/// A UUID in its usual text form (`8-4-4-4-12` lowercase hex digits), as `root=UUID=`
/// and blkid(8) write it.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The kernel's last words when the appliance powers off or reboots (printed at
/// emergency level, so `quiet` cannot hide them). They say nothing the exit status does
/// not, so the echoed console leaves them out (they stay in [`BootOutcome::console`]),
/// and an appliance's own last line is the last one shown.
pub fn is_shutdown_line(line: &str) -> bool {
    let Some(rest) = line.trim_end().strip_prefix('[') else {
        return false;
    };
    let Some((stamp, msg)) = rest.split_once(']') else {
        return false;
    };
    stamp.trim().parse::<f64>().is_ok()
        && matches!(
            msg.trim(),
            "reboot: Power down" | "reboot: Restarting system" | "reboot: System halted"
        )
}

/// The kernel command line kiln boots with (before `--append` words).
pub fn base_cmdline(uuid: Option<&[u8; 16]>) -> Vec<String> {
    let mut v: Vec<String> = [
        "console=ttyS0",
        "panic=1",
        "edd=off",
        "no_timer_check",
        "cryptomgr.notests",
        "tsc=reliable",
        "8250.nr_uarts=1",
        "usbcore.nousb",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(u) = uuid {
        v.push(format!("root=UUID={}", uuid_string(u)));
    }
    v
}

/// Boot the appliance in `dir` and report what happened.
pub fn boot(dir: &Path, opts: &BootOptions) -> Result<BootOutcome> {
    limits::memory(opts.memory_mib)?;
    limits::timeout_duration(opts.timeout)?;
    let kernel = dir.join("kernel");
    let initrd = dir.join("initrd");
    let root = dir.join("root");
    for p in [&kernel, &initrd] {
        fs::metadata(p).map_err(|e| Error::Missing {
            path: p.clone(),
            source: e,
        })?;
    }
    let uuid = if opts.no_root_disk {
        None
    } else {
        Some(root_uuid(&root)?)
    };
    let mut cmdline = base_cmdline(uuid.as_ref());
    cmdline.extend(opts.append.iter().cloned());

    let root = (!opts.no_root_disk).then_some(&root);
    let kernel = opts
        .kernel_cache
        .as_ref()
        .and_then(|d| vmlinux::uncompressed(&kernel, d))
        .unwrap_or(kernel);
    let plan = accel::plan(opts.accel, &opts.qemu, opts.memo.as_ref());
    if let accel::Plan::Tcg { why: Some(why) } = &plan {
        tracing::info!("using TCG: {why}");
    }
    let watchdog = match plan {
        accel::Plan::Kvm { watchdog } => watchdog,
        accel::Plan::Tcg { .. } => None,
    };
    let out = run_qemu(
        &kernel,
        &initrd,
        root,
        &cmdline,
        plan.accel(),
        watchdog,
        opts,
    )?;
    if out.accel != "kvm" || opts.accel != Accel::Auto || out.timed_out {
        return Ok(out);
    }
    // With KVM under auto: a guest that was never heard from means KVM does not run
    // guests here, whether qemu aborted, stayed silent or stalled (the watchdog).
    let why = if out.kvm_fallback.is_some() {
        out.kvm_fallback.clone()
    } else if out.qemu_status != Some(0) && out.console.trim().is_empty() {
        // qemu ended by itself before the guest printed anything at all (a kernel that
        // ran and died, e.g. a panic, printed something: that is not KVM's fault).
        let said = out.qemu_stderr.lines().find(|l| !l.trim().is_empty());
        Some(match said {
            Some(l) => format!("qemu failed with KVM ({})", l.trim()),
            None => "qemu failed with KVM before the guest said anything".to_string(),
        })
    } else {
        None
    };
    let Some(why) = why else {
        return Ok(out);
    };
    if let Some(m) = &opts.memo {
        m.remember(&opts.qemu, &why);
    }
    tracing::info!("{why}; retrying with TCG");
    if opts.echo {
        let _ = writeln!(io::stderr(), "{}", accel::fallback_line(&why));
    }
    let mut out = run_qemu(&kernel, &initrd, root, &cmdline, "tcg", None, opts)?;
    out.kvm_fallback = Some(why);
    Ok(out)
}

/// Fault injection for the tests: `KILN_BOOT_FAULT=try-wait` makes polling qemu fail
/// once it has run for 300 ms. Only with the `test-hooks` feature, which the tests
/// enable; a shipped kiln has none.
#[cfg(feature = "test-hooks")]
fn try_wait_fault(start: Instant) -> bool {
    start.elapsed() >= Duration::from_millis(300)
        && std::env::var_os("KILN_BOOT_FAULT").is_some_and(|v| v == "try-wait")
}

#[cfg(not(feature = "test-hooks"))]
fn try_wait_fault(_start: Instant) -> bool {
    false
}

/// A fault is injected: the loop must wake to let it happen.
#[cfg(feature = "test-hooks")]
fn fault_armed() -> bool {
    std::env::var_os("KILN_BOOT_FAULT").is_some()
}

#[cfg(not(feature = "test-hooks"))]
fn fault_armed() -> bool {
    false
}

pub(crate) fn drive_arg(path: &Path, id: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    // qemu's -drive syntax doubles commas in file names; the name stays bytes (a path
    // that is not UTF-8 must reach qemu as it is).
    let mut v = b"file=".to_vec();
    for &b in path.as_os_str().as_bytes() {
        v.push(b);
        if b == b',' {
            v.push(b',');
        }
    }
    v.extend_from_slice(format!(",format=raw,if=none,id={id},snapshot=on,cache=unsafe").as_bytes());
    std::ffi::OsString::from_vec(v)
}

fn run_qemu(
    kernel: &Path,
    initrd: &Path,
    root: Option<&PathBuf>,
    cmdline: &[String],
    accel: &'static str,
    watchdog: Option<Duration>,
    opts: &BootOptions,
) -> Result<BootOutcome> {
    let mut cmd = qemu_base(&opts.qemu, accel, opts.memory_mib);
    cmd.args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline.join(" ")]);
    let mut disks: Vec<&Path> = opts.extra_disks.iter().map(PathBuf::as_path).collect();
    if let Some(r) = root {
        disks.push(r);
    }
    for (i, d) in disks.iter().enumerate() {
        let id = format!("disk{i}");
        cmd.arg("-drive")
            .arg(drive_arg(d, &id))
            .args(["-device", &format!("virtio-blk-pci,drive={id}")]);
    }
    tracing::debug!("running {:?}", cmd);
    let start = Instant::now();
    // The guard owns qemu from here: every return below kills and reaps it.
    let mut qemu = run::qemu::Qemu::spawn(&mut cmd, &[]).map_err(|e| Error::Spawn {
        qemu: opts.qemu.clone(),
        source: e,
    })?;
    let (stdout, stderr) = qemu.take_output();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let echo = opts.echo;
    let s2 = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let Some(out) = stdout else { return };
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        // Line by line (a line is cut at LINE_CAP), tolerating non-UTF-8 bytes.
        while let Ok(n) = r.by_ref().take(LINE_CAP).read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            let s = String::from_utf8_lossy(&line).replace('\r', "");
            if echo && !is_shutdown_line(&s) {
                let mut o = io::stdout().lock();
                let _ = o.write_all(s.as_bytes());
                let _ = o.flush();
            }
            if let Ok(mut c) = s2.lock() {
                c.line(&line, &s);
            }
            line.clear();
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut tail = Vec::new();
        if let Some(mut e) = stderr {
            let mut buf = [0u8; 8192];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_CAP {
                    tail.drain(..tail.len() - STDERR_CAP);
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let heard = || seen.lock().map(|s| s.alive).unwrap_or(true);
    let mut timed_out = false;
    let mut stalled = None;
    let status = loop {
        let polled = match qemu.try_wait() {
            Ok(_) if try_wait_fault(start) => Err(io::Error::other("injected try_wait failure")),
            r => r,
        };
        let now = start.elapsed();
        match polled {
            Ok(Some(st)) => break st,
            Ok(None) if now >= opts.timeout => {
                timed_out = true;
                break qemu.wait_after_kill().map_err(Error::Wait)?;
            }
            Ok(None) if watchdog.is_some_and(|w| now >= w) && !heard() => {
                stalled = watchdog.map(accel::stalled);
                break qemu.wait_after_kill().map_err(Error::Wait)?;
            }
            Ok(None) => {}
            // The guard kills and reaps qemu: no qemu or zombie is left behind.
            Err(e) => return Err(Error::Wait(e)),
        }
        // Sleep until qemu exits (its pidfd) or the next deadline: the timeout, or the
        // watchdog while the guest has not spoken yet.
        let mut next = opts.timeout;
        if let Some(w) = watchdog.filter(|w| now < *w && !heard()) {
            next = next.min(w);
        }
        let mut wait = next.saturating_sub(now);
        if qemu.exit_fd().is_none() || fault_armed() {
            wait = wait.min(run::NO_PIDFD_TICK);
        }
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: wait.subsec_nanos().into(),
        };
        match qemu.exit_fd() {
            Some(fd) => {
                let mut fds = [rustix::event::PollFd::from_borrowed_fd(
                    fd,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(Error::Wait(e.into())),
                }
            }
            None => std::thread::sleep(wait),
        }
    };
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let seen = seen
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    Ok(BootOutcome {
        init_ran: seen.marker && !seen.exec_failed,
        timed_out,
        qemu_status: status.code(),
        accel,
        kvm_fallback: stalled,
        console: String::from_utf8_lossy(&Vec::from(seen.console)).into_owned(),
        qemu_stderr,
        elapsed: start.elapsed(),
    })
}

/// The longest console line looked at whole; longer ones are taken in pieces.
const LINE_CAP: u64 = 64 * 1024;
/// How much of the console [`BootOutcome::console`] keeps (its end).
pub const CONSOLE_CAP: usize = 8 << 20;
/// How much of qemu's stderr is kept (its end).
const STDERR_CAP: usize = 64 << 10;

/// What the console said so far, in bounded memory: the end of it, and the facts
/// [`boot`] decides on, taken from every line as it passes.
#[derive(Default)]
struct Seen {
    console: std::collections::VecDeque<u8>,
    /// kiln's init said its first word (the KVM watchdog's proof).
    alive: bool,
    /// The marker line came, and then (after the last one) no exec failure.
    marker: bool,
    exec_failed: bool,
}

impl Seen {
    fn line(&mut self, raw: &[u8], text: &str) {
        if !self.alive && accel::alive(raw) {
            self.alive = true;
        }
        if text.contains(INIT_MARKER) {
            self.marker = true;
            self.exec_failed = false;
        } else if self.marker && text.contains(EXEC_FAILED) {
            self.exec_failed = true;
        }
        self.console.extend(text.as_bytes());
        let over = self.console.len().saturating_sub(CONSOLE_CAP);
        self.console.drain(..over);
    }
}

/// The qemu command line `boot` and `run` both start from: no default devices, no
/// display, no reboot, the accelerator with a CPU model that suits it, and the memory.
pub(crate) fn qemu_base(qemu: &Path, accel: &str, memory_mib: u32) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(["-machine", &format!("accel={accel}")])
    .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
    .args(["-m", &memory_mib.to_string()]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_lines() {
        assert!(is_shutdown_line("[    2.834601] reboot: Power down\n"));
        assert!(is_shutdown_line("[ 9.176386] reboot: Restarting system"));
        assert!(!is_shutdown_line("reboot: Power down"));
        assert!(!is_shutdown_line("[    2.8] EXT4-fs (vda): mounted"));
        assert!(!is_shutdown_line("Hello [1.0] reboot: Power down"));
    }

    #[test]
    fn uuid_from_image_needs_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root");
        let mut b = vec![0u8; 4096];
        for (i, x) in b[0x468..0x478].iter_mut().enumerate() {
            *x = i as u8 * 17;
        }
        fs::write(&p, &b).unwrap();
        assert!(matches!(root_uuid(&p), Err(Error::NotExt { .. })));
        b[0x438] = 0x53;
        b[0x439] = 0xef;
        fs::write(&p, &b).unwrap();
        assert_eq!(
            uuid_string(&root_uuid(&p).unwrap()),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert!(matches!(
            root_uuid(&dir.path().join("none")),
            Err(Error::Missing { .. })
        ));
        // Too short for the magic, or for the UUID after a good magic: not ext.
        for len in [0x100, 0x470] {
            fs::write(&p, &b[..len]).unwrap();
            assert!(matches!(root_uuid(&p), Err(Error::NotExt { .. })), "{len}");
        }
    }

    #[test]
    fn drive_arg_keeps_path_bytes_and_doubles_commas() {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let p = PathBuf::from(std::ffi::OsString::from_vec(b"/t/\xff,x/root".to_vec()));
        assert_eq!(
            drive_arg(&p, "disk0").as_bytes(),
            &b"file=/t/\xff,,x/root,format=raw,if=none,id=disk0,snapshot=on,cache=unsafe"[..]
        );
    }
}
