//! What `kiln run` puts in the appliance for a command no package owns, booted on real
//! qemu with the host's kernel and dpkg database: its libraries found by reading the
//! ELF files (a hostile program interpreter is copied, never run on the host), `env`
//! interpreters, names with glob characters, relative commands with `--no-cwd`. Each
//! test also checks that nothing is left behind: no qemu, no temporary directory, no
//! pin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{kiln, text};

/// `kiln run --no-cwd ARGS` in `dir`, with a private cache (building an appliance
/// takes about a second) and TMPDIR; then the checks that nothing of the run remains.
fn run_in(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    run_cached(dir, cache.path(), args)
}

/// [`run_in`] with the cache under `cache`.
fn run_cached(dir: &Path, cache: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(kiln())
        .arg("run")
        .arg("--cachedir")
        .arg(cache)
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
    nothing_left_running(cache);
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

fn json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let o = Command::new(kiln()).args(args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The uncompressed kernel `kiln run` extracts beside the cache: listed by `kiln cache
/// ls` with the appliance using it, kept by `kiln gc` while that appliance is, and
/// removed once it is gone and the kernel unused for the grace period.
#[test]
fn extracted_kernels_are_listed_and_collected_with_their_appliances() {
    let (_t, cache) = tempdir();
    let o = run_cached(Path::new("/"), &cache, &["true".as_ref()]);
    assert!(o.status.success(), "{}", text(&o));
    let c = cache.as_os_str();
    let ls = json(&[
        "cache".as_ref(),
        "ls".as_ref(),
        "--json".as_ref(),
        "--cachedir".as_ref(),
        c,
    ]);
    let entries = ls.as_array().unwrap();
    let appliance = entries.iter().find(|e| e["kind"] == "appliance").unwrap();
    let kernels: Vec<_> = entries.iter().filter(|e| e["kind"] == "vmlinux").collect();
    assert_eq!(kernels.len(), 1, "{ls}");
    assert_eq!(
        kernels[0]["used_by"],
        serde_json::json!([appliance["key"]]),
        "{ls}"
    );
    assert!(kernels[0]["size"].as_u64().unwrap() > 10 << 20, "{ls}");
    let name = kernels[0]["key"].as_str().unwrap();
    let file = cache
        .join(format!(
            ".kiln-vmlinux-{}",
            rustix::process::geteuid().as_raw()
        ))
        .join(name);
    assert!(file.is_file());
    let o = Command::new(kiln())
        .args(["cache", "ls", "--cachedir"])
        .arg(c)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(name),
        "{}",
        text(&o)
    );

    // Its appliance is kept: so is the kernel, however old.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(24 * 3600);
    fs::File::open(&file).unwrap().set_modified(old).unwrap();
    let gc = json(&["gc".as_ref(), "--json".as_ref(), "--cachedir".as_ref(), c]);
    assert_eq!(gc["vmlinux_removed"], serde_json::json!([]), "{gc}");
    assert!(file.is_file());

    // The appliance goes; a recently used kernel stays for the grace period...
    fs::File::open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let gc = json(&[
        "gc".as_ref(),
        "--keep".as_ref(),
        "0".as_ref(),
        "--json".as_ref(),
        "--cachedir".as_ref(),
        c,
    ]);
    assert_eq!(gc["removed"].as_array().unwrap().len(), 1, "{gc}");
    assert_eq!(gc["vmlinux_removed"], serde_json::json!([]), "{gc}");
    assert!(file.is_file());
    // ...and goes after it, its bytes counted as freed.
    fs::File::open(&file).unwrap().set_modified(old).unwrap();
    let gc = json(&[
        "gc".as_ref(),
        "--keep".as_ref(),
        "0".as_ref(),
        "--json".as_ref(),
        "--cachedir".as_ref(),
        c,
    ]);
    assert_eq!(gc["vmlinux_removed"], serde_json::json!([name]), "{gc}");
    assert!(gc["freed"].as_u64().unwrap() > 10 << 20, "{gc}");
    assert!(!file.exists());
}
