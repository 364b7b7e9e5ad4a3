//! `kiln boot`: boot an appliance directory under qemu and say whether its /init ran.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// KVM when it runs guests, else TCG: a KVM guest that aborts, stays silent or
    /// stalls before kiln's init speaks (10 s, KILN_KVM_WAIT) is given up for TCG, and
    /// the verdict is remembered until the host reboots.
    Auto,
    Kvm,
    Tcg,
}

/// Boot an appliance (DIR/kernel, DIR/initrd, DIR/root) under qemu.
///
/// The root is attached read-only (snapshot=on) as a virtio disk and found by the UUID
/// in DIR/root; the console is printed on stdout. Exit status: 0 when the appliance's
/// /init ran and qemu exited by itself, 2 when /init ran but the timeout stopped qemu,
/// 1 when /init was never reached (the console says why).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  kiln build -f ext2 examples/hello/supermin.d -o /tmp/hello && kiln boot /tmp/hello"
)]
pub struct Args {
    /// Extra kernel command-line arguments (e.g. `quiet`, `kiln.debug`, `kiln.rootwait=60`).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Vec<String>,

    /// Stop qemu after this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 600.0,
        allow_negative_numbers = true
    )]
    timeout: f64,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 512)]
    memory: u32,

    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,

    /// The qemu binary (default: KILN_QEMU, else qemu-system-x86_64 on PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,

    /// The appliance directory.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let timeout = kiln_boot::limits::timeout(args.timeout)?;
    kiln_boot::limits::memory(args.memory)?;
    let opts = kiln_boot::BootOptions {
        append: args
            .append
            .iter()
            .flat_map(|a| a.split_whitespace().map(String::from))
            .collect(),
        timeout,
        memory_mib: args.memory,
        accel: match args.accel {
            AccelArg::Auto => kiln_boot::Accel::Auto,
            AccelArg::Kvm => kiln_boot::Accel::Kvm,
            AccelArg::Tcg => kiln_boot::Accel::Tcg,
        },
        qemu: args.qemu.unwrap_or_else(kiln_boot::default_qemu),
        echo: true,
        ..Default::default()
    };
    let out = kiln_boot::boot(&args.dir, &opts)
        .with_context(|| format!("booting {}", args.dir.display()))?;
    tracing::info!(
        "qemu ({}) ran {:.2} s, exit status {:?}",
        out.accel,
        out.elapsed.as_secs_f64(),
        out.qemu_status
    );
    match (out.init_ran, out.timed_out) {
        (true, false) => Ok(ExitCode::SUCCESS),
        (true, true) => {
            eprintln!(
                "kiln: the appliance's /init ran, but qemu was still running after {} s and was stopped",
                args.timeout
            );
            Ok(ExitCode::from(2))
        }
        (false, timed_out) => {
            let why = match (timed_out, out.qemu_status) {
                (true, _) => format!("qemu was stopped after {} s", args.timeout),
                (false, Some(c)) => format!("qemu exited with status {c}"),
                (false, None) => "qemu was killed by a signal".to_string(),
            };
            // "See above" only when something is above.
            let console = if out.console.trim().is_empty() {
                "the guest printed nothing on its console"
            } else {
                "see the console above"
            };
            let stderr = out.qemu_stderr.trim();
            eprintln!(
                "kiln: error: the appliance's /init did not run ({why}); {console}{}{}",
                if stderr.is_empty() {
                    ""
                } else {
                    "; qemu said: "
                },
                stderr
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
