//! Property tests of the `/proc/PID/stat` reader behind `--pin-to`: any text gives a
//! state and parent or `None`, never a panic; whatever the command name, the fields
//! after it read back. A few thousand cases each; `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::stat_state_and_ppid;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_stat_text_never_panics(text in prop_oneof![any::<String>(), "[0-9 ()SZRX]{0,40}"]) {
        let _ = stat_state_and_ppid(&text);
    }

    #[test]
    fn state_and_parent_follow_any_command_name(
        pid in any::<u32>(),
        comm in any::<String>(),
        state in prop::sample::select(&['R', 'S', 'D', 'Z', 'I'][..]),
        ppid in any::<u32>(),
    ) {
        let line = format!("{pid} ({comm}) {state} {ppid} 5 6 7\n");
        prop_assert_eq!(stat_state_and_ppid(&line), Some((state, ppid)));
    }
}
