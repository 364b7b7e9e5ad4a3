//! Slot keys: the checked name of one appliance in the cache.

use std::fmt;

use crate::CacheError;

/// The name of one appliance in the cache: 1 to 64 lowercase hex digits. Whoever makes
/// the key decides what goes into it; the cache only uses it to name slots, locks and pins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Check and wrap a key string.
    pub fn new(s: &str) -> Result<Key, CacheError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Key(s.to_owned()))
        } else {
            Err(CacheError::BadKey(s.to_owned()))
        }
    }

    /// A key from a digest: the hex form of its first 16 bytes (128 bits).
    pub fn from_digest(digest: &[u8]) -> Key {
        let mut s = String::with_capacity(32);
        for b in digest.iter().take(16) {
            s.push_str(&format!("{b:02x}"));
        }
        if s.is_empty() {
            s.push('0');
        }
        Key(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_hex() {
        assert!(Key::new("0123abcdef").is_ok());
        for bad in ["", "ABC", "../x", "a-b", &"a".repeat(65)] {
            assert!(Key::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Key::from_digest(&[0xab; 32]).as_str(), "ab".repeat(16));
    }
}
