//! kiln's static init: PID 1 of the mini initrd.
//!
//! It mounts /proc, /sys and /dev (devtmpfs), loads the modules listed in `/modules`
//! (`finit_module`, several at once with prerequisites respected, see `modules.rs`; a
//! failure is reported, never fatal by itself; a device driver only when the VM has a
//! device for it, see `devices.rs`, or always with `kiln.modules=all`), so that every
//! disk of the VM is visible before the appliance's `/init` runs, as with supermin's
//! initrd; then it finds the root
//! device from `root=UUID=…` (the 16 bytes at 0x468 *and* the ext magic 0xEF53 at 0x438,
//! so a disk that merely carries the same UUID bytes is not taken) or `root=/dev/NAME`,
//! waiting at most `kiln.rootwait=SECONDS` (default 30), mounts it `ext4` (which also
//! mounts ext2/ext3), falling back to `ext2`, with `noatime`, read-write, on `/root`;
//! unmounts what it mounted, deletes the initramfs files, moves the new root onto `/`
//! (switch_root semantics), chroots and execs `/init` with argv `["init"]`.
//!
//! The appliance's `/init` starts with nothing mounted, as under supermin (libguestfs's
//! `/init` mounts proc, sysfs and devtmpfs itself).
//!
//! Invariants: built statically (glibc `crt-static`, checked by kiln-initrd's builder);
//! the kernel command line is parsed by words, never by substrings; every wait is
//! bounded; a first `kiln-init:` line is printed as it starts (even with `quiet`: the
//! host's KVM watchdog waits for it), and the line `kiln-init: exec /init` (even with
//! `quiet`) right before the exec so that `kiln boot` can tell the appliance's `/init`
//! was reached.

use std::fs;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use rustix::fs::{CWD, FileType, Mode};
use rustix::mount::{MountFlags, UnmountFlags};

mod devices;
mod modules;
mod root;
mod run;

use modules::load_modules;
use root::{Root, parse_uuid, wait_for_root};

/// The line `kiln boot` looks for on the console.
const MARKER: &str = "kiln-init: exec /init";
const DEFAULT_ROOTWAIT: u64 = 30;

struct Log {
    quiet: bool,
    debug: bool,
}

impl Log {
    /// Seconds since boot, comparable with the kernel's printk timestamps.
    fn now(&self) -> f64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }
    /// A progress/timing line, suppressed by `quiet`.
    fn info(&self, msg: &str) {
        if !self.quiet {
            let _ = writeln!(io::stderr(), "kiln-init: [{:.3}] {msg}", self.now());
        }
    }
    /// A problem that does not stop the boot; still quiet-aware.
    fn warn(&self, msg: &str) {
        if !self.quiet {
            let _ = writeln!(io::stderr(), "kiln-init: warning: {msg}");
        }
    }
}

/// Print the fatal message and stop. As PID 1 this makes the kernel panic (with
/// `panic=1` and qemu's `-no-reboot`, qemu exits).
fn fatal(msg: &str) -> ! {
    let _ = writeln!(io::stderr(), "kiln-init: error: {msg}");
    std::process::exit(1)
}

#[derive(Debug, PartialEq, Eq)]
struct Cmdline {
    quiet: bool,
    /// `kiln.debug`: one timing line per module.
    debug: bool,
    /// `kiln.jobs=N`: how many modules are loaded at once (1 = one after the other).
    jobs: usize,
    /// `kiln.modules=all`: load every listed module, drivers for absent devices too.
    all_modules: bool,
    root: Option<Result<Root, String>>,
    rootwait: Duration,
}

