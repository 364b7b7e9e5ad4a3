//! `kiln build -f chroot` against `supermin --build -f chroot` on libguestfs's real
//! supermin.d and the host's real dpkg database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SUPERMIN_D: &str = "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d";

/// One alternative of a dependency: a package name, and whether it carried an
/// architecture qualifier (`perl:any`).
struct Alt {
    name: String,
    qualified: bool,
}

/// The host's installed packages as the dependency rules see them (read from the dpkg
/// status file, all architectures of a name together).
struct Host {
    /// Installed name → its Depends and Pre-Depends, as groups of alternatives.
    depends: BTreeMap<String, Vec<Vec<Alt>>>,
    /// Virtual name → installed packages that provide it.
    providers: BTreeMap<String, BTreeSet<String>>,
}

fn parse_groups(field: &str) -> Vec<Vec<Alt>> {
    field
        .split(',')
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            g.split('|')
                .map(|a| {
                    let a = a.trim();
                    let token = a.split([' ', '(', '[', '<']).next().unwrap();
                    let (name, qualified) = match token.split_once(':') {
                        Some((n, _)) => (n, true),
                        None => (token, false),
                    };
                    Alt {
                        name: name.to_owned(),
                        qualified,
                    }
                })
                .collect()
        })
        .collect()
}

fn host() -> Host {
    let status = fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let mut h = Host {
        depends: BTreeMap::new(),
        providers: BTreeMap::new(),
    };
    for para in status.split("\n\n") {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut last = "";
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = fields.get_mut(last) {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                last = k;
                fields.insert(k, v.trim().to_owned());
            }
        }
        let installed = fields.get("Status").is_some_and(|s| {
            matches!(
                s.split_whitespace().nth(2),
                Some("installed" | "triggers-pending" | "triggers-awaited")
            )
        });
        let Some(name) = fields.get("Package").filter(|_| installed) else {
            continue;
        };
        let deps = h.depends.entry(name.clone()).or_default();
        for f in ["Depends", "Pre-Depends"] {
            deps.extend(parse_groups(fields.get(f).map_or("", String::as_str)));
        }
        for p in parse_groups(fields.get("Provides").map_or("", String::as_str)) {
            for a in p {
                h.providers.entry(a.name).or_default().insert(name.clone());
            }
        }
    }
    h
}

impl Host {
    /// kiln's rule (the dpkg crate's documentation): a group is satisfied by its first
    /// alternative that is installed, as a real package or else through `Provides`,
    /// qualifiers honoured. The alternative taken and the packages that can stand for
    /// it; none if nothing of the group is installed.
    fn kiln_choice<'a>(&self, group: &'a [Alt]) -> Option<(usize, &'a Alt, BTreeSet<String>)> {
        group.iter().enumerate().find_map(|(i, a)| {
            if self.depends.contains_key(&a.name) {
                Some((i, a, BTreeSet::from([a.name.clone()])))
            } else {
                let p = self.providers.get(&a.name).filter(|p| !p.is_empty())?;
                Some((i, a, p.clone()))
            }
        })
    }

    /// Why kiln includes `pkg` where supermin does not, by kiln's rule against
    /// supermin's (supermin reads only a group's first alternative, drops qualified
    /// names and never resolves `Provides`); None if no rule explains it.
    fn why_extra(
        &self,
        pkg: &str,
        kiln: &BTreeSet<String>,
        supermin: &BTreeSet<String>,
    ) -> Option<String> {
        for q in kiln {
            for group in self.depends.get(q).into_iter().flatten() {
                let Some((i, alt, takes)) = self.kiln_choice(group) else {
                    continue;
                };
                if !takes.contains(pkg) {
                    continue;
                }
                let why = if !supermin.contains(q) {
                    format!("dependency of {q}, itself added")
                } else if alt.qualified {
                    format!("`{}:…` of {q}: supermin drops qualified names", alt.name)
                } else if alt.name != pkg {
                    format!(
                        "provides `{}` for {q}: supermin never resolves Provides",
                        alt.name
                    )
                } else if i > 0 {
                    format!(
                        "alternative {} of {q}: supermin tries only the first",
                        i + 1
                    )
                } else {
                    // supermin reads this dependency the same way.
                    continue;
                };
                return Some(why);
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Info {
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    target: Vec<u8>,
}

fn walk(root: &Path) -> BTreeMap<PathBuf, Info> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in fs::read_dir(&d).unwrap() {
            let p = de.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                'f'
            } else {
                'o'
            };
            let target = if kind == 'l' {
                // supermin writes `..//x` for absolute targets; kiln `../x`.
                let t = fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec();
                let mut n: Vec<u8> = Vec::new();
                for b in t {
                    if !(b == b'/' && n.last() == Some(&b'/')) {
                        n.push(b);
                    }
                }
                n
            } else {
                Vec::new()
            };
            let rel = Path::new("/").join(p.strip_prefix(root).unwrap());
            out.insert(
                rel,
                Info {
                    kind,
                    perm: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                    target,
                },
            );
        }
    }
    out
}

