//! Change detection: the key changes exactly when something that ends up in the
//! appliance changes, and locate rebuilds exactly then.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use kiln::key::{KernelEnv, KeyOptions, Roots, Sysroot, appliance_key};
use kiln::locate::{BuildFn, LocateOptions, locate};
use kiln_cache::BuildMeta;

/// A supermin appliance and the host state it depends on, all in a temp dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        let d = f.supermin_d();
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("base.tar.gz"), b"\x1f\x8b\x08 not really a tarball").unwrap();
        fs::write(d.join("packages"), "bash\ncoreutils\n").unwrap();
        fs::create_dir(f.host()).unwrap();
        fs::write(f.host().join("a.conf"), "a=1\n").unwrap();
        // Hostfiles patterns name paths of the system below the fixture's root.
        fs::write(d.join("hostfiles"), "/host/*.conf\n/host/missing\n").unwrap();
        fs::create_dir_all(f.status().parent().unwrap()).unwrap();
        fs::write(f.status(), "Package: bash\nStatus: install ok installed\n").unwrap();
        fs::write(f.path("vmlinuz-1"), "kernel one").unwrap();
        fs::write(f.path("vmlinuz-2"), "kernel two").unwrap();
        fs::create_dir_all(f.path("boot")).unwrap();
        fs::create_dir_all(f.path("modules")).unwrap();
        f
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn element(&self) -> PathBuf {
        self.path("appliance")
    }
    fn supermin_d(&self) -> PathBuf {
        self.element().join("supermin.d")
    }
    fn host(&self) -> PathBuf {
        self.path("host")
    }
    /// The installed system's root: its `var/lib/dpkg` is the package database, its
    /// `host` directory holds the files the hostfiles name.
    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    /// A file of the dpkg database.
    fn dpkg(&self, name: &str) -> PathBuf {
        self.root().join("var/lib/dpkg").join(name)
    }
    fn status(&self) -> PathBuf {
        self.dpkg("status")
    }
    fn options(&self) -> KeyOptions {
        KeyOptions {
            sysroot: Sysroot::new(self.root()),
            kernel: KernelEnv {
                kernel: Some(self.path("vmlinuz-1").into()),
                version: Some("1.0".into()),
                modules: Some(self.path("modules").into()),
                ..KernelEnv::default()
            },
            roots: Roots {
                boot: self.path("boot"),
                lib_modules: self.path("modules"),
            },
            ..KeyOptions::default()
        }
    }
    fn key(&self) -> String {
        self.key_with(&self.options())
    }
    fn key_with(&self, o: &KeyOptions) -> String {
        appliance_key(&self.supermin_d(), o).unwrap().to_string()
    }
}

