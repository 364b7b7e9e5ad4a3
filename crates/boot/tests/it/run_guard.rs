//! `kiln_boot::run` as a library caller sees it, with stand-in qemus (shell scripts)
//! for the faults: the timeout counts from qemu's start even when the guest never
//! reads its spec, an interrupt wakes the loop at once, errors never point at a console
//! that is not there, and qemu is killed and reaped on every way out, also when the
//! caller runs kiln on a worker thread that then ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_boot::Accel;
use kiln_boot::run::{Interrupt, RunError, RunOptions, RunSpec, run};

/// Appliance files enough for `run` to start qemu (a root with an ext magic and UUID)
/// and a stand-in qemu running `body`, which logs its pid to `pid`.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new(body: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("kernel"), b"not a kernel").unwrap();
        fs::write(d.join("initrd"), b"not an initrd").unwrap();
        let mut root = vec![0u8; 4096];
        root[0x438] = 0x53;
        root[0x439] = 0xef;
        fs::write(d.join("root"), root).unwrap();
        let q = d.join("qemu");
        fs::write(
            &q,
            format!(
                "#!/bin/sh\necho $$ > '{}'\n{body}\n",
                d.join("pid").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&q, fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }

    fn opts(&self, timeout: Option<Duration>) -> RunOptions {
        let d = self.dir.path();
        RunOptions {
            kernel: d.join("kernel"),
            initrd: d.join("initrd"),
            root: d.join("root"),
            memory_mib: 256,
            cpus: 1,
            accel: Accel::Tcg,
            qemu: d.join("qemu"),
            memo: None,
            timeout,
            append: Vec::new(),
            echo_console: false,
            interrupt: None,
            states: None,
        }
    }

    /// The stand-in's pid, once it has started.
    fn pid(&self) -> u32 {
        let p = self.dir.path().join("pid");
        let t = Instant::now();
        loop {
            if let Ok(s) = fs::read_to_string(&p)
                && let Ok(n) = s.trim().parse()
            {
                return n;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the stand-in never ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gone entirely: killed and reaped (a zombie would still be in /proc).
    fn assert_gone(&self) {
        let pid = self.pid();
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "qemu stand-in {pid} is still there: {}",
            fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
        );
    }
}

fn spec() -> RunSpec {
    RunSpec {
        argv: vec!["true".into()],
        ..Default::default()
    }
}

/// A qemu whose guest never reads anything: `--timeout` still ends the run on time
/// (the spec is not written before the loop), on a worker thread that then ends, and
/// the error says the guest printed nothing instead of pointing at an empty console.
#[test]
fn timeout_from_spawn_on_a_worker_thread() {
    let f = Fake::new("exec sleep 600");
    let opts = f.opts(Some(Duration::from_secs(2)));
    let t = Instant::now();
    let r = std::thread::spawn(move || run(&opts, &spec()))
        .join()
        .unwrap();
    let took = t.elapsed();
    let e = r.unwrap_err();
    assert!(matches!(e, RunError::Timeout { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("within 2 s") && m.contains("the guest printed nothing on its console"),
        "{m}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    f.assert_gone();
}

/// An interrupt before the command started stops the VM at once (the loop wakes on
/// it; nothing polls a flag).
#[test]
fn an_interrupt_wakes_the_loop() {
    let f = Fake::new("exec sleep 600");
    let mut opts = f.opts(Some(Duration::from_secs(300)));
    let i = Arc::new(Interrupt::new().unwrap());
    opts.interrupt = Some(Arc::clone(&i));
    let h = std::thread::spawn(move || run(&opts, &spec()));
    let _ = f.pid();
    let t = Instant::now();
    i.raise(15);
    let e = h.join().unwrap().unwrap_err();
    assert!(matches!(e, RunError::Interrupted { signal: 15 }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    f.assert_gone();
}

/// qemu that exits 0 at once without a word (what `--memory 32` or a truncated
/// bzImage looked like): the error says so in words, not "exit status: 0" above an
/// empty console.
#[test]
fn a_qemu_that_ends_silently_is_described() {
    let f = Fake::new("exit 0");
    let e = run(&f.opts(None), &spec()).unwrap_err();
    let m = e.to_string();
    assert_eq!(
        m,
        "the VM stopped before the command finished (qemu exited with status 0); the guest printed nothing on its console"
    );
    f.assert_gone();

    let f = Fake::new("echo 'qemu-system-x86_64: cannot set up guest memory' >&2; exit 1");
    let m = run(&f.opts(None), &spec()).unwrap_err().to_string();
    assert!(
        m.contains("(qemu exited with status 1); qemu said: qemu-system-x86_64: cannot set up guest memory; the guest printed nothing"),
        "{m}"
    );
}

/// A console that says a lot keeps only its end (and a panic whole).
#[test]
fn a_chatty_console_is_bounded_and_a_panic_kept() {
    let f = Fake::new(
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i padding padding padding padding\"; i=$((i+1)); done\n\
         echo '[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs'\n\
         i=0; while [ $i -lt 3000 ]; do echo \"after $i padding padding padding padding\"; i=$((i+1)); done\n\
         exit 0",
    );
    let e = run(&f.opts(None), &spec()).unwrap_err();
    let RunError::Panic { panic } = &e else {
        panic!("{e}")
    };
    assert!(panic.contains("Unable to mount root fs"), "{panic}");
    assert!(panic.contains("line 2999 padding"), "{panic}");
    assert!(panic.len() < 32 * 1024, "{}", panic.len());
}

/// Out-of-range values are refused before qemu starts, saying the range.
#[test]
fn ranges_checked_by_the_library() {
    let f = Fake::new("exec sleep 600");
    let mut o = f.opts(None);
    o.memory_mib = 0;
    let m = run(&o, &spec()).unwrap_err().to_string();
    assert!(m.contains("--memory 0: give 128 to"), "{m}");
    let mut o = f.opts(Some(Duration::ZERO));
    o.cpus = 1;
    assert!(run(&o, &spec()).is_err());
    assert!(
        !Path::new(&f.dir.path().join("pid")).exists(),
        "qemu was started"
    );
}
