//! The real binary under hostile use: non-UTF-8 paths, a file as the output directory,
//! an output on another filesystem than the cache, `kiln locate -- CMD` against a
//! concurrent `kiln gc`, and pins that could never end. Each case asserts the exit
//! code, a message naming the input, and nothing left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{example_dir, kiln, text};

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Builds write 4 GiB sparse images; keep them serial.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `dir/<0xff 0xfe>`: a directory name that is not UTF-8.
fn bad_dir(dir: &Path) -> PathBuf {
    let mut v = dir.as_os_str().as_bytes().to_vec();
    v.extend_from_slice(b"/\xff\xfe");
    let p = PathBuf::from(OsString::from_vec(v));
    fs::create_dir(&p).unwrap();
    p
}

/// A copy of the bundled example's supermin.d under `dir`.
fn example_copy(dir: &Path) -> PathBuf {
    let sd = dir.join("supermin.d");
    fs::create_dir_all(&sd).unwrap();
    for f in fs::read_dir(example_dir().join("supermin.d")).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), sd.join(f.file_name())).unwrap();
    }
    sd
}

fn run(args: &[&std::ffi::OsStr], cache: &Path) -> Output {
    Command::new(kiln())
        .args(args)
        .env("LIBGUESTFS_CACHEDIR", cache)
        .env_remove("SUPERMIN_KERNEL")
        .env_remove("SUPERMIN_MODULES")
        .env_remove("SUPERMIN_KERNEL_VERSION")
        .output()
        .unwrap()
}

