//! The search path walk, and one real build of libguestfs's appliance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use kiln::locate::{ApplianceKind, BuildFn, LocateError, LocateOptions, locate, split_path};
use kiln_cache::BuildMeta;

fn fake_builder() -> Arc<BuildFn> {
    Arc::new(|_req, dir| {
        for f in ["kernel", "initrd", "root"] {
            fs::write(dir.join(f), f)?;
        }
        Ok(BuildMeta::default())
    })
}

fn fixed(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in ["README.fixed", "kernel", "initrd", "root"] {
        fs::write(dir.join(f), f).unwrap();
    }
}

fn old_style(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let cpu = std::env::consts::ARCH;
    fs::write(dir.join(format!("vmlinuz.{cpu}")), "k").unwrap();
    fs::write(dir.join(format!("initramfs.{cpu}.img")), "i").unwrap();
}

fn supermin(dir: &Path) {
    fs::create_dir_all(dir.join("supermin.d")).unwrap();
    fs::write(dir.join("supermin.d/base.tar.gz"), "").unwrap();
    fs::write(dir.join("supermin.d/packages"), "bash\n").unwrap();
}

fn opts(path: &str, cache: &Path) -> LocateOptions {
    LocateOptions {
        path: Some(path.into()),
        cachedir: Some(cache.to_path_buf()),
        builder: Some(fake_builder()),
        ..LocateOptions::default()
    }
}

#[test]
fn empty_elements_mean_the_current_directory() {
    let els = split_path("a::b:".as_ref());
    assert_eq!(els, ["a", ".", "b", "."].map(std::path::PathBuf::from));
}

#[test]
fn elements_are_tried_in_order_each_for_supermin_then_fixed_then_old_style() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let (empty, fix, old, both) = (
        t.path().join("e"),
        t.path().join("f"),
        t.path().join("o"),
        t.path().join("b"),
    );
    fs::create_dir(&empty).unwrap();
    fixed(&fix);
    old_style(&old);
    // One element holding all three kinds: supermin wins.
    supermin(&both);
    fixed(&both);
    old_style(&both);
    let p = |els: &[&Path]| {
        els.iter()
            .map(|e| e.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };

    let a = locate(&opts(&p(&[&empty, &old, &fix]), &cache)).unwrap();
    assert_eq!(a.kind(), ApplianceKind::OldStyle);
    assert_eq!(a.root(), None);
    assert_eq!(
        a.kernel(),
        old.join(format!("vmlinuz.{}", std::env::consts::ARCH))
    );

    let a = locate(&opts(&p(&[&fix, &old]), &cache)).unwrap();
    assert_eq!(a.kind(), ApplianceKind::Fixed);
    assert_eq!(a.root(), Some(fix.join("root").as_path()));
    assert!(a.key().is_none());

    let a = locate(&opts(&p(&[&empty, &both, &fix]), &cache)).unwrap();
    assert_eq!(a.kind(), ApplianceKind::Supermin);
    assert_eq!(a.element(), both);
    assert!(
        a.kernel().starts_with(&cache),
        "served from the cache: {:?}",
        a.kernel()
    );
    assert!(a.key().is_some());

    // A supermin.d without a package list does not count.
    fs::remove_file(both.join("supermin.d/packages")).unwrap();
    assert_eq!(
        locate(&opts(&p(&[&both]), &cache)).unwrap().kind(),
        ApplianceKind::Fixed
    );
}

#[test]
fn nothing_found_names_the_whole_search_path() {
    let t = tempfile::tempdir().unwrap();
    let path = format!("{0}/one:{0}/two:", t.path().display());
    let err = locate(&opts(&path, t.path())).unwrap_err();
    assert!(matches!(err, LocateError::NotFound { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&path), "{msg}");
    assert!(msg.contains("LIBGUESTFS_PATH"), "{msg}");
}

/// kiln's example appliance, built by kiln's pipeline through the cache, boots from
/// its pin (kernel, initrd and root of one build, root UUID recorded by the build).
#[test]
fn located_example_appliance_boots_from_its_pin() {
    let t = tempfile::tempdir().unwrap();
    let element = t.path().join("hello");
    fs::create_dir_all(element.join("supermin.d")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d");
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), element.join("supermin.d").join(e.file_name())).unwrap();
    }
    let o = LocateOptions {
        path: Some(element.into()),
        cachedir: Some(t.path().to_path_buf()),
        ..LocateOptions::default()
    };
    let a = locate(&o).unwrap();
    assert!(a.built());
    let pin_dir = a.kernel().parent().unwrap();
    assert_eq!(
        kiln_boot::uuid_string(&kiln_boot::root_uuid(&pin_dir.join("root")).unwrap()),
        a.root_uuid().unwrap()
    );
    let out = kiln_boot::boot(
        pin_dir,
        &kiln_boot::BootOptions {
            timeout: std::time::Duration::from_secs(300),
            echo: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(out.init_ran, "console:\n{}", out.console);
}

/// The real thing: libguestfs's supermin.d, built by the default builder, cached and
/// pinned; a second locate is a hit with the same root UUID, read from the real ext2
/// superblock.
#[test]
fn real_libguestfs_appliance_is_built_once_and_pinned() {
    let element = Path::new("/usr/lib/x86_64-linux-gnu/guestfs");
    if !element.join("supermin.d").exists() {
        panic!("libguestfs's appliance is missing: run scripts/setup-host");
    }
    let t = tempfile::tempdir().unwrap();
    let o = LocateOptions {
        path: Some(element.into()),
        cachedir: Some(t.path().to_path_buf()),
        ..LocateOptions::default()
    };
    let a = locate(&o).unwrap();
    assert!(a.built());
    let uuid = a.root_uuid().expect("an ext2 root has a UUID").to_owned();
    let root = fs::File::open(a.root().unwrap()).unwrap();
    assert_eq!(
        kiln_image::read_uuid(&root)
            .unwrap()
            .map(|u| kiln_image::uuid_string(&u))
            .as_deref(),
        Some(uuid.as_str())
    );
    // The kernel is a real bzImage, the initrd non-empty.
    let k = fs::read(a.kernel()).unwrap();
    assert_eq!(&k[0x202..0x206], b"HdrS");
    assert!(fs::metadata(a.initrd()).unwrap().len() > 100_000);
    let b = locate(&o).unwrap();
    assert!(!b.built());
    assert_eq!(b.root_uuid(), Some(uuid.as_str()));
    assert_eq!(b.key(), a.key());
    assert_ne!(b.root(), a.root(), "each handle has its own pin");
}

#[test]
fn pins_must_belong_to_a_process_that_can_exit() {
    use kiln::locate::check_pin_target;
    let why = |pid| match check_pin_target(pid) {
        Err(LocateError::PinTarget { pid: p, why }) => {
            assert_eq!(p, pid);
            why
        }
        other => panic!("PID {pid}: {other:?}"),
    };
    assert!(why(1).contains("init"));
    assert!(why(2).contains("kernel thread"));
    assert!(why(0).contains("no such process"));
    assert!(why(4_194_305).contains("no such running process"));
    // This process, and its parent (the test harness's), can.
    check_pin_target(std::process::id()).unwrap();
    let t = tempfile::tempdir().unwrap();
    let e = locate(&LocateOptions {
        pin_to: Some(1),
        ..opts(&t.path().display().to_string(), t.path())
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot pin the appliance to PID 1: it is init"),
        "{e}"
    );
    // Refused before the search path was looked at or the cache was opened.
    assert!(fs::read_dir(t.path()).unwrap().next().is_none());
}
