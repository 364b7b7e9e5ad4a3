//! The command line as programs and people see it: piped output carries no terminal
//! control sequences, a terminal gets a progress line, and every `--json` output parses
//! and has the fields the README documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{example_dir, kiln, text};

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], cache: &Path) -> Output {
    Command::new(kiln())
        .args(args)
        .env("LIBGUESTFS_CACHEDIR", cache)
        .env_remove("KILN_LOG")
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(o)))
}

fn has_fields(v: &serde_json::Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(f).is_some(), "field {f} missing in {v}");
    }
}

#[test]
fn piped_output_has_no_control_sequences() {
    let t = tempfile::tempdir().unwrap();
    let sd = example_dir().join("supermin.d");
    let out = t.path().join("a");
    let cases: Vec<Vec<String>> = vec![
        vec!["build".into(), "-f".into(), "ext2".into()],
        vec!["build".into(), "-v".into(), "-f".into(), "ext2".into()],
        vec![
            "build".into(),
            "-f".into(),
            "ext2".into(),
            "/nonexistent".into(),
        ],
        vec!["--help".into()],
        vec!["build".into(), "--help".into()],
    ];
    for mut args in cases {
        if args[0] == "build" && !args.contains(&"--help".to_string()) {
            args.push(sd.display().to_string());
            args.extend(["-o".into(), out.display().to_string()]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&a, t.path());
        let all = [o.stdout.as_slice(), o.stderr.as_slice()].concat();
        assert!(
            !all.contains(&0x1b) && !all.contains(&b'\r'),
            "control sequence in piped output of {args:?}:\n{}",
            text(&o)
        );
        if args.contains(&"-v".to_string()) {
            // -v traces stages with counts, timestamped.
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("packages, including dependencies"), "{err}");
            assert!(err.contains("after munging"), "{err}");
        }
    }
}

#[test]
fn a_terminal_gets_a_progress_line_that_is_cleared() {
    // `script` gives the command a pseudo-terminal and records what it writes.
    let t = tempfile::tempdir().unwrap();
    let sd = example_dir().join("supermin.d");
    let log = t.path().join("typescript");
    let cmd = format!(
        "{} build -f ext2 {} -o {}",
        kiln(),
        sd.display(),
        t.path().join("a").display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd])
        .arg(&log)
        .env("LIBGUESTFS_CACHEDIR", t.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let typescript = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(
        typescript.contains("after munging") && typescript.contains("\x1b[2K"),
        "no progress line on the terminal:\n{typescript:?}"
    );
    assert!(t.path().join("a/root").is_file());
}

#[test]
fn json_outputs_parse_with_documented_fields() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let sd = example_dir().join("supermin.d");
    let sd_s = sd.display().to_string();
    let out = t.path().join("a").display().to_string();

    let b = json(&run(
        &["build", "-f", "ext2", "--json", &sd_s, "-o", &out],
        &cache,
    ));
    has_fields(
        &b,
        &[
            "format",
            "output",
            "written",
            "packages",
            "entries",
            "content_bytes",
            "kernel",
            "kernel_version",
            "root_uuid",
            "root_blocks_used",
            "root_inodes_used",
            "root_size",
            "initrd_modules",
            "initrd_bytes",
            "seconds",
        ],
    );
    assert_eq!(b["format"], "ext2");
    assert_eq!(b["root_uuid"].as_str().unwrap().len(), 36);

    let c = json(&run(&["checksum", "--json", &sd_s], &cache));
    has_fields(&c, &["key", "supermin_d"]);

    // A search path element in libguestfs's layout (supermin.d with base.tar.gz and
    // packages), made of the example's files.
    let elem = t.path().join("elem");
    std::fs::create_dir_all(elem.join("supermin.d")).unwrap();
    std::fs::copy(sd.join("packages"), elem.join("supermin.d/packages")).unwrap();
    std::fs::copy(sd.join("init.tar.gz"), elem.join("supermin.d/base.tar.gz")).unwrap();
    let path = elem.display().to_string();
    let cache_s = cache.display().to_string();
    let l = json(&run(
        &["locate", "--path", &path, "--cachedir", &cache_s, "--json"],
        &cache,
    ));
    has_fields(
        &l,
        &["kernel", "initrd", "root", "root_uuid", "key", "built"],
    );
    let c2 = json(&run(
        &[
            "checksum",
            "--json",
            &elem.join("supermin.d").display().to_string(),
        ],
        &cache,
    ));
    assert_eq!(
        l["key"], c2["key"],
        "locate caches under the checksum's key"
    );

    let ls = json(&run(
        &["cache", "ls", "--cachedir", &cache_s, "--json"],
        &cache,
    ));
    let slots = ls.as_array().expect("cache ls --json is an array");
    assert!(!slots.is_empty(), "{ls}");
    has_fields(&slots[0], &["key", "size", "last_use", "pinned_by"]);

    let g = json(&run(&["gc", "--cachedir", &cache_s, "--json"], &cache));
    has_fields(
        &g,
        &["dead_pins", "debris", "removed", "freed", "slots", "bytes"],
    );

    let p = json(&run(
        &[
            "prepare",
            "--json",
            "-o",
            &t.path().join("p").display().to_string(),
            "bash",
        ],
        &cache,
    ));
    has_fields(
        &p,
        &["output", "packages", "missing", "closure", "config_files"],
    );
}

#[test]
fn help_and_manpage_cover_every_subcommand() {
    let t = tempfile::tempdir().unwrap();
    let subs = [
        "build", "boot", "locate", "gc", "checksum", "cache", "prepare", "supermin",
    ];
    let help = run(&["--help"], t.path());
    assert!(help.status.success(), "{}", text(&help));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let man = run(&["manpage"], t.path());
    assert!(man.status.success(), "{}", text(&man));
    let man = String::from_utf8_lossy(&man.stdout).into_owned();
    assert!(man.starts_with(".ie") || man.contains(".TH kiln"), "{man}");
    for s in subs {
        assert!(help.contains(s), "kiln --help lacks {s}:\n{help}");
        if s != "supermin" {
            assert!(
                man.contains(&format!("kiln\\-{s}")),
                "manpage lacks kiln-{s}"
            );
            let h = run(&[s, "--help"], t.path());
            assert!(h.status.success(), "{s} --help: {}", text(&h));
            assert!(
                String::from_utf8_lossy(&h.stdout).contains("Usage: kiln"),
                "{s}"
            );
        }
    }
}
