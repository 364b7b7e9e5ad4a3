//! Hits, misses, pins and gc of the cache, with a fake builder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::common::*;
use kiln_cache::{BuildMeta, Cache, CacheError, GcPolicy, GetOptions};

fn no_gc() -> GetOptions {
    GetOptions {
        gc: None,
        ..GetOptions::default()
    }
}

#[test]
fn miss_builds_once_then_hits_with_private_pins() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let k = key("aa01");
    let mut builds = 0;
    let a = cache
        .get_or_build(&k, &no_gc(), |d| {
            builds += 1;
            fake_build(d, 0, None)
        })
        .unwrap();
    assert!(a.built());
    let b = cache
        .get_or_build(&k, &no_gc(), |d| {
            builds += 1;
            fake_build(d, 0, None)
        })
        .unwrap();
    assert!(!b.built());
    assert_eq!(builds, 1);
    assert_eq!(verify(&a), verify(&b));
    assert_ne!(a.kernel(), b.kernel(), "each handle has its own pin");
    // Pins are hard links of the slot's files, under names of this process.
    let slot = cache.path().join(format!("slot-{k}"));
    assert_eq!(
        fs::metadata(a.root()).unwrap().ino(),
        fs::metadata(slot.join("root")).unwrap().ino()
    );
    assert!(
        a.pin_name()
            .starts_with(&format!("pin-{}-", std::process::id()))
    );
    // World-readable outputs, whatever the umask.
    for p in [a.kernel(), a.initrd(), a.root()] {
        assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o644);
    }
    assert_eq!(
        fs::metadata(&slot).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let pin_dir = a.kernel().parent().unwrap().to_path_buf();
    drop(a);
    assert!(!pin_dir.exists(), "dropping the handle removes its pin");
    assert!(b.kernel().exists());
    drop(b);
    let left = names(&cache);
    assert_eq!(left, vec![format!("lock-{k}"), format!("slot-{k}")]);
}

