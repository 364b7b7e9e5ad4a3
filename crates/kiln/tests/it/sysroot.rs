//! Appliances from another installed system (`--sysroot`): rpm and pacman roots made
//! by the real tools, a Debian 13 root made by mmdebstrap, and the promises that `/`
//! is the default byte for byte and that nothing of the host's `/` leaks in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../packages/tests/it/roots/mod.rs"]
mod dbroots;
use dbroots::{pacman as pacroot, rpm as rpmroot};

use crate::common::roots;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::{BuildOptions, Format, Sysroot};

/// Every path of a tree written by the chroot writer, as absolute paths ("/" first).
fn tree(out: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, rel: &str, acc: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = format!("{rel}/{}", e.file_name().to_string_lossy());
            acc.insert(p.clone());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &p, acc);
            }
        }
    }
    let mut acc = BTreeSet::from(["/".to_owned()]);
    walk(out, "", &mut acc);
    acc
}

/// The paths and all their ancestors.
fn with_ancestors<'a>(paths: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    let mut acc = BTreeSet::new();
    for p in paths {
        for a in Path::new(p).ancestors() {
            acc.insert(a.display().to_string());
        }
    }
    acc
}

fn chroot(sysroot: &Path, supermin_d: &Path, out: &Path) -> kiln::BuildReport {
    let mut o = BuildOptions::new(vec![supermin_d.into()], Format::Chroot, out.into());
    o.set_sysroot(Sysroot::new(sysroot));
    kiln::build(&o).unwrap()
}

/// `kiln prepare` then `kiln build -f chroot` of `names` in `root`; checks the tree
/// against the tool's own listing of the closure (`ghosts` left out) with modes, the
/// hard link and the symlink, and returns the report.
fn prepare_and_build(root: &Path, names: &[&str], listing: Vec<String>, ghosts: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let sd = work.path().join("supermin.d");
    let prepared = kiln::prepare::prepare(
        names,
        &sd,
        &kiln::prepare::PrepareOptions {
            root: root.to_path_buf(),
            source_date_epoch: None,
        },
    )
    .unwrap();
    assert_eq!(prepared.config_files, 1, "the package's config file");
    let out = work.path().join("out");
    let report = chroot(root, &sd, &out);
    assert_eq!(report.packages.len(), 3, "{:?}", report.packages);
    let expected: Vec<String> = listing
        .into_iter()
        .filter(|p| !ghosts.contains(&p.as_str()))
        .collect();
    assert_eq!(tree(&out), with_ancestors(&expected));
    for g in ghosts {
        assert!(!out.join(&g[1..]).exists(), "ghost {g}");
    }
    for p in &expected {
        let (a, b) = (
            fs::symlink_metadata(root.join(&p[1..])).unwrap(),
            fs::symlink_metadata(out.join(&p[1..])).unwrap(),
        );
        assert_eq!(a.mode(), b.mode(), "{p}");
        if a.is_file() {
            assert_eq!(
                fs::read(root.join(&p[1..])).unwrap(),
                fs::read(out.join(&p[1..])).unwrap()
            );
        }
    }
    let md = |p: &str| fs::symlink_metadata(out.join(p)).unwrap();
    assert_eq!(md("usr/bin/kiln-suid").mode() & 0o7777, 0o4755);
    assert_eq!(
        fs::read_link(out.join("usr/bin/kiln-app-link")).unwrap(),
        Path::new("kiln-app")
    );
    let lib = if root.join("usr/lib64").exists() {
        "usr/lib64"
    } else {
        "usr/lib"
    };
    assert_eq!(
        md(&format!("{lib}/libkiln.so.1")).ino(),
        md(&format!("{lib}/libkiln-hard.so.1")).ino(),
        "hard links stay hard links"
    );
    assert!(!out.join("usr/share/kiln-unrelated").exists());
}

