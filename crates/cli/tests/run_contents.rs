//! What `kiln run` puts in the appliance for a command no package owns, booted on real
//! qemu with the host's kernel and dpkg database: its libraries found by reading the
//! ELF files (a hostile program interpreter is copied, never run on the host), `env`
//! interpreters, names with glob characters, relative commands with `--no-cwd`. Each
//! test also checks that nothing is left behind: no qemu, no temporary directory, no
//! pin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{kiln, text};

/// `kiln run --no-cwd ARGS` in `dir`, with a private cache (building an appliance
/// takes about a second) and TMPDIR; then the checks that nothing of the run remains.
fn run_in(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(kiln())
        .arg("run")
        .arg("--cachedir")
        .arg(cache.path())
        // Booting is not what these tests are about: TCG boots everywhere.
        .args(["--accel", "tcg", "--timeout", "600", "--no-cwd", "--"])
        .args(args)
        .current_dir(dir)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}\n{}", text(&o));
    nothing_left_running(cache.path());
    o
}

/// No process (qemu) uses the cache any more, and no appliance is pinned.
fn nothing_left_running(cache: &Path) {
    let needle = cache.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline"))
            && cmd.windows(needle.len()).any(|w| w == needle)
        {
            panic!(
                "process {} still uses the cache: {}",
                e.file_name().display(),
                String::from_utf8_lossy(&cmd)
            );
        }
    }
    let o = Command::new(kiln())
        .args(["cache", "ls", "--json", "--cachedir"])
        .arg(cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for slot in v.as_array().unwrap() {
        assert_eq!(slot["pinned_by"], serde_json::json!([]), "{v}");
    }
}

fn cc(dir: &Path, args: &[&str]) {
    let o = Command::new("cc")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "cc {args:?}\n{}", text(&o));
}

fn executable(p: &Path, text: &str) {
    fs::write(p, text).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().canonicalize().unwrap();
    (t, d)
}

/// A program no package owns whose library sits in a DT_RUNPATH directory
/// (`$ORIGIN/../lib`): found by reading the ELF files, copied, and run in the VM.
#[test]
fn unowned_program_with_a_runpath_library_runs() {
    let (_t, d) = tempdir();
    fs::create_dir_all(d.join("lib")).unwrap();
    fs::create_dir_all(d.join("bin")).unwrap();
    fs::write(d.join("lib.c"), "int kiln_answer(void) { return 42; }\n").unwrap();
    fs::write(
        d.join("main.c"),
        "#include <stdio.h>\nint kiln_answer(void);\n\
         int main(void) { printf(\"answer %d\\n\", kiln_answer()); return 0; }\n",
    )
    .unwrap();
    cc(
        &d,
        &["-shared", "-fPIC", "-o", "lib/libkilnanswer.so", "lib.c"],
    );
    cc(
        &d,
        &[
            "-o",
            "bin/prog",
            "main.c",
            "-Llib",
            "-lkilnanswer",
            "-Wl,--enable-new-dtags",
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
    let o = run_in(Path::new("/"), &[d.join("bin/prog").as_os_str()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, b"answer 42\n", "{}", text(&o));
}

/// A program linked with `--dynamic-linker=EVIL`, EVIL a script writing a marker: kiln
/// used to run it on the host to list the libraries (`ldd`'s hole). It is copied into
/// the appliance and only the VM may run it; the marker never appears on the host.
#[test]
fn a_hostile_program_interpreter_never_runs_on_the_host() {
    let (_t, d) = tempdir();
    let marker = d.join("marker");
    let evil = d.join("evil");
    executable(
        &evil,
        &format!("#!/bin/sh\ntouch '{}'\necho evil ran\n", marker.display()),
    );
    fs::write(d.join("main.c"), "int main(void) { return 0; }\n").unwrap();
    cc(
        &d,
        &[
            "-o",
            "prog",
            "main.c",
            &format!("-Wl,--dynamic-linker={}", evil.display()),
        ],
    );
    let o = run_in(Path::new("/"), &[d.join("prog").as_os_str()]);
    assert!(
        !marker.exists(),
        "the interpreter ran on the host\n{}",
        text(&o)
    );
    // In the VM the kernel cannot use a script as a program interpreter: the command
    // fails there (126, the kernel's EIO), as it would on the host, and kiln says so.
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("evil ran"));
}

/// A script named with `*`, `?`, `[`, `]` and `\` (dropped from the appliance before),
/// run as `./NAME` with `--no-cwd` (run from `/` before: 127), whose `#!/usr/bin/env -S
/// perl -w` needs perl (only env came before).
#[test]
fn glob_named_env_script_runs_as_a_relative_command() {
    let (_t, d) = tempdir();
    let name = "run*me?[x]\\y";
    executable(
        &d.join(name),
        "#!/usr/bin/env -S perl -w\nuse Cwd; print \"perl ran in \", getcwd(), \"\\n\";\n",
    );
    let rel = format!("./{name}");
    let o = run_in(&d, &[rel.as_ref()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("perl ran in {}\n", d.display()),
        "{}",
        text(&o)
    );
}
