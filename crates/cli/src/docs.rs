//! Documentation generated from the command-line definition, for packagers and users:
//! shell completion scripts (`kiln completions SHELL`, written by `clap_complete`) and
//! one manual page per command (`kiln manpage --dir DIR`, written by `clap_mangen`).
//!
//! Both are rendered from the same `clap::Command` the parser uses, so they cannot drift
//! from the options kiln accepts. Hidden commands and options are left out.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap_complete::Shell;

/// Print a shell completion script on stdout.
///
/// Install it where the shell looks: bash
/// `/usr/share/bash-completion/completions/kiln`, zsh a directory of `$fpath` as
/// `_kiln`, fish `~/.config/fish/completions/kiln.fish`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  kiln completions bash > ~/.local/share/bash-completion/completions/kiln"
)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// `kiln manpage` options.
#[derive(Debug, clap::Args)]
pub struct ManpageArgs {
    /// Write one page per command (`kiln.1`, `kiln-build.1`, …) into DIR instead of
    /// printing them all on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(mut cmd: clap::Command, args: &CompletionsArgs) -> anyhow::Result<()> {
    let name = cmd.get_name().to_string();
    // Rendered in memory first: clap_complete panics on a write error (a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut buf);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, &buf)
        .and_then(|()| std::io::Write::flush(&mut out))
        .context("writing the completion script to stdout")
}

/// `kiln.1` and `kiln-SUB.1` for every visible subcommand, into `dir` (created if
/// missing). Each page is written to a temporary file and renamed, so a page is never
/// seen half-written.
pub fn manpages_to_dir(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    write_page(dir, "kiln", clap_mangen::Man::new(cmd.clone()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kiln-{}", sub.get_name());
        // NAME shows `kiln-build`, SYNOPSIS `kiln build …`.
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("kiln {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        write_page(dir, &name, clap_mangen::Man::new(sub))?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, man: clap_mangen::Man) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    man.render(&mut buf)
        .with_context(|| format!("rendering {}", path.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, &buf)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    let mut perm = tmp
        .as_file()
        .metadata()
        .with_context(|| format!("writing {}", path.display()))?
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    fs::set_permissions(tmp.path(), perm).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
