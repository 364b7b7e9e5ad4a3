//! Package database changes do not pile up slots: each change makes a new key, and
//! the new build supersedes the older slot of the same source (supermin.d, options,
//! database root) as soon as no pin holds it. Real builds of the bundled example
//! against a copy of this host's dpkg database, changed as dpkg changes it (`status`
//! rewritten).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::{DatabaseRoot, LocateOptions, locate};

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
fn package_changes_leave_one_slot_per_source() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("db");
    fs::create_dir_all(db.join("var/lib")).unwrap();
    let ok = Command::new("cp")
        .args(["-a", "/var/lib/dpkg"])
        .arg(db.join("var/lib"))
        .status()
        .unwrap();
    assert!(ok.success());
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let opts = |db: &PathBuf| {
        let mut o = LocateOptions {
            path: Some(example.clone().into_os_string()),
            cachedir: Some(cache.clone()),
            ..LocateOptions::default()
        };
        o.key.database = DatabaseRoot::new(db);
        o
    };
    let change = || {
        // dpkg rewrites status on every install, upgrade and removal.
        let status = db.join("var/lib/dpkg/status");
        let text = fs::read(&status).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&status, text).unwrap();
    };

    let first = locate(&opts(&db)).unwrap();
    assert!(first.built());
    let mut keys = vec![first.key().unwrap().to_string()];
    change();
    let second = locate(&opts(&db)).unwrap();
    assert!(second.built(), "a package change makes a new key");
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
        let a = locate(&opts(&db)).unwrap();
        assert!(a.built());
        assert_eq!(slots(&cache), [a.key().unwrap().to_string()]);
    }

    // Another source (here: another database root) lives beside it.
    let other = t.path().join("db2");
    fs::create_dir_all(other.join("var/lib")).unwrap();
    let ok = Command::new("cp")
        .args(["-a"])
        .arg(db.join("var/lib/dpkg"))
        .arg(other.join("var/lib"))
        .status()
        .unwrap();
    assert!(ok.success());
    drop(locate(&opts(&other)).unwrap());
    assert_eq!(slots(&cache).len(), 2);
}
