//! An output never destroys an input: before any work, every path a build will write
//! (`-o`, `--tar`, the front end's `-o`) is compared with every path it reads (each
//! INPUT — a supermin.d or a single file such as a tarball —, the sysroot, and the
//! directory each hostfiles pattern reads below), and a build whose output *is*,
//! *contains* or *lies inside* an input is refused ([`OverlapError`] names both).
//!
//! Paths are compared resolved (symlinks and `..` followed as the kernel follows them;
//! an output that does not exist yet is resolved through its deepest existing parent)
//! and by device and inode, so a symlink, a `..`, a hard link or a bind mount cannot
//! hide an input. One exception: nothing can lie outside the whole host filesystem, so
//! "lies inside" is not checked for an input that is the host's `/` (the default
//! sysroot, a hostfiles pattern such as `/*`); it *is* checked for any other sysroot.
//!
//! Invariant: [`check`] only reads metadata (and the hostfiles lists); it never
//! creates, opens for writing or removes anything.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use kiln_inputs::InputKind;
use kiln_packages::Sysroot;

/// A path a build reads or writes, and what it is to the user (for the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub path: PathBuf,
    /// How the message names it: `the output`, `the input`, `the sysroot`, …
    pub what: String,
}

impl Named {
    pub fn new(path: impl Into<PathBuf>, what: impl Into<String>) -> Named {
        Named {
            path: path.into(),
            what: what.into(),
        }
    }
}

/// How an output overlaps an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The output is the input (the same path, or the same file or directory reached
    /// another way).
    Same,
    /// The output is a directory the input lies in: replacing it removes the input.
    Contains,
    /// The output lies inside the input: the build writes into what it reads.
    Inside,
}

/// A refused output; the message names the output, the input and how they overlap.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to write {output_what} {}: it {} {input_what} {}{}; write it elsewhere",
    output.display(),
    match relation {
        Relation::Same => "is",
        Relation::Contains => "contains",
        Relation::Inside => "lies inside",
    },
    input.display(),
    if *by_identity { " (the same directory or file reached another way: a link or a bind mount)" } else { "" }
)]
pub struct OverlapError {
    pub output: PathBuf,
    pub output_what: String,
    pub input: PathBuf,
    pub input_what: String,
    pub relation: Relation,
    /// Found by device and inode, not by the resolved paths.
    pub by_identity: bool,
}

/// Refuse the first output that is, contains or lies inside an input (see the module
/// doc). For one output the most telling overlap is reported: "is" before "contains"
/// before "lies inside", then the first input in order.
pub fn check(outputs: &[Named], inputs: &[Named]) -> Result<(), OverlapError> {
    let root = Place::of(Path::new("/"));
    let ins: Vec<(&Named, Place)> = inputs.iter().map(|i| (i, Place::of(&i.path))).collect();
    for o in outputs {
        let op = Place::of(&o.path);
        let mut found: Option<(&Named, Relation, bool)> = None;
        for (i, ip) in &ins {
            let whole_host = ip.resolved == root.resolved || (ip.id.is_some() && ip.id == root.id);
            if let Some((relation, by_identity)) = relation_of(&op, ip, !whole_host)
                && found.is_none_or(|(_, r, _)| rank(relation) < rank(r))
            {
                found = Some((i, relation, by_identity));
            }
        }
        if let Some((i, relation, by_identity)) = found {
            return Err(OverlapError {
                output: o.path.clone(),
                output_what: o.what.clone(),
                input: i.path.clone(),
                input_what: i.what.clone(),
                relation,
                by_identity,
            });
        }
    }
    Ok(())
}

fn rank(r: Relation) -> u8 {
    match r {
        Relation::Same => 0,
        Relation::Contains => 1,
        Relation::Inside => 2,
    }
}

/// How `output` overlaps `input`, if it does; the flag tells whether device and inode
/// (not the resolved paths) showed it. "Inside" is reported for every input here.
pub fn relation(output: &Path, input: &Path) -> Option<(Relation, bool)> {
    relation_of(&Place::of(output), &Place::of(input), true)
}

fn relation_of(o: &Place, i: &Place, inside: bool) -> Option<(Relation, bool)> {
    if o.resolved == i.resolved {
        return Some((Relation::Same, false));
    }
    if o.id.is_some() && o.id == i.id {
        return Some((Relation::Same, true));
    }
    if i.resolved.starts_with(&o.resolved) {
        return Some((Relation::Contains, false));
    }
    if let Some(id) = o.id
        && i.ancestors.contains(&id)
    {
        return Some((Relation::Contains, true));
    }
    if !inside {
        return None;
    }
    if o.resolved.starts_with(&i.resolved) {
        return Some((Relation::Inside, false));
    }
    if let Some(id) = i.id
        && o.ancestors.contains(&id)
    {
        return Some((Relation::Inside, true));
    }
    None
}

