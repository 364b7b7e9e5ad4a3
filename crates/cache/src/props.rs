//! Property tests of what the cache reads back from disk and from `/proc`: pin names,
//! slot records (`slot-meta`) and `/proc/PID/stat` lines, of arbitrary text, give a
//! value or `None`/an error, never a panic; well-formed ones read back as written. A
//! few thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;

use proptest::prelude::*;

use crate::Key;
use crate::cache::{META, PIN};
use crate::gc::parse_pin;
use crate::proc::{ProcessId, parse_stat};
use crate::slot::{SlotMeta, read_meta};

fn key() -> impl Strategy<Value = Key> {
    "[0-9a-f]{1,64}".prop_map(|s| Key::new(&s).unwrap())
}

/// `slot-meta` as `text`, read back for `key` (one directory per test thread: a
/// fresh one per case is most of the time of a case on a busy disk).
fn meta_of(text: &[u8], key: &Key) -> std::io::Result<SlotMeta> {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    }
    DIR.with(|t| {
        std::fs::write(t.path().join(META), text).unwrap();
        let dir = std::fs::File::open(t.path()).unwrap();
        read_meta(dir.as_fd(), key)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Pin names of any text: an owner and key, or `None`.
    #[test]
    fn arbitrary_pin_names_never_panic(
        name in prop_oneof![
            any::<String>(),
            "pin-[0-9a-f-]{0,80}",
            any::<String>().prop_map(|s| format!("{PIN}{s}")),
        ],
    ) {
        if let Some((_, key)) = parse_pin(&name) {
            prop_assert!(name.ends_with(&key.to_string()));
        }
    }

    /// Well-formed pin names read back.
    #[test]
    fn pin_names_round_trip(pid in any::<u32>(), start in any::<u64>(), n in any::<u64>(), key in key()) {
        let name = format!("{PIN}{pid}-{start}-{n}-{key}");
        prop_assert_eq!(parse_pin(&name), Some((ProcessId { pid, start }, key)));
    }

    /// `/proc/PID/stat` of any text: a start time or `None`.
    #[test]
    fn arbitrary_stat_lines_never_panic(text in prop_oneof![any::<String>(), "[0-9 ()SZRX]{0,80}"]) {
        let _ = parse_stat(&text);
    }

    /// Whatever the command name (spaces, parentheses, any text), the start time is
    /// field 22; zombies and dead processes have none.
    #[test]
    fn stat_lines_with_any_command_name(
        pid in any::<u32>(),
        comm in any::<String>(),
        state in prop::sample::select(&["R", "S", "D", "T", "Z", "X", "I"][..]),
        start in any::<u64>(),
    ) {
        let mid: String = (4..22).map(|i| format!(" {i}")).collect();
        let line = format!("{pid} ({comm}) {state}{mid} {start} 23 24\n");
        let want = (!matches!(state, "Z" | "X")).then_some(start);
        prop_assert_eq!(parse_stat(&line), want);
    }
}

proptest! {
    // A file written and read per case: disk-bound, fewer cases.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Slot records of any bytes: a record or an error, never a panic.
    #[test]
    fn arbitrary_slot_records_never_panic(
        key in key(),
        text in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (prop::collection::vec(prop_oneof![
                Just("kiln-slot 1".to_string()),
                Just("root_uuid -".to_string()),
                Just("root_uuid 01234567-89ab-cdef-0123-456789abcdef".to_string()),
                "root_uuid [0-9a-f-]{0,40}",
                "source [0-9a-g]{0,70}",
                "built [0-9-]{0,25}",
                any::<String>(),
            ], 0..8)).prop_map(|l| l.join("\n").into_bytes()),
        ],
    ) {
        let _ = meta_of(&text, &key);
    }

    /// Well-formed records read back; the record of another key is refused.
    #[test]
    fn slot_records_round_trip(
        key in key(),
        other in key(),
        uuid in prop::option::of("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        source in prop::option::of(key()),
        built in any::<u64>(),
    ) {
        let m = SlotMeta { root_uuid: uuid.clone(), source: source.clone(), built: if source.is_some() { built } else { 0 } };
        let text = m.to_text(&key);
        let got = meta_of(text.as_bytes(), &key).unwrap();
        prop_assert_eq!(got.root_uuid, uuid);
        prop_assert_eq!(got.source, source);
        prop_assert_eq!(got.built, m.built);
        if other != key {
            prop_assert!(meta_of(text.as_bytes(), &other).is_err());
        }
    }
}
