//! Pattern matching with exactly supermin's semantics: safe wrappers around glibc's
//! `glob(3)` (hostfiles) and `fnmatch(3)` (excludefiles, kernel and module patterns),
//! with the flags supermin uses, so matching is bit-for-bit compatible.
//!
//! This crate owns every pattern match kiln makes; no other crate carries a matcher.
//! It is written by hand (a thin layer over libc) because the point is to agree with
//! the C library supermin calls, quirks included, which no Rust glob crate does: `*`
//! crosses `/` in [`fnmatch`], backslash is literal, results of [`glob`] are sorted
//! bytewise, dot files are matched only by a pattern component starting with `.`.
//!
//! [`glob_in`], [`resolve_in`], [`stat_in`] and [`lstat_in`] do the same below a root
//! directory (`--sysroot`), following symlinks inside it only.
//!
//! Invariants: patterns or names containing NUL bytes never match (they cannot name a
//! path); [`FnMatchSet::matches`] agrees with [`fnmatch`] on every input (its fast paths
//! are only shortcuts, tested against the libc call).
//!
//! ```
//! use kiln_pattern::{FnMatchSet, fnmatch};
//!
//! assert!(fnmatch(b"/usr/share/doc/*", b"/usr/share/doc/bash/README"));
//! let excludes = FnMatchSet::new([&b"/boot/*"[..], b"/usr/share/man/*"]);
//! assert!(excludes.matches(b"/boot/vmlinuz"));
//! assert!(!excludes.matches(b"/usr/bin/man"));
//! ```

mod below;
pub use below::{glob_in, lstat_in, resolve_in, stat_in};

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Why a pattern could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("pattern contains a NUL byte")]
    Nul,
    #[error("glob(3) ran out of memory")]
    NoSpace,
    #[error("glob(3) failed with code {0}")]
    Other(i32),
}

/// `fnmatch(pattern, name, FNM_NOESCAPE)`: `*` and `?` match `/` too, a leading `.` is not
/// special, backslash is literal. Patterns or names with NUL bytes never match.
pub fn fnmatch(pattern: &[u8], name: &[u8]) -> bool {
    let (Ok(p), Ok(n)) = (CString::new(pattern), CString::new(name)) else {
        return false;
    };
    // SAFETY: both arguments are valid NUL-terminated strings that outlive the call;
    // fnmatch only reads them.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), libc::FNM_NOESCAPE) == 0 }
}

/// A set of [`fnmatch`] patterns compiled to C strings once (excludefiles are matched
/// against thousands of paths).
///
/// The common shapes are matched without calling into libc: a pattern without `*`, `?`
/// or `[` is an exact comparison, and one whose only metacharacter is a final `*` is a
/// prefix test (with FNM_NOESCAPE and no FNM_PATHNAME, `*` matches any rest, `/`
/// included). Everything else goes to fnmatch(3), only for names that start with the
/// pattern's literal beginning.
#[derive(Debug, Clone, Default)]
pub struct FnMatchSet {
    patterns: Vec<Pat>,
}

#[derive(Debug, Clone)]
enum Pat {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    /// The literal text before the first metacharacter, and the whole pattern.
    Glob(Vec<u8>, CString),
}

fn has_meta(p: &[u8]) -> bool {
    p.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

impl FnMatchSet {
    /// Patterns containing NUL bytes are dropped (they could never match a path).
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a [u8]>) -> FnMatchSet {
        FnMatchSet {
            patterns: patterns
                .into_iter()
                .filter(|p| !p.contains(&0))
                .filter_map(|p| match p.strip_suffix(b"*") {
                    _ if !has_meta(p) => Some(Pat::Exact(p.to_vec())),
                    Some(pre) if !has_meta(pre) => Some(Pat::Prefix(pre.to_vec())),
                    _ => {
                        let lit = p.iter().position(|b| matches!(b, b'*' | b'?' | b'['));
                        let prefix = p[..lit.unwrap_or(p.len())].to_vec();
                        CString::new(p).ok().map(|c| Pat::Glob(prefix, c))
                    }
                })
                .collect(),
        }
    }

    /// True when any pattern matches `name` (as [`fnmatch`]).
    pub fn matches(&self, name: &[u8]) -> bool {
        let mut cname = None;
        self.patterns.iter().any(|p| match p {
            Pat::Exact(x) => name == x.as_slice(),
            Pat::Prefix(x) => name.starts_with(x),
            // A name without the pattern's literal start cannot match.
            Pat::Glob(prefix, _) if !name.starts_with(prefix) => false,
            Pat::Glob(_, g) => {
                let n = cname.get_or_insert_with(|| CString::new(name).ok());
                n.as_ref().is_some_and(|n| {
                    // SAFETY: both are valid NUL-terminated strings alive for the call.
                    unsafe { libc::fnmatch(g.as_ptr(), n.as_ptr(), libc::FNM_NOESCAPE) == 0 }
                })
            }
        })
    }
}

