//! `kiln::supermin::build`, the front end's semantics, from Rust: `--if-newer` by key
//! and by mtime, `OUT` filled from a cache slot (linked, or copied sparsely across
//! filesystems), direct builds that leave the cache alone, and errors that leave
//! nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln::Format;
use kiln::locate::BuildFn;
use kiln::supermin::{KEY_FILE, Outcome, SuperminError, SuperminOptions, build, key_of};
use kiln_cache::BuildMeta;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/supermin.d")
}

/// A builder that writes small files and counts its calls.
fn counting_builder() -> (Arc<BuildFn>, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let b: Arc<BuildFn> = Arc::new(move |_req, dir| {
        n2.fetch_add(1, Ordering::SeqCst);
        for f in ["kernel", "initrd", "root"] {
            fs::write(dir.join(f), f)?;
        }
        Ok(BuildMeta::default())
    });
    (b, n)
}

/// A private supermin.d (editable) and a cache directory under `t`.
fn setup(t: &Path) -> (PathBuf, PathBuf) {
    let sd = t.join("supermin.d");
    fs::create_dir(&sd).unwrap();
    fs::write(sd.join("packages"), "bash\n").unwrap();
    let cache = t.join("cache");
    fs::create_dir(&cache).unwrap();
    (sd, cache)
}

fn opts(sd: &Path, out: &Path, cache: &Path, builder: Option<Arc<BuildFn>>) -> SuperminOptions {
    let mut o = SuperminOptions::new(vec![sd.to_path_buf()], Format::Ext2, out.to_path_buf());
    o.cachedir = Some(cache.to_path_buf());
    o.builder = builder;
    o.if_newer = true;
    o
}

