//! Shared pieces of the cache tests: a fake builder that stamps one build id into all
//! three files, and a helper mode that lets the test binary act as a separate process.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_cache::{BuildMeta, Cache, GetOptions, Key, Pinned};

/// A unique build id, and the UUID the fake builder records for it.
pub fn new_build_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = nanos as u64 ^ ((std::process::id() as u64) << 40);
    format!(
        "{:08x}-{:04x}-0000-0000-{:012x}",
        std::process::id(),
        n & 0xffff,
        (n >> 8) & 0xffff_ffff_ffff
    )
}

/// Write kernel/initrd/root all holding `id`, slowly if `ms` > 0 (so a kill can land
/// in the middle), and log the build to `log`.
pub fn fake_build(dir: &Path, ms: u64, log: Option<&Path>) -> std::io::Result<BuildMeta> {
    let id = new_build_id();
    if let Some(log) = log {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(log)?;
        writeln!(f, "{} {id}", std::process::id())?;
    }
    for f in ["kernel", "initrd", "root"] {
        let mut file = fs::File::create(dir.join(f))?;
        for _ in 0..4 {
            file.write_all(id.as_bytes())?;
            file.write_all(b"\n")?;
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms / 12));
            }
        }
    }
    Ok(BuildMeta {
        root_uuid: Some(id),
    })
}

/// The build id of a pinned triple; panics if the three files disagree with each
/// other or with the recorded root UUID (a mixed triple).
pub fn verify_triple(kernel: &Path, initrd: &Path, root: &Path, uuid: Option<&str>) -> String {
    let k = fs::read_to_string(kernel).unwrap();
    let i = fs::read_to_string(initrd).unwrap();
    let r = fs::read_to_string(root).unwrap();
    assert_eq!(k, i, "kernel and initrd of different builds");
    assert_eq!(k, r, "kernel and root of different builds");
    let id = k.lines().next().unwrap().to_owned();
    assert_eq!(k, format!("{id}\n").repeat(4), "truncated file");
    assert_eq!(uuid, Some(id.as_str()), "root UUID of another build");
    id
}

pub fn verify(p: &Pinned) -> String {
    verify_triple(p.kernel(), p.initrd(), p.root(), p.root_uuid())
}

pub fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

/// Mark the slot of `key` as last used `n` seconds after a fixed moment in the past (a
/// slot's last use is its directory's mtime): tests set the order of use explicitly
/// instead of sleeping between uses and hoping the clock moved.
pub fn set_last_use(cache: &Cache, key: &str, n: u64) {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + n);
    fs::File::open(cache.path().join(format!("slot-{key}")))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// The names in the per-user directory, sorted.
pub fn names(cache: &Cache) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The name of the running test: libtest runs each test on a thread named after it.
pub fn this_test() -> String {
    std::thread::current()
        .name()
        .expect("called from a test's own thread")
        .to_owned()
}

/// The arguments that make this test binary run only the calling test, in this thread,
/// ignored or not: with `KILN_CACHE_HELPER` set, that test acts as the helper process
/// (see `helper_main`).
pub fn helper_args() -> Vec<String> {
    assert!(
        std::env::var_os("KILN_CACHE_HELPER").is_none(),
        "a helper process must not start helpers: begin the test with `if helper_main() {{ return; }}`"
    );
    let name = this_test();
    [
        "--exact",
        &name,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]
    .map(String::from)
    .to_vec()
}

/// Start this test binary as a helper process running `mode` (see `helper_main`): it
/// re-runs the calling test, which must begin with `if helper_main() { return; }`.
pub fn spawn_helper(mode: &str, root: &Path, key: &str, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(helper_args())
        .env("KILN_CACHE_HELPER", mode)
        .env("KILN_T_ROOT", root)
        .env("KILN_T_KEY", key)
        .env_remove("KILN_CACHE_CRASH_AT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The `RESULT ...` line of a finished helper, as key=value pairs.
pub fn helper_result(child: Child) -> Vec<(String, String)> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "helper failed: {:?}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT in helper output {text:?}"));
    line.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Read a running helper's `RESULT ...` line without waiting for it to exit.
pub fn read_result(child: &mut Child) -> Vec<(String, String)> {
    use std::io::BufRead;
    let out = child.stdout.as_mut().unwrap();
    let mut r = std::io::BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "helper ended without RESULT"
        );
        if let Some(rest) = line.trim_end().strip_prefix("RESULT ") {
            return rest
                .split(' ')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect();
        }
    }
}

pub fn get(r: &[(String, String)], k: &str) -> String {
    r.iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.clone())
        .unwrap()
}

/// The helper process: `get` locates/builds and prints the triple's id, then holds the
/// pin for `KILN_T_HOLD_MS` (and, with `KILN_T_HOLD_TO_EOF`, until its stdin is
/// closed); `gc` runs a gc that would remove every unpinned slot.
///
/// A test that starts helpers begins with `if helper_main() { return; }`: in the
/// helper (this binary re-run on that one test with `KILN_CACHE_HELPER` set) it does
/// the helper's work and returns true; in the test itself it returns false at once.
/// There is no pseudo-test named `helper` that passes without testing anything.
pub fn helper_main() -> bool {
    let Ok(mode) = std::env::var("KILN_CACHE_HELPER") else {
        return false;
    };
    let root = PathBuf::from(std::env::var("KILN_T_ROOT").unwrap());
    let key = key(&std::env::var("KILN_T_KEY").unwrap());
    let ms = |v: &str| {
        std::env::var(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0u64)
    };
    let cache = Cache::open(&root).unwrap();
    match mode.as_str() {
        "get" => {
            let log = std::env::var_os("KILN_T_LOG").map(PathBuf::from);
            let opts = GetOptions {
                force_rebuild: std::env::var_os("KILN_T_FORCE").is_some(),
                pin_to: std::env::var("KILN_T_PIN_TO")
                    .ok()
                    .map(|s| s.parse().unwrap()),
                ..GetOptions::default()
            };
            let build_ms = ms("KILN_T_BUILD_MS");
            let p = cache
                .get_or_build(&key, &opts, |dir| fake_build(dir, build_ms, log.as_deref()))
                .unwrap();
            let id = verify(&p);
            println!(
                "RESULT built={} id={id} waited={} pid={} pin={}",
                p.built(),
                p.waited_for().map(|w| w.to_string()).unwrap_or("-".into()),
                std::process::id(),
                p.pin_name()
            );
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_millis(ms("KILN_T_HOLD_MS")));
            if std::env::var_os("KILN_T_HOLD_TO_EOF").is_some() {
                // Hold the pin until the test closes our stdin: as long as it needs.
                std::io::copy(&mut std::io::stdin(), &mut std::io::sink()).unwrap();
            }
            drop(p);
        }
        "gc" => {
            let policy = kiln_cache::GcPolicy {
                keep: Some(0),
                max_size: None,
            };
            let r = cache.gc(&policy).unwrap();
            println!("RESULT removed={}", r.removed.len());
        }
        other => panic!("unknown helper mode {other}"),
    }
    true
}

/// A small xorshift generator, seeded from the clock (the seed is printed so a failing
/// run can be repeated with `KILN_T_SEED`).
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("KILN_T_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("random seed {seed} (set KILN_T_SEED to repeat)");
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
