//! A fresh pacman root built with the real tools: one split PKGBUILD built by
//! `makepkg` as an unprivileged user, its packages installed in one transaction by
//! `pacman --root … -U`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// The test packages: a virtual provide, a soname provide and depend, a `backup`
/// (config) file, a symlink, a hard link, a setuid file, and one package nothing
/// depends on. `extra` is appended (more `package_NAME()` functions) with its names.
pub const PKGBUILD: &str = r#"pkgbase=kiln-test
pkgname=(kiln-libs kiln-shell kiln-app kiln-unrelated @EXTRA_NAMES@)
pkgver=1.0
pkgrel=1
arch=(any)
license=(MIT)
options=(!strip !debug)

package_kiln-libs() {
  provides=('libkiln.so=1-64')
  mkdir -p "$pkgdir/usr/lib" "$pkgdir/usr/bin"
  echo lib > "$pkgdir/usr/lib/libkiln.so.1"
  ln "$pkgdir/usr/lib/libkiln.so.1" "$pkgdir/usr/lib/libkiln-hard.so.1"
  echo suid > "$pkgdir/usr/bin/kiln-suid"
  chmod 4755 "$pkgdir/usr/bin/kiln-suid"
}

package_kiln-shell() {
  provides=('kiln-virtual=1.0')
  depends=('libkiln.so=1-64')
  backup=(etc/kiln-shell.conf)
  mkdir -p "$pkgdir/bin" "$pkgdir/etc" "$pkgdir/usr/share/doc/kiln-shell"
  printf '#!/bin/true\n' > "$pkgdir/bin/sh"
  chmod 755 "$pkgdir/bin/sh"
  echo conf > "$pkgdir/etc/kiln-shell.conf"
  echo doc > "$pkgdir/usr/share/doc/kiln-shell/README"
}

package_kiln-app() {
  depends=('kiln-virtual>=1')
  mkdir -p "$pkgdir/usr/bin"
  echo app > "$pkgdir/usr/bin/kiln-app"
  chmod 755 "$pkgdir/usr/bin/kiln-app"
  ln -s kiln-app "$pkgdir/usr/bin/kiln-app-link"
}

package_kiln-unrelated() {
  mkdir -p "$pkgdir/usr/share/kiln-unrelated"
  echo x > "$pkgdir/usr/share/kiln-unrelated/x"
}
"#;

/// True when makepkg (with bsdtar and fakeroot) and pacman can run here.
pub fn tools_present() -> bool {
    super::tools_run(&["makepkg", "pacman", "bsdtar", "fakeroot"])
}

/// Build the packages (plus `extra_names` defined by `extra_functions`) as `nobody`
/// and install them all into a fresh root `work/root`; returns the root.
pub fn make_root(work: &Path, extra_names: &[&str], extra_functions: &str) -> PathBuf {
    let pkgbuild = PKGBUILD.replace("@EXTRA_NAMES@", &extra_names.join(" ")) + extra_functions;
    make_root_of(work, &pkgbuild)
}

/// Build every package of `pkgbuild` (a whole PKGBUILD) and install them into a fresh
/// root `work/root`; returns the root.
pub fn make_root_of(work: &Path, pkgbuild: &str) -> PathBuf {
    let build = work.join("build");
    fs::create_dir_all(&build).unwrap();
    // makepkg refuses to run as root: the build directory belongs to `nobody`.
    fs::set_permissions(work, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(build.join("PKGBUILD"), pkgbuild).unwrap();
    run(Command::new("chown").arg("-R").arg("nobody").arg(&build));
    let mut makepkg = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", "makepkg"]);
        c
    } else {
        Command::new("makepkg")
    };
    run(makepkg
        .args(["--nodeps", "--noconfirm", "--nocolor"])
        .current_dir(&build)
        .env("HOME", &build)
        .env("PKGDEST", &build)
        .env("SRCDEST", &build)
        .env("BUILDDIR", &build));
    let mut pkgs: Vec<PathBuf> = fs::read_dir(&build)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".pkg.tar"))
        .collect();
    pkgs.sort();
    let root = work.join("root");
    fs::create_dir_all(root.join("var/lib/pacman")).unwrap();
    run(Command::new("pacman")
        .arg("--root")
        .arg(&root)
        .arg("--dbpath")
        .arg(root.join("var/lib/pacman"))
        .args(["-U", "--noconfirm", "--noprogressbar"])
        .args(&pkgs));
    root
}

/// `pacman -Ql` of `names` in the root: absolute paths inside the root, directories
/// without their trailing `/`, sorted.
pub fn pacman_ql(root: &Path, names: &[&str]) -> Vec<String> {
    let out = run(Command::new("pacman")
        .arg("--root")
        .arg(root)
        .arg("--dbpath")
        .arg(root.join("var/lib/pacman"))
        .arg("-Ql")
        .args(names));
    let r = root.to_string_lossy().trim_end_matches('/').to_owned();
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(_, p)| {
            let p = p.strip_prefix(&r).unwrap_or(p);
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.to_owned()
            }
        })
        .collect();
    v.sort();
    v
}
