//! Stale slots: a newer build of the same source (supermin.d, options, package
//! database root) supersedes the older slots, which go as soon as no pin holds them;
//! gc's `keep` counts sources, not slots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use crate::common::*;
use kiln_cache::{Cache, GcPolicy, GetOptions, Key};

fn from(source: &str) -> GetOptions {
    GetOptions {
        gc: None,
        source: Some(Key::new(source).unwrap()),
        ..GetOptions::default()
    }
}

fn slots(cache: &Cache) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.path())
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
fn a_newer_build_of_a_source_supersedes_the_older_slots() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let build = |d: &Path| fake_build(d, 0, None);
    // Package database changes: same source, new keys.
    let p1 = cache.get_or_build(&key("a1"), &from("5a"), build).unwrap();
    let p2 = cache.get_or_build(&key("a2"), &from("5a"), build).unwrap();
    // Another source lives beside it.
    drop(cache.get_or_build(&key("b1"), &from("5b"), build).unwrap());
    assert_eq!(slots(&cache), ["a1", "a2", "b1"], "a1 is pinned");
    let k1 = p1.kernel().to_path_buf();
    verify(&p1);
    drop(p1);
    assert!(!k1.exists());
    assert_eq!(slots(&cache), ["a2", "b1"], "a1 went with its last pin");
    // Unpinned: the next build of the source removes it at once.
    drop(p2);
    assert_eq!(
        slots(&cache),
        ["a2", "b1"],
        "a2 is the newest of its source"
    );
    drop(cache.get_or_build(&key("a3"), &from("5a"), build).unwrap());
    assert_eq!(slots(&cache), ["a3", "b1"]);
    // A hit on the newest slot removes nothing.
    drop(cache.get_or_build(&key("a3"), &from("5a"), build).unwrap());
    assert_eq!(slots(&cache), ["a3", "b1"]);
}

/// A pin of another process keeps a superseded slot until that process has exited;
/// then gc removes it whatever the bounds.
#[test]
fn a_superseded_slot_pinned_by_another_process_goes_at_the_next_gc_after_it_exits() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pinned_for_sleeper = GetOptions {
        pin_to: Some(sleeper.id()),
        ..from("5c")
    };
    drop(
        cache
            .get_or_build(&key("c1"), &pinned_for_sleeper, |d| fake_build(d, 0, None))
            .unwrap(),
    );
    drop(
        cache
            .get_or_build(&key("c2"), &from("5c"), |d| fake_build(d, 0, None))
            .unwrap(),
    );
    let r = cache.gc(&GcPolicy::debris_only()).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(slots(&cache), ["c1", "c2"]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let r = cache.gc(&GcPolicy::debris_only()).unwrap();
    assert_eq!(r.removed, [key("c1")], "{r:?}");
    assert!(r.freed > 0, "{r:?}");
    assert_eq!(slots(&cache), ["c2"]);
}

/// `keep` counts sources: old slots of one source (pinned, so they stay) do not push
/// another source out.
#[test]
fn keep_counts_sources() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let build = |d: &Path| fake_build(d, 0, None);
    drop(cache.get_or_build(&key("d1"), &from("5d"), build).unwrap());
    let old = cache.get_or_build(&key("e1"), &from("5e"), build).unwrap();
    let _new = cache.get_or_build(&key("e2"), &from("5e"), build).unwrap();
    for (n, k) in ["d1", "e1", "e2"].iter().enumerate() {
        set_last_use(&cache, k, n as u64);
    }
    assert_eq!(slots(&cache), ["d1", "e1", "e2"]);
    let keep2 = GcPolicy {
        keep: Some(2),
        max_size: None,
    };
    let r = cache.gc(&keep2).unwrap();
    assert!(r.removed.is_empty(), "two sources, keep 2: {r:?}");
    assert_eq!(r.slots, 3);
    let keep1 = GcPolicy {
        keep: Some(1),
        max_size: None,
    };
    let r = cache.gc(&keep1).unwrap();
    assert_eq!(
        r.removed,
        [key("d1")],
        "the least recently used source goes: {r:?}"
    );
    drop(old);
    assert_eq!(slots(&cache), ["e2"]);
}