/// Set a file's mtime to now + `secs` (a "touch" that surely differs).
fn touch(p: &Path, secs: u64) {
    let f = fs::File::options().append(true).open(p).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn nothing_changed_same_key() {
    let f = Fixture::new();
    assert_eq!(f.key(), f.key());
    // Touching supermin.d files without changing their content is no change: nothing
    // of it reaches the appliance.
    touch(&f.supermin_d().join("packages"), 100);
    let k = f.key();
    touch(&f.supermin_d().join("packages"), 200);
    assert_eq!(f.key(), k);
}

#[test]
fn editing_or_adding_a_supermin_d_file_changes_the_key() {
    let f = Fixture::new();
    let k0 = f.key();
    fs::write(f.supermin_d().join("packages"), "bash\ncoreutils\nlvm2\n").unwrap();
    let k1 = f.key();
    assert_ne!(k0, k1);
    fs::write(f.supermin_d().join("extra.tar.gz"), b"\x1f\x8b\x08 more").unwrap();
    let k2 = f.key();
    assert_ne!(k1, k2);
    // Also inside a subdirectory, which supermin recurses into.
    fs::create_dir(f.supermin_d().join("sub")).unwrap();
    fs::write(
        f.supermin_d().join("sub/excludefiles"),
        "-/usr/share/doc/*\n",
    )
    .unwrap();
    assert_ne!(f.key(), k2);
}

#[test]
fn package_upgrade_changes_the_key() {
    let f = Fixture::new();
    let k0 = f.key();
    // dpkg writes status-new and renames it over status.
    let new = f.dpkg("status-new");
    fs::write(
        &new,
        "Package: bash\nStatus: install ok installed\nVersion: 2\n",
    )
    .unwrap();
    fs::rename(&new, f.status()).unwrap();
    let k1 = f.key();
    assert_ne!(k0, k1);
    touch(&f.status(), 300);
    assert_ne!(f.key(), k1, "a touched package database counts as a change");
    let k2 = f.key();
    fs::write(f.dpkg("diversions"), "/bin/x\n/bin/x.distrib\npkg\n").unwrap();
    assert_ne!(f.key(), k2, "a new diversion counts as a change");
}

#[test]
fn editing_or_adding_a_hostfile_changes_the_key() {
    let f = Fixture::new();
    let k0 = f.key();
    fs::write(f.host().join("a.conf"), "a=2\n").unwrap();
    touch(&f.host().join("a.conf"), 400);
    let k1 = f.key();
    assert_ne!(k0, k1);
    fs::write(f.host().join("b.conf"), "b=1\n").unwrap();
    let k2 = f.key();
    assert_ne!(k1, k2, "a new file matching a glob");
    fs::write(f.host().join("missing"), "now here\n").unwrap();
    assert_ne!(f.key(), k2, "a named file appearing");
    // A non-matching file changes nothing.
    let k3 = f.key();
    fs::write(f.host().join("c.txt"), "").unwrap();
    assert_eq!(f.key(), k3);
}

#[test]
fn compressed_hostfiles_lists_are_followed() {
    let f = Fixture::new();
    fs::remove_file(f.supermin_d().join("hostfiles")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b"/host/*.conf\n").unwrap();
    fs::write(f.supermin_d().join("hostfiles.gz"), gz.finish().unwrap()).unwrap();
    let k0 = f.key();
    fs::write(f.host().join("a.conf"), "a=changed, longer\n").unwrap();
    assert_ne!(f.key(), k0);
}

#[test]
fn a_new_kernel_changes_the_key() {
    let f = Fixture::new();
    let k0 = f.key();
    let mut o = f.options();
    o.kernel.kernel = Some(f.path("vmlinuz-2").into());
    let k1 = f.key_with(&o);
    assert_ne!(k0, k1, "SUPERMIN_KERNEL pointing at another kernel");
    fs::write(f.path("vmlinuz-2"), "kernel two, rebuilt").unwrap();
    assert_ne!(f.key_with(&o), k1, "the same kernel path with new content");
    // Without overrides: a kernel installed into /boot or new modules.
    let mut o = f.options();
    o.kernel = KernelEnv::default();
    let k2 = f.key_with(&o);
    fs::write(f.path("boot/vmlinuz-9.9-amd64"), "new kernel").unwrap();
    let k3 = f.key_with(&o);
    assert_ne!(k2, k3);
    fs::create_dir(f.path("modules/9.9-amd64")).unwrap();
    fs::write(f.path("modules/9.9-amd64/modules.dep"), "").unwrap();
    assert_ne!(f.key_with(&o), k3);
    // Something unrelated in /boot does not.
    let k4 = f.key_with(&o);
    fs::write(f.path("boot/config-9.9-amd64"), "").unwrap();
    assert_eq!(f.key_with(&o), k4);
}

#[test]
fn size_host_cpu_and_ids_change_the_key() {
    let f = Fixture::new();
    let base = f.options();
    let k0 = f.key_with(&base);
    let variants = [
        KeyOptions {
            size: Some(1 << 30),
            ..base.clone()
        },
        KeyOptions {
            size: Some(2 << 30),
            ..base.clone()
        },
        KeyOptions {
            host_cpu: "aarch64".into(),
            ..base.clone()
        },
        KeyOptions {
            euid: base.euid + 1,
            ..base.clone()
        },
        KeyOptions {
            egid: base.egid + 1,
            ..base.clone()
        },
    ];
    // The default size given explicitly is the same appliance.
    let explicit_default = KeyOptions {
        size: Some(4 << 30),
        ..base.clone()
    };
    assert_eq!(f.key_with(&explicit_default), k0);
    let mut keys: Vec<String> = variants.iter().map(|o| f.key_with(o)).collect();
    keys.push(k0);
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "all different");
}

