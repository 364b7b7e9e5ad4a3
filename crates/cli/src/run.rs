//! `kiln run`: boot a VM built from the host's own files and run one command in it.
//!
//! This module parses the arguments and prints; the appliance (the command's packages,
//! or the command with what it needs, in a private supermin.d built through the same
//! per-user cache and key as `kiln locate`) is `kiln::run`, the VM side
//! `kiln_boot::run`. The appliance stays pinned until the VM is gone. With `--sysroot
//! DIR` all of that is read below DIR (another installed system: its files, package
//! database and kernel) instead of the host's `/`.
//!
//! Exit status: the command's (128+N when killed by signal N); 125 when kiln itself or
//! the VM failed, 126/127 when the command could not be run or found, on the host or in
//! the appliance (the shell's and `env`'s conventions).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};

use crate::boot::AccelArg;

/// kiln's own failure (as `env`, `chroot` and `docker run` use it).
const FAILED: u8 = 125;

/// Run a command in a VM made from the host's files.
///
/// The appliance holds the packages owning CMD (and their dependencies), --packages and
/// --include; it is built once into the cache and reused. CMD's stdin, stdout and stderr
/// are passed through separately and unchanged; with a terminal on stdin and stdout the
/// command gets a terminal in the VM. The current directory is shared (9p) at the same
/// path and is CMD's working directory. kiln exits with CMD's exit status (128+N if it
/// was killed by signal N), 125 if kiln or the VM failed.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  kiln run -- uname -r")]
pub struct Args {
    /// Also install these packages (and their dependencies) in the appliance.
    #[arg(long, value_name = "PKG", num_args = 1.., action = clap::ArgAction::Append)]
    packages: Vec<String>,

    /// Also copy these host files or directories (recursively) into the appliance.
    #[arg(long, value_name = "PATH", num_args = 1.., action = clap::ArgAction::Append)]
    include: Vec<PathBuf>,

    /// Share a host directory read-write, mounted at GUEST (default: the same path).
    #[arg(long, value_name = "HOST[:GUEST]", action = clap::ArgAction::Append)]
    share: Vec<OsString>,

    /// Do not share the current directory (CMD then starts in /, or for a relative CMD
    /// such as ./prog in the directory it is relative to, which holds only its copy).
    #[arg(long)]
    no_cwd: bool,

    /// Set a variable in CMD's environment (NAME alone: the host's value). The host's
    /// CARGO_* and RUST_* variables are passed through.
    #[arg(long, value_name = "NAME[=VALUE]", action = clap::ArgAction::Append)]
    env: Vec<OsString>,

    /// Boot this kernel (e.g. a build tree's arch/x86/boot/bzImage) instead of the
    /// host's newest (as SUPERMIN_KERNEL).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,

    /// The modules directory for --kernel (as SUPERMIN_MODULES).
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,

    /// Make the appliance from the system installed in DIR instead of the host: CMD,
    /// --packages and --include are looked up in it (CMD on the standard PATH, paths
    /// inside DIR), and its package database and kernel are used.
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 512)]
    memory: u32,

    /// Guest CPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,

    /// Stop the VM after this many seconds (default: no limit).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,

    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,

    /// The qemu binary (default: KILN_QEMU, else qemu-system-x86_64 on PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,

    /// The cache root (default: LIBGUESTFS_CACHEDIR, TMPDIR, /var/tmp).
    #[arg(long, value_name = "DIR")]
    cachedir: Option<PathBuf>,

    /// Show the VM's console (kernel messages) on stderr.
    #[arg(long)]
    console: bool,

    /// Boot the VM every time instead of starting it from the appliance's saved start
    /// state (by default the first run saves the VM at its ready point, before
    /// anything of the command's, and later runs start from there in a fraction of
    /// the time).
    #[arg(long)]
    no_snapshot: bool,

    /// Extra kernel command-line arguments (e.g. `loglevel=7`, `kiln.debug`).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Vec<String>,

    /// The command and its arguments.
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    cmd: Vec<OsString>,
}