#[test]
fn cache_dir_is_made_0755_whatever_the_umask() {
    if helper_main() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // A umask change is process-wide, so check the mode on a directory made by a
    // child process with umask 077 instead of changing ours.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077; KILN_CACHE_HELPER=get KILN_T_ROOT={} KILN_T_KEY=ab {} {}",
            root.path().display(),
            std::env::current_exe().unwrap().display(),
            helper_args().join(" ")
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = Cache::open(root.path()).unwrap().path().to_path_buf();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let slot = dir.join("slot-ab");
    assert_eq!(
        fs::metadata(&slot).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::metadata(slot.join("root"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

#[test]
fn failed_build_leaves_nothing_and_next_call_builds() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let k = key("bb");
    let err = cache
        .get_or_build(&k, &no_gc(), |d| {
            fs::write(d.join("kernel"), "half")?;
            Err::<BuildMeta, _>(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
    assert!(matches!(err, CacheError::Build { .. }), "{err}");
    // The cause is the error's source, printed by front ends after its message.
    assert!(!err.to_string().contains("disk on fire"), "{err}");
    let src = std::error::Error::source(&err).map(|s| s.to_string());
    assert_eq!(src.as_deref(), Some("disk on fire"));
    assert_eq!(names(&cache), vec![format!("lock-{k}")]);
    // A builder that forgets a file is refused too.
    let err = cache
        .get_or_build(&k, &no_gc(), |d| {
            fs::write(d.join("kernel"), "k")?;
            fs::write(d.join("root"), "r")?;
            Ok::<_, std::io::Error>(BuildMeta::default())
        })
        .unwrap_err();
    assert!(err.to_string().contains("did not write initrd"), "{err}");
    // A builder that symlinks the kernel is refused (pins must be real files).
    let err = cache
        .get_or_build(&k, &no_gc(), |d| {
            std::os::unix::fs::symlink("/boot", d.join("kernel"))?;
            fs::write(d.join("initrd"), "i")?;
            fs::write(d.join("root"), "r")?;
            Ok::<_, std::io::Error>(BuildMeta::default())
        })
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(names(&cache), vec![format!("lock-{k}")]);
    let p = cache
        .get_or_build(&k, &no_gc(), |d| fake_build(d, 0, None))
        .unwrap();
    verify(&p);
}

/// The builder hands the root UUID to the cache, which records it in the slot; the
/// cache itself never parses `root` (it does not know what an appliance is made of).
#[test]
fn root_uuid_comes_from_the_builder_and_root_is_never_parsed() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let ext_looking = || {
        let mut img = vec![0u8; 4096];
        img[0x438] = 0x53;
        img[0x439] = 0xef;
        for (i, b) in img[0x468..0x478].iter_mut().enumerate() {
            *b = i as u8 * 17;
        }
        img
    };
    let given = "00112233-4455-6677-8899-aabbccddeeff";
    let p = cache
        .get_or_build(&key("cc"), &no_gc(), |d| {
            fs::write(d.join("kernel"), "k")?;
            fs::write(d.join("initrd"), "i")?;
            fs::write(d.join("root"), vec![0u8; 4096])?;
            Ok::<_, std::io::Error>(BuildMeta {
                root_uuid: Some(given.to_owned()),
            })
        })
        .unwrap();
    assert_eq!(p.root_uuid(), Some(given));
    drop(p);
    let again = cache.lookup(&key("cc"), None).unwrap().unwrap();
    assert_eq!(again.root_uuid(), Some(given));

    // A superblock in `root` is not read: no UUID from the builder, none recorded.
    let p = cache
        .get_or_build(&key("cd"), &no_gc(), |d| {
            fs::write(d.join("kernel"), "k")?;
            fs::write(d.join("initrd"), "i")?;
            fs::write(d.join("root"), ext_looking())?;
            Ok::<_, std::io::Error>(BuildMeta::default())
        })
        .unwrap();
    assert_eq!(p.root_uuid(), None);
    drop(p);
    let again = cache.lookup(&key("cd"), None).unwrap().unwrap();
    assert_eq!(again.root_uuid(), None);
}

#[test]
fn slot_eaten_by_a_tmp_cleaner_is_rebuilt() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let k = key("dd");
    let first = verify(
        &cache
            .get_or_build(&k, &no_gc(), |d| fake_build(d, 0, None))
            .unwrap(),
    );
    fs::remove_file(cache.path().join(format!("slot-{k}/initrd"))).unwrap();
    let p = cache
        .get_or_build(&k, &no_gc(), |d| fake_build(d, 0, None))
        .unwrap();
    assert!(p.built());
    assert_ne!(verify(&p), first);
}

#[test]
fn forced_rebuild_replaces_the_slot_and_old_pins_keep_their_files() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let k = key("ee");
    let old = cache
        .get_or_build(&k, &no_gc(), |d| fake_build(d, 0, None))
        .unwrap();
    let old_id = verify(&old);
    let force = GetOptions {
        force_rebuild: true,
        gc: None,
        ..GetOptions::default()
    };
    let new = cache
        .get_or_build(&k, &force, |d| fake_build(d, 0, None))
        .unwrap();
    assert!(new.built());
    assert_ne!(verify(&new), old_id);
    assert_eq!(verify(&old), old_id, "the old pin still has the old build");
    let hit = cache.lookup(&k, None).unwrap().unwrap();
    assert_eq!(verify(&hit), verify(&new));
    drop((old, new, hit));
    // Exactly one slot; the replaced one is gone, nothing left over.
    assert_eq!(
        names(&cache),
        vec![format!("lock-{k}"), format!("slot-{k}")]
    );
}

#[test]
fn gc_removes_dead_pins_keeps_pinned_slots_and_honours_bounds() {
    if helper_main() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    // A pin made by a process that has exited.
    let child = spawn_helper("get", root.path(), "f1", &[]);
    let r = helper_result(child);
    let dead_pin = get(&r, "pin");
    // The helper dropped its own pin; make one that looks like it kept one.
    fs::create_dir(cache.path().join(&dead_pin)).unwrap();
    fs::write(cache.path().join(&dead_pin).join("kernel"), "x").unwrap();

    let big = |n: usize| {
        move |d: &std::path::Path| -> std::io::Result<BuildMeta> {
            for f in ["kernel", "initrd", "root"] {
                fs::write(d.join(f), vec![n as u8 + 1; 400 * 1024])?;
            }
            Ok(BuildMeta::default())
        }
    };
    let pinned = cache.get_or_build(&key("f2"), &no_gc(), big(2)).unwrap();
    drop(cache.get_or_build(&key("f3"), &no_gc(), big(3)).unwrap());
    drop(cache.get_or_build(&key("f4"), &no_gc(), big(4)).unwrap());
    for (n, k) in ["f1", "f2", "f3", "f4"].iter().enumerate() {
        set_last_use(&cache, k, n as u64);
    }
    let listed = cache.list().unwrap();
    assert_eq!(
        listed.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
        ["f4", "f3", "f2", "f1"],
        "most recently used first"
    );
    assert_eq!(listed[2].pinned_by, vec![std::process::id()]);
    assert!(listed[0].size >= 3 * 400 * 1024);

    // Size bound: ~3.6 MiB in three slots of 1.2 MiB plus a tiny one; 2.6 MiB allowed.
    let report = cache
        .gc(&GcPolicy {
            keep: None,
            max_size: Some(2_600_000),
        })
        .unwrap();
    assert_eq!(report.dead_pins, 1, "{report:?}");
    assert!(!cache.path().join(&dead_pin).exists());
    // f1 (tiny, oldest) and f3 go; f2 is older but pinned; f4 is newest.
    let mut removed: Vec<_> = report
        .removed
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    removed.sort();
    assert_eq!(removed, ["f1", "f3"]);
    assert!(report.bytes <= 2_600_000);
    // keep = 0 removes everything unpinned, never the pinned one.
    let report = cache
        .gc(&GcPolicy {
            keep: Some(0),
            max_size: None,
        })
        .unwrap();
    assert_eq!(
        report
            .removed
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
        ["f4"]
    );
    assert_eq!(fs::read(pinned.root()).unwrap(), vec![3u8; 400 * 1024]);
}

#[test]
fn pin_to_another_process_outlives_the_handle_until_that_process_exits() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let opts = GetOptions {
        pin_to: Some(sleeper.id()),
        gc: None,
        ..GetOptions::default()
    };
    let p = cache
        .get_or_build(&key("ab"), &opts, |d| fake_build(d, 0, None))
        .unwrap();
    assert!(p.pin_name().starts_with(&format!("pin-{}-", sleeper.id())));
    let kernel = p.kernel().to_path_buf();
    drop(p);
    assert!(
        kernel.exists(),
        "pins for another process stay after the handle is gone"
    );
    cache.gc(&GcPolicy::debris_only()).unwrap();
    assert!(kernel.exists(), "the owner is alive");
    let keep0 = GcPolicy {
        keep: Some(0),
        max_size: None,
    };
    assert!(
        cache.gc(&keep0).unwrap().removed.is_empty(),
        "a pinned slot is never removed"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let r = cache.gc(&keep0).unwrap();
    assert_eq!(r.dead_pins, 1);
    assert_eq!(r.removed.len(), 1);
    assert!(!kernel.exists());
    assert!(matches!(
        cache.get_or_build(&key("ab"), &opts, |d| fake_build(d, 0, None)),
        Err(CacheError::NoProcess(_))
    ));
}

#[test]
fn pin_with_a_reused_pid_is_dead() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let me = kiln_cache::ProcessId::current().unwrap();
    // Same PID as a live process (us) but another start time: a pin left by an earlier
    // process that had our PID. And one that really is ours.
    let stale = cache
        .path()
        .join(format!("pin-{}-{}-0-ab", me.pid, me.start + 1));
    let live = cache
        .path()
        .join(format!("pin-{}-{}-999999-ab", me.pid, me.start));
    for d in [&stale, &live] {
        fs::create_dir(d).unwrap();
        fs::write(d.join("kernel"), "x").unwrap();
    }
    let r = cache.gc(&GcPolicy::debris_only()).unwrap();
    assert_eq!(r.dead_pins, 1);
    assert!(!stale.exists());
    assert!(live.exists());
}

/// A setuid caller (real UID root, effective UID 65534): the cache directory is named
/// after, owned by and checked against the effective UID, and so is everything in it.
#[test]
#[ignore = "needs root"]
fn setuid_caller_uses_the_effective_uid() {
    if helper_main() {
        return;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "making a setuid binary needs root: run as root"
    );
    let bin_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(bin_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("helper");
    fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o4755)).unwrap();
    // A shared, sticky root like /var/tmp.
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let out = std::process::Command::new(&bin)
        .args(helper_args())
        .env("KILN_CACHE_HELPER", "get")
        .env("KILN_T_ROOT", root.path())
        .env("KILN_T_KEY", "5e701d")
        .env("KILN_T_HOLD_MS", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = root.path().join(".guestfs-65534");
    assert!(!root.path().join(".guestfs-0").exists());
    for p in [
        dir.clone(),
        dir.join("slot-5e701d"),
        dir.join("slot-5e701d/root"),
    ] {
        assert_eq!(fs::metadata(&p).unwrap().uid(), 65534, "{p:?}");
    }
}

/// A library caller hears whom it waits for through its callback, before blocking.
#[test]
fn waiting_for_another_builder_is_told_to_the_callback() {
    use std::sync::{Arc, Mutex, mpsc};
    let root = tempfile::tempdir().unwrap();
    let k = key("ab");
    let builder = Cache::open(root.path()).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let k2 = k.clone();
    let t = std::thread::spawn(move || {
        let p = builder
            .get_or_build(&k2, &no_gc(), |d| {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                fake_build(d, 0, None)
            })
            .unwrap();
        assert!(p.built());
    });
    started_rx.recv().unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    let waiter = Cache::open(root.path()).unwrap().on_wait(move |w| {
        h.lock().unwrap().push(w.to_string());
        let _ = go_tx.send(());
    });
    let p = waiter
        .get_or_build(&k, &no_gc(), |_| -> Result<BuildMeta, std::io::Error> {
            panic!("the waiter must reuse the other build")
        })
        .unwrap();
    t.join().unwrap();
    assert!(!p.built());
    assert_eq!(p.waited_for(), Some(std::process::id()));
    assert_eq!(
        *heard.lock().unwrap(),
        vec![format!(
            "waiting for PID {} building {k}",
            std::process::id()
        )]
    );
}

/// Allocated bytes of everything under `p` (files counted once per inode).
fn du(p: &std::path::Path, seen: &mut std::collections::HashSet<u64>) -> u64 {
    let md = fs::symlink_metadata(p).unwrap();
    let mut n = if seen.insert(md.ino()) {
        md.blocks() * 512
    } else {
        0
    };
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            n += du(&e.unwrap().path(), seen);
        }
    }
    n
}