#[test]
fn rpm_root_file_set_is_the_closure_as_rpm_lists_it() {
    assert!(
        rpmroot::tools_present(),
        "rpm and rpmbuild: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = rpmroot::make_root(t.path(), &[]);
    let closure = ["kiln-app", "kiln-libs", "kiln-shell"];
    prepare_and_build(
        &root,
        &["kiln-app"],
        rpmroot::rpm_ql(&root, &closure),
        &["/var/log/kiln-shell.log"],
    );
}

#[test]
fn pacman_root_file_set_is_the_closure_as_pacman_lists_it() {
    assert!(
        pacroot::tools_present(),
        "makepkg, pacman, bsdtar, fakeroot: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = pacroot::make_root(t.path(), &[], "");
    let closure = ["kiln-app", "kiln-libs", "kiln-shell"];
    prepare_and_build(
        &root,
        &["kiln-app"],
        pacroot::pacman_ql(&root, &closure),
        &[],
    );
}

/// A dpkg root with one package listing `files`.
fn dpkg_root(root: &Path, files: &[&str]) {
    let admin = root.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::write(
        admin.join("status"),
        "Package: probe\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n",
    )
    .unwrap();
    fs::write(admin.join("info/probe.list"), files.join("\n") + "\n").unwrap();
}

#[test]
fn nothing_of_the_host_leaks_into_another_root() {
    // A directory on the host and the same path inside the root, with different files.
    let host_dir = PathBuf::from(format!("/var/tmp/kiln-leak-test-{}", std::process::id()));
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("host-only"), "from the host\n").unwrap();
    fs::write(host_dir.join("shared"), "host version\n").unwrap();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let inside = root.join(host_dir.strip_prefix("/").unwrap());
    fs::create_dir_all(&inside).unwrap();
    fs::write(inside.join("in-root"), "from the root\n").unwrap();
    fs::write(inside.join("shared"), "root version\n").unwrap();
    // An absolute link inside the root: followed inside it, never into the host's /.
    std::os::unix::fs::symlink(&host_dir, root.join("data")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    let hd = host_dir.display();
    dpkg_root(
        &root,
        &[
            &format!("{hd}/host-only"),
            &format!("{hd}/shared"),
            "/etc/passwd",
        ],
    );
    let sd = t.path().join("supermin.d");
    fs::create_dir_all(&sd).unwrap();
    fs::write(sd.join("packages"), "probe\n").unwrap();
    fs::write(
        sd.join("hostfiles"),
        format!("{hd}/*\n/data/*\n/etc-link/*\n"),
    )
    .unwrap();
    let out = t.path().join("out");
    let r = chroot(&root, &sd, &out);
    let got = tree(&out);
    fs::remove_dir_all(&host_dir).unwrap();
    assert_eq!(r.packages, ["probe_1_amd64"]);
    let o = &out;
    let in_root = format!("{hd}/in-root");
    assert!(got.contains(&in_root), "{got:?}");
    assert_eq!(
        fs::read_to_string(o.join(&format!("{hd}/shared")[1..])).unwrap(),
        "root version\n"
    );
    assert!(!got.contains(&format!("{hd}/host-only")), "{got:?}");
    assert!(!got.iter().any(|p| p.starts_with("/etc")), "{got:?}");
    // `/data/*` matched through the root's own link: the link and its target's files.
    // (The chroot writer makes the absolute target relative.)
    assert_eq!(
        Path::new("/").join(fs::read_link(o.join("data")).unwrap()),
        host_dir
    );
    // No kernel in the root: an ext2 build fails instead of taking the host's.
    let mut o = BuildOptions::new(vec![sd], Format::Ext2, t.path().join("ext2"));
    o.set_sysroot(Sysroot::new(&root));
    o.kernel_env = kiln::key::KernelEnv::default();
    let e = kiln::build(&o).unwrap_err();
    assert!(matches!(e, kiln::BuildError::Kernel(_)), "{e}");
}

/// The bundled example appliance, built with and without `--sysroot /`.
#[test]
fn sysroot_slash_is_byte_identical_to_none() {
    let sd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d");
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    kiln::build(&BuildOptions::new(
        vec![sd.clone()],
        Format::Ext2,
        a.clone(),
    ))
    .unwrap();
    let mut o = BuildOptions::new(vec![sd], Format::Ext2, b.clone());
    o.set_sysroot(Sysroot::new("/"));
    kiln::build(&o).unwrap();
    for f in ["root", "initrd"] {
        assert!(
            fs::read(a.join(f)).unwrap() == fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert_eq!(
        fs::read_link(a.join("kernel")).unwrap(),
        fs::read_link(b.join("kernel")).unwrap()
    );
}

/// Boot `appliance` (kernel, initrd, root) and return the console, checking that the
/// root's `/init` ran.
fn boot(appliance: &Path) -> String {
    let outcome = kiln_boot::boot(
        appliance,
        &kiln_boot::BootOptions {
            timeout: std::time::Duration::from_secs(300),
            echo: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(outcome.init_ran, "console:\n{}", outcome.console);
    outcome.console
}

/// A Debian 13 root with its own kernel: the example appliance built from it, with no
/// hostfiles (the merged-/usr links come with the root), boots that 6.12 kernel, not
/// the host's.
#[test]
fn foreign_debian_root_boots_its_own_kernel() {
    let Some(root) = roots::trixie() else { return };
    let version = fs::read_dir(root.join("lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .next()
        .unwrap();
    assert!(version.starts_with("6.12."), "{version}");
    let t = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d");
    let out = t.path().join("appliance");
    let mut o = BuildOptions::new(vec![example], Format::Ext2, out.clone());
    o.set_sysroot(Sysroot::new(&root));
    o.kernel_env = kiln::key::KernelEnv::default();
    let r = kiln::build(&o).unwrap();
    let a = r.appliance.unwrap();
    assert_eq!(a.kernel_version, version);
    assert!(a.kernel.starts_with(&root));
    assert!(r.packages.iter().any(|p| p.starts_with("busybox_")));
    let console = boot(&out);
    assert!(
        console.contains(&format!(
            "Hello from the kiln example appliance, running Linux {version}"
        )),
        "console:\n{console}"
    );
}

/// A supermin.d of `packages` whose `/init` is `init` (mode 0755).
fn supermin_d(dir: &Path, packages: &str, init: &str) -> PathBuf {
    let sd = dir.join("supermin.d");
    let src = dir.join("init-src");
    fs::create_dir_all(&sd).unwrap();
    fs::create_dir_all(src.join("proc")).unwrap();
    fs::write(sd.join("packages"), packages).unwrap();
    fs::write(src.join("init"), init).unwrap();
    fs::set_permissions(
        src.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(sd.join("init.tar.gz"))
        .args(["init", "proc"])
        .status()
        .unwrap();
    assert!(st.success());
    sd
}

/// The top-level links of a chroot output, as `name -> target`, and its other
/// top-level names.
fn top_level(out: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut links, mut others) = (BTreeSet::new(), BTreeSet::new());
    for e in fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_symlink() {
            let t = fs::read_link(e.path()).unwrap();
            links.insert(format!("/{name} -> {}", t.display()));
        } else {
            others.insert(format!("/{name}"));
        }
    }
    (links, others)
}

/// The links every merged-/usr test root has, as [`top_level`] prints them.
fn links(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An init that runs through the root's links: `/bin/sh` (its interpreter found as
/// `/lib64/ld-linux-x86-64.so.2`), then a program of coreutils, then powers off.
const SH_INIT: &str = "#!/bin/sh
echo \"kiln-test: /bin/sh ran, /lib64 holds $(/bin/ls /lib64/)\"
/bin/busybox poweroff -f
";

/// From a Debian 13 root (merged /usr, the links owned by `base-files`, which no
/// closure reaches): the chroot of `coreutils` has the root's links and the files
/// below their targets, and the same appliance as ext2 runs `/bin/sh` under
/// `kiln boot` with the root's own kernel.
#[test]
fn debian_13_appliance_has_the_roots_links_and_runs_bin_sh() {
    let Some(root) = roots::trixie() else { return };
    let t = tempfile::tempdir().unwrap();
    let sd = supermin_d(t.path(), "coreutils\ndash\nbusybox\n", SH_INIT);
    let out = t.path().join("chroot");
    let r = chroot(&root, &sd, &out);
    assert!(!r.packages.iter().any(|p| p.starts_with("base-files_")));
    let (l, others) = top_level(&out);
    assert_eq!(
        l,
        links(&[
            "/bin -> usr/bin",
            "/lib -> usr/lib",
            "/lib64 -> usr/lib64",
            "/sbin -> usr/sbin"
        ])
    );
    assert_eq!(
        others,
        links(&["/etc", "/init", "/proc", "/usr"]),
        "no second real directory beside a link"
    );
    let ld = out.join("lib64/ld-linux-x86-64.so.2");
    assert!(fs::metadata(&ld).unwrap().is_file(), "{}", ld.display());
    assert!(fs::metadata(out.join("bin/sh")).is_ok());
    assert!(fs::metadata(out.join("bin/ls")).unwrap().is_file());

    let ext2 = t.path().join("ext2");
    let mut o = BuildOptions::new(vec![sd], Format::Ext2, ext2.clone());
    o.set_sysroot(Sysroot::new(&root));
    o.kernel_env = kiln::key::KernelEnv::default();
    kiln::build(&o).unwrap();
    let console = boot(&ext2);
    assert!(
        console.contains("kiln-test: /bin/sh ran, /lib64 holds ld-linux-x86-64.so.2"),
        "console:\n{console}"
    );
}

/// Two more rpm packages make the root bootable: the host's busybox (requiring
/// `libc.so.6()(64bit)`) and the C library it needs (providing it).
const BOOTABLE_RPMS: &[(&str, &str)] = &[
    (
        "kiln-glibc",
        "BuildArch: x86_64
Provides: libc.so.6()(64bit)
%define __os_install_post %{nil}
%define _build_id_links none
%install
mkdir -p %{buildroot}/lib64 %{buildroot}/lib/x86_64-linux-gnu
cp -L /lib64/ld-linux-x86-64.so.2 %{buildroot}/lib64/
cp -L /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libresolv.so.2 %{buildroot}/lib/x86_64-linux-gnu/
%files
/lib64/ld-linux-x86-64.so.2
/lib/x86_64-linux-gnu/libc.so.6
/lib/x86_64-linux-gnu/libresolv.so.2
",
    ),
    (
        "kiln-busybox",
        "BuildArch: x86_64
Requires: libc.so.6()(64bit)
%define __os_install_post %{nil}
%define _build_id_links none
%install
mkdir -p %{buildroot}/bin
cp -L /bin/busybox %{buildroot}/bin/busybox
%files
/bin/busybox
",
    ),
];

/// An rpm root made by the real tools boots under `kiln boot` (with the host's kernel:
/// the root has none).
#[test]
fn rpm_root_appliance_boots() {
    assert!(
        rpmroot::tools_present(),
        "rpm and rpmbuild: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = rpmroot::make_root(t.path(), BOOTABLE_RPMS);
    let sd = t.path().join("supermin.d");
    fs::create_dir_all(&sd).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d");
    fs::copy(example.join("init.tar.gz"), sd.join("init.tar.gz")).unwrap();
    fs::write(sd.join("packages"), "kiln-busybox\n").unwrap();
    let out = t.path().join("appliance");
    let mut o = BuildOptions::new(vec![sd], Format::Ext2, out.clone());
    o.set_sysroot(Sysroot::new(&root));
    o.kernel_roots = kiln::key::Roots::default();
    let r = kiln::build(&o).unwrap();
    assert_eq!(
        r.packages,
        ["kiln-busybox-1.0-1.x86_64", "kiln-glibc-1.0-1.x86_64"]
    );
    let outcome = kiln_boot::boot(
        &out,
        &kiln_boot::BootOptions {
            timeout: std::time::Duration::from_secs(300),
            echo: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(outcome.init_ran, "console:\n{}", outcome.console);
    assert!(
        outcome
            .console
            .contains("Hello from the kiln example appliance"),
        "console:\n{}",
        outcome.console
    );
}

/// The pacman counterpart of [`BOOTABLE_RPMS`]: the host's busybox depending on the
/// soname `libc.so=6-64`, which the package carrying the C library provides (Arch's
/// spelling of a soname dependency).
const BOOTABLE_PKGBUILD: &str = r#"
package_kiln-glibc() {
  arch=(x86_64)
  provides=('libc.so=6-64')
  mkdir -p "$pkgdir/lib64" "$pkgdir/lib/x86_64-linux-gnu"
  cp -L /lib64/ld-linux-x86-64.so.2 "$pkgdir/lib64/"
  cp -L /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libresolv.so.2 \
    "$pkgdir/lib/x86_64-linux-gnu/"
}

package_kiln-busybox() {
  arch=(x86_64)
  depends=('libc.so=6-64')
  mkdir -p "$pkgdir/bin"
  cp -L /bin/busybox "$pkgdir/bin/busybox"
}
"#;

/// A pacman root made by the real tools boots under `kiln boot` (with the host's
/// kernel: the root has none).
#[test]
fn pacman_root_appliance_boots() {
    assert!(
        pacroot::tools_present(),
        "makepkg, pacman, bsdtar, fakeroot: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = pacroot::make_root(t.path(), &["kiln-glibc", "kiln-busybox"], BOOTABLE_PKGBUILD);
    let sd = t.path().join("supermin.d");
    fs::create_dir_all(&sd).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d");
    fs::copy(example.join("init.tar.gz"), sd.join("init.tar.gz")).unwrap();
    fs::write(sd.join("packages"), "kiln-busybox\n").unwrap();
    let out = t.path().join("appliance");
    let mut o = BuildOptions::new(vec![sd], Format::Ext2, out.clone());
    o.set_sysroot(Sysroot::new(&root));
    o.kernel_roots = kiln::key::Roots::default();
    let r = kiln::build(&o).unwrap();
    assert_eq!(
        r.packages,
        ["kiln-busybox-1.0-1.x86_64", "kiln-glibc-1.0-1.x86_64"]
    );
    let outcome = kiln_boot::boot(
        &out,
        &kiln_boot::BootOptions {
            timeout: std::time::Duration::from_secs(300),
            echo: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(outcome.init_ran, "console:\n{}", outcome.console);
    assert!(
        outcome
            .console
            .contains("Hello from the kiln example appliance"),
        "console:\n{}",
        outcome.console
    );
}

/// A merged-/usr rpm root as Fedora lays it out: `kiln-filesystem` (which nothing
/// requires, like Fedora's `filesystem`) owns `/bin`, `/sbin`, `/lib` and `/lib64` as
/// links into `/usr`; the C library and busybox are installed below `/usr` only.
const MERGED_RPMS: &[(&str, &str)] = &[
    (
        "kiln-filesystem",
        "%define __os_install_post %{nil}
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/sbin %{buildroot}/usr/lib %{buildroot}/usr/lib64
ln -s usr/bin %{buildroot}/bin
ln -s usr/sbin %{buildroot}/sbin
ln -s usr/lib %{buildroot}/lib
ln -s usr/lib64 %{buildroot}/lib64
%files
%dir /usr/bin
%dir /usr/sbin
%dir /usr/lib
%dir /usr/lib64
/bin
/sbin
/lib
/lib64
",
    ),
    (
        "kiln-glibc",
        "BuildArch: x86_64
Provides: libc.so.6()(64bit)
%define __os_install_post %{nil}
%define _build_id_links none
%install
mkdir -p %{buildroot}/usr/lib64 %{buildroot}/usr/lib/x86_64-linux-gnu
cp -L /lib64/ld-linux-x86-64.so.2 %{buildroot}/usr/lib64/
cp -L /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libresolv.so.2 %{buildroot}/usr/lib/x86_64-linux-gnu/
%files
/usr/lib64/ld-linux-x86-64.so.2
/usr/lib/x86_64-linux-gnu/libc.so.6
/usr/lib/x86_64-linux-gnu/libresolv.so.2
",
    ),
    (
        "kiln-busybox",
        "BuildArch: x86_64
Requires: libc.so.6()(64bit)
%define __os_install_post %{nil}
%define _build_id_links none
%install
mkdir -p %{buildroot}/usr/bin
cp -L /bin/busybox %{buildroot}/usr/bin/busybox
%files
/usr/bin/busybox
",
    ),
];

/// The example's `/init` (`#!/bin/busybox sh`) with `packages`: a supermin.d.
fn example_init_with(dir: &Path, packages: &str) -> PathBuf {
    let sd = dir.join("supermin.d");
    fs::create_dir_all(&sd).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d");
    fs::copy(example.join("init.tar.gz"), sd.join("init.tar.gz")).unwrap();
    fs::write(sd.join("packages"), packages).unwrap();
    sd
}

/// From a merged root whose links belong to a package outside the closure: the chroot
/// has `links` (and no real directory beside them), and the ext2 appliance boots the
/// example's `#!/bin/busybox sh` init (with the host's kernel: the root has none).
fn merged_root_boots(root: &Path, work: &Path, links_expected: &[&str], closure: &[&str]) {
    let sd = example_init_with(work, "kiln-busybox\n");
    let out = work.join("chroot");
    let r = chroot(root, &sd, &out);
    assert_eq!(r.packages, closure);
    let (l, others) = top_level(&out);
    assert_eq!(l, links(links_expected));
    assert_eq!(others, links(&["/init", "/proc", "/usr"]));
    assert!(
        fs::metadata(out.join("lib64/ld-linux-x86-64.so.2"))
            .unwrap()
            .is_file()
    );
    let ext2 = work.join("ext2");
    let mut o = BuildOptions::new(vec![sd], Format::Ext2, ext2.clone());
    o.set_sysroot(Sysroot::new(root));
    o.kernel_roots = kiln::key::Roots::default();
    kiln::build(&o).unwrap();
    let console = boot(&ext2);
    assert!(
        console.contains("Hello from the kiln example appliance"),
        "console:\n{console}"
    );
}

#[test]
fn merged_rpm_root_brings_its_links_and_boots() {
    assert!(
        rpmroot::tools_present(),
        "rpm and rpmbuild: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = rpmroot::make_root_of(t.path(), MERGED_RPMS);
    assert!(
        fs::symlink_metadata(root.join("lib64"))
            .unwrap()
            .is_symlink()
    );
    merged_root_boots(
        &root,
        t.path(),
        &[
            "/bin -> usr/bin",
            "/lib -> usr/lib",
            "/lib64 -> usr/lib64",
            "/sbin -> usr/sbin",
        ],
        &["kiln-busybox-1.0-1.x86_64", "kiln-glibc-1.0-1.x86_64"],
    );
}

/// Arch's layout: `/lib64 → usr/lib` and `/sbin → usr/bin`, owned by `filesystem`.
const MERGED_PKGBUILD: &str = r#"pkgbase=kiln-merged
pkgname=(kiln-filesystem kiln-glibc kiln-busybox)
pkgver=1.0
pkgrel=1
arch=(x86_64)
license=(MIT)
options=(!strip !debug)

package_kiln-filesystem() {
  mkdir -p "$pkgdir/usr/bin" "$pkgdir/usr/lib"
  ln -s usr/bin "$pkgdir/bin"
  ln -s usr/bin "$pkgdir/sbin"
  ln -s usr/lib "$pkgdir/lib"
  ln -s usr/lib "$pkgdir/lib64"
}

package_kiln-glibc() {
  provides=('libc.so=6-64')
  mkdir -p "$pkgdir/usr/lib/x86_64-linux-gnu"
  cp -L /lib64/ld-linux-x86-64.so.2 "$pkgdir/usr/lib/"
  cp -L /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libresolv.so.2 \
    "$pkgdir/usr/lib/x86_64-linux-gnu/"
}

package_kiln-busybox() {
  depends=('libc.so=6-64')
  mkdir -p "$pkgdir/usr/bin"
  cp -L /bin/busybox "$pkgdir/usr/bin/busybox"
}
"#;

#[test]
fn merged_pacman_root_brings_its_links_and_boots() {
    assert!(
        pacroot::tools_present(),
        "makepkg, pacman, bsdtar, fakeroot: run scripts/setup-host"
    );
    let t = tempfile::tempdir().unwrap();
    let root = pacroot::make_root_of(t.path(), MERGED_PKGBUILD);
    assert!(
        fs::symlink_metadata(root.join("lib64"))
            .unwrap()
            .is_symlink()
    );
    merged_root_boots(
        &root,
        t.path(),
        &[
            "/bin -> usr/bin",
            "/lib -> usr/lib",
            "/lib64 -> usr/lib",
            "/sbin -> usr/bin",
        ],
        &["kiln-busybox-1.0-1.x86_64", "kiln-glibc-1.0-1.x86_64"],
    );
}
