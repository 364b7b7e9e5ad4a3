//! Host files hidden from the user building the appliance by a directory it cannot
//! search (a 0700 directory of another user): `lstat` and glob(3) see nothing there, as
//! if the files did not exist. [`Hidden`] tells such files from files that really do
//! not exist, so they are left out **with a warning naming the directory and what to
//! do**, as unreadable files are, instead of silently.
//!
//! Only consulted for paths that could not be seen, and never as root (which searches
//! every directory), so the common case costs nothing.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The first directory on the way to `p` (from `/` down, `p` itself excluded) that the
/// effective user may not search, if any. Symlinks are followed as path lookup does.
pub fn unsearchable_ancestor(p: &Path) -> Option<PathBuf> {
    let mut dir = PathBuf::from("/");
    let comps: Vec<Component<'_>> = p.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        match c {
            Component::RootDir => dir = PathBuf::from("/"),
            Component::Normal(n) => dir.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                dir.push(c.as_os_str())
            }
        }
        let r = rustix::fs::accessat(
            rustix::fs::CWD,
            &dir,
            rustix::fs::Access::EXEC_OK,
            rustix::fs::AtFlags::EACCESS,
        );
        if r == Err(rustix::io::Errno::ACCESS) {
            return Some(dir);
        }
    }
    None
}

/// The directories of `pattern` (a glob(3) pattern) before its first component with
/// a wildcard, plus one name: the path glob(3) must reach before it can match anything.
pub fn literal_prefix(pattern: &[u8]) -> PathBuf {
    let mut out = Vec::new();
    for (i, comp) in pattern.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
        if comp.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
            break;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Host paths left out because a directory hides them, grouped by that directory.
#[derive(Debug, Default)]
pub struct Hidden {
    by_dir: BTreeMap<PathBuf, Vec<PathBuf>>,
}

impl Hidden {
    /// Decide about a path whose `lstat` failed: `true` (and remembered) when a
    /// directory the user cannot search hides it, `false` when it just does not exist.
    pub fn note_missing(&mut self, path: &Path) -> bool {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            _ => return false,
        }
        self.note_pattern(path)
    }

    /// For a hostfiles pattern that matched nothing: `true` (and remembered) when a
    /// directory on the way to it is not searchable by the user.
    pub fn note_pattern(&mut self, pattern: &Path) -> bool {
        let reach = literal_prefix(pattern.as_os_str().as_bytes());
        match unsearchable_ancestor(&reach) {
            Some(dir) => {
                self.by_dir
                    .entry(dir)
                    .or_default()
                    .push(pattern.to_path_buf());
                true
            }
            None => false,
        }
    }

    /// How many paths were left out.
    pub fn len(&self) -> usize {
        self.by_dir.values().map(Vec::len).sum()
    }

    /// True when nothing was hidden.
    pub fn is_empty(&self) -> bool {
        self.by_dir.is_empty()
    }

    /// One warning per hiding directory: `(directory, message)`.
    pub fn warnings(&self) -> Vec<(PathBuf, String)> {
        self.by_dir
            .iter()
            .map(|(dir, paths)| {
                let what = match paths.len() {
                    1 => paths[0].display().to_string(),
                    n => format!("{} and {} more", paths[0].display(), n - 1),
                };
                let msg = format!(
                    "{}: directory not searchable by this user, so the host files below it \
                     cannot be copied: {what} (ignored: left out of the appliance); to \
                     include them, let this user search the directory (e.g. chmod o+x {}) \
                     or build as a user who can read them",
                    dir.display(),
                    dir.display()
                );
                (dir.clone(), msg)
            })
            .collect()
    }

    /// Log [`Hidden::warnings`] at `warn` level.
    pub fn warn(&self) {
        for (_, msg) in self.warnings() {
            tracing::warn!("{msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix(b"/a/b/c"), Path::new("/a/b/c"));
        assert_eq!(literal_prefix(b"/a/b*/c/d"), Path::new("/a/b*"));
        assert_eq!(literal_prefix(b"/a/[x]/c"), Path::new("/a/[x]"));
        assert_eq!(literal_prefix(b"/*"), Path::new("/*"));
    }

    #[test]
    fn searchable_paths_and_missing_files_are_not_hidden() {
        let t = tempfile::tempdir().unwrap();
        let mut h = Hidden::default();
        assert_eq!(unsearchable_ancestor(&t.path().join("x/y")), None);
        assert!(!h.note_missing(&t.path().join("gone")));
        assert!(h.is_empty());
    }
}
