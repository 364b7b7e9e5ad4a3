//! `kiln::guard`: an output that is, contains or lies inside an input is found whatever
//! way the output is spelled — the same path, a parent, a child, through a symlink,
//! through `..`, a hard link, a bind mount (as root) — and a sibling is not. Property
//! tests over these placements, against real directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::guard::{Named, Relation, check, relation};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Plain,
    /// `t/link` → `t/a/b`
    Symlink,
    /// `t/a/x/../b`
    DotDot,
    /// `t/bind`, a bind mount of `t/a/b` (root only)
    Bind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Same,
    Parent,
    Grandparent,
    /// Below the input (a directory input only); the flag: it exists already.
    Child(bool),
    /// Beside the input; the flag: it exists already.
    Sibling(bool),
    /// A hard link to the input (a file input only).
    HardLink,
}

/// `t/a/b/in` (a directory holding a file, or a file), and the ways to reach `t/a/b`.
struct Tree {
    // Fields drop in order: the bind mount is undone before the directory holding it
    // is removed (the other way round, the removal stops at the busy mount point and
    // leaves the tree behind).
    _bind: Option<Bind>,
    t: tempfile::TempDir,
    input: PathBuf,
}

/// A bind mount, undone when dropped.
struct Bind(PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn tree(dir_input: bool, bind: bool) -> Tree {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("a/b");
    fs::create_dir_all(&b).unwrap();
    fs::create_dir(t.path().join("a/x")).unwrap();
    let input = b.join("in");
    if dir_input {
        fs::create_dir(&input).unwrap();
        fs::write(input.join("packages"), "busybox\n").unwrap();
    } else {
        fs::write(&input, "busybox\n").unwrap();
    }
    std::os::unix::fs::symlink(&b, t.path().join("link")).unwrap();
    let bind = bind.then(|| {
        let m = t.path().join("bind");
        fs::create_dir(&m).unwrap();
        let st = Command::new("mount")
            .arg("--bind")
            .arg(&b)
            .arg(&m)
            .status()
            .unwrap();
        assert!(st.success(), "mount --bind (needs root)");
        Bind(m)
    });
    Tree {
        _bind: bind,
        t,
        input,
    }
}

impl Tree {
    /// `t/a/b` spelled through `via`.
    fn parent(&self, via: Via) -> PathBuf {
        let t = self.t.path();
        match via {
            Via::Plain => t.join("a/b"),
            Via::Symlink => t.join("link"),
            Via::DotDot => t.join("a/x/../b"),
            Via::Bind => t.join("bind"),
        }
    }

    /// The output for `p`, created when the placement says it exists.
    fn output(&self, via: Via, p: Placement) -> PathBuf {
        let base = self.parent(via);
        match p {
            Placement::Same => base.join("in"),
            Placement::Parent => base,
            Placement::Grandparent => base.join(".."),
            Placement::Child(exists) => {
                let c = base.join("in/out");
                if exists {
                    fs::create_dir(&c).unwrap();
                }
                c
            }
            Placement::Sibling(exists) => {
                let c = base.join("out");
                if exists {
                    fs::create_dir(&c).unwrap();
                }
                c
            }
            Placement::HardLink => {
                let h = self.t.path().join("hard");
                fs::hard_link(&self.input, &h).unwrap();
                h
            }
        }
    }
}

fn expected(p: Placement) -> Option<Relation> {
    match p {
        Placement::Same | Placement::HardLink => Some(Relation::Same),
        Placement::Parent | Placement::Grandparent => Some(Relation::Contains),
        Placement::Child(_) => Some(Relation::Inside),
        Placement::Sibling(_) => None,
    }
}

fn placement(dir_input: bool) -> impl Strategy<Value = Placement> {
    let common = prop_oneof![
        Just(Placement::Same),
        Just(Placement::Parent),
        Just(Placement::Grandparent),
        any::<bool>().prop_map(Placement::Sibling),
    ];
    if dir_input {
        prop_oneof![common, any::<bool>().prop_map(Placement::Child)].boxed()
    } else {
        prop_oneof![common, Just(Placement::HardLink)].boxed()
    }
}

fn case() -> impl Strategy<Value = (bool, Via, Placement)> {
    any::<bool>().prop_flat_map(|dir| {
        (
            Just(dir),
            prop_oneof![Just(Via::Plain), Just(Via::Symlink), Just(Via::DotDot)],
            placement(dir),
        )
    })
}

/// The relation and what `check` says agree with the placement.
fn assert_found(tree: &Tree, out: &Path, p: Placement) {
    let got = relation(out, &tree.input).map(|(r, _)| r);
    assert_eq!(got, expected(p), "output {}", out.display());
    let r = check(
        &[Named::new(out, "the output")],
        &[Named::new(&tree.input, "the input")],
    );
    match (r, expected(p)) {
        (Ok(()), None) => {}
        (Err(e), Some(rel)) => {
            assert_eq!(e.relation, rel);
            let m = e.to_string();
            assert!(
                m.contains(&out.display().to_string())
                    && m.contains(&tree.input.display().to_string()),
                "{m}"
            );
        }
        (r, want) => panic!("{}: {r:?}, wanted {want:?}", out.display()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_placement_is_found_and_a_sibling_is_not((dir, via, p) in case()) {
        let tree = tree(dir, false);
        let out = tree.output(via, p);
        assert_found(&tree, &out, p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A bind mount shows the same directory under another path: device and inode
    /// give it away.
    #[test]
    #[ignore = "needs root"]
    fn placements_through_a_bind_mount_are_found((dir, _via, p) in case()) {
        assert!(rustix::process::geteuid().is_root(), "run as root");
        let tree = tree(dir, true);
        let out = tree.output(Via::Bind, p);
        assert_found(&tree, &out, p);
    }
}

/// The host's `/` as sysroot contains every output, and that is no reason to refuse
/// one; another sysroot is.
#[test]
fn the_host_root_is_an_input_only_when_replaced() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let sysroot = |p: &Path| [Named::new(p, "the sysroot")];
    check(&[Named::new(&out, "the output")], &sysroot(Path::new("/"))).unwrap();
    let e = check(&[Named::new("/", "the output")], &sysroot(Path::new("/"))).unwrap_err();
    assert_eq!(e.relation, Relation::Same);
    let e = check(&[Named::new(&out, "the output")], &sysroot(t.path())).unwrap_err();
    assert_eq!(e.relation, Relation::Inside);
    assert!(
        e.to_string()
            .contains(&format!("lies inside the sysroot {}", t.path().display())),
        "{e}"
    );
}

/// The hostfiles of a supermin.d are inputs: what a pattern's fixed leading part names,
/// below the sysroot.
#[test]
fn hostfiles_patterns_name_what_they_read() {
    let t = tempfile::tempdir().unwrap();
    let sd = t.path().join("supermin.d");
    fs::create_dir(&sd).unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(sd.join("hostfiles"), format!("{}/*.conf\n", data.display())).unwrap();
    let inputs = kiln::guard::build_inputs(std::slice::from_ref(&sd), &kiln::Sysroot::default());
    let out = data.join("appliance");
    let e = check(&[Named::new(&out, "the output")], &inputs).unwrap_err();
    assert_eq!(e.relation, Relation::Inside);
    let m = e.to_string();
    assert!(
        m.contains(&format!("hostfiles pattern {}/*.conf", data.display()))
            && m.contains("hostfiles:1"),
        "{m}"
    );
    check(&[Named::new(t.path().join("out"), "the output")], &inputs).unwrap();
}
