//! Many processes and threads using one cache at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use kiln_cache::{Cache, GcPolicy, GetOptions};

/// 16 processes want the same missing appliance at once: one builds, 15 wait for it
/// (naming the builder) and all get the same triple.
#[test]
fn sixteen_processes_cause_exactly_one_build() {
    if helper_main() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("builds.log");
    let children: Vec<_> = (0..16)
        .map(|_| {
            spawn_helper(
                "get",
                root.path(),
                "c0ffee",
                &[
                    ("KILN_T_BUILD_MS", "600".into()),
                    ("KILN_T_LOG", log.display().to_string()),
                ],
            )
        })
        .collect();
    let results: Vec<_> = children.into_iter().map(helper_result).collect();
    let builds = fs::read_to_string(&log).unwrap();
    assert_eq!(builds.lines().count(), 1, "builds: {builds}");
    let builder_pid = builds.split(' ').next().unwrap().to_owned();
    let ids: HashSet<String> = results.iter().map(|r| get(r, "id")).collect();
    assert_eq!(ids.len(), 1, "all 16 got the same triple: {ids:?}");
    let built: Vec<_> = results
        .iter()
        .filter(|r| get(r, "built") == "true")
        .collect();
    assert_eq!(built.len(), 1);
    assert_eq!(get(built[0], "pid"), builder_pid);
    // Those that found the build running waited for its builder, by PID.
    for r in &results {
        let w = get(r, "waited");
        assert!(
            w == "-" || w == builder_pid,
            "waited for {w}, builder {builder_pid}"
        );
    }
    assert!(results.iter().any(|r| get(r, "waited") == builder_pid));
    let cache = Cache::open(root.path()).unwrap();
    assert_eq!(cache.list().unwrap().len(), 1);
}

/// Forced rebuilds in a loop and an aggressive gc, while 32 readers pin and check that
/// kernel, initrd, root and the recorded root UUID all come from one build, and that
/// pins they still hold keep their files.
#[test]
fn stress_rebuilds_and_gc_never_mix_a_triple_or_lose_a_pin() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let k = key("5e5e");
    drop(
        cache
            .get_or_build(&k, &GetOptions::default(), |d| fake_build(d, 0, None))
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilds = Arc::new(AtomicUsize::new(0));
    let pins = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();

    let mut threads = Vec::new();
    {
        let (cache, k, stop, rebuilds) = (cache.clone(), k.clone(), stop.clone(), rebuilds.clone());
        threads.push(std::thread::spawn(move || {
            let force = GetOptions {
                force_rebuild: true,
                gc: None,
                ..GetOptions::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let p = cache
                    .get_or_build(&k, &force, |d| fake_build(d, 2, None))
                    .unwrap();
                verify(&p);
                rebuilds.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (cache, stop) = (cache.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let keep0 = GcPolicy {
                keep: Some(0),
                max_size: None,
            };
            while !stop.load(Ordering::Relaxed) {
                cache.gc(&keep0).unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    for _ in 0..32 {
        let (cache, k, stop, pins) = (cache.clone(), k.clone(), stop.clone(), pins.clone());
        threads.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let p = cache
                    .get_or_build(&k, &GetOptions::default(), |d| fake_build(d, 2, None))
                    .unwrap();
                let id = verify(&p);
                pins.fetch_add(1, Ordering::Relaxed);
                held.push((p, id));
                if held.len() > 3 {
                    // Still intact after whatever happened since it was pinned.
                    let (old, id) = held.remove(0);
                    assert_eq!(verify(&old), id);
                }
            }
            for (p, id) in held {
                assert_eq!(verify(&p), id);
            }
        }));
    }
    // A few seconds, and long enough for real contention even on a loaded machine.
    let enough = || rebuilds.load(Ordering::Relaxed) >= 5 && pins.load(Ordering::Relaxed) >= 64;
    while start.elapsed() < Duration::from_secs(3)
        || (!enough() && start.elapsed() < Duration::from_secs(60))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    // Join them all before failing, so the cache is not deleted under running threads.
    let results: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "a thread failed (see above)"
    );
    eprintln!(
        "{} rebuilds, {} pins",
        rebuilds.load(Ordering::Relaxed),
        pins.load(Ordering::Relaxed)
    );
    assert!(rebuilds.load(Ordering::Relaxed) >= 5);
    assert!(pins.load(Ordering::Relaxed) >= 32);
    // All handles dropped: gc leaves at most the slot and its lock.
    cache.gc(&GcPolicy::debris_only()).unwrap();
    let left = names(&cache);
    assert!(
        left.iter()
            .all(|n| n == &format!("slot-{k}") || n == &format!("lock-{k}")),
        "{left:?}"
    );
}

/// Readers in other processes pin while this process rebuilds: their pins survive.
#[test]
fn pins_of_other_processes_survive_rebuilds() {
    if helper_main() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let k = "abcabc";
    let mut children: Vec<_> = (0..4)
        .map(|_| spawn_helper("get", root.path(), k, &[("KILN_T_HOLD_TO_EOF", "1".into())]))
        .collect();
    let held: Vec<String> = children
        .iter_mut()
        .map(|c| get(&read_result(c), "pin"))
        .collect();
    let force = GetOptions {
        force_rebuild: true,
        ..GetOptions::default()
    };
    for _ in 0..5 {
        drop(
            cache
                .get_or_build(&key(k), &force, |d| fake_build(d, 0, None))
                .unwrap(),
        );
    }
    // The helpers verify their triple only at the start; check their pins now.
    for pin in &held {
        let d = cache.path().join(pin);
        let uuid = fs::read_to_string(d.join("kernel")).unwrap();
        verify_triple(
            &d.join("kernel"),
            &d.join("initrd"),
            &d.join("root"),
            uuid.lines().next(),
        );
    }
    for mut c in children {
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success());
    }
}
