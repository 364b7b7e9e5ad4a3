//! Property tests of the size grammar: any text gives a size or an error naming the
//! text (never a panic), valid sizes read back as the number they spell, and supermin's
//! grammar is a subset of kiln's with the same meaning. A few thousand cases each;
//! `PROPTEST_CASES=N` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

/// Text made mostly of the grammar's own characters, so that near-misses are common.
fn sizeish() -> impl Strategy<Value = String> {
    "[ \t\n0-9.bBkKmMgGtTiIx-]{0,24}"
}

fn unit() -> impl Strategy<Value = (&'static str, u64)> {
    prop::sample::select(vec![
        ("", 1u64),
        ("b", 1),
        ("B", 1),
        ("K", 1 << 10),
        ("k", 1 << 10),
        ("KiB", 1 << 10),
        ("KB", 1 << 10),
        ("M", 1 << 20),
        ("m", 1 << 20),
        ("MiB", 1 << 20),
        ("G", 1 << 30),
        ("g", 1 << 30),
        ("GB", 1 << 30),
        ("T", 1 << 40),
        ("tiB", 1 << 40),
    ])
}

fn check_error(s: &str, e: &crate::size::SizeError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.input(), s);
    prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Arbitrary text: a size, or an error that quotes the text.
    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        if let Err(e) = crate::size::parse(&s) {
            check_error(&s, &e)?;
        }
        if let Err(e) = crate::size::parse_supermin(&s) {
            check_error(&s, &e)?;
        }
    }

    /// Near-misses of the grammar: same, and whatever supermin's grammar takes, kiln's
    /// takes with the same value.
    #[test]
    fn supermin_grammar_is_a_subset_with_the_same_meaning(s in sizeish()) {
        match crate::size::parse_supermin(&s) {
            Ok(v) => prop_assert_eq!(crate::size::parse(&s), Ok(v)),
            Err(e) => check_error(&s, &e)?,
        }
        if let Err(e) = crate::size::parse(&s) {
            check_error(&s, &e)?;
        }
    }

    /// Whole numbers with any unit read back exactly; overflow is an error, not a wrap.
    #[test]
    fn whole_sizes_round_trip(n in prop_oneof![any::<u64>(), 0..100_000u64], (u, mult) in unit(), ws in "[ \t\n]{0,2}") {
        let s = format!("{ws}{n}{u}{ws}");
        match n.checked_mul(mult) {
            Some(v) => prop_assert_eq!(crate::size::parse(&s), Ok(v)),
            None => prop_assert!(crate::size::parse(&s).is_err()),
        }
    }

    /// supermin's own forms (suffix b, K, M or G) round-trip in its grammar.
    #[test]
    fn supermin_sizes_round_trip(n in 0..(1u64 << 33), i in 0..4usize) {
        let (u, mult) = [("b", 1u64), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)][i];
        let s = format!("{n}{u}");
        prop_assert_eq!(crate::size::parse_supermin(&s), Ok(n * mult));
        prop_assert!(crate::size::parse_supermin(&n.to_string()).is_err());
    }

    /// Fractions are truncated to whole bytes: between the whole part and the next
    /// unit, and a `.0` changes nothing.
    #[test]
    fn fractions_truncate(int in 0..1_000_000u64, frac in "[0-9]{1,6}", (u, mult) in unit()) {
        let v = crate::size::parse(&format!("{int}.{frac}{u}")).unwrap();
        prop_assert!(v >= int * mult && v <= (int + 1) * mult, "{} {}", v, int * mult);
        prop_assert_eq!(crate::size::parse(&format!("{int}.0{u}")), Ok(int * mult));
        prop_assert_eq!(crate::size::parse(&format!("{int}.{u}")), Ok(int * mult));
    }
}