/// Where a packaged host path lands in an appliance built from this host: its parent
/// canonicalised (merged /usr), its own name kept.
fn placed(p: &Path) -> Option<PathBuf> {
    let parent = fs::canonicalize(p.parent()?).ok()?;
    Some(parent.join(p.file_name()?))
}

fn package_paths(pkg: &str) -> BTreeSet<PathBuf> {
    let info = Path::new("/var/lib/dpkg/info");
    let list = fs::read(info.join(format!("{pkg}.list")))
        .or_else(|_| fs::read(info.join(format!("{pkg}:amd64.list"))))
        .unwrap_or_else(|e| panic!("{pkg}: {e}"));
    let mut out = BTreeSet::new();
    for l in list.split(|&b| b == b'\n').filter(|l| l.starts_with(b"/")) {
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(l));
        if let Some(q) = placed(&p) {
            for a in q.ancestors() {
                out.insert(a.to_path_buf());
            }
        }
    }
    out
}

/// Resolve `path` inside a walked tree: every symlink component followed (relative to
/// its directory, absolute ones from the tree's root), `..` clamped at `/`.
fn resolve_in(tree: &BTreeMap<PathBuf, Info>, path: &Path, hops: &mut u32) -> PathBuf {
    let mut cur = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                cur.pop();
            }
            std::path::Component::Normal(n) => {
                let next = cur.join(n);
                match tree.get(&next) {
                    Some(i) if i.kind == 'l' && *hops < 40 => {
                        *hops += 1;
                        let t = PathBuf::from(std::ffi::OsStr::from_bytes(&i.target));
                        cur = resolve_in(tree, &cur.join(t), hops);
                    }
                    _ => cur = next,
                }
            }
            std::path::Component::Prefix(_) => unreachable!(),
        }
    }
    cur
}

