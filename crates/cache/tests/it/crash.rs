//! Builders, rebuilders and collectors killed with SIGKILL: no partial slot is ever
//! served, the next run succeeds and gc leaves no debris.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::common::*;
use kiln_cache::{Cache, GcPolicy, GetOptions};

/// Every published slot is complete and of one build.
fn check_slots(cache: &Cache) {
    for n in names(cache) {
        let Some(_) = n.strip_prefix("slot-") else {
            continue;
        };
        let d = cache.path().join(&n);
        let meta = fs::read_to_string(d.join("slot-meta")).unwrap();
        let uuid = meta
            .lines()
            .find_map(|l| l.strip_prefix("root_uuid "))
            .unwrap();
        verify_triple(
            &d.join("kernel"),
            &d.join("initrd"),
            &d.join("root"),
            Some(uuid),
        );
    }
}

/// After a crash: slots are whole, a locate works, and gc cleans up everything else.
fn recover(cache: &Cache, k: &str) {
    check_slots(cache);
    let p = cache
        .get_or_build(&key(k), &GetOptions::default(), |d| fake_build(d, 0, None))
        .unwrap();
    verify(&p);
    drop(p);
    cache.gc(&GcPolicy::debris_only()).unwrap();
    let left = names(cache);
    assert!(
        left.iter()
            .all(|n| n.starts_with("slot-") || n.starts_with("lock-")),
        "debris left: {left:?}"
    );
}

fn run_killed(root: &std::path::Path, mode: &str, k: &str, point: &str, force: bool) {
    let mut env = vec![("KILN_CACHE_CRASH_AT", point.to_owned())];
    if force {
        env.push(("KILN_T_FORCE", "1".into()));
    }
    let status = spawn_helper(mode, root, k, &env).wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "helper should die at {point}: {status:?}"
    );
}

#[test]
fn crash_at_each_step_of_build_publish_and_gc() {
    if helper_main() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    for (i, point) in [
        "after-build",
        "before-pin",
        "pin-partial",
        "before-publish",
        "after-publish",
    ]
    .iter()
    .enumerate()
    {
        let k = format!("a{i}");
        run_killed(root.path(), "get", &k, point, false);
        let published = cache.path().join(format!("slot-{k}")).exists();
        assert_eq!(published, *point == "after-publish", "{point}");
        recover(&cache, &k);
    }
    // A forced rebuild killed right after swapping in the new slot.
    drop(
        cache
            .get_or_build(&key("b0"), &GetOptions::default(), |d| {
                fake_build(d, 0, None)
            })
            .unwrap(),
    );
    run_killed(root.path(), "get", "b0", "after-exchange", true);
    recover(&cache, "b0");
    // A gc killed after moving a slot aside, before deleting it.
    drop(
        cache
            .get_or_build(&key("c0"), &GetOptions::default(), |d| {
                fake_build(d, 0, None)
            })
            .unwrap(),
    );
    run_killed(root.path(), "gc", "c0", "gc-after-rename", false);
    assert!(names(&cache).iter().any(|n| n.starts_with("trash-")));
    recover(&cache, "c0");
}

/// At least 20 builders (some of them forced rebuilds) killed at random moments.
#[test]
fn builders_killed_at_random_moments() {
    if helper_main() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let mut rng = Rng::new();
    let mut killed_mid_build = 0;
    for trial in 0..24 {
        // Fresh keys build; every third trial force-rebuilds the previous key.
        let force = trial % 3 == 2;
        let k = format!("d{}", if force { trial - 1 } else { trial });
        let mut env = vec![("KILN_T_BUILD_MS", "40".to_owned())];
        if force {
            env.push(("KILN_T_FORCE", "1".into()));
        }
        let mut child = spawn_helper("get", root.path(), &k, &env);
        // Start-up of the helper takes a few ms; the build 40 ms.
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.signal() == Some(9) {
            killed_mid_build += 1;
        }
        check_slots(&cache);
        if trial % 4 == 3 {
            recover(&cache, &k);
        }
    }
    eprintln!("{killed_mid_build} of 24 helpers were killed before finishing");
    assert!(
        killed_mid_build >= 6,
        "the kills should mostly land before the end"
    );
    recover(&cache, "d0");
}