/// Where a path is: resolved, its own device and inode if it exists, and those of the
/// existing directories above it (nearest first).
struct Place {
    resolved: PathBuf,
    id: Option<(u64, u64)>,
    ancestors: Vec<(u64, u64)>,
}

impl Place {
    fn of(p: &Path) -> Place {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let comps: Vec<Component> = abs.components().collect();
        // The longest prefix the kernel resolves; the rest (not there yet) is appended
        // as written, `..` taken lexically.
        let mut n = comps.len();
        let base = loop {
            let prefix: PathBuf = comps[..n].iter().collect();
            if let Ok(c) = fs::canonicalize(&prefix) {
                break c;
            }
            if n <= 1 {
                break PathBuf::from("/");
            }
            n -= 1;
        };
        let exists = n == comps.len();
        let mut resolved = base.clone();
        for c in &comps[n..] {
            match c {
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(x) => resolved.push(x),
                _ => {}
            }
        }
        let id_of = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let id = if exists { id_of(&base) } else { None };
        let mut ancestors = Vec::new();
        let mut up = if exists {
            base.parent().map(Path::to_path_buf)
        } else {
            Some(base)
        };
        while let Some(d) = up {
            ancestors.extend(id_of(&d));
            up = d.parent().map(Path::to_path_buf);
        }
        Place {
            resolved,
            id,
            ancestors,
        }
    }
}

/// Everything a build from `inputs` below `sysroot` reads, as [`check`] takes it: each
/// INPUT and the files of each supermin.d, the sysroot, and for each hostfiles pattern the path its leading components
/// without wildcards name (below the sysroot). Lists that cannot be read are skipped:
/// the build reports them.
pub fn build_inputs(inputs: &[PathBuf], sysroot: &Sysroot) -> Vec<Named> {
    let mut out: Vec<Named> = inputs
        .iter()
        .map(|i| {
            let what = if i.is_dir() {
                "the input supermin.d"
            } else {
                "the input"
            };
            Named::new(i.clone(), what)
        })
        .collect();
    out.push(Named::new(sysroot.root.clone(), "the sysroot"));
    for input in inputs {
        let Ok(files) = kiln_inputs::input_files(std::slice::from_ref(input)) else {
            continue;
        };
        for f in files {
            // A file of a supermin.d is an input too (a tarball may be hard-linked
            // elsewhere).
            if &f != input {
                out.push(Named::new(f.clone(), "the input"));
            }
            if !matches!(kiln_inputs::sniff(&f), Ok((_, InputKind::Hostfiles))) {
                continue;
            }
            let Some(text) = fs::read(&f)
                .ok()
                .and_then(|d| crate::key::hostfiles_text(&d).ok().flatten())
            else {
                continue;
            };
            for (n, line) in text.split(|&b| b == b'\n').enumerate() {
                if line.first() != Some(&b'/') {
                    continue;
                }
                let pattern = Path::new(OsStr::from_bytes(line));
                let fixed = literal_prefix(pattern);
                let on_host = if sysroot.is_host() {
                    fixed
                } else {
                    let inside = kiln_pattern::resolve_in(&sysroot.root, &fixed).unwrap_or(fixed);
                    sysroot.host_path(&inside)
                };
                out.push(Named::new(
                    on_host,
                    format!(
                        "hostfiles pattern {} ({}:{}), which reads",
                        pattern.display(),
                        f.display(),
                        n + 1
                    ),
                ));
            }
        }
    }
    out
}

/// The leading components of a glob pattern that hold no wildcard (`*`, `?`, `[`): the
/// file or directory every match lies in or is.
fn literal_prefix(pattern: &Path) -> PathBuf {
    pattern
        .components()
        .take_while(|c| {
            !c.as_os_str()
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b'*' | b'?' | b'['))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        let p = |s: &str| literal_prefix(Path::new(s));
        assert_eq!(p("/etc/hostname"), Path::new("/etc/hostname"));
        assert_eq!(p("/usr/share/augeas/*"), Path::new("/usr/share/augeas"));
        assert_eq!(p("/lib/x86_64*/ld-*.so"), Path::new("/lib"));
        assert_eq!(p("/*"), Path::new("/"));
    }
}