fn slots(cache: &Path) -> Vec<String> {
    let user = cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()));
    let mut v: Vec<String> = fs::read_dir(user)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("slot-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn if_newer_fills_out_from_one_slot_and_rebuilds_only_when_the_key_changes() {
    let t = tempfile::tempdir().unwrap();
    let (sd, cache) = setup(t.path());
    let (b, calls) = counting_builder();
    let out = t.path().join("appliance.d");
    let o = opts(&sd, &out, &cache, Some(b));

    let r = build(&o).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::FromCache {
            built: true,
            copied: false
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let key = key_of(&o, &sd).unwrap();
    assert_eq!(r.key.as_ref(), Some(&key));
    assert_eq!(
        fs::read_to_string(out.join(KEY_FILE)).unwrap().trim(),
        key.as_str()
    );
    assert_eq!(names(&out), [KEY_FILE, "initrd", "kernel", "root"]);
    // Hard links to the slot: the slot's file and OUT's.
    assert_eq!(fs::metadata(out.join("root")).unwrap().nlink(), 2);
    assert_eq!(slots(&cache), [format!("slot-{}", key.as_str())]);
    let ino = fs::metadata(out.join("root")).unwrap().ino();

    // Unchanged: nothing is built or touched.
    let r = build(&o).unwrap();
    assert_eq!(r.outcome, Outcome::UpToDate);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fs::metadata(out.join("root")).unwrap().ino(), ino);

    // A second output of the same appliance reuses the slot.
    let out2 = t.path().join("second.d");
    let r = build(&opts(&sd, &out2, &cache, o.builder.clone())).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::FromCache {
            built: false,
            copied: false
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fs::metadata(out2.join("root")).unwrap().ino(), ino);

    // A file inside supermin.d rewritten in place (same size, supermin would not see
    // it): a new key, a new build.
    fs::write(sd.join("packages"), "dash\n").unwrap();
    let r = build(&o).unwrap();
    assert!(matches!(r.outcome, Outcome::FromCache { built: true, .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_ne!(r.key.as_ref(), Some(&key));
    assert_ne!(fs::metadata(out.join("root")).unwrap().ino(), ino);

    // A missing file in OUT means rebuild (from the slot: no build).
    fs::remove_file(out.join("initrd")).unwrap();
    let r = build(&o).unwrap();
    assert!(matches!(r.outcome, Outcome::FromCache { built: false, .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(out.join("initrd").is_file());

    // Nothing but what was asked for beside the outputs.
    assert_eq!(
        names(t.path()),
        ["appliance.d", "cache", "second.d", "supermin.d"]
    );
}

#[test]
fn bad_input_and_output_are_refused_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let (sd, cache) = setup(t.path());
    let (b, calls) = counting_builder();

    // OUT is a file: refused, untouched, before building.
    let file = t.path().join("out-file");
    fs::write(&file, "mine").unwrap();
    let e = build(&opts(&sd, &file, &cache, Some(b.clone()))).unwrap_err();
    assert!(matches!(e, SuperminError::Output(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "output {}: exists and is not a directory: remove it first",
            file.display()
        )
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "mine");
    // The same without --if-newer, and for a chroot.
    let mut o = opts(&sd, &file, &cache, Some(b.clone()));
    o.if_newer = false;
    assert!(matches!(build(&o), Err(SuperminError::Output(_))));
    o.format = Format::Chroot;
    assert!(matches!(build(&o), Err(SuperminError::Output(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // A symlink at OUT is never followed.
    let link = t.path().join("out-link");
    std::os::unix::fs::symlink(t.path().join("elsewhere"), &link).unwrap();
    let e = build(&opts(&sd, &link, &cache, Some(b.clone()))).unwrap_err();
    assert!(e.to_string().contains("is a symlink"), "{e}");

    // Missing inputs are named.
    let missing = t.path().join("nonexistent/supermin.d");
    let out = t.path().join("out");
    let e = build(&opts(&missing, &out, &cache, Some(b.clone()))).unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    let mut o = opts(&sd, &out, &cache, Some(b));
    o.inputs.clear();
    assert!(matches!(build(&o), Err(SuperminError::NoInputs)));

    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(slots(&cache).is_empty());
    assert_eq!(
        names(t.path()),
        ["cache", "out-file", "out-link", "supermin.d"]
    );
}

#[test]
fn a_failed_build_leaves_out_as_it_was_and_nothing_beside_it() {
    let t = tempfile::tempdir().unwrap();
    let (sd, cache) = setup(t.path());
    let out = t.path().join("appliance.d");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old"), "old").unwrap();
    let failing: Arc<BuildFn> = Arc::new(|_req, _dir| Err("no kernel for you".into()));
    let e = build(&opts(&sd, &out, &cache, Some(failing))).unwrap_err();
    let chain = {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    };
    assert!(chain.contains("no kernel for you"), "{chain}");
    assert_eq!(names(&out), ["old"]);
    assert_eq!(names(t.path()), ["appliance.d", "cache", "supermin.d"]);
    assert!(slots(&cache).is_empty());
}

/// Real builds of the bundled example with kiln's pipeline.
#[test]
fn without_if_newer_the_build_goes_straight_into_out_and_leaves_no_slot() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let out = t.path().join("appliance.d");
    let mut o = opts(&example(), &out, &cache, None);
    o.if_newer = false;
    o.copy_kernel = true;
    let r = build(&o).unwrap();
    assert_eq!(r.outcome, Outcome::Direct);
    let key = key_of(&o, &example()).unwrap();
    assert_eq!(r.key.as_ref(), Some(&key));
    assert_eq!(names(&out), [KEY_FILE, "initrd", "kernel", "root"]);
    assert_eq!(fs::metadata(out.join("root")).unwrap().nlink(), 1);
    assert!(slots(&cache).is_empty(), "{:?}", slots(&cache));
    let uuid = r.root_uuid.clone().expect("an ext2 root has a UUID");

    // The key file lets a later --if-newer see that OUT is current, without the cache.
    o.if_newer = true;
    assert_eq!(build(&o).unwrap().outcome, Outcome::UpToDate);
    assert!(slots(&cache).is_empty());

    // Through the cache the same appliance comes out: same root UUID.
    let out2 = t.path().join("cached.d");
    let r2 = build(&opts(&example(), &out2, &cache, None)).unwrap();
    assert!(matches!(r2.outcome, Outcome::FromCache { built: true, .. }));
    assert_eq!(r2.root_uuid.as_deref(), Some(uuid.as_str()));
    assert_eq!(
        fs::read(out.join("root")).unwrap(),
        fs::read(out2.join("root")).unwrap(),
        "direct and cached builds are byte-identical"
    );
}

#[test]
fn unkeyed_builds_use_supermins_mtime_rule() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let sd = t.path().join("supermin.d");
    fs::create_dir(&sd).unwrap();
    for f in fs::read_dir(example()).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), sd.join(f.file_name())).unwrap();
    }
    // dpkg's status file is compared too; a private database root keeps the test
    // independent of the host's package activity.
    let db = t.path().join("db");
    let status = db.join("var/lib/dpkg/status");
    fs::create_dir_all(status.parent().unwrap()).unwrap();
    fs::write(&status, "").unwrap();
    for p in [status.clone(), sd.clone()]
        .into_iter()
        .chain(fs::read_dir(&sd).unwrap().map(|f| f.unwrap().path()))
    {
        filetime_past(&p);
    }
    // ext2 with /packagelist (not covered by the key): supermin's rule.
    let out = t.path().join("appliance.d");
    let mut o = opts(&sd, &out, &cache, None);
    o.include_packagelist = true;
    o.key.sysroot = kiln::Sysroot::new(&db);
    assert!(
        !kiln::supermin::up_to_date_by_mtime(&o).unwrap(),
        "no output yet"
    );
    assert_eq!(build(&o).unwrap().outcome, Outcome::Direct);
    assert!(!out.join(KEY_FILE).exists());
    assert!(kiln::supermin::up_to_date_by_mtime(&o).unwrap());
    let ino = fs::metadata(out.join("root")).unwrap().ino();
    assert_eq!(build(&o).unwrap().outcome, Outcome::UpToDate);
    assert_eq!(fs::metadata(out.join("root")).unwrap().ino(), ino);
    // The package database changed: rebuild.
    fs::write(&status, "\n").unwrap();
    assert!(!kiln::supermin::up_to_date_by_mtime(&o).unwrap());
    filetime_past(&status);
    // An input newer than the output (supermin compares the input itself, here the
    // supermin.d directory): rebuild.
    fs::write(sd.join("excludefiles"), "-/nothing\n").unwrap();
    assert!(!kiln::supermin::up_to_date_by_mtime(&o).unwrap());
    filetime_past(&sd);
    assert!(kiln::supermin::up_to_date_by_mtime(&o).unwrap());

    // A chroot's root directory carries the file set's time (1970), older than any
    // input: supermin's rule always rebuilds it, which is safe.
    let chroot = t.path().join("chroot");
    let mut o = opts(&sd, &chroot, &cache, None);
    o.format = Format::Chroot;
    o.key.sysroot = kiln::Sysroot::new(&db);
    assert_eq!(build(&o).unwrap().outcome, Outcome::Direct);
    // (The build reads the same private system as the key: its files come from the
    // base image, its empty database gives no packages.)
    assert!(chroot.join("init").exists());
    assert!(!chroot.join(KEY_FILE).exists());
    assert_eq!(build(&o).unwrap().outcome, Outcome::Direct);
    assert!(slots(&cache).is_empty());
}

/// Set `p`'s mtime an hour back.
fn filetime_past(p: &Path) {
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let f = fs::File::options()
        .write(!p.is_dir())
        .read(p.is_dir())
        .open(p)
        .unwrap();
    f.set_modified(past).unwrap();
}

/// `OUT` on another filesystem than the cache (a tmpfs mounted here): a cached slot is
/// copied sparsely, a missing one is built straight into `OUT`; disk use stays that of
/// the data, not of the 4 GiB image.
#[test]
#[ignore = "needs root"]
fn out_on_another_filesystem_is_copied_sparsely_or_built_in_place() {
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mnt = t.path().join("tmpfs");
    fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1g", "kiln-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());

    // Missing slot: built straight into OUT, nothing in the cache.
    let out = mnt.join("a.d");
    let r = build(&opts(&example(), &out, &cache, None)).unwrap();
    assert_eq!(r.outcome, Outcome::Direct);
    assert!(slots(&cache).is_empty());
    // The 4 GiB image fits a 1 GiB tmpfs: only its data (the modules tree, mostly)
    // takes space.
    let used = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    assert_eq!(fs::metadata(out.join("root")).unwrap().len(), 4 << 30);
    assert!(used(&out.join("root")) < 1 << 30);
    fs::remove_dir_all(&out).unwrap();

    // With a slot (built by a caller on the cache's filesystem): a sparse copy.
    let near = t.path().join("near.d");
    build(&opts(&example(), &near, &cache, None)).unwrap();
    assert_eq!(slots(&cache).len(), 1);
    let out2 = mnt.join("b.d");
    let r = build(&opts(&example(), &out2, &cache, None)).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::FromCache {
            built: false,
            copied: true
        }
    );
    assert!(used(&out2.join("root")) <= used(&near.join("root")) + (1 << 20));
    assert_eq!(
        fs::read(near.join("root")).unwrap(),
        fs::read(out2.join("root")).unwrap()
    );
    assert_eq!(names(&mnt), ["b.d"]);
}
