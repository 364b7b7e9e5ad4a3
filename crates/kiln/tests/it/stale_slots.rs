//! Changes to an appliance's inputs do not pile up slots: each change makes a new key,
//! and the new build supersedes the older slot of the same source (supermin.d,
//! options, root) as soon as no pin holds it. Real builds of a copy of the bundled
//! example whose package list is rewritten between builds, as a package change
//! rewrites what the key covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::{LocateOptions, locate};

fn slots(cache: &Path) -> Vec<String> {
    let user = cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    let mut v: Vec<String> = fs::read_dir(user)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_prefix("slot-").map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn input_changes_leave_one_slot_per_source() {
    let t = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let copy = |name: &str| {
        let dir = t.path().join(name);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&example)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
        dir
    };
    let src = copy("hello");
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let opts = |dir: &PathBuf| LocateOptions {
        path: Some(dir.clone().into_os_string()),
        cachedir: Some(cache.clone()),
        ..LocateOptions::default()
    };
    let mut n = 0;
    let mut change = || {
        // A new line in the package list: a new key for the same source.
        n += 1;
        fs::write(
            src.join("supermin.d/packages"),
            format!("busybox\n# change {n}\n"),
        )
        .unwrap();
    };

    let first = locate(&opts(&src)).unwrap();
    assert!(first.built());
    let mut keys = vec![first.key().unwrap().to_string()];
    change();
    let second = locate(&opts(&src)).unwrap();
    assert!(second.built(), "a changed input makes a new key");
    keys.push(second.key().unwrap().to_string());
    assert_ne!(keys[0], keys[1]);
    assert_eq!(slots(&cache).len(), 2, "the first is still pinned");
    drop(first);
    assert_eq!(
        slots(&cache),
        [keys[1].clone()],
        "superseded, unpinned: gone"
    );
    drop(second);
    for _ in 0..3 {
        change();
        let a = locate(&opts(&src)).unwrap();
        assert!(a.built());
        assert_eq!(slots(&cache), [a.key().unwrap().to_string()]);
    }

    // Another source (another supermin.d) lives beside it.
    let other = copy("hello2");
    drop(locate(&opts(&other)).unwrap());
    assert_eq!(slots(&cache).len(), 2);
}
