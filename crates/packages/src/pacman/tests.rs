use super::*;

fn pkg(root: &Path, name: &str, version: &str, desc_extra: &str, files: &str) {
    let d = root.join(format!("var/lib/pacman/local/{name}-{version}"));
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("desc"),
        format!("%NAME%\n{name}\n\n%VERSION%\n{version}\n\n%ARCH%\nx86_64\n\n{desc_extra}"),
    )
    .unwrap();
    fs::write(d.join("files"), files).unwrap();
}

fn fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    pkg(
        r,
        "bash",
        "5.2.026-2",
        "%PROVIDES%\nsh\n\n%DEPENDS%\nreadline>=7.0\nglibc\nlibreadline.so=8-64\n",
        "%FILES%\netc/\netc/bash.bashrc\netc/skel/\netc/skel/.bashrc\nusr/\nusr/bin/\nusr/bin/bash\n\n\
         %BACKUP%\netc/bash.bashrc\t0123\n",
    );
    pkg(
        r,
        "readline",
        "8.2.013-1",
        "%PROVIDES%\nlibreadline.so=8-64\n\n%DEPENDS%\nglibc\nncurses\n",
        "%FILES%\nusr/lib/libreadline.so.8\n",
    );
    pkg(r, "glibc", "2.40+r16-1", "", "%FILES%\nusr/lib/libc.so.6\n");
    pkg(r, "ncurses", "6.5-3", "", "%FILES%\n");
    pkg(
        r,
        "dash",
        "0.5.12-1",
        "%PROVIDES%\nsh\n",
        "%FILES%\nusr/bin/dash\n",
    );
    pkg(
        r,
        "app",
        "1:1.0-1",
        "%DEPENDS%\nsh\n",
        "%FILES%\nusr/bin/app\n",
    );
    // A regular file under etc/ below the root (supermin's config rule).
    fs::create_dir_all(r.join("etc/skel")).unwrap();
    fs::write(r.join("etc/skel/.bashrc"), b"").unwrap();
    t
}

fn names(db: &PacmanDb, r: &Resolution) -> Vec<String> {
    r.packages
        .iter()
        .map(|&i| db.packages()[i].display.clone())
        .collect()
}

#[test]
fn reads_desc_and_closes_over_depends_and_provides() {
    let t = fixture();
    let db = PacmanDb::load(t.path()).unwrap();
    assert_eq!(db.packages().len(), 6);
    let r = db.resolve(&["bash", "gone"]).unwrap();
    assert_eq!(
        names(&db, &r),
        [
            "bash-5.2.026-2.x86_64",
            "glibc-2.40+r16-1.x86_64",
            "ncurses-6.5-3.x86_64",
            "readline-8.2.013-1.x86_64"
        ]
    );
    assert_eq!(r.missing, ["gone"]);
    // `sh` is virtual: a provider already chosen wins, else the first by name.
    let r = db.resolve(&["bash", "app"]).unwrap();
    assert!(names(&db, &r).contains(&"app-1:1.0-1.x86_64".to_owned()));
    assert!(!names(&db, &r).iter().any(|n| n.starts_with("dash")));
    let r = db.resolve(&["app"]).unwrap();
    assert_eq!(
        names(&db, &r),
        [
            "app-1:1.0-1.x86_64",
            "bash-5.2.026-2.x86_64",
            "glibc-2.40+r16-1.x86_64",
            "ncurses-6.5-3.x86_64",
            "readline-8.2.013-1.x86_64"
        ]
    );
    assert_eq!(
        names(&db, &db.resolve(&["app-1:1.0-1.x86_64"]).unwrap())[0],
        "app-1:1.0-1.x86_64"
    );
}

#[test]
fn files_are_absolute_and_flag_backup_and_etc_files() {
    let t = fixture();
    let db = PacmanDb::load(t.path()).unwrap();
    let bash = db.packages().iter().position(|p| p.name == "bash").unwrap();
    let files = db.files(bash).unwrap();
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            "/etc",
            "/etc/bash.bashrc",
            "/etc/skel",
            "/etc/skel/.bashrc",
            "/usr",
            "/usr/bin",
            "/usr/bin/bash"
        ]
        .map(Path::new)
    );
    let config: Vec<PathBuf> = db
        .config_files(bash)
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    // bash.bashrc is a backup entry (not on disk here); .bashrc is a regular file.
    assert_eq!(
        config,
        [
            Path::new("/etc/bash.bashrc"),
            Path::new("/etc/skel/.bashrc")
        ]
    );
}

#[test]
fn detection_needs_the_arch_identity_and_the_database() {
    let t = fixture();
    assert!((DRIVER.present)(t.path()));
    assert!(!(DRIVER.detect)(t.path()));
    fs::write(
        t.path().join("etc/os-release"),
        "NAME=\"Arch Linux\"\nID=arch\n",
    )
    .unwrap();
    assert!((DRIVER.detect)(t.path()));
    let empty = tempfile::tempdir().unwrap();
    assert!(!(DRIVER.present)(empty.path()));
    let e = (DRIVER.open)(empty.path()).unwrap_err();
    assert!(e.to_string().contains("var/lib/pacman/local"), "{e}");
}

#[test]
fn a_package_without_a_name_is_an_error_naming_its_desc() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("var/lib/pacman/local/x-1");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("desc"), "%VERSION%\n1\n").unwrap();
    let e = PacmanDb::load(t.path()).unwrap_err();
    assert!(e.to_string().contains("x-1/desc"), "{e}");
}
