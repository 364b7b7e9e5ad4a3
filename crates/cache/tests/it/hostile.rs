//! A tampered cache directory: refused with `security:` or handled without following
//! links, opening FIFOs, or touching anything outside the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;
use kiln_cache::{Cache, CacheError, GcPolicy, GetOptions};

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn user_dir(root: &Path) -> PathBuf {
    root.join(format!(".guestfs-{}", euid()))
}

fn security(r: Result<impl std::fmt::Debug, CacheError>, what: &str) -> String {
    let e = r.unwrap_err();
    let msg = e.to_string();
    assert!(e.is_security() && msg.starts_with("security: "), "{msg}");
    assert!(msg.contains(what), "{msg:?} should mention {what:?}");
    msg
}

/// Run `f` on another thread and fail (instead of hanging) if it blocks, e.g. on a FIFO.
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("blocked (opened a FIFO?)")
}

/// A directory outside the cache with a file in it, and a check that both are untouched.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("secret"), "do not read me").unwrap();
        fs::set_permissions(dir.path().join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        Outside { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret")
    }
    fn assert_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"], "something was written outside the cache");
        let md = fs::metadata(self.secret()).unwrap();
        assert_eq!(md.nlink(), 1, "the outside file was hard-linked");
        assert_eq!(
            md.permissions().mode() & 0o7777,
            0o600,
            "the outside file was chmodded"
        );
        assert_eq!(fs::read_to_string(self.secret()).unwrap(), "do not read me");
    }
}

#[test]
#[ignore = "needs root"]
fn cache_dir_owned_by_another_uid_is_refused() {
    assert!(
        rustix::process::geteuid().is_root(),
        "chown needs root: run as root"
    );
    let root = tempfile::tempdir().unwrap();
    let dir = user_dir(root.path());
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let msg = security(Cache::open(root.path()), "owned by UID 65534");
    assert!(msg.contains("rm -rf"), "says how to fix it: {msg}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn cache_dir_that_is_a_symlink_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = Outside::new();
    symlink(outside.path(), user_dir(root.path())).unwrap();
    security(Cache::open(root.path()), "symbolic link");
    outside.assert_untouched();
    // A dangling one too (it must not be created through).
    let root2 = tempfile::tempdir().unwrap();
    symlink(outside.path().join("new"), user_dir(root2.path())).unwrap();
    security(Cache::open(root2.path()), "symbolic link");
    outside.assert_untouched();
}

#[test]
fn cache_dir_writable_by_group_or_other_is_refused() {
    for mode in [0o777, 0o775, 0o757] {
        let root = tempfile::tempdir().unwrap();
        let dir = user_dir(root.path());
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let msg = security(Cache::open(root.path()), "writable by group or other");
        assert!(msg.contains("chmod go-w"), "{msg}");
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            mode,
            "left as it was"
        );
    }
    // Stricter than 0755 is fine.
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(user_dir(root.path())).unwrap();
    fs::set_permissions(user_dir(root.path()), fs::Permissions::from_mode(0o700)).unwrap();
    Cache::open(root.path()).unwrap();
}

#[test]
fn cache_dir_that_is_a_file_is_refused() {
    let root = tempfile::tempdir().unwrap();
    fs::write(user_dir(root.path()), "").unwrap();
    security(Cache::open(root.path()), "not a directory");
}

fn built(root: &Path, k: &str) -> Cache {
    let cache = Cache::open(root).unwrap();
    drop(
        cache
            .get_or_build(&key(k), &GetOptions::default(), |d| fake_build(d, 0, None))
            .unwrap(),
    );
    cache
}

fn pins(cache: &Cache) -> Vec<String> {
    names(cache)
        .into_iter()
        .filter(|n| n.starts_with("pin-"))
        .collect()
}

