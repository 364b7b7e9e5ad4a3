//! The `kiln` command line: a thin layer over the `kiln` library, one module per
//! subcommand. Errors are printed with their full context and exit with status 1.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod boot;
mod build;
mod cache_ls;
mod checksum;
mod docs;
mod fixed;
mod gc;
mod kernels;
mod locate;
mod prepare;
mod progress;
mod run;
mod size;
mod supermin;
mod supermin_args;
#[cfg(test)]
mod supermin_args_props;

/// Build, cache and boot VM appliances made from the host's own files.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, propagate_version = true)]
struct Cli {
    /// More output on stderr: -v traces each stage with counts, -vv adds the package
    /// list and excluded paths, -vvv every file.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Build(build::Args),
    Boot(boot::Args),
    Locate(locate::Args),
    Gc(gc::Args),
    Checksum(checksum::Args),
    Cache(cache_ls::Args),
    Prepare(prepare::Args),
    Run(run::Args),
    /// Print kiln's manual page (roff) on stdout: `kiln manpage | man -l -`.
    #[command(hide = true)]
    Manpage(docs::ManpageArgs),
    Completions(docs::CompletionsArgs),
    /// Run kiln's supermin-compatible front end: `kiln supermin --build ...` behaves as
    /// `supermin --build ...` (also used when kiln is invoked under the name `supermin`).
    #[command(disable_help_flag = true)]
    Supermin {
        /// supermin 5 arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Timestamped (time since start), uncoloured unless stderr is a terminal. `KILN_LOG`
/// (tracing filter syntax) overrides the level chosen by -v. The cache's notices
/// ("building …", "waiting for PID N building …") are shown by default.
pub(crate) fn init_logging(verbose: u8) {
    init_logging_with(verbose, false, false);
}

/// As [`init_logging`]; with `progress`, also the terminal progress line
/// ([`progress`]), when stderr is a terminal and `verbose` is 0. With `own_stderr_only`
/// (`kiln run`, whose stderr is the command's) the cache's notices are shown only with
/// -v or on a terminal, so a redirected stderr holds what the command wrote (and
/// kiln's warnings and errors).
fn init_logging_with(verbose: u8, progress: bool, own_stderr_only: bool) {
    use tracing_subscriber::prelude::*;
    let terminal = std::io::stderr().is_terminal();
    let level = match verbose {
        0 if own_stderr_only && !terminal => "warn",
        // On a terminal: the cache's notices and the KVM fallback's one line.
        0 => "warn,kiln_cache=info,kiln_boot::accel=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_filter(filter);
    let bar = (progress && verbose == 0 && terminal)
        .then(|| progress::layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    tracing_subscriber::registry().with(fmt).with(bar).init();
}

fn main() -> ExitCode {
    // Arguments are bytes: paths need not be UTF-8.
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .map(|a| Path::new(a).file_name().unwrap_or_default().to_owned())
        .unwrap_or_default();
    if invoked_as == "supermin" {
        return exit(supermin::main(argv[1..].to_vec()));
    }
    if argv.get(1).is_some_and(|a| a == "supermin") {
        return exit(supermin::main(argv[2..].to_vec()));
    }
    let cli = Cli::parse_from(argv);
    let progress = match &cli.command {
        Command::Build(a) => !a.json(),
        Command::Prepare(_) => true,
        _ => false,
    };
    let own_stderr_only = matches!(cli.command, Command::Run(_));
    init_logging_with(cli.verbose, progress, own_stderr_only);
    let result = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Boot(args) => match boot::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Locate(args) => match locate::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Gc(args) => gc::run(args),
        Command::Checksum(args) => checksum::run(args),
        Command::Cache(args) => cache_ls::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Run(args) => return run::main(args),
        Command::Supermin { args } => return exit(supermin::main(args)),
        Command::Manpage(docs::ManpageArgs { dir: Some(dir) }) => {
            docs::manpages_to_dir(<Cli as clap::CommandFactory>::command(), &dir)
        }
        Command::Manpage(_) => manpage(),
        Command::Completions(args) => {
            docs::completions(<Cli as clap::CommandFactory>::command(), &args)
        }
    };
    progress::finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, joined by ": ".
pub(crate) fn message(e: &anyhow::Error) -> String {
    // Every error in kiln prints only its own message and hands its cause on through
    // `source()`, so the chain joined is the whole story, each part once.
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The manual page, generated from the command-line definition so it never drifts:
/// `kiln(1)` and one section per subcommand.
fn manpage() -> anyhow::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let title = format!("kiln-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone())
            .title(title)
            .render(&mut out)?;
    }
    Ok(())
}
