//! kiln as cargo's target runner: `cargo test`, `cargo run` of a small crate made here,
//! with `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="kiln run --"`. The test binaries
//! run in the appliance's kernel, see their fixtures through the shared directory, get
//! cargo's and the user's variables, take the harness's arguments unchanged, and decide
//! pass or fail by their exit status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{kiln, text};

const LIB: &str = r#"
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_release() {
        println!("GUEST-RELEASE={}", super::release());
    }

    #[test]
    fn variables_reach_the_test() {
        println!("MY_VAR={:?}", std::env::var("MY_VAR"));
        assert_eq!(std::env::var("MY_VAR").as_deref(), Ok("hello from cargo"));
        assert_eq!(std::env::var("RUST_BACKTRACE").as_deref(), Ok("1"));
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        assert_eq!(std::env::current_dir().unwrap().to_str(), Some(dir.as_str()));
    }

    #[test]
    fn fails_when_asked() {
        if std::env::var_os("PLEASE_FAIL").is_some() {
            panic!("boom in the VM: {}", 6 * 7);
        }
    }
}
"#;

const IT: &str = r#"
#[test]
fn fixture_through_the_share() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/fixture.txt");
    let s = std::fs::read_to_string(p).unwrap();
    println!("FIXTURE={} RELEASE={}", s.trim(), vmcrate::release());
}
"#;

const MAIN: &str = r#"
fn main() {
    println!("RUN-RELEASE={} ARGS={:?}", vmcrate::release(), std::env::args().skip(1).collect::<Vec<_>>());
    std::process::exit(3);
}
"#;

fn make_crate(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join("tests")).unwrap();
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"vmcrate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    )
    .unwrap();
    fs::write(dir.join("src/lib.rs"), LIB).unwrap();
    fs::write(dir.join("src/main.rs"), MAIN).unwrap();
    fs::write(dir.join("tests/it.rs"), IT).unwrap();
    fs::write(dir.join("fixture.txt"), "shared-fixture-42\n").unwrap();
}

/// `cargo ARGS` in `dir` with kiln as the runner, `extra` runner arguments before `--`.
fn cargo(dir: &Path, cache: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let runner = format!(
        "{} run --cachedir {} --timeout 600 --env MY_VAR --env PLEASE_FAIL --",
        kiln(),
        cache.display()
    );
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The outer cargo's variables describe kiln's own build, not this crate's.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("RUST") {
            c.env_remove(&k);
        }
    }
    c.args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", runner)
        .env("RUST_BACKTRACE", "1")
        .envs(envs.iter().copied());
    c.output().unwrap()
}

fn boot_releases() -> Vec<String> {
    fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().ok()?;
            n.strip_prefix("vmlinuz-").map(String::from)
        })
        .collect()
}

fn value_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

#[test]
fn cargo_test_and_cargo_run_with_kiln_as_the_runner() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vmcrate");
    let cache = t.path().join("cache");
    make_crate(&dir);
    fs::create_dir(&cache).unwrap();
    let host_release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();

    // Every test passes in the VM; the harness's arguments pass unchanged.
    let o = cargo(
        &dir,
        &cache,
        &[
            "test",
            "--offline",
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ],
        &[("MY_VAR", "hello from cargo")],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let release = value_of(&all, "GUEST-RELEASE=");
    assert!(boot_releases().iter().any(|r| r == release), "{all}");
    if !boot_releases().contains(&host_release) {
        assert_ne!(release, host_release, "the test ran on the host:\n{all}");
    }
    assert_eq!(value_of(&all, "FIXTURE="), "shared-fixture-42", "{all}");
    assert_eq!(value_of(&all, "RELEASE="), release, "{all}");
    assert!(all.contains("MY_VAR=Ok(\"hello from cargo\")"), "{all}");

    // A filter selects one test.
    let o = cargo(
        &dir,
        &cache,
        &[
            "test",
            "--offline",
            "--lib",
            "kernel_release",
            "--",
            "--nocapture",
        ],
        &[],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("running 1 test"), "{all}");
    assert!(all.contains("test tests::kernel_release ..."), "{all}");
    assert!(all.contains("test result: ok. 1 passed"), "{all}");

    // A failing test fails cargo test, with its panic message.
    let o = cargo(
        &dir,
        &cache,
        &["test", "--offline", "--lib", "fails_when_asked"],
        &[("PLEASE_FAIL", "1")],
    );
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("boom in the VM: 42"), "{all}");
    assert!(
        all.contains("test tests::fails_when_asked ... FAILED"),
        "{all}"
    );

    // cargo run: the program's arguments and exit status come through.
    let o = cargo(
        &dir,
        &cache,
        &["run", "--offline", "-q", "--", "a b", "-c"],
        &[],
    );
    let all = text(&o);
    assert_eq!(o.status.code(), Some(3), "{all}");
    assert_eq!(value_of(&all, "RUN-RELEASE="), release, "{all}");
    assert!(all.contains(r#"ARGS=["a b", "-c"]"#), "{all}");
}