pub fn main(args: Args) -> ExitCode {
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(kiln_boot::run::RunError::Interrupted { signal }) = e.downcast_ref() {
                eprintln!("kiln: interrupted by signal {signal}; the VM was stopped");
                return ExitCode::from(128u8.saturating_add(*signal as u8));
            }
            eprintln!("kiln: error: {}", crate::message(&e));
            match e
                .downcast_ref::<kiln::run::ApplianceError>()
                .and_then(kiln::run::ApplianceError::command_error)
            {
                Some(c) => ExitCode::from(c.code()),
                None => ExitCode::from(FAILED),
            }
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    // First, before any thread exists: every later thread inherits the blocked mask.
    let signals = forward_signals();
    // Before anything is built: a value out of range fails at once, saying the range.
    let timeout = args.timeout.map(kiln_boot::limits::timeout).transpose()?;
    kiln_boot::limits::memory(args.memory)?;
    kiln_boot::limits::cpus(args.cpus)?;
    let env = kiln::run::guest_env(&args.env)?;
    let shares = shares(&args)?;
    let cwd = if args.no_cwd {
        // A relative CMD (./prog) was copied with the directory it is relative to.
        kiln::run::is_relative_path(&args.cmd[0])
            .then(|| std::env::current_dir().ok())
            .flatten()
    } else {
        shares
            .iter()
            .find(|s| s.is_cwd)
            .map(|s| s.share.guest.clone())
    };

    let appliance = kiln::run::appliance(&kiln::run::Request {
        cmd: args.cmd[0].clone(),
        packages: args.packages.clone(),
        include: args.include.clone(),
        cwd: std::env::current_dir().ok(),
        guest_path: kiln::run::path_of(&env),
        sysroot: args
            .sysroot
            .clone()
            .map_or_else(kiln::Sysroot::default, kiln::Sysroot::new),
        kernel: args.kernel.clone(),
        modules: args.modules.clone(),
        cachedir: args.cachedir.clone(),
    })?;
    tracing::info!(
        "appliance {} ({})",
        appliance.kernel().display(),
        if appliance.built() { "built" } else { "cached" }
    );
    let Some(root) = appliance.root() else {
        bail!("the appliance has no root image");
    };

    // The uncompressed kernel boots seconds faster under TCG (kiln_boot::vmlinux); it
    // is kept next to the appliance cache, per user.
    let cache_root = args
        .cachedir
        .clone()
        .unwrap_or_else(kiln::cache::default_root);
    let state = kiln_boot::state_dir(&cache_root);
    let kernel = kiln_boot::vmlinux::uncompressed(appliance.kernel(), &state)
        .unwrap_or_else(|| appliance.kernel().to_path_buf());

    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let spec = kiln_boot::run::RunSpec {
        argv: args.cmd.clone(),
        env,
        cwd,
        shares: shares.into_iter().map(|s| s.share).collect(),
        tty: tty
            .then(|| kiln_boot::run::terminal_size(rustix::stdio::stdout()).unwrap_or((24, 80))),
        stderr_tty: tty && std::io::stderr().is_terminal(),
    };
    let ropts = kiln_boot::run::RunOptions {
        kernel,
        initrd: appliance.initrd().to_path_buf(),
        root: root.to_path_buf(),
        memory_mib: args.memory,
        cpus: args.cpus,
        accel: match args.accel {
            AccelArg::Auto => kiln_boot::Accel::Auto,
            AccelArg::Kvm => kiln_boot::Accel::Kvm,
            AccelArg::Tcg => kiln_boot::Accel::Tcg,
        },
        qemu: args.qemu.clone().unwrap_or_else(kiln_boot::default_qemu),
        memo: Some(kiln_boot::Memo::new(state)),
        timeout,
        append: args
            .append
            .iter()
            .flat_map(|a| a.split_whitespace().map(String::from))
            .collect(),
        echo_console: args.console,
        interrupt: signals.as_ref().map(|(i, _)| Arc::clone(i)),
        states: if args.no_snapshot {
            None
        } else {
            start_states(&cache_root, &appliance)
        },
    };
    if let Some((_, armed)) = &signals {
        armed.store(true, Ordering::SeqCst);
    }
    let out = {
        let _raw = if tty { RawTerminal::enter() } else { None };
        kiln_boot::run::run(&ropts, &spec)
    };
    drop(appliance);
    let out = out.context("running the VM")?;
    tracing::info!(
        "VM ({}, {}) ran {:.2} s, command started after {:.2} s",
        out.accel,
        if out.warm {
            "started from its saved state"
        } else {
            "booted"
        },
        out.elapsed.as_secs_f64(),
        out.to_ready.map(|d| d.as_secs_f64()).unwrap_or(0.0)
    );
    if let Some(m) = &out.guest_error {
        eprintln!("kiln: error: {m}");
    }
    Ok(out.status.code())
}

