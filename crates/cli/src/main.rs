//! The `kiln` command line: a thin layer over the `kiln` library, one module per
//! subcommand. Errors are printed with their full context and exit with status 1.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod cache_ls;
mod checksum;
mod gc;
mod locate;
mod size;

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
    Locate(locate::Args),
    Gc(gc::Args),
    Checksum(checksum::Args),
    Cache(cache_ls::Args),
}

/// Timestamped (time since start), uncoloured unless stderr is a terminal. `KILN_LOG`
/// (tracing filter syntax) overrides the level chosen by -v. The cache's notices
/// ("building …", "waiting for PID N building …") are shown by default.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn,kiln_cache=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Locate(args) => locate::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Checksum(args) => checksum::run(args),
        Command::Cache(args) => cache_ls::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes whose text the message already
/// contains (library errors often include their source's text).
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if msg.contains(&c) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&c);
    }
    msg
}
