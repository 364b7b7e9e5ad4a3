use super::*;

fn dir(p: &str, perm: u32, uid: u32) -> Entry {
    let mut meta = Meta::new(perm);
    meta.uid = uid;
    Entry {
        path: p.into(),
        kind: Kind::Dir,
        meta,
    }
}
fn file(p: &str, b: &[u8]) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::File(Content::Bytes(b.into())),
        meta: Meta::new(0o644),
    }
}
fn link(p: &str, t: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::Symlink(t.as_bytes().to_vec()),
        meta: Meta::new(0o777),
    }
}
fn paths(s: &FileSet) -> Vec<&str> {
    s.entries()
        .iter()
        .map(|e| e.path.to_str().unwrap())
        .collect()
}

#[test]
fn set_order_is_path_order() {
    let mut v: Vec<PathBuf> = ["/a-b", "/a/b", "/a", "/", "/a/b/c", "/a.b", "/ab", "/a/a"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let mut w = v.clone();
    v.sort();
    w.sort_by(|a, b| set_order(a, b));
    assert_eq!(v, w);
}

#[test]
fn base_parents_are_created_and_later_members_win() {
    let mut b = SetBuilder::new();
    b.insert(file("/etc/a/x", b"1"), Source::Base).unwrap();
    b.insert(file("/etc/a/x", b"2"), Source::Base).unwrap();
    b.insert(dir("/etc", 0o700, 2952), Source::Base).unwrap();
    let s = b.finish().unwrap();
    assert_eq!(paths(&s), ["/", "/etc", "/etc/a", "/etc/a/x"]);
    assert_eq!(
        (s.entries()[1].meta.perm, s.entries()[1].meta.uid),
        (0o700, 2952)
    );
    assert_eq!(s.entries()[2].meta.perm, 0o755);
    assert_eq!(
        s.entries()[3].kind,
        Kind::File(Content::Bytes(b"2"[..].into()))
    );
}

#[test]
fn host_directories_take_over_metadata_and_paths_resolve_in_the_set() {
    let mut b = SetBuilder::new();
    b.insert(dir("/usr", 0o755, 2952), Source::Base).unwrap();
    b.insert(file("/usr/sbin/guestfsd", b"d"), Source::Base)
        .unwrap();
    b.insert(dir("/usr", 0o755, 0), Source::Host).unwrap();
    b.insert(dir("/usr/lib", 0o755, 0), Source::Host).unwrap();
    b.insert(link("/lib", "usr/lib"), Source::Host).unwrap();
    b.insert(link("/lib64", "/usr/lib/../lib64"), Source::Host)
        .unwrap();
    // Named through the symlink: lands in /usr/lib.
    assert_eq!(
        b.insert(dir("/lib/x86", 0o755, 0), Source::Host).unwrap(),
        Path::new("/usr/lib/x86")
    );
    assert_eq!(
        b.insert(file("/lib/x86/libc.so", b"c"), Source::Host)
            .unwrap(),
        Path::new("/usr/lib/x86/libc.so")
    );
    // lib64's target does not exist: no parent.
    assert!(matches!(
        b.insert(file("/lib64/ld.so", b""), Source::Host),
        Err(PlaceError::NoParent { .. })
    ));
    // A host file replaces a base file.
    b.insert(file("/usr/sbin/guestfsd", b"host"), Source::Host)
        .unwrap();
    let s = b.finish().unwrap();
    assert_eq!(
        paths(&s),
        [
            "/",
            "/lib",
            "/lib64",
            "/usr",
            "/usr/lib",
            "/usr/lib/x86",
            "/usr/lib/x86/libc.so",
            "/usr/sbin",
            "/usr/sbin/guestfsd"
        ]
    );
    assert_eq!(s.entries()[3].meta.uid, 0);
    assert_eq!(
        s.entries()[8].kind,
        Kind::File(Content::Bytes(b"host"[..].into()))
    );
}

#[test]
fn resolution_stays_inside_the_set() {
    let mut b = SetBuilder::new();
    b.insert(link("/up", "../../../.."), Source::Host).unwrap();
    b.insert(link("/abs", "/"), Source::Host).unwrap();
    b.insert(link("/loop", "loop"), Source::Host).unwrap();
    assert_eq!(b.resolve_dir(Path::new("/up")).unwrap(), Path::new("/"));
    assert_eq!(b.resolve_dir(Path::new("/abs/up")).unwrap(), Path::new("/"));
    assert_eq!(
        b.insert(file("/up/x", b""), Source::Host).unwrap(),
        Path::new("/x")
    );
    assert!(b.resolve_dir(Path::new("/loop")).is_none());
    // A base member under a looping symlink is an error, not a hang.
    assert!(b.insert(file("/loop/y", b""), Source::Base).is_err());
}

#[test]
fn host_symlink_over_base_directory_moves_its_contents() {
    let mut b = SetBuilder::new();
    b.insert(file("/lib/udev/rules.d/99.rules", b"r"), Source::Base)
        .unwrap();
    for d in ["/usr", "/usr/lib", "/usr/lib/udev"] {
        b.insert(dir(d, 0o755, 0), Source::Host).unwrap();
    }
    b.insert(file("/usr/lib/udev/keep", b"k"), Source::Host)
        .unwrap();
    b.insert(link("/lib", "usr/lib"), Source::Host).unwrap();
    let s = b.finish().unwrap();
    assert_eq!(
        paths(&s),
        [
            "/",
            "/lib",
            "/usr",
            "/usr/lib",
            "/usr/lib/udev",
            "/usr/lib/udev/keep",
            "/usr/lib/udev/rules.d",
            "/usr/lib/udev/rules.d/99.rules"
        ]
    );
}

#[test]
fn host_directories_take_the_fixed_time() {
    let mut b = SetBuilder::new();
    b.host_dir_time = Some((1_700_000_000, 0));
    let mut d = dir("/tmp", 0o1777, 0);
    d.meta.mtime = 1_800_000_000;
    let mut r = dir("/", 0o755, 0);
    r.meta.mtime = 1_800_000_001;
    let mut f = file("/tmp/f", b"");
    f.meta.mtime = 5;
    let mut base = dir("/etc", 0o755, 0);
    base.meta.mtime = 7;
    b.insert(r, Source::Host).unwrap();
    b.insert(d, Source::Host).unwrap();
    b.insert(f, Source::Host).unwrap();
    b.insert(base, Source::Base).unwrap();
    let s = b.finish().unwrap();
    let times: Vec<i64> = s.entries().iter().map(|e| e.meta.mtime).collect();
    // `/`, /etc (base: its own), /tmp (host dir: fixed), /tmp/f (a file: its own).
    assert_eq!(times, [1_700_000_000, 7, 1_700_000_000, 5]);
}

#[test]
fn host_file_over_base_directory_drops_it_with_a_warning() {
    let mut b = SetBuilder::new();
    b.insert(file("/d/x", b"r"), Source::Base).unwrap();
    b.insert(file("/d", b"f"), Source::Host).unwrap();
    assert_eq!(b.warnings.len(), 1);
    let s = b.finish().unwrap();
    assert_eq!(paths(&s), ["/", "/d"]);
}

#[test]
fn adds_a_host_tree_at_a_destination() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("kernel")).unwrap();
    std::fs::write(t.path().join("kernel/a.ko"), b"ko").unwrap();
    std::fs::write(t.path().join("modules.dep"), b"").unwrap();
    let mut b = SetBuilder::new();
    b.insert(dir("/usr", 0o755, 0), Source::Host).unwrap();
    b.insert(dir("/usr/lib", 0o755, 0), Source::Host).unwrap();
    b.insert(link("/lib", "usr/lib"), Source::Host).unwrap();
    b.add_host_tree(t.path(), Path::new("/lib/modules/6.1.0"))
        .unwrap();
    let s = b.finish().unwrap();
    let p = paths(&s);
    assert!(p.contains(&"/usr/lib/modules/6.1.0/kernel/a.ko"), "{p:?}");
    assert!(p.contains(&"/usr/lib/modules/6.1.0/modules.dep"), "{p:?}");
}
