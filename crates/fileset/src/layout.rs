//! The root's own layout: which top-level names of the installed system are symlinks
//! into `/usr` (merged-/usr: `/bin → usr/bin`, `/sbin`, `/lib`, `/lib64`, `/lib32`,
//! `/libx32`, …).
//!
//! On Debian 13, Fedora, Arch and openSUSE those links belong to a package nothing
//! depends on (`base-files`, `filesystem`), or to none, so no package closure reaches
//! them; yet every dynamic program names its interpreter through one
//! (`/lib64/ld-linux-x86-64.so.2`) and every script its shell (`/bin/sh`). The file set
//! stage therefore adds them whatever the closure ([`crate::resolve`]), and the cache
//! key hashes them, so turning a root merged changes the key.
//!
//! Invariants:
//! - only links whose target, resolved inside the root, is a directory strictly below
//!   `/usr` count: other top-level links (`/vmlinuz`, an ostree system's
//!   `/home → var/home`) name boot files or user data, not where programs are found;
//! - a root with no such link (the classic layout) has an empty layout, so its
//!   appliances and cache keys are what they were before layouts existed;
//! - the answer is sorted by name and looks at nothing outside the root.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_packages::Sysroot;

/// A top-level symlink of the root into `/usr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsrLink {
    /// Its path in the installed system (`/lib64`).
    pub path: PathBuf,
    /// Its target as written (`usr/lib64`).
    pub target: PathBuf,
}

/// The merged-/usr links of `sysroot`, sorted by path; empty when the root's top level
/// cannot be listed (the build then reports the root itself).
pub fn usr_links(sysroot: &Sysroot) -> Vec<UsrLink> {
    let Ok(dir) = fs::read_dir(&sysroot.root) else {
        return Vec::new();
    };
    let mut links: Vec<UsrLink> = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| {
            let path = Path::new("/").join(e.file_name());
            let target = fs::read_link(e.path()).ok()?;
            let resolved = kiln_pattern::resolve_in(&sysroot.root, &path).ok()?;
            let below_usr = resolved.starts_with("/usr") && resolved != Path::new("/usr");
            let is_dir = kiln_pattern::stat_in(&sysroot.root, &path).is_ok_and(|m| m.is_dir());
            (below_usr && is_dir).then_some(UsrLink { path, target })
        })
        .collect();
    links.sort_by(|a, b| a.path.cmp(&b.path));
    links
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_links_to_directories_below_usr_count() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["usr/bin", "usr/lib64", "usr/lib", "var/home", "boot", "etc"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("boot/vmlinuz-1"), b"k").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("/usr/lib64", r.join("lib64")).unwrap();
        // Relative to the root even when written absolute, and through another link.
        symlink("lib64/../lib", r.join("lib")).unwrap();
        symlink("usr/lib32", r.join("lib32")).unwrap(); // dangling
        symlink("var/home", r.join("home")).unwrap();
        symlink("boot/vmlinuz-1", r.join("vmlinuz")).unwrap();
        symlink("usr", r.join("u")).unwrap();
        symlink("etc", r.join("sbin")).unwrap();
        let got = usr_links(&Sysroot::new(r));
        let names: Vec<_> = got.iter().map(|l| l.path.display().to_string()).collect();
        assert_eq!(names, ["/bin", "/lib", "/lib64"]);
        assert_eq!(got[1].target, Path::new("lib64/../lib"));
        assert_eq!(got[2].target, Path::new("/usr/lib64"));
    }

    #[test]
    fn a_classic_root_has_no_layout() {
        let t = tempfile::tempdir().unwrap();
        for d in ["bin", "lib", "usr/bin"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        assert!(usr_links(&Sysroot::new(t.path())).is_empty());
        assert!(usr_links(&Sysroot::new(t.path().join("absent"))).is_empty());
    }
}