fn counting_builder(count: Arc<AtomicUsize>) -> Arc<BuildFn> {
    Arc::new(move |req, dir| {
        count.fetch_add(1, Ordering::SeqCst);
        for f in ["kernel", "initrd", "root"] {
            fs::write(dir.join(f), req.key.as_str())?;
        }
        Ok(BuildMeta::default())
    })
}

#[test]
fn locate_rebuilds_exactly_when_the_key_changes_and_keeps_appliances_side_by_side() {
    let a = Fixture::new();
    let b = Fixture::new();
    fs::write(b.supermin_d().join("packages"), "other\n").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let opts = |f: &Fixture| LocateOptions {
        path: Some(f.element().into()),
        cachedir: Some(cache.path().to_path_buf()),
        key: f.options(),
        builder: Some(counting_builder(count.clone())),
        ..LocateOptions::default()
    };
    let first = locate(&opts(&a)).unwrap();
    assert!(first.built());
    assert!(
        !locate(&opts(&a)).unwrap().built(),
        "nothing changed: no rebuild"
    );
    // Another supermin.d gets its own slot; alternating does not rebuild either.
    assert!(locate(&opts(&b)).unwrap().built());
    for _ in 0..3 {
        assert!(!locate(&opts(&a)).unwrap().built());
        assert!(!locate(&opts(&b)).unwrap().built());
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // A change rebuilds, once.
    fs::write(a.host().join("a.conf"), "a=3, and longer\n").unwrap();
    let changed = locate(&opts(&a)).unwrap();
    assert!(changed.built());
    assert_ne!(changed.key(), first.key());
    assert!(!locate(&opts(&a)).unwrap().built());
    assert_eq!(count.load(Ordering::SeqCst), 3);
    // The pinned files are the slot's, for the key the caller was given.
    assert_eq!(
        fs::read_to_string(changed.root().unwrap()).unwrap(),
        changed.key().unwrap().as_str()
    );
    let cache = kiln_cache::Cache::open(cache.path()).unwrap();
    assert_eq!(cache.list().unwrap().len(), 3);
}

#[test]
fn the_package_database_root_is_in_the_key() {
    let f = Fixture::new();
    let k = f.key();
    let other = f.path("other-root");
    fs::create_dir_all(other.join("var/lib/dpkg")).unwrap();
    let mut o = f.options();
    o.sysroot = Sysroot::new(&other);
    let none = f.key_with(&o);
    assert_ne!(none, k, "no database is not the fixture's database");
    fs::write(other.join("var/lib/dpkg/status"), "").unwrap();
    let appeared = f.key_with(&o);
    assert_ne!(appeared, none, "a database appearing changes the key");
    assert_ne!(appeared, k);
}

/// The root's merged-/usr links come with every appliance, so they are in the key:
/// turning a root merged changes it, other top-level links and real directories do not.
#[test]
fn turning_the_root_merged_changes_the_key() {
    use std::os::unix::fs::symlink;
    let f = Fixture::new();
    fs::create_dir_all(f.path("usr/lib64")).unwrap();
    fs::create_dir_all(f.path("usr/lib")).unwrap();
    fs::create_dir_all(f.path("bin")).unwrap();
    let classic = f.key();
    // A link to a file and a link outside /usr are not the layout.
    symlink("vmlinuz-1", f.path("vmlinuz")).unwrap();
    symlink("host", f.path("data")).unwrap();
    assert_eq!(f.key(), classic);
    symlink("usr/lib64", f.path("lib64")).unwrap();
    let merged = f.key();
    assert_ne!(merged, classic, "a /lib64 link into /usr changes the key");
    assert_eq!(f.key(), merged);
    fs::remove_file(f.path("lib64")).unwrap();
    symlink("usr/lib", f.path("lib64")).unwrap();
    assert_ne!(f.key(), merged, "another target changes the key");
}