/// `glob(pattern, GLOB_NOESCAPE)`: matches sorted bytewise (the process never sets a
/// locale), dot files only when the pattern component starts with `.`, no brace or tilde
/// expansion; no match gives an empty list. Unreadable directories are skipped.
pub fn glob(pattern: &OsStr) -> Result<Vec<PathBuf>, PatternError> {
    let p = CString::new(pattern.as_bytes()).map_err(|_| PatternError::Nul)?;
    // SAFETY: glob_t is a plain C struct for which all-zero is the documented initial
    // state (glob fills it in).
    let mut g: libc::glob_t = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a valid C string; `g` is a valid glob_t; no error callback.
    let rc = unsafe { libc::glob(p.as_ptr(), libc::GLOB_NOESCAPE, None, &mut g) };
    let result = match rc {
        0 => {
            let mut out = Vec::with_capacity(g.gl_pathc);
            for i in 0..g.gl_pathc {
                // SAFETY: on success gl_pathv holds gl_pathc valid C strings (gl_offs is 0).
                let s = unsafe { CStr::from_ptr(*g.gl_pathv.add(i)) };
                out.push(PathBuf::from(OsStr::from_bytes(s.to_bytes())));
            }
            Ok(out)
        }
        libc::GLOB_NOMATCH => Ok(Vec::new()),
        libc::GLOB_NOSPACE => Err(PatternError::NoSpace),
        n => Err(PatternError::Other(n)),
    };
    // SAFETY: `g` was initialised by glob (also on failure, where globfree is allowed).
    unsafe { libc::globfree(&mut g) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    #[test]
    fn fnmatch_is_supermin_compatible() {
        // `*` crosses `/`; the matched directory itself is kept.
        assert!(fnmatch(b"/usr/share/doc/*", b"/usr/share/doc/bash/README"));
        assert!(!fnmatch(b"/usr/share/doc/*", b"/usr/share/doc"));
        // A leading dot is not special, `?` matches `/`.
        assert!(fnmatch(b"/etc/*", b"/etc/.pwd.lock"));
        assert!(fnmatch(b"/a?b", b"/a/b"));
        // Brackets work; backslash is literal (no escaping).
        assert!(fnmatch(b"/lib/[fm]*", b"/lib/modules/x"));
        assert!(!fnmatch(b"/lib/[!fm]*", b"/lib/modules/x"));
        assert!(fnmatch(b"/a\\*", b"/a\\b"));
        assert!(!fnmatch(b"/a\\*", b"/a*"));
        // Exact names, and NUL never matches.
        assert!(fnmatch(b"/usr/share/pkg", b"/usr/share/pkg"));
        assert!(!fnmatch(b"/usr/share/pkg", b"/usr/share/pkg/x"));
        assert!(!fnmatch(b"/a\0", b"/a"));
        let set = FnMatchSet::new([&b"/boot/*"[..], b"/usr/share/doc/*"]);
        assert!(set.matches(b"/usr/share/doc/x/y"));
        assert!(!set.matches(b"/usr/share/docs"));
        assert!(!FnMatchSet::default().matches(b"/x"));
    }

    #[test]
    fn fast_paths_agree_with_fnmatch() {
        let pats: &[&[u8]] = &[
            b"/usr/share/doc/*",
            b"/usr/share/pkg",
            b"/usr/*/doc",
            b"/lib/modules/*",
            b"/a?c*",
            b"/[ab]*",
            b"*",
            b"",
            b"/x\\*",
            b"/var/log/*.gz",
            b"/var/log/?tmp",
        ];
        let names: &[&[u8]] = &[
            b"/usr/share/doc",
            b"/usr/share/doc/",
            b"/usr/share/doc/a/b",
            b"/usr/share/pkg",
            b"/usr/share/pkg/x",
            b"/usr/x/y/doc",
            b"/lib/modules",
            b"/abc/d",
            b"/b",
            b"",
            b"/x\\y",
            b"/var/log/wtmp",
            b"/var/log/a/b.gz",
            b"/var/lo",
        ];
        for p in pats {
            let set = FnMatchSet::new([*p]);
            for n in names {
                assert_eq!(
                    set.matches(n),
                    fnmatch(p, n),
                    "{:?} {:?}",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(n)
                );
            }
        }
    }

    #[test]
    fn glob_follows_glob3_rules() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in [
            "a.txt", ".hidden", "a*b", "ax", "bx", "{a,b}x", "b/c.ko", "b/.d.ko", "c/f.ko",
        ] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        std::os::unix::fs::symlink("b", r.join("link")).unwrap();
        let g = |pat: &str| -> Vec<String> {
            glob(r.join(pat).as_os_str())
                .unwrap()
                .iter()
                .map(|p| p.to_str().unwrap()[r.as_os_str().len() + 1..].to_string())
                .collect()
        };
        // `*` hides dot files; results sorted bytewise; a directory is listed itself.
        assert_eq!(
            g("*"),
            ["a*b", "a.txt", "ax", "b", "bx", "c", "link", "{a,b}x"]
        );
        assert_eq!(g(".h*"), [".hidden"]);
        assert_eq!(g(".*"), [".", "..", ".hidden"]);
        // Symlinked directories are followed; dot files below need a dot pattern.
        assert_eq!(g("*/*.ko"), ["b/c.ko", "c/f.ko", "link/c.ko"]);
        assert_eq!(g("b/.*.ko"), ["b/.d.ko"]);
        // No brace expansion, no escaping, `**` is just `*`.
        assert_eq!(g("{a,b}x"), ["{a,b}x"]);
        assert_eq!(g("a\\*b"), Vec::<String>::new());
        assert_eq!(g("**/*.ko"), g("*/*.ko"));
        assert!(g("nothing*").is_empty());
        assert!(
            glob(Path::new("/nonexistent/kiln/*").as_os_str())
                .unwrap()
                .is_empty()
        );
    }
}
