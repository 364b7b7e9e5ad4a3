//! Sizes on kiln's command line (`--size`, `--max-size`): one grammar, one parser, for
//! every command.
//!
//! # Grammar
//!
//! ```text
//! size   = number [unit]            surrounding whitespace is ignored
//! number = digits ["." digits]      or "." digits; fractions are truncated to bytes
//! unit   = "b" | "B"                bytes (also the meaning of no unit)
//!        | K | M | G | T ["iB" | "B"]   1024-based, either case: 4G, 4g, 4GiB, 4GB
//! ```
//!
//! This is supermin's `--size` (`^[.0-9]+[bKMG]$`) widened by what `kiln locate` and
//! `kiln gc` have always taken (a plain byte count, lower-case units, `T`, an `iB` or
//! `B` after the unit). The supermin front end, which must answer exactly as supermin
//! does, accepts only supermin's own subset: [`parse_supermin`].
//!
//! # Examples
//!
//! `4G` is 4 GiB, `1.5KiB` 1536 bytes, `10737418240` that many bytes; `4X` is an error.
//! supermin's grammar needs a suffix and takes only b, K, M, G: `512M` but not `4096`.
//! Sizes are shown as `1.5 KiB`. (The unit test `the_documented_examples_hold` checks
//! each of these.)

use std::fmt;

/// A size that does not follow the grammar (or overflows 64 bits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SizeError {
    input: String,
    supermin: bool,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.supermin {
            write!(
                f,
                "cannot parse size {:?}: use a number followed by b, K, M or G (for example 4G, 512M, 10737418240b)",
                self.input
            )
        } else {
            write!(
                f,
                "cannot parse size {:?}: use a number of bytes, optionally followed by K, M, G or T (for example 4G, 512M, 1.5GiB, 10737418240)",
                self.input
            )
        }
    }
}

// The property tests check every error names the text it was given.
#[cfg(test)]
impl SizeError {
    /// The text that was given.
    pub fn input(&self) -> &str {
        &self.input
    }
}

/// Parse a size in kiln's grammar (see the module docs).
pub fn parse(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError {
        input: s.to_owned(),
        supermin: false,
    };
    let t = s.trim();
    let (num, mult) = split_unit(t).ok_or_else(bad)?;
    value(num, mult).ok_or_else(bad)
}

/// Parse a size exactly as supermin's `--size` does: `^[.0-9]+[bKMG]$`, the suffix
/// required and case-sensitive, `K`/`M`/`G` 1024-based, fractions truncated.
pub fn parse_supermin(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError {
        input: s.to_owned(),
        supermin: true,
    };
    let mult = match s.as_bytes().last() {
        Some(b'b') => 1,
        Some(b'K') => 1 << 10,
        Some(b'M') => 1 << 20,
        Some(b'G') => 1 << 30,
        _ => return Err(bad()),
    };
    value(&s[..s.len() - 1], mult).ok_or_else(bad)
}

/// `(number, multiplier)` of a trimmed size; `None` for an unknown unit.
fn split_unit(t: &str) -> Option<(&str, u64)> {
    let unit_at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(unit_at);
    let mult = match unit {
        "" | "b" | "B" => 1,
        _ => {
            let mut chars = unit.chars();
            let m: u64 = match chars.next()?.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            if !matches!(chars.as_str(), "" | "iB" | "B") {
                return None;
            }
            m
        }
    };
    Some((num, mult))
}

/// `num` (digits with at most one `.`, at least one digit) times `mult`, truncated to
/// whole bytes; `None` if malformed or over `u64::MAX`.
fn value(num: &str, mult: u64) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return None;
    }
    if !num.contains('.') {
        return int.parse::<u64>().ok()?.checked_mul(mult);
    }
    let v: f64 = num.parse().ok()?;
    let bytes = v * mult as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A size for people: `123 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples_hold() {
        assert_eq!(parse("4G"), Ok(4 << 30));
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("10737418240"), Ok(10_737_418_240));
        assert!(parse("4X").is_err());
        assert_eq!(parse_supermin("512M"), Ok(512 << 20));
        assert!(parse_supermin("4096").is_err());
        assert_eq!(human(1536), "1.5 KiB");
    }

    #[test]
    fn supermins_sizes_mean_the_same_in_both_grammars() {
        for (s, v) in [
            ("4G", 4u64 << 30),
            ("512M", 512 << 20),
            ("10737418240b", 10_737_418_240),
            ("1.5K", 1536),
            ("0.1b", 0),
            (".5K", 512),
            ("1.G", 1 << 30),
        ] {
            assert_eq!(parse_supermin(s), Ok(v), "{s}");
            assert_eq!(parse(s), Ok(v), "{s}");
        }
    }

    #[test]
    fn supermin_grammar_is_strict() {
        for bad in [
            "4096", "10k", "1T", "", "G", "1.2.3G", "-1G", "1 G", ".G", " 4G", "4GiB",
        ] {
            assert!(parse_supermin(bad).is_err(), "{bad} should be rejected");
        }
        let e = parse_supermin("10k").unwrap_err();
        assert!(e.to_string().contains("\"10k\""), "{e}");
    }

    #[test]
    fn kiln_grammar_takes_what_locate_and_gc_took() {
        for (s, v) in [
            ("123", 123u64),
            ("4096", 4096),
            ("10k", 10 << 10),
            ("500m", 500 << 20),
            ("1.5KiB", 1536),
            ("2GB", 2 << 30),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            ("  4G\n", 4 << 30),
            ("7B", 7),
        ] {
            assert_eq!(parse(s), Ok(v), "{s}");
        }
        for bad in [
            "", "G", "4X", "-1", "-1G", "1 G", "1.2.3G", ".", ".G", "4Gb", "4GiBs", "1e3", "inf",
            "NaN", "4K4", "1tib",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(parse("18446744073709551616").is_err());
        assert!(parse("17179869184G").is_err());
        assert!(parse("99999999999999999999.5T").is_err());
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}

#[cfg(test)]
mod props;