/// The saved start states of `appliance` in the cache under `cache_root`: `None` (boot
/// every time) for an appliance the cache does not hold, or a cache that cannot be
/// opened (said with -v).
fn start_states(
    cache_root: &Path,
    appliance: &kiln::locate::Pinned,
) -> Option<kiln::cache::States> {
    let key = appliance.key()?;
    match kiln::cache::Cache::open(cache_root) {
        Ok(c) => Some(c.states(key)),
        Err(e) => {
            tracing::info!("booting without saved start states: {e}");
            None
        }
    }
}

struct ShareArg {
    share: kiln_boot::run::Share,
    is_cwd: bool,
}

fn shares(args: &Args) -> anyhow::Result<Vec<ShareArg>> {
    let mut out = Vec::new();
    if !args.no_cwd {
        let cwd = std::env::current_dir().context("the current directory")?;
        // Sharing / over the appliance's own root would hide it.
        if cwd != Path::new("/") {
            out.push(ShareArg {
                share: kiln_boot::run::Share {
                    host: cwd.clone(),
                    guest: cwd,
                },
                is_cwd: true,
            });
        }
    }
    for s in &args.share {
        let b = s.as_bytes();
        // HOST:GUEST when what follows the last ':' is an absolute path.
        let (host, guest) = match b.iter().rposition(|&c| c == b':') {
            Some(i) if b.get(i + 1) == Some(&b'/') => (
                PathBuf::from(OsString::from_vec(b[..i].to_vec())),
                Some(PathBuf::from(OsString::from_vec(b[i + 1..].to_vec()))),
            ),
            _ => (PathBuf::from(s), None),
        };
        let host = std::fs::canonicalize(&host)
            .with_context(|| format!("--share {}: the host directory", host.display()))?;
        if !host.is_dir() {
            bail!("--share {}: not a directory", host.display());
        }
        let guest = guest.unwrap_or_else(|| host.clone());
        if guest == Path::new("/") || !guest.is_absolute() {
            bail!(
                "--share {}: the guest path must be absolute and not /",
                Path::new(s).display()
            );
        }
        out.push(ShareArg {
            share: kiln_boot::run::Share { host, guest },
            is_cwd: false,
        });
    }
    Ok(out)
}

/// SIGINT, SIGTERM and SIGHUP are blocked in every thread (this must run before any
/// other thread is started; later threads inherit the mask, qemu's is reset by
/// `std::process::Command`) and taken by a sigwait(3) thread. Until the returned flag
/// is armed (the VM starts) a signal ends kiln at once with 128+N; afterwards its number
/// is raised for `kiln_boot::run` to forward to the guest command. Either way what
/// kiln registered for removal (the private supermin.d, a half-built cache entry) is
/// removed first. `None` if that cannot
/// be set up (the signals keep their default action; qemu still dies with kiln).
fn forward_signals() -> Option<(Arc<kiln_boot::run::Interrupt>, Arc<AtomicBool>)> {
    let interrupt = Arc::new(kiln_boot::run::Interrupt::new().ok()?);
    // SAFETY: the set is initialised by sigemptyset before use and lives on this stack;
    // pthread_sigmask only changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return None;
        }
        set
    };
    let armed = Arc::new(AtomicBool::new(false));
    let (f, a) = (Arc::clone(&interrupt), Arc::clone(&armed));
    std::thread::spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: `set` is an initialised sigset_t owned by this closure.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if a.load(Ordering::SeqCst) {
                f.raise(sig);
            } else {
                eprintln!("kiln: interrupted by signal {sig}");
                kiln_outdir::cleanup::clean_up_and_die(sig);
            }
        }
    });
    Some((interrupt, armed))
}

/// The host terminal in raw mode for the life of the value: keys (Ctrl-C included) go
/// to the guest's terminal, which interprets them.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let fd = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            rustix::stdio::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}