/// Parse the kernel command line by words. Later words win, as with the kernel's own
/// `root=`.
fn parse_cmdline(line: &str) -> Cmdline {
    let mut c = Cmdline {
        quiet: false,
        debug: false,
        jobs: modules::DEFAULT_JOBS,
        all_modules: false,
        root: None,
        rootwait: Duration::from_secs(DEFAULT_ROOTWAIT),
    };
    for w in line.split_whitespace() {
        if w == "quiet" {
            c.quiet = true;
        } else if w == "kiln.debug" {
            c.debug = true;
        } else if let Some(v) = w.strip_prefix("kiln.modules=") {
            c.all_modules = v == "all";
        } else if let Some(v) = w.strip_prefix("kiln.jobs=")
            && let Ok(n) = v.parse::<usize>()
        {
            c.jobs = n.clamp(1, 16);
        } else if let Some(v) = w.strip_prefix("root=") {
            c.root = Some(if let Some(u) = v.strip_prefix("UUID=") {
                parse_uuid(u).map(Root::Uuid)
            } else if let Some(n) = v.strip_prefix("/dev/") {
                if n.is_empty() || n.contains('/') {
                    Err(format!("root={v}: expected root=/dev/NAME or root=UUID=…"))
                } else {
                    Ok(Root::Dev(n.to_string()))
                }
            } else {
                Err(format!("root={v}: expected root=/dev/NAME or root=UUID=…"))
            });
        } else if let Some(v) = w.strip_prefix("kiln.rootwait=")
            && let Ok(s) = v.parse::<f64>()
            && s.is_finite()
            && s >= 0.0
        {
            c.rootwait = Duration::from_secs_f64(s.min(86400.0));
        }
    }
    c
}

fn mkdir(p: &str) {
    let _ = fs::create_dir(p);
}

fn mount_fs(log: &Log, fstype: &str, target: &str) {
    mkdir(target);
    if let Err(e) = rustix::mount::mount(fstype, target, fstype, MountFlags::empty(), None) {
        // Already mounted (e.g. the kernel automounted devtmpfs) is fine.
        if e != rustix::io::Errno::BUSY {
            log.warn(&format!("mount {fstype} on {target}: {e}"));
        }
    }
}

