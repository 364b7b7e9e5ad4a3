//! Staging directories left by dead processes, live ones, and filesystems without
//! `renameat2` flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use kiln_outdir::Staging;

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What SIGKILL leaves (an unlocked `.out.kiln-*` with files in it) is removed by the
/// next staging for the same output; a locked one (a live build) and those of other
/// outputs are left alone.
#[test]
fn debris_of_dead_builds_goes_live_staging_stays() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let dead = t.path().join(".out.kiln-AbC123");
    fs::create_dir_all(dead.join("sub")).unwrap();
    fs::write(dead.join("sub/root"), vec![0u8; 4096]).unwrap();
    let other = t.path().join(".other.kiln-AbC123");
    fs::create_dir(&other).unwrap();
    let live = Staging::new(&out).unwrap();
    fs::write(live.path().join("half"), b"x").unwrap();
    let live_name = live
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(!dead.exists(), "debris of a dead build was kept");
    assert!(other.exists(), "staging of another output was removed");

    // A second build into the same place while the first is running.
    let second = Staging::new(&out).unwrap();
    assert!(
        live.path().join("half").exists(),
        "a live build's staging was removed"
    );
    fs::write(second.path().join("b"), b"2").unwrap();
    second.publish().unwrap();
    drop(live);
    assert_eq!(
        names(t.path()),
        [".other.kiln-AbC123", "out"],
        "{live_name}"
    );
    assert_eq!(names(&out), ["b"]);
}

/// Publishing where `renameat2` flags are refused (`EINVAL`): plain renames, the old
/// output replaced, nothing left beside it. Runs itself in a child process with the
/// fault injected (the switch is process-wide).
#[test]
fn publish_without_rename_flags() {
    if std::env::var_os("KILN_OUTDIR_NO_RENAME_FLAGS").is_none() {
        let st = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "staging::publish_without_rename_flags",
                "--nocapture",
            ])
            .env("KILN_OUTDIR_NO_RENAME_FLAGS", "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&st.stdout);
        assert!(
            st.status.success(),
            "child test failed: {}\n{out}{}",
            st.status,
            String::from_utf8_lossy(&st.stderr)
        );
        // An --exact filter that matches nothing passes too: the test must have run.
        assert!(out.contains("1 passed"), "the child ran no test:\n{out}");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let s = Staging::new(&out).unwrap();
    fs::write(s.path().join("a"), b"1").unwrap();
    s.publish().unwrap();
    assert_eq!(names(&out), ["a"]);
    let s = Staging::new(&out).unwrap();
    fs::write(s.path().join("b"), b"2").unwrap();
    s.publish().unwrap();
    assert_eq!(names(&out), ["b"]);
    assert_eq!(names(t.path()), ["out"], "nothing left beside the output");
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o755
    );
}
