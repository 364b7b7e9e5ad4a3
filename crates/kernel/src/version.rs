//! supermin's kernel version order (supermin 5, `compare_version` in its `src/utils.ml`), used to pick the newest
//! kernel: a version is cut into runs of digits, runs of letters and single other
//! characters, compared run by run.

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq)]
enum Tok<'a> {
    Str(&'a [u8]),
    Num(u64),
    Char(u8),
}

impl Tok<'_> {
    // supermin's order at one position: String < Number < Char.
    fn rank(&self) -> u8 {
        match self {
            Tok::Str(_) => 0,
            Tok::Num(_) => 1,
            Tok::Char(_) => 2,
        }
    }
}

fn tokens(s: &str) -> Vec<Tok<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            match s[start..i].parse::<u64>() {
                Ok(n) if n < (1u64 << 62) => out.push(Tok::Num(n)),
                // OCaml int overflow: the run becomes a string.
                _ => out.push(Tok::Str(&b[start..i])),
            }
        } else if b[i].is_ascii_alphabetic() {
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Tok::Str(&b[start..i]));
        } else {
            out.push(Tok::Char(b[i]));
            i += 1;
        }
    }
    out
}

/// supermin's version comparison (supermin 5): tokens compared left to right, numbers
/// numerically, letter runs bytewise, String < Number < Char at one position; a strict
/// prefix is smaller.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(tb.iter()) {
        let o = match (x, y) {
            (Tok::Num(m), Tok::Num(n)) => m.cmp(n),
            (Tok::Str(m), Tok::Str(n)) => m.cmp(n),
            (Tok::Char(m), Tok::Char(n)) => m.cmp(n),
            _ => x.rank().cmp(&y.rank()),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ta.len().cmp(&tb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supermin_version_order() {
        use Ordering::*;
        assert_eq!(compare_versions("6.1.0-10", "6.1.0-9"), Greater);
        assert_eq!(compare_versions("6.1.0-rc1", "6.1.0-1"), Less);
        assert_eq!(compare_versions("6.1.0", "6.1.0-1"), Less);
        assert_eq!(compare_versions("6.1.0-56-amd64", "6.1.0-56-amd64"), Equal);
        // Char ranks above Number: "5.10-" vs "5.10a"? String < Number < Char.
        assert_eq!(compare_versions("1a", "1.0"), Less);
        assert_eq!(compare_versions("1.0", "10"), Less);
        assert_eq!(compare_versions("1-0", "1a"), Greater);
        assert_eq!(compare_versions("B", "a"), Less);
        let mut v = vec![
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-5.10.0-28-amd64",
            "vmlinuz-6.1.0-rc7-amd64",
        ];
        v.sort_by(|a, b| compare_versions(b, a));
        assert_eq!(
            v,
            [
                "vmlinuz-6.1.0-10-amd64",
                "vmlinuz-6.1.0-9-amd64",
                "vmlinuz-6.1.0-rc7-amd64",
                "vmlinuz-5.10.0-28-amd64"
            ]
        );
    }
}