/// Delete the initramfs's own files (regular files and symlinks in `/`, as supermin
/// does: the init itself, `/modules` and the modules) to give the RAM back.
fn delete_initramfs_files() {
    if let Ok(rd) = fs::read_dir("/") {
        for e in rd.flatten() {
            if let Ok(ft) = e.file_type()
                && (ft.is_file() || ft.is_symlink())
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn list_for_debug(dir: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        let _ = writeln!(io::stderr(), "kiln-init:   {dir}: cannot list");
        return;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let _ = writeln!(io::stderr(), "kiln-init:   {dir}: {}", names.join(" "));
}

fn main() {
    if rustix::process::getpid() != rustix::process::Pid::INIT {
        fatal("kiln-init must run as PID 1 inside kiln's initrd");
    }
    run();
}

fn run() -> ! {
    mkdir("/proc");
    let _ = rustix::mount::mount("proc", "/proc", "proc", MountFlags::empty(), None);
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let c = parse_cmdline(&cmdline);
    let log = Log {
        quiet: c.quiet,
        debug: c.debug,
    };
    // The first word, printed even with `quiet`: the host's proof that the accelerator
    // runs this guest (kiln-boot's `accel` watchdog waits for a `kiln-init:` line).
    if log.quiet {
        let _ = writeln!(io::stderr(), "kiln-init: started");
    } else {
        log.info(&format!(
            "kiln {} mini initrd starting; cmdline: {}",
            env!("CARGO_PKG_VERSION"),
            cmdline.trim()
        ));
    }
    mount_fs(&log, "sysfs", "/sys");
    mount_fs(&log, "devtmpfs", "/dev");

    let root = match c.root {
        Some(Ok(r)) => r,
        Some(Err(e)) => fatal(&e),
        None => fatal("no root= on the kernel command line (root=UUID=… or root=/dev/NAME)"),
    };
    let n = load_modules(&log, c.jobs, c.all_modules);
    log.info(&format!(
        "loaded {} modules ({} failed; {} skipped: no device for them)",
        n.loaded, n.failed, n.skipped
    ));
    let (name, maj, min) = wait_for_root(&log, &root, c.rootwait);
    log.info(&format!("root is {name} ({maj}:{min})"));

    // Leave the appliance a clean slate, as supermin does: its /init mounts what it needs.
    for m in ["/dev", "/sys"] {
        let _ = rustix::mount::unmount(m, UnmountFlags::DETACH);
    }
    mkdir("/dev");
    mkdir("/root");
    let _ = fs::remove_file("/dev/root");
    if let Err(e) = rustix::fs::mknodat(
        CWD,
        "/dev/root",
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(maj, min),
    ) {
        fatal(&format!("mknod /dev/root ({maj}:{min}): {e}"));
    }
    let dax = matches!(&root, Root::Dev(n) if n.starts_with("pmem"));
    let data = if dax { c"dax" } else { c"" };
    // Run mode mounts the root read-only until the command's spec arrives: a VM state
    // saved at that point then matches the root image exactly, so it can be started
    // again over a fresh disk overlay (`run::main` remounts it read-write).
    let flags = if run::wanted(&cmdline) {
        MountFlags::NOATIME | MountFlags::RDONLY
    } else {
        MountFlags::NOATIME
    };
    let mut res = Err(rustix::io::Errno::NODEV);
    for fstype in ["ext4", "ext2"] {
        res = rustix::mount::mount("/dev/root", "/root", fstype, flags, data);
        if res != Err(rustix::io::Errno::NODEV) {
            break;
        }
    }
    if let Err(e) = res {
        fatal(&format!(
            "mount /dev/root ({name}, {maj}:{min}) on /root: {e}"
        ));
    }
    log.info("mounted root");
    let _ = rustix::mount::unmount("/proc", UnmountFlags::DETACH);

    delete_initramfs_files();
    if let Err(e) = std::env::set_current_dir("/root")
        .map_err(|e| e.to_string())
        .and_then(|()| rustix::mount::mount_move(".", "/").map_err(|e| format!("move mount: {e}")))
        .and_then(|()| rustix::process::chroot(".").map_err(|e| format!("chroot: {e}")))
        .and_then(|()| std::env::set_current_dir("/").map_err(|e| e.to_string()))
    {
        fatal(&format!("switching to the new root: {e}"));
    }

    if run::wanted(&cmdline) {
        run::main();
    }
    let _ = writeln!(io::stderr(), "{MARKER}");
    let err = Command::new("/init").arg0("init").exec();
    let _ = writeln!(io::stderr(), "kiln-init: error: exec /init: {err}");
    for d in ["/", "/bin", "/sbin", "/lib", "/lib64", "/usr/bin"] {
        list_for_debug(d);
    }
    fatal("the appliance root has no usable /init")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_not_substrings() {
        let c = parse_cmdline("foo_root=/dev/sda notquiet kiln.rootwait=2.5");
        assert_eq!(c.root, None);
        assert!(!c.quiet);
        assert_eq!(c.rootwait, Duration::from_millis(2500));
        let c = parse_cmdline("console=ttyS0 quiet root=UUID=0123456789AB-cdef-0123-456789abcdef");
        assert!(c.quiet);
        assert_eq!(
            c.root,
            Some(Ok(Root::Uuid([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ])))
        );
        let c = parse_cmdline("root=/dev/vda root=/dev/pmem0");
        assert_eq!(c.root, Some(Ok(Root::Dev("pmem0".into()))));
        assert!(matches!(parse_cmdline("root=UUID=12").root, Some(Err(_))));
        assert!(matches!(parse_cmdline("root=LABEL=x").root, Some(Err(_))));
        assert!(matches!(
            parse_cmdline("root=UUID=0123456789abcdef0123456789abcdeg").root,
            Some(Err(_))
        ));
        assert_eq!(parse_cmdline("kiln.jobs=1").jobs, 1);
        assert_eq!(parse_cmdline("kiln.jobs=0 kiln.jobs=x").jobs, 1);
        assert_eq!(parse_cmdline("kiln.jobs=999").jobs, 16);
        assert_eq!(parse_cmdline("xkiln.jobs=2").jobs, modules::DEFAULT_JOBS);
        assert!(!parse_cmdline("").all_modules);
        assert!(parse_cmdline("kiln.modules=all").all_modules);
        assert!(!parse_cmdline("kiln.modules=all kiln.modules=devices").all_modules);
        assert_eq!(
            parse_cmdline("kiln.rootwait=-1").rootwait,
            Duration::from_secs(DEFAULT_ROOTWAIT)
        );
    }
}
