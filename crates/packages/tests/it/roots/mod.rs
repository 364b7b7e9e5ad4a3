//! Fresh package roots built with the real tools ([`rpm`]: rpmbuild and rpm;
//! [`pacman`]: makepkg and pacman), and the command runner both use. Also included by
//! path from the tests of kiln and kiln-cli that build appliances from such roots.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pacman;
pub mod rpm;

use std::process::Command;

/// True when every one of `tools` runs here (`TOOL --version` succeeds).
fn tools_run(tools: &[&str]) -> bool {
    tools.iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Run `cmd` to success and return its standard output; a failure panics with the
/// command, its status and both outputs.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