#[test]
fn slot_file_replaced_by_a_symlink_is_refused_and_not_read() {
    let root = tempfile::tempdir().unwrap();
    let outside = Outside::new();
    let cache = built(root.path(), "aa");
    for f in ["root", "kernel", "slot-meta"] {
        let p = cache.path().join("slot-aa").join(f);
        let saved = fs::read(&p).unwrap();
        fs::remove_file(&p).unwrap();
        symlink(outside.secret(), &p).unwrap();
        let r = within_10s({
            let cache = cache.clone();
            move || {
                cache.get_or_build(&key("aa"), &GetOptions::default(), |d| {
                    fake_build(d, 0, None)
                })
            }
        });
        security(r, "symbolic link");
        assert!(pins(&cache).is_empty(), "no pin made of a tampered slot");
        outside.assert_untouched();
        fs::remove_file(&p).unwrap();
        fs::write(&p, saved).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Restored: usable again.
    verify(&cache.lookup(&key("aa"), None).unwrap().unwrap());
}

#[test]
fn slot_replaced_by_a_symlink_to_a_lookalike_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = Outside::new();
    let cache = built(root.path(), "ab");
    let slot = cache.path().join("slot-ab");
    // An outside copy of a valid slot, reached through a link in the cache.
    let fake = outside.path().join("fake");
    fs::create_dir(&fake).unwrap();
    for e in fs::read_dir(&slot).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), fake.join(e.file_name())).unwrap();
    }
    fs::remove_dir_all(&slot).unwrap();
    symlink(&fake, &slot).unwrap();
    security(cache.lookup(&key("ab"), None), "symbolic link");
    assert!(pins(&cache).is_empty());
    // gc never follows it.
    cache
        .gc(&GcPolicy {
            keep: Some(0),
            max_size: None,
        })
        .unwrap();
    assert_eq!(fs::read_dir(&fake).unwrap().count(), 4);
    fs::remove_dir_all(&fake).unwrap();
    outside.assert_untouched();
}

#[test]
fn fifos_in_the_cache_never_block_or_get_opened() {
    let root = tempfile::tempdir().unwrap();
    let cache = built(root.path(), "ac");
    let mkfifo = |p: &Path| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            0o644.into(),
            0,
        )
        .unwrap()
    };
    // A FIFO in place of a (dead) pin, and one in place of a file in a live pin.
    let dead_pin = cache.path().join("pin-999999999-1-0-ac");
    mkfifo(&dead_pin);
    let p = cache.lookup(&key("ac"), None).unwrap().unwrap();
    fs::remove_file(p.kernel()).unwrap();
    mkfifo(p.kernel());
    let r = within_10s({
        let cache = cache.clone();
        move || {
            let r = cache.gc(&GcPolicy::debris_only());
            drop(p);
            r
        }
    });
    assert_eq!(r.unwrap().dead_pins, 1);
    assert!(!dead_pin.exists());
    assert!(
        pins(&cache).is_empty(),
        "the live pin with a FIFO was removed on drop"
    );
    // A FIFO as a slot file or as the build lock: refused, without blocking.
    let initrd = cache.path().join("slot-ac/initrd");
    fs::remove_file(&initrd).unwrap();
    mkfifo(&initrd);
    let r = within_10s({
        let cache = cache.clone();
        move || cache.lookup(&key("ac"), None)
    });
    security(r, "FIFO");
    mkfifo(&cache.path().join("lock-ad"));
    let r = within_10s({
        let cache = cache.clone();
        move || {
            cache.get_or_build(&key("ad"), &GetOptions::default(), |d| {
                fake_build(d, 0, None)
            })
        }
    });
    security(r, "FIFO");
}

#[test]
#[ignore = "needs root"]
fn foreign_owned_slot_file_is_refused() {
    assert!(
        rustix::process::geteuid().is_root(),
        "chown needs root: run as root"
    );
    let root = tempfile::tempdir().unwrap();
    let cache = built(root.path(), "ae");
    std::os::unix::fs::chown(cache.path().join("slot-ae/root"), Some(65534), None).unwrap();
    security(cache.lookup(&key("ae"), None), "owned by UID 65534");
}

#[test]
fn planted_links_in_gc_territory_are_unlinked_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = Outside::new();
    let cache = built(root.path(), "af");
    for name in ["tmp-af-1-1", "trash-af-1-1", "pin-999999999-1-0-af"] {
        symlink(outside.path(), cache.path().join(name)).unwrap();
    }
    let r = cache.gc(&GcPolicy::debris_only()).unwrap();
    assert_eq!((r.dead_pins, r.debris), (1, 2));
    outside.assert_untouched();
    // A lock file planted as a symlink to an outside file: refused, not opened.
    symlink(outside.secret(), cache.path().join("lock-ba")).unwrap();
    let r = cache.get_or_build(&key("ba"), &GetOptions::default(), |d| {
        fake_build(d, 0, None)
    });
    security(r, "symbolic link");
    outside.assert_untouched();
}
