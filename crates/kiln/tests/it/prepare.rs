//! `prepare` against the host's own dpkg database and configuration files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io;
use std::path::Path;

use kiln::prepare::{PrepareError, PrepareOptions, prepare};

fn read_members(tgz: &Path) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
    let f = fs::File::open(tgz).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let t = e.header().entry_type();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, t, mode, data)
        })
        .collect()
}

#[test]
fn bash_and_coreutils_from_the_host_database() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("supermin.d");
    let r = prepare(
        &["coreutils", "bash", "bash", "no-such-package-kiln"],
        &out,
        &PrepareOptions::default(),
    )
    .unwrap();
    assert_eq!(r.packages, ["bash", "coreutils"]);
    assert_eq!(r.missing, ["no-such-package-kiln"]);
    assert!(r.closure > 2, "dependencies resolved: {}", r.closure);
    assert_eq!(
        fs::read_to_string(out.join("packages")).unwrap(),
        "bash\ncoreutils\n"
    );
    let members = read_members(&out.join("base.tar.gz"));
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    // bash's conffile, with its directory before it.
    let find = |x: &str| {
        names
            .iter()
            .position(|n| *n == x)
            .unwrap_or_else(|| panic!("{x} not in {names:?}"))
    };
    let (bashrc, etc) = (find("etc/bash.bashrc"), find("etc/"));
    assert!(etc < bashrc);
    assert_eq!(members[bashrc].3, fs::read("/etc/bash.bashrc").unwrap());
    assert_eq!(members[etc].1, tar::EntryType::Directory);
    assert_eq!(
        r.config_files,
        members.iter().filter(|m| m.1.is_file()).count()
    );
    // The written directory is what the input reader accepts as a supermin.d.
    let inputs = kiln_inputs::read_inputs(std::slice::from_ref(&out)).unwrap();
    assert_eq!(inputs.base_images.len(), 1);
    // Nothing beside the output.
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
}

#[test]
fn reproducible() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let o = PrepareOptions::default();
    prepare(&["bash"], &a, &o).unwrap();
    prepare(&["bash"], &b, &o).unwrap();
    assert_eq!(
        fs::read(a.join("base.tar.gz")).unwrap(),
        fs::read(b.join("base.tar.gz")).unwrap()
    );
}

#[test]
fn nothing_installed_is_an_error_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o");
    let e = prepare(&["no-such-package-kiln"], &out, &PrepareOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no-such-package-kiln"), "{e}");
    assert!(matches!(
        prepare::<&str>(&[], &out, &PrepareOptions::default()),
        Err(PrepareError::NoPackages)
    ));
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
}