/// gc reports what it freed whatever the policy: the bytes of the slots it removed,
/// of a dead build's leftovers and of a dead pin's own files, not 0.
#[test]
fn gc_reports_the_bytes_it_freed_in_every_mode() {
    for policy in [
        GcPolicy {
            keep: Some(1),
            max_size: None,
        },
        GcPolicy {
            keep: None,
            max_size: Some(1_200_000),
        },
        GcPolicy::debris_only(),
    ] {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path()).unwrap();
        let sized = |n: u8| {
            move |d: &std::path::Path| -> std::io::Result<BuildMeta> {
                for f in ["kernel", "initrd", "root"] {
                    fs::write(d.join(f), vec![n; 300 * 1024])?;
                }
                Ok(BuildMeta::default())
            }
        };
        drop(cache.get_or_build(&key("a1"), &no_gc(), sized(1)).unwrap());
        drop(cache.get_or_build(&key("a2"), &no_gc(), sized(2)).unwrap());
        set_last_use(&cache, "a1", 0);
        set_last_use(&cache, "a2", 1);
        // Leftovers of a build whose process died, and a pin of a dead process.
        let debris = cache.path().join("tmp-a3-999999-0");
        fs::create_dir(&debris).unwrap();
        fs::write(debris.join("root"), vec![3u8; 200 * 1024]).unwrap();
        let pin = cache.path().join("pin-999999-1-0-a2");
        fs::create_dir(&pin).unwrap();
        fs::write(pin.join("kernel"), vec![4u8; 100 * 1024]).unwrap();
        let mut seen = Default::default();
        let mut expected = du(&debris, &mut seen) + du(&pin, &mut seen);
        let slots_removed = policy != GcPolicy::debris_only();
        if slots_removed {
            expected += du(&cache.path().join("slot-a1"), &mut seen);
        }
        let r = cache.gc(&policy).unwrap();
        assert_eq!((r.dead_pins, r.debris), (1, 1), "{policy:?}: {r:?}");
        assert_eq!(
            r.removed.len(),
            usize::from(slots_removed),
            "{policy:?}: {r:?}"
        );
        assert_eq!(r.freed, expected, "{policy:?}: {r:?}");
        assert!(r.freed >= 300 * 1024, "{policy:?}: {r:?}");
        // What is left is measured too.
        assert!(r.bytes >= 3 * 300 * 1024, "{policy:?}: {r:?}");
    }
}
