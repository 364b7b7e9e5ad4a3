//! The environment the command of `kiln run` gets in the VM: a fixed base, what cargo
//! hands a target runner, and what the caller asks for (`--env`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// An `--env` entry that names no variable.
#[derive(Debug, thiserror::Error)]
#[error("--env {}: the name is empty; give NAME=VALUE or NAME", Path::new(.0).display())]
pub struct EnvError(pub OsString);

/// The command's environment: a fixed base, the host's TERM, the host's `CARGO_*` and
/// `RUST_*` variables (what cargo gives a target runner and the test harness reads:
/// `CARGO_MANIFEST_DIR`, `RUST_BACKTRACE`, `RUST_TEST_THREADS`, …), then `extra` in
/// order (later wins): `NAME=VALUE`, or `NAME` alone for the host's value of NAME (left
/// unset when the host has none), as `docker run -e NAME` does.
pub fn guest_env(extra: &[OsString]) -> Result<Vec<OsString>, EnvError> {
    guest_env_from(extra, std::env::vars_os())
}

fn guest_env_from(
    extra: &[OsString],
    host: impl Iterator<Item = (OsString, OsString)>,
) -> Result<Vec<OsString>, EnvError> {
    let host: Vec<(OsString, OsString)> = host.collect();
    let pair = |n: &[u8], v: &OsString| {
        let mut e = OsString::from_vec(n.to_vec());
        e.push("=");
        e.push(v);
        e
    };
    let mut env: Vec<OsString> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
        "USER=root".into(),
        "LOGNAME=root".into(),
    ];
    let mut passed: Vec<&(OsString, OsString)> = host
        .iter()
        .filter(|(n, _)| {
            let n = n.as_bytes();
            n == b"TERM"
                || ((n.starts_with(b"CARGO_") || n.starts_with(b"RUST_")) && !n.contains(&b'='))
        })
        .collect();
    passed.sort();
    for (n, v) in passed {
        env.push(pair(n.as_bytes(), v));
    }
    for e in extra {
        let b = e.as_bytes();
        let (name, value) = match b.iter().position(|&c| c == b'=') {
            Some(i) => (&b[..i], Some(e.clone())),
            None => (
                b,
                host.iter()
                    .find(|(n, _)| n.as_bytes() == b)
                    .map(|(n, v)| pair(n.as_bytes(), v)),
            ),
        };
        if name.is_empty() {
            return Err(EnvError(e.clone()));
        }
        let mut prefix = name.to_vec();
        prefix.push(b'=');
        env.retain(|v| !v.as_bytes().starts_with(&prefix));
        env.extend(value);
    }
    Ok(env)
}

/// The value of `PATH` in an environment of `NAME=VALUE` entries (the last one wins).
pub fn path_of(env: &[OsString]) -> Option<OsString> {
    env.iter().rev().find_map(|v| {
        v.as_bytes()
            .strip_prefix(b"PATH=")
            .map(|p| OsStr::from_bytes(p).to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(vars: &[(&str, &str)]) -> impl Iterator<Item = (OsString, OsString)> {
        vars.iter()
            .map(|(n, v)| (OsString::from(n), OsString::from(v)))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn cargo_and_rust_variables_pass_through_and_env_names_take_host_values() {
        let h = [
            ("HOME", "/home/u"),
            ("PATH", "/home/u/bin"),
            ("CARGO_MANIFEST_DIR", "/src/x"),
            ("RUST_BACKTRACE", "1"),
            ("RUSTFLAGS", "-O"),
            ("MY_VAR", "hello"),
            ("TERM", "xterm"),
        ];
        let env = guest_env_from(
            &[
                "MY_VAR".into(),
                "NOT_SET".into(),
                "RUST_BACKTRACE=full".into(),
            ],
            host(&h),
        )
        .unwrap();
        let env = strings(env);
        assert_eq!(
            env,
            [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "USER=root",
                "LOGNAME=root",
                "CARGO_MANIFEST_DIR=/src/x",
                "TERM=xterm",
                "MY_VAR=hello",
                "RUST_BACKTRACE=full",
            ]
        );
    }

    #[test]
    fn an_env_without_a_name_is_refused() {
        for bad in ["=x", ""] {
            let e = guest_env_from(&[bad.into()], host(&[])).unwrap_err();
            assert!(e.to_string().contains("the name is empty"), "{e}");
        }
    }

    #[test]
    fn the_last_path_wins() {
        let env: Vec<OsString> = vec!["PATH=/a".into(), "X=1".into(), "PATH=/b".into()];
        assert_eq!(path_of(&env), Some(OsString::from("/b")));
        assert_eq!(path_of(&env[1..2]), None);
    }
}