#[test]
fn chroot_matches_supermin_except_listed_improvements() {
    if !Path::new(SUPERMIN_D).is_dir() {
        panic!("{SUPERMIN_D} missing: run scripts/setup-host (libguestfs-tools)");
    }
    let t = tempfile::tempdir().unwrap();
    let sm = t.path().join("supermin");
    let kn = t.path().join("kiln");
    let st = Command::new("supermin")
        .args([
            "--build",
            "--include-packagelist",
            "-f",
            "chroot",
            SUPERMIN_D,
            "-o",
        ])
        .arg(&sm)
        .env("TMPDIR", t.path())
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "build",
            "--include-packagelist",
            "-f",
            "chroot",
            SUPERMIN_D,
            "-o",
        ])
        .arg(&kn)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Package sets: kiln's is supermin's plus what its better dependency rule adds.
    let pkgs = |dir: &Path| -> BTreeSet<String> {
        fs::read_to_string(dir.join("packagelist"))
            .unwrap()
            .lines()
            .map(|l| l.split('_').next().unwrap().to_string())
            .collect()
    };
    let (pa, pb) = (pkgs(&sm), pkgs(&kn));
    let missing: Vec<&String> = pa.difference(&pb).collect();
    assert!(
        missing.is_empty(),
        "packages supermin has and kiln lacks: {missing:?}"
    );
    // The packages kiln adds are those its dependency rule reaches and supermin's does
    // not: derived from this host's dpkg database, not listed for one host.
    let host = host();
    let extra: BTreeSet<&String> = pb.difference(&pa).collect();
    let mut unexplained = Vec::new();
    for p in &extra {
        match host.why_extra(p, &pb, &pa) {
            Some(why) => eprintln!("kiln adds {p}: {why}"),
            None => unexplained.push(p),
        }
    }
    assert!(
        unexplained.is_empty(),
        "packages kiln adds that no rule explains: {unexplained:?}"
    );
    // And kiln's set is closed under its rule: every dependency of every package in
    // it that the host can satisfy is satisfied inside it.
    let mut unmet = Vec::new();
    for q in &pb {
        for group in host.depends.get(q).into_iter().flatten() {
            if let Some((_, alt, takes)) = host.kiln_choice(group)
                && takes.is_disjoint(&pb)
            {
                unmet.push(format!("{q} → {}", alt.name));
            }
        }
    }
    assert!(unmet.is_empty(), "dependencies kiln left out: {unmet:?}");

    let mut a = walk(&sm);
    let mut b = walk(&kn);
    // Compared above; the files differ by the extra packages, and supermin's copy belongs
    // to the building user while kiln's is 0:0 like supermin's ext2 one.
    a.remove(Path::new("/packagelist"));
    b.remove(Path::new("/packagelist"));
    assert!(
        a.len() > 4000,
        "supermin chroot has only {} entries",
        a.len()
    );

    // Paths only in kiln: all from the extra packages (or their directories).
    let mut allowed = BTreeSet::new();
    for pkg in &extra {
        allowed.extend(package_paths(pkg));
    }
    let only_kiln: Vec<&PathBuf> = b.keys().filter(|p| !a.contains_key(*p)).collect();
    let unexplained: Vec<&&PathBuf> = only_kiln
        .iter()
        .filter(|p| !allowed.contains(**p))
        .collect();
    assert!(
        unexplained.is_empty(),
        "only in kiln, unexplained: {unexplained:#?}"
    );

    // Paths only in supermin: none.
    let only_supermin: Vec<&PathBuf> = a.keys().filter(|p| !b.contains_key(*p)).collect();
    assert!(
        only_supermin.is_empty(),
        "only in supermin: {only_supermin:#?}"
    );

    // Common paths: same type, permissions, owner, symlink target; files: same bytes and
    // mtime (directory and symlink times are not preserved by supermin's chroot).
    let mut diffs = Vec::new();
    let mut compared_bytes = 0u64;
    for (p, x) in &a {
        let y = &b[p];
        // supermin turns an absolute target relative using the depth of the name the
        // package lists (`/sbin/depmod`), kiln the depth where the link lands
        // (`/usr/sbin/depmod`). The texts differ; kiln's must lead where the host's
        // absolute target leads. supermin's sometimes leads elsewhere: `/lib/systemd/
        // system/rc.service -> /dev/null` becomes `/usr/dev/null` in its tree.
        let same_place = x.kind == 'l' && y.kind == 'l' && {
            let host_target = fs::read_link(p).unwrap();
            host_target.is_absolute()
                && resolve_in(&b, p, &mut 0) == resolve_in(&b, &host_target, &mut 0)
        };
        if (x.kind, x.perm, x.uid, x.gid) != (y.kind, y.perm, y.uid, y.gid)
            || (x.target != y.target && !same_place)
        {
            diffs.push(format!("{}: supermin {x:?} kiln {y:?}", p.display()));
            continue;
        }
        if x.kind == 'f' {
            if x.mtime != y.mtime {
                diffs.push(format!(
                    "{}: mtime supermin {} kiln {}",
                    p.display(),
                    x.mtime,
                    y.mtime
                ));
            }
            let rel = p.strip_prefix("/").unwrap();
            let (da, db) = (
                fs::read(sm.join(rel)).unwrap(),
                fs::read(kn.join(rel)).unwrap(),
            );
            compared_bytes += da.len() as u64;
            if da != db {
                diffs.push(format!("{}: contents differ", p.display()));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert!(
        compared_bytes > 100 << 20,
        "only {compared_bytes} bytes compared"
    );
}
