use super::*;
use std::cmp::Ordering::*;

const OUT: &str = "\
@\tbash\t0\t5.2.26\t3.fc40\tx86_64
P\tbash
P\tconfig(bash)
P\t/bin/bash
R\t/bin/sh
R\tlibc.so.6()(64bit)
R\tlibtinfo.so.6()(64bit)
R\trpmlib(PayloadFilesHavePrefix)
F\t17\t/etc/skel/.bashrc
F\t0\t/usr/bin/bash
F\t2\t/usr/share/doc/bash/README
@\tglibc\t0\t2.39\t1.fc40\tx86_64
P\tglibc
P\tlibc.so.6()(64bit)
F\t64\t/var/cache/ldconfig/aux-cache
F\t0\t/usr/lib64/libc.so.6
@\tncurses-libs\t0\t6.4\t12.fc40\tx86_64
P\tlibtinfo.so.6()(64bit)
R\tlibc.so.6()(64bit)
@\tbusybox\t1\t1.36.1\t1.fc40\tx86_64
P\tbusybox
F\t0\t/usr/sbin/busybox
@\tfilesystem\t0\t3.18\t8.fc40\tx86_64
F\t0\t/bin
@\tsh-provider\t0\t1\t1\tnoarch
F\t0\t/bin/sh
@\tlongname-provider\t0\t1\t1\tnoarch
F\t0\t/bin/sh
@\tbash\t0\t5.2.26\t3.fc40\ti686
R\tlibc.so.6
";

fn db() -> RpmDb {
    RpmDb::from_packages(
        Path::new("/"),
        FEDORA.name,
        PathBuf::from("/usr/lib/sysimage/rpm"),
        parse(OUT.as_bytes()).unwrap(),
    )
}

fn names(db: &RpmDb, r: &Resolution) -> Vec<String> {
    r.packages
        .iter()
        .map(|&i| db.packages()[i].display.clone())
        .collect()
}

#[test]
fn parses_packages_provides_requires_and_files() {
    let d = db();
    assert_eq!(d.packages().len(), 8);
    let bash = d
        .packages()
        .iter()
        .position(|p| p.display == "bash-5.2.26-3.fc40.x86_64");
    let bash = bash.unwrap();
    assert_eq!(d.packages()[bash].version, "5.2.26-3.fc40");
    assert!(
        d.packages()[bash]
            .provides
            .contains(&"config(bash)".to_owned())
    );
    let files = d.files(bash).unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(
        (files[0].path.as_path(), files[0].flags),
        (
            Path::new("/etc/skel/.bashrc"),
            FileFlags {
                config: true,
                doc: false,
                ghost: false
            }
        )
    );
    assert!(files[2].flags.doc && !files[2].flags.config);
    let glibc = d.packages().iter().position(|p| p.name == "glibc").unwrap();
    assert!(d.files(glibc).unwrap()[0].flags.ghost);
    // The epoch is shown when it is not 0.
    assert!(
        d.packages()
            .iter()
            .any(|p| p.display == "busybox-1:1.36.1-1.fc40.x86_64")
    );
}

#[test]
fn closure_follows_sonames_files_and_the_shortest_provider() {
    let d = db();
    let r = d.resolve(&["bash", "nothing-provides-this"]).unwrap();
    assert_eq!(
        names(&d, &r),
        [
            "bash-5.2.26-3.fc40.x86_64",
            "glibc-2.39-1.fc40.x86_64",
            "ncurses-libs-6.4-12.fc40.x86_64",
            // `/bin/sh` is owned by two packages: the shorter name wins.
            "sh-provider-1-1.noarch",
        ]
    );
    assert_eq!(r.missing, ["nothing-provides-this"]);
}

#[test]
fn names_prefer_this_machine_and_accept_full_forms() {
    let d = db();
    let one = |n: &str| names(&d, &d.resolve(&[n]).unwrap());
    // Two bash packages: this machine's architecture wins over i686.
    assert!(one("bash").contains(&"bash-5.2.26-3.fc40.x86_64".to_owned()));
    assert!(!one("bash").iter().any(|p| p.ends_with(".i686")));
    // `libc.so.6` (32-bit) has no provider here: the closure is the package alone.
    assert_eq!(one("bash.i686"), ["bash-5.2.26-3.fc40.i686"]);
    assert_eq!(
        one("busybox-1:1.36.1-1.fc40.x86_64"),
        ["busybox-1:1.36.1-1.fc40.x86_64"]
    );
    // A capability with one provider names that package; several providers: none.
    assert_eq!(
        one("libtinfo.so.6()(64bit)")[1],
        "ncurses-libs-6.4-12.fc40.x86_64"
    );
    assert!(d.resolve(&["/bin/sh"]).unwrap().packages.is_empty());
}

#[test]
fn malformed_output_names_the_line() {
    assert_eq!(parse(b"P\tx\n").unwrap_err().0, 1);
    assert_eq!(
        parse(b"@\ta\t0\t1\t1\tnoarch\nF\tx\t/a\n").unwrap_err().0,
        2
    );
    assert_eq!(parse(b"@\ta\t0\t1\n").unwrap_err().0, 1);
}

#[test]
fn rpmvercmp_orders_like_rpm() {
    for (a, b, o) in [
        ("1.0", "1.0", Equal),
        ("1.0", "2.0", Less),
        ("2.0.1", "2.0", Greater),
        ("1.10", "1.9", Greater),
        ("1.05", "1.5", Equal),
        ("1.0a", "1.0", Greater),
        ("1.0", "1.0~rc1", Greater),
        ("1.0~rc1", "1.0~rc2", Less),
        ("1.0^git1", "1.0", Greater),
        ("1.0^git1", "1.0.1", Less),
        ("a", "1", Less),
        ("fc40", "fc39", Greater),
        ("1_0", "1.0", Equal),
    ] {
        assert_eq!(rpmvercmp(a, b), o, "{a} vs {b}");
        assert_eq!(rpmvercmp(b, a), o.reverse(), "{b} vs {a}");
    }
}
