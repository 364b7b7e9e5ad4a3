//! `kiln gc` reports what it really freed, in every mode (count and bytes): real
//! binary, a real appliance slot, a dead build's leftovers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{example_dir, kiln, text};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let o = Command::new(kiln()).args(args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn allocated(p: &Path) -> u64 {
    let md = fs::symlink_metadata(p).unwrap();
    let mut n = md.blocks() * 512;
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            n += allocated(&e.unwrap().path());
        }
    }
    n
}

#[test]
fn gc_reports_the_bytes_it_freed_with_and_without_bounds() {
    let t = tempfile::tempdir().unwrap();
    let cachedir = t.path().to_str().unwrap();
    let path = example_dir();
    let path = path.to_str().unwrap();
    // A slot, pinned to a process that has exited by now (the shell that ran locate).
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" locate --path "$1" --cachedir "$2" --json"#)
        .args([kiln(), path, cachedir])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let a: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let user_dir = Path::new(a["kernel"].as_str().unwrap())
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    // Leftovers of a build whose process is gone.
    let debris = user_dir.join("tmp-00ff-999999-0");
    fs::create_dir(&debris).unwrap();
    fs::write(debris.join("root"), vec![1u8; 3 << 20]).unwrap();
    let debris_bytes = allocated(&debris);

    // Default policy (keep 4): no slot goes, but the leftovers and the dead pin do.
    let gc = run(&["gc", "--cachedir", cachedir, "--json"]);
    assert_eq!(gc["debris"], 1, "{gc}");
    assert_eq!(gc["dead_pins"], 1, "{gc}");
    assert_eq!(gc["removed"], serde_json::json!([]), "{gc}");
    let freed = gc["freed"].as_u64().unwrap();
    assert!(
        freed >= debris_bytes,
        "{gc}: freed less than the {debris_bytes} B of leftovers"
    );
    let slot_bytes = gc["bytes"].as_u64().unwrap();
    assert!(slot_bytes > 1 << 20, "the slot left is measured: {gc}");

    // --keep 0: the slot goes, and its bytes are reported.
    let gc = run(&["gc", "--cachedir", cachedir, "--keep", "0", "--json"]);
    assert_eq!(gc["removed"].as_array().unwrap().len(), 1, "{gc}");
    assert!(gc["freed"].as_u64().unwrap() >= slot_bytes, "{gc}");
    assert_eq!(gc["bytes"], 0, "{gc}");

    // The plain output says the same.
    let o = Command::new(kiln())
        .args(["gc", "--cachedir", cachedir])
        .output()
        .unwrap();
    let line = String::from_utf8(o.stdout).unwrap();
    assert!(line.contains("(0 B freed)"), "nothing left to free: {line}");
}
