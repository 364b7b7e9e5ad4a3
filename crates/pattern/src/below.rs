//! Paths and globs below a root directory, as if the root were `/`: what `--sysroot`
//! needs. Symlinks are followed *inside* the root (an absolute target starts again at
//! the root, `..` never climbs above it), so nothing outside the root is ever looked
//! at — unlike `glob(3)` on `ROOT/pattern`, which would follow `ROOT/lib -> /usr/lib`
//! into the machine's own `/usr/lib`.
//!
//! [`glob_in`] agrees with [`crate::glob`] (glob(3) with `GLOB_NOESCAPE`) on trees
//! without absolute symlinks: the same matches, sorted bytewise, dot files only for a
//! component starting with `.`, `.`/`..` listed by such a component, no brace or
//! tilde expansion, backslash literal.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution follows before giving up (Linux's limit).
const MAX_LINKS: usize = 40;

/// `path` (absolute inside `root`) as a path on this machine.
fn host(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// `path` with every symlink resolved inside `root`: the canonical path inside the
/// root (as `realpath(3)` with `root` as `/`). Every component must exist.
pub fn resolve_in(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut done: Vec<Vec<u8>> = Vec::new();
    // Components still to walk, in reverse (the next one last).
    let mut todo: Vec<Vec<u8>> = Vec::new();
    push_components(&mut todo, path);
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match &c[..] {
            b"." => {}
            b".." => {
                done.pop();
            }
            _ => {
                let mut cand: PathBuf = done.iter().map(|c| OsStr::from_bytes(c)).collect();
                cand.push(OsStr::from_bytes(&c));
                let on_host = host(root, &Path::new("/").join(&cand));
                let md = fs::symlink_metadata(&on_host)?;
                if md.file_type().is_symlink() {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let t = fs::read_link(&on_host)?;
                    if t.is_absolute() {
                        done.clear();
                    }
                    push_components(&mut todo, &t);
                } else {
                    if !todo.is_empty() && !md.is_dir() {
                        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                    }
                    done.push(c);
                }
            }
        }
    }
    let mut out = PathBuf::from("/");
    out.extend(done.iter().map(|c| OsStr::from_bytes(c)));
    Ok(out)
}

fn push_components(todo: &mut Vec<Vec<u8>>, p: &Path) {
    let cs: Vec<Vec<u8>> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes().to_vec()),
            Component::ParentDir => Some(b"..".to_vec()),
            Component::CurDir => Some(b".".to_vec()),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(cs.into_iter().rev());
}

/// `lstat` of `path` inside `root`: its parent resolved inside the root, the last
/// component not followed.
pub fn lstat_in(root: &Path, path: &Path) -> io::Result<fs::Metadata> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let dir = resolve_in(root, parent)?;
            fs::symlink_metadata(host(root, &dir.join(name)))
        }
        _ => fs::symlink_metadata(root),
    }
}

/// `stat` of `path` inside `root` (symlinks followed inside the root).
pub fn stat_in(root: &Path, path: &Path) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(host(root, &resolve_in(root, path)?))
}

