//! `kiln locate`: find (building and caching if needed) the appliance to boot, and print
//! its paths pinned to the calling shell, or run a command with them
//! (`kiln locate -- CMD ARGS...`) pinned for exactly as long as the command runs.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::size::parse as parse_size;

/// Locate the appliance on the search path and print kernel, initrd and root, or run
/// CMD with them.
///
/// The search path is --path, else LIBGUESTFS_PATH, else libguestfs's default
/// directories; each element is tried for a supermin appliance (built once and cached
/// under --cachedir / LIBGUESTFS_CACHEDIR / TMPDIR / /var/tmp), then a fixed appliance,
/// then an old-style one. The printed files of a supermin appliance are hard links
/// private to the parent process (the shell running kiln, or --pin-to): they stay
/// exactly as they are until that process exits, whatever is rebuilt meanwhile.
///
/// With `-- CMD ARGS...` nothing is printed: CMD runs in kiln's place (same process)
/// with KILN_KERNEL, KILN_INITRD, KILN_ROOT, KILN_ROOT_UUID and KILN_KEY in its
/// environment, the files stay pinned until CMD exits, and kiln exits with CMD's status.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Output: three lines, the kernel, initrd and root paths, byte-exact (the root line is \
empty for an old-style appliance); with --json one object {kernel, initrd, root, root_uuid, key, built} \
(a path that is not valid UTF-8 is an error with --json: use the plain output).\n\n\
The pin belongs to kiln's parent. In `out=$(kiln locate)` that parent is the short-lived \
command-substitution subshell: the files may vanish under `kiln gc` as soon as it exits. Read \
the output from a process substitution, or run the command under kiln:\n\n\
Examples:\n  { read -r kernel; read -r initrd; read -r root; } < <(kiln locate)\n  \
kiln locate -- sh -c 'qemu-system-x86_64 -kernel \"$KILN_KERNEL\" -initrd \"$KILN_INITRD\" ...'"
)]
pub struct Args {
    /// Search path (colon-separated; an empty element means the current directory).
    #[arg(long, value_name = "PATH")]
    path: Option<OsString>,

    /// Cache root; the cache is DIR/.guestfs-$EUID.
    #[arg(long, value_name = "DIR")]
    cachedir: Option<PathBuf>,

    /// Pin the files to this process instead of kiln's parent (not init, not a kernel
    /// thread: such pins would never be released).
    #[arg(long, value_name = "PID", conflicts_with = "command")]
    pin_to: Option<u32>,

    /// Print JSON.
    #[arg(long, conflicts_with = "command")]
    json: bool,

    /// Host CPU of the appliance (kernel choice).
    #[arg(long, value_name = "ARCH", default_value = std::env::consts::ARCH)]
    host_cpu: String,

    /// Size of the root filesystem image (e.g. 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,

    /// Rebuild even if the appliance is cached.
    /// Read the installed system below DIR instead of `/` (package database, files,
    /// /boot, /lib/modules).
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,

    #[arg(long)]
    force: bool,

    /// Run this command with the located files (after `--`), pinned until it exits.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let with_command = !args.command.is_empty();
    let pin_to = if with_command {
        // Pinned to kiln itself, which becomes CMD (exec keeps the PID and start time).
        None
    } else {
        Some(match args.pin_to {
            Some(p) => p,
            None => rustix::process::getppid()
                .map(|p| p.as_raw_nonzero().get() as u32)
                .context(
                    "kiln has no parent process to pin the appliance to; use --pin-to PID or `kiln locate -- CMD`",
                )?,
        })
    };
    let mut key = kiln::key::KeyOptions {
        host_cpu: args.host_cpu,
        size: args.size,
        ..Default::default()
    };
    if let Some(dir) = args.sysroot {
        key.set_sysroot(kiln::Sysroot::open(&dir).context("--sysroot")?);
    }
    let opts = kiln::LocateOptions {
        path: args.path,
        cachedir: args.cachedir,
        pin_to,
        force_rebuild: args.force,
        key,
        ..Default::default()
    };
    if args.json {
        // Before any work (and before a pin exists): every path printed lies under the
        // cache root or a search path element.
        let root = opts
            .cachedir
            .clone()
            .unwrap_or_else(kiln::cache::default_root);
        json_path(&root)?;
        json_path(Path::new(&kiln::locate::search_path(&opts)))?;
    }
    let a = kiln::locate(&opts)?;
    if with_command {
        let (e, code) = exec(&args.command, &a);
        eprintln!("kiln: error: {}", crate::message(&e));
        drop(a);
        return Ok(ExitCode::from(code));
    }
    if args.json {
        let v = serde_json::json!({
            "kernel": json_path(a.kernel())?,
            "initrd": json_path(a.initrd())?,
            "root": a.root().map(json_path).transpose()?,
            "root_uuid": a.root_uuid(),
            "key": a.key().map(|k| k.as_str()),
            "built": a.built(),
        });
        println!("{v}");
    } else {
        // Byte-exact: a path that is not UTF-8 is printed as it is, not lossily.
        let mut out = std::io::stdout().lock();
        for p in [Some(a.kernel()), Some(a.initrd()), a.root()] {
            if let Some(p) = p {
                out.write_all(p.as_os_str().as_bytes())?;
            }
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    // The pin belongs to the parent; it must outlive us.
    a.keep();
    Ok(ExitCode::SUCCESS)
}

/// A path as a JSON string; JSON strings are Unicode, so a path that is not valid UTF-8
/// is an error naming it (the plain output prints it byte-exactly).
pub(crate) fn json_path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| {
        format!(
            "path {} is not valid UTF-8 and cannot be printed as JSON; use the plain output, which prints paths byte-exactly",
            p.display()
        )
    })
}

/// Replace kiln with CMD, the located files in its environment. Only returns on
/// failure, with the exit status env(1) uses: 127 when CMD is not found, else 126; the
/// pin (this process's) is then removed as `a` drops.
fn exec(command: &[OsString], a: &kiln::Pinned) -> (anyhow::Error, u8) {
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("KILN_KERNEL", a.kernel())
        .env("KILN_INITRD", a.initrd());
    match a.root() {
        Some(r) => cmd.env("KILN_ROOT", r),
        None => cmd.env_remove("KILN_ROOT"),
    };
    match a.root_uuid() {
        Some(u) => cmd.env("KILN_ROOT_UUID", u),
        None => cmd.env_remove("KILN_ROOT_UUID"),
    };
    match a.key() {
        Some(k) => cmd.env("KILN_KEY", k.as_str()),
        None => cmd.env_remove("KILN_KEY"),
    };
    let e = cmd.exec();
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    let e =
        anyhow::Error::new(e).context(format!("cannot run {}", Path::new(&command[0]).display()));
    (e, code)
}
