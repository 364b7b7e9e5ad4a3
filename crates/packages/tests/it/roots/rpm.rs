//! A fresh rpm root built with the real tools: small spec files built by `rpmbuild`,
//! installed in one transaction by `rpm --root` into Fedora's database location.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// Fedora's database directory (Debian's rpm defaults elsewhere).
pub const DBPATH: &str = "/usr/lib/sysimage/rpm";

/// The test packages: a virtual provide, a file require, a soname require, a
/// `%config` file, a `%ghost`, a `%doc`, a symlink, a hard link, a setuid file, and
/// one package nothing requires.
pub const SPECS: &[(&str, &str)] = &[
    (
        "kiln-libs",
        "Provides: libkiln.so.1()(64bit)
%install
mkdir -p %{buildroot}/usr/lib64 %{buildroot}/usr/bin
echo lib > %{buildroot}/usr/lib64/libkiln.so.1
ln %{buildroot}/usr/lib64/libkiln.so.1 %{buildroot}/usr/lib64/libkiln-hard.so.1
echo suid > %{buildroot}/usr/bin/kiln-suid
%files
/usr/lib64/libkiln.so.1
/usr/lib64/libkiln-hard.so.1
%attr(4755,root,root) /usr/bin/kiln-suid
",
    ),
    (
        "kiln-shell",
        "Provides: kiln-virtual
Requires: libkiln.so.1()(64bit)
%install
mkdir -p %{buildroot}/bin %{buildroot}/etc %{buildroot}/var/log %{buildroot}/usr/share/doc/kiln-shell
printf '#!/bin/true\\n' > %{buildroot}/bin/sh
chmod 755 %{buildroot}/bin/sh
echo conf > %{buildroot}/etc/kiln-shell.conf
echo doc > %{buildroot}/usr/share/doc/kiln-shell/README
%files
%dir /bin
/bin/sh
%config(noreplace) /etc/kiln-shell.conf
%ghost /var/log/kiln-shell.log
%doc /usr/share/doc/kiln-shell/README
",
    ),
    (
        "kiln-app",
        "Requires: kiln-virtual
Requires: /bin/sh
%install
mkdir -p %{buildroot}/usr/bin
echo app > %{buildroot}/usr/bin/kiln-app
chmod 755 %{buildroot}/usr/bin/kiln-app
ln -s kiln-app %{buildroot}/usr/bin/kiln-app-link
%files
/usr/bin/kiln-app
/usr/bin/kiln-app-link
",
    ),
    (
        "kiln-unrelated",
        "%install
mkdir -p %{buildroot}/usr/share/kiln-unrelated
echo x > %{buildroot}/usr/share/kiln-unrelated/x
%files
/usr/share/kiln-unrelated/x
",
    ),
];

/// True when `rpm` and `rpmbuild` can run here.
pub fn tools_present() -> bool {
    super::tools_run(&["rpm", "rpmbuild"])
}

/// Build the test packages (plus `extra`) into `work/rpms` and install them into a
/// fresh root `work/root`; returns the root.
pub fn make_root(work: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let specs: Vec<(&str, &str)> = SPECS.iter().chain(extra).copied().collect();
    make_root_of(work, &specs)
}

/// Build exactly `specs` into `work/rpms` and install them into a fresh root
/// `work/root`; returns the root.
pub fn make_root_of(work: &Path, specs: &[(&str, &str)]) -> PathBuf {
    let top = work.join("rpmbuild");
    let mut rpms = Vec::new();
    for (name, body) in specs {
        let spec = work.join(format!("{name}.spec"));
        let arch = if body.contains("BuildArch:") {
            ""
        } else {
            "BuildArch: noarch\n"
        };
        let at = body.find("%install").expect("a %install section");
        let (preamble, sections) = body.split_at(at);
        fs::write(
            &spec,
            format!(
                "Name: {name}\nVersion: 1.0\nRelease: 1\nSummary: kiln test package\n\
                 License: MIT\n{arch}AutoReqProv: no\n{preamble}\n%description\n\
                 kiln test package\n\n{sections}"
            ),
        )
        .unwrap();
        run(Command::new("rpmbuild")
            .arg("--quiet")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .args(["--define", "debug_package %{nil}", "-bb"])
            .arg(&spec));
    }
    for d in fs::read_dir(top.join("RPMS")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            rpms.push(f.unwrap().path());
        }
    }
    rpms.sort();
    let root = work.join("root");
    fs::create_dir_all(&root).unwrap();
    run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["--dbpath", DBPATH, "--initdb"]));
    run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["--dbpath", DBPATH, "-i", "--nosignature"])
        .args(&rpms));
    root
}

/// `rpm -ql` of `names` in the root, as the real tool prints it.
pub fn rpm_ql(root: &Path, names: &[&str]) -> Vec<String> {
    let out = run(Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", DBPATH, "-ql"])
        .args(names));
    let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// `rpm -qlc` (config) or `-qld` (doc) style listings via `--qf`: files whose flags
/// include `bit`.
pub fn rpm_flagged(root: &Path, names: &[&str], bit: u32) -> Vec<String> {
    let out = run(Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args([
            "--dbpath",
            DBPATH,
            "-q",
            "--qf",
            "[%{FILEFLAGS} %{FILENAMES}\\n]",
        ])
        .args(names));
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(f, _)| f.parse::<u32>().unwrap() & bit != 0)
        .map(|(_, p)| p.to_owned())
        .collect();
    v.sort();
    v
}