fn has_meta(p: &[u8]) -> bool {
    p.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// `fnmatch(pattern, name, FNM_PERIOD | FNM_NOESCAPE)` on one path component.
fn component_matches(pattern: &CString, name: &[u8]) -> bool {
    let Ok(n) = CString::new(name) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated strings alive for the call.
    unsafe {
        libc::fnmatch(
            pattern.as_ptr(),
            n.as_ptr(),
            libc::FNM_PERIOD | libc::FNM_NOESCAPE,
        ) == 0
    }
}

/// glob(3) of the absolute `pattern` inside `root`: the matches as absolute paths
/// inside the root, sorted bytewise; no match gives an empty list; unreadable
/// directories are skipped. A relative pattern matches nothing.
pub fn glob_in(root: &Path, pattern: &OsStr) -> Vec<PathBuf> {
    let bytes = pattern.as_bytes();
    if !bytes.starts_with(b"/") || bytes.contains(&0) {
        return Vec::new();
    }
    let comps: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut cands: Vec<PathBuf> = vec![PathBuf::from("/")];
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        if !has_meta(c) {
            for cand in cands {
                next.push(cand.join(OsStr::from_bytes(c)));
            }
        } else {
            let Ok(pat) = CString::new(*c) else {
                return Vec::new();
            };
            for cand in cands {
                let Ok(dir) = resolve_in(root, &cand) else {
                    continue;
                };
                let Ok(rd) = fs::read_dir(host(root, &dir)) else {
                    continue;
                };
                let mut names: Vec<Vec<u8>> = rd
                    .filter_map(|e| e.ok().map(|e| e.file_name().as_bytes().to_vec()))
                    .collect();
                if c.starts_with(b".") {
                    names.push(b".".to_vec());
                    names.push(b"..".to_vec());
                }
                for n in names {
                    if component_matches(&pat, &n) {
                        next.push(cand.join(OsStr::from_bytes(&n)));
                    }
                }
            }
        }
        // Below a component, only directories go on (glob(3)'s GLOB_ONLYDIR walk).
        if !last {
            next.retain(|p| stat_in(root, p).is_ok_and(|m| m.is_dir()));
        }
        cands = next;
    }
    if comps.is_empty() {
        return vec![PathBuf::from("/")];
    }
    let mut out: Vec<PathBuf> = cands
        .into_iter()
        .filter(|p| lstat_in(root, p).is_ok())
        .collect();
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in [
            "a.txt",
            ".hidden",
            "a*b",
            "ax",
            "bx",
            "{a,b}x",
            "b/c.ko",
            "b/.d.ko",
            "c/f.ko",
            "usr/lib/x.so",
            "usr/lib/mod/y.ko",
        ] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        symlink("b", r.join("link")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("../../c", r.join("usr/lib/up")).unwrap();
        t
    }

    #[test]
    fn agrees_with_glob3_on_a_tree_without_absolute_links() {
        let t = tree();
        let r = t.path();
        for pat in [
            "/*",
            "/.h*",
            "/.*",
            "/*/*.ko",
            "/b/.*.ko",
            "/{a,b}x",
            "/a\\*b",
            "/**/*.ko",
            "/nothing*",
            "/lib/*",
            "/lib/*/*.ko",
            "/lib/up/*",
            "/a.txt",
            "/missing",
            "/[ab]x",
            "/b/c.ko/*",
            "/usr/../a?txt",
        ] {
            let ours = glob_in(r, OsStr::new(pat));
            let theirs: Vec<PathBuf> = crate::glob(r.join(&pat[1..]).as_os_str())
                .unwrap()
                .into_iter()
                .map(|p| Path::new("/").join(p.strip_prefix(r).unwrap()))
                .collect();
            assert_eq!(ours, theirs, "{pat}");
        }
    }

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let t = tree();
        let r = t.path();
        // An absolute link that glob(3) on ROOT/… would follow into the machine's /.
        symlink("/usr/lib", r.join("lib64")).unwrap();
        symlink("/etc", r.join("hostetc")).unwrap();
        assert_eq!(
            glob_in(r, OsStr::new("/lib64/*.so")),
            [PathBuf::from("/lib64/x.so")]
        );
        assert!(glob_in(r, OsStr::new("/hostetc/*")).is_empty());
        assert_eq!(
            resolve_in(r, Path::new("/lib64/mod")).unwrap(),
            Path::new("/usr/lib/mod")
        );
        assert_eq!(
            resolve_in(r, Path::new("/lib/up")).unwrap(),
            Path::new("/c")
        );
        // `..` never climbs above the root.
        assert_eq!(
            resolve_in(r, Path::new("/../../b")).unwrap(),
            Path::new("/b")
        );
        assert!(resolve_in(r, Path::new("/hostetc/passwd")).is_err());
        assert!(stat_in(r, Path::new("/lib64")).unwrap().is_dir());
        assert!(
            lstat_in(r, Path::new("/lib64"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in(r, Path::new("/loop")).is_err());
    }
}