macro_rules! os {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

fn user_dir(cache: &Path) -> PathBuf {
    cache.join(format!(".guestfs-{}", rustix::process::geteuid().as_raw()))
}

/// Entries of the per-user cache directory starting with `prefix`.
fn entries(cache: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(user_dir(cache))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_panic(o: &Output) {
    assert!(!stderr(o).contains("panicked"), "{}", text(o));
}

#[test]
fn non_utf8_paths_are_used_byte_exactly_and_json_refuses_them_naming_the_path() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let b = bad_dir(t.path());
    let app = b.join("app");
    let sd = example_copy(&app);
    let cache = b.join("cache");
    fs::create_dir(&cache).unwrap();

    // locate: the printed paths are the real files, byte for byte.
    let o = run(
        &[
            "locate".as_ref(),
            "--path".as_ref(),
            app.as_os_str(),
            "--cachedir".as_ref(),
            cache.as_os_str(),
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<&[u8]> = o.stdout.split(|&c| c == b'\n').collect();
    assert_eq!(lines.len(), 4, "{}", text(&o));
    for l in &lines[..3] {
        let p = Path::new(std::ffi::OsStr::from_bytes(l));
        assert!(p.starts_with(&cache), "{}", p.display());
        assert!(p.is_file(), "{} does not exist", p.display());
    }
    let pins = entries(&cache, "pin-");

    // --json: an error naming the path, before a pin exists.
    let o = run(
        &[
            "locate".as_ref(),
            "--json".as_ref(),
            "--path".as_ref(),
            app.as_os_str(),
            "--cachedir".as_ref(),
            cache.as_os_str(),
        ],
        &cache,
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains("is not valid UTF-8") && err.contains(&b.display().to_string()),
        "{err}"
    );
    assert_eq!(entries(&cache, "pin-"), pins);

    // The front end and kiln build take such inputs and outputs.
    let out = b.join("out");
    let o = run(
        &[
            "supermin".as_ref(),
            "--build".as_ref(),
            "--if-newer".as_ref(),
            "-f".as_ref(),
            "ext2".as_ref(),
            sd.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("root").is_file());
    assert!(
        fs::metadata(out.join("root")).unwrap().nlink() >= 2,
        "linked"
    );
    // qemu gets the real (non-UTF-8) file names: the example boots to its greeting.
    let o = run(
        &[
            "boot".as_ref(),
            "--timeout".as_ref(),
            "300".as_ref(),
            out.as_os_str(),
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Hello from the kiln example appliance"),
        "{}",
        text(&o)
    );
    let chroot = b.join("chroot");
    let o = run(
        &[
            "build".as_ref(),
            "-f".as_ref(),
            "chroot".as_ref(),
            sd.as_os_str(),
            "-o".as_ref(),
            chroot.as_os_str(),
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(chroot.join("bin").exists());
    // build --json refuses before building.
    let chroot2 = b.join("chroot2");
    let o = run(
        &[
            "build".as_ref(),
            "--json".as_ref(),
            "-f".as_ref(),
            "chroot".as_ref(),
            sd.as_os_str(),
            "-o".as_ref(),
            chroot2.as_os_str(),
        ],
        &cache,
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains(&chroot2.display().to_string()));
    let o = run(
        &["gc".as_ref(), "--cachedir".as_ref(), cache.as_os_str()],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));

    // Names that must be text: a clear refusal, no panic.
    let bad = OsString::from_vec(b"x\xff".to_vec());
    let o = run(
        &[
            "build".as_ref(),
            "-f".as_ref(),
            "ext2".as_ref(),
            "--host-cpu".as_ref(),
            &bad,
            sd.as_os_str(),
            "-o".as_ref(),
            b.join("o2").as_os_str(),
        ],
        &cache,
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("invalid UTF-8"), "{}", text(&o));
    let o = run(
        &[
            "supermin".as_ref(),
            "--build".as_ref(),
            "-f".as_ref(),
            "ext2".as_ref(),
            "--host-cpu".as_ref(),
            &bad,
            sd.as_os_str(),
            "-o".as_ref(),
            b.join("o3").as_os_str(),
        ],
        &cache,
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("--host-cpu: argument 'x\u{fffd}' is not valid UTF-8"));
    assert_eq!(names(&b), ["app", "cache", "chroot", "out"]);
}

#[test]
fn supermin_if_newer_refuses_a_file_as_output_before_building_anything() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let file = t.path().join("appliance");
    fs::write(&file, "not a directory").unwrap();
    let input = example_dir().join("supermin.d");
    for if_newer in [true, false] {
        let started = Instant::now();
        let mut args = vec!["supermin", "--build", "-f", "ext2"];
        if if_newer {
            args.push("--if-newer");
        }
        let (i, f) = (input.to_str().unwrap(), file.to_str().unwrap());
        args.extend([i, "-o", f]);
        let o = run(&args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(), &cache);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(
            stderr(&o).trim_end(),
            format!(
                "supermin: output {}: exists and is not a directory: remove it first",
                file.display()
            )
        );
        // Refused at once: nothing was built, nothing was cached.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(entries(&cache, "").is_empty(), "{:?}", entries(&cache, ""));
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "not a directory");
    assert_eq!(names(t.path()), ["appliance", "cache"]);
}

#[test]
fn supermin_without_if_newer_builds_into_out_and_leaves_no_cache_slot() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let input = example_dir().join("supermin.d");
    let out = t.path().join("appliance.d");
    let (i, o_) = (input.to_str().unwrap(), out.to_str().unwrap());
    let o = run(
        os!["supermin", "--build", "-v", "-f", "ext2", i, "-o", o_],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("into the output"),
        "{}",
        text(&o)
    );
    assert_eq!(names(&out), [".kiln-key", "initrd", "kernel", "root"]);
    assert!(entries(&cache, "slot-").is_empty());
    assert!(entries(&cache, "tmp-").is_empty());
    // --if-newer on the result: up to date, still no slot.
    let o = run(
        os![
            "supermin",
            "--build",
            "-v",
            "--if-newer",
            "-f",
            "ext2",
            i,
            "-o",
            o_
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("does not need rebuilding"));
    assert!(entries(&cache, "slot-").is_empty());
    assert_eq!(names(t.path()), ["appliance.d", "cache"]);
}

/// `-o` on a tmpfs of 1 GiB while the cache is on disk: the 4 GiB root is built into
/// it or copied sparsely, and the tmpfs holds only the image's data.
#[test]
#[ignore = "needs root"]
fn supermin_output_on_tmpfs_takes_only_the_images_data() {
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1g", "kiln-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let used = |p: &Path| {
        let s = rustix::fs::statvfs(p).unwrap();
        (s.f_blocks - s.f_bfree) * s.f_frsize
    };
    let input = example_dir().join("supermin.d");
    let i = input.to_str().unwrap();
    let out = mnt.join("appliance.d");
    let o_ = out.to_str().unwrap();

    // No slot yet: built straight into OUT, no slot made.
    let o = run(
        os![
            "supermin",
            "--build",
            "-v",
            "--if-newer",
            "-f",
            "ext2",
            i,
            "-o",
            o_
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::metadata(out.join("root")).unwrap().len(), 4 << 30);
    assert!(entries(&cache, "slot-").is_empty());
    let direct = used(&mnt);
    assert!(direct < 1 << 30, "{direct}");
    fs::remove_dir_all(&out).unwrap();

    // A slot made by a build on the cache's filesystem, then copied sparsely.
    let near = t.path().join("near.d");
    let o = run(
        os![
            "supermin",
            "--build",
            "--if-newer",
            "-f",
            "ext2",
            i,
            "-o",
            near.to_str().unwrap()
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(entries(&cache, "slot-").len(), 1);
    let o = run(
        os![
            "supermin",
            "--build",
            "-v",
            "--if-newer",
            "-f",
            "ext2",
            i,
            "-o",
            o_
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("copied sparsely"),
        "{}",
        text(&o)
    );
    let copied = used(&mnt);
    let data = fs::metadata(near.join("root")).unwrap().blocks() * 512;
    assert!(copied < data + (64 << 20), "{copied} vs {data}");
    assert_eq!(
        fs::read(out.join("root")).unwrap(),
        fs::read(near.join("root")).unwrap()
    );
    assert_eq!(names(&mnt), ["appliance.d"]);
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn locate_runs_a_command_with_the_files_pinned_through_a_concurrent_gc() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let (started, go, seen) = (
        t.path().join("started"),
        t.path().join("go"),
        t.path().join("seen"),
    );
    let script = format!(
        "touch {s}; while [ ! -e {g} ]; do sleep 0.05; done; \
         test -f \"$KILN_KERNEL\" && test -f \"$KILN_INITRD\" && test -f \"$KILN_ROOT\" && \
         dumpe2fs -h \"$KILN_ROOT\" 2>/dev/null | grep -q \"$KILN_ROOT_UUID\" && \
         echo \"$$ $KILN_KEY\" > {seen}; exit 7",
        s = started.display(),
        g = go.display(),
        seen = seen.display()
    );
    let path = example_dir();
    let child = Command::new(kiln())
        .arg("locate")
        .arg("--path")
        .arg(&path)
        .arg("--cachedir")
        .arg(&cache)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the command to start", || started.exists());
    let pins = entries(&cache, "pin-");
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert!(
        pins[0].starts_with(&format!("pin-{}-", child.id())),
        "pinned to kiln/CMD: {pins:?}"
    );
    // gc with nothing to keep, while CMD runs: the pin and its files stay.
    let o = run(
        os!["gc", "--keep", "0", "--cachedir", cache.to_str().unwrap()],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(entries(&cache, "pin-"), pins);
    fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(out.stdout.is_empty(), "nothing printed: {}", text(&out));
    let seen = fs::read_to_string(&seen).unwrap();
    assert!(
        seen.starts_with(&format!("{} ", child_pid(&pins[0]))),
        "CMD ran as kiln's process: {seen}"
    );
    // The pin ends with CMD: the next gc removes it.
    let o = run(os!["gc", "--cachedir", cache.to_str().unwrap()], &cache);
    assert!(o.status.success(), "{}", text(&o));
    assert!(entries(&cache, "pin-").is_empty());
    assert!(entries(&cache, "tmp-").is_empty());
}

fn child_pid(pin: &str) -> &str {
    pin.split('-').nth(1).unwrap()
}

#[test]
fn pins_that_could_never_end_or_never_start_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let path = example_dir();
    let (p, c) = (path.to_str().unwrap(), cache.to_str().unwrap());
    for (pid, why) in [
        ("1", "it is init, which never exits"),
        ("2", "kernel thread"),
        ("4194305", "no such running process"),
        ("0", "no such process"),
    ] {
        let o = run(
            os!["locate", "--pin-to", pid, "--path", p, "--cachedir", c],
            &cache,
        );
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("cannot pin the appliance to PID {pid}: ")) && err.contains(why),
            "{err}"
        );
        assert!(o.stdout.is_empty());
        // Refused before any work.
        assert!(entries(&cache, "").is_empty(), "{:?}", entries(&cache, ""));
    }
    // A command that cannot run: env(1)'s status, the command named, the pin removed.
    let o = run(
        os![
            "locate",
            "--path",
            p,
            "--cachedir",
            c,
            "--",
            "/nonexistent/cmd"
        ],
        &cache,
    );
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    assert!(stderr(&o).contains("cannot run /nonexistent/cmd"));
    assert!(entries(&cache, "pin-").is_empty());
    // --pin-to and --json make no sense with a command.
    let o = run(
        os![
            "locate",
            "--json",
            "--path",
            p,
            "--cachedir",
            c,
            "--",
            "true"
        ],
        &cache,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
