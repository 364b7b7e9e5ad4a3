//! Loading the initrd's kernel modules from the list `/modules` (written by
//! kiln-initrd): one line per module, `NAME.ko: PREREQUISITE.ko …`, every prerequisite
//! on an earlier line.
//!
//! Modules are loaded by a few threads at once, each module as soon as its
//! prerequisites are loaded (hard dependencies, softdeps, and the order that gives disks
//! supermin's names), earliest line first. Loading is mostly CPU work in the kernel, but
//! device probes also wait (ATA port resets, SCSI scans, virtio devices): meanwhile the
//! other threads load the rest. `finit_module` returns only once the module's
//! asynchronous probes are done (the kernel's `async_synchronize_full`), so when every
//! module is loaded every disk the VM has is visible.
//!
//! Invariants: every module is tried exactly once; a failure is reported and counted,
//! never fatal, and does not hold back the modules after it (as with a sequential
//! loader, they are tried and fail on their own if they need it); the scheduler cannot
//! deadlock, because prerequisites on later lines or unknown names are ignored, so the
//! earliest module not yet started always becomes ready once the ones before it finish.

use std::fs;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::Log;

/// How many modules are loaded at once unless `kiln.jobs=N` says otherwise. A handful
/// is enough to keep one CPU busy while probes wait; more would only add contention on
/// the kernel's module locks.
pub(crate) const DEFAULT_JOBS: usize = 4;

/// One line of `/modules`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Module {
    pub(crate) name: String,
    /// Indices of earlier modules this one waits for.
    pub(crate) after: Vec<usize>,
}

/// Parse `/modules`. Lines of the older staged format (`- MS`) are ignored; a line
/// without `:` is a module without prerequisites.
pub(crate) fn parse_list(text: &str) -> Vec<Module> {
    let mut out: Vec<Module> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('-') || line.starts_with('#') {
            continue;
        }
        let (name, pre) = line.split_once(':').unwrap_or((line, ""));
        let after = pre
            .split_whitespace()
            .filter_map(|p| out.iter().position(|m| m.name == p))
            .collect();
        out.push(Module {
            name: name.trim().to_string(),
            after,
        });
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Waiting,
    Loading,
    Done,
}

struct Sched {
    steps: Vec<Step>,
    /// Index of the first module not yet started (all before it are started).
    first_waiting: usize,
    loaded: usize,
    failed: usize,
}

impl Sched {
    /// The earliest waiting module whose prerequisites are done, marked as loading.
    fn take_ready(&mut self, list: &[Module]) -> Option<usize> {
        let i = (self.first_waiting..list.len()).find(|&i| {
            self.steps[i] == Step::Waiting
                && list[i].after.iter().all(|&p| self.steps[p] == Step::Done)
        })?;
        self.steps[i] = Step::Loading;
        while self.first_waiting < list.len() && self.steps[self.first_waiting] != Step::Waiting {
            self.first_waiting += 1;
        }
        Some(i)
    }
}

/// Load one module file. `EEXIST` (built in or already loaded) counts as loaded.
fn load_one(name: &str) -> Result<(), rustix::io::Errno> {
    let path = format!("/{name}");
    let f = fs::File::open(&path)
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
    match rustix::system::finit_module(&f, c"", 0) {
        Err(rustix::io::Errno::EXIST) => Ok(()),
        r => r,
    }
}

/// Load every module listed in `/modules` (see the module doc). Returns (loaded, failed).
pub(crate) fn load_modules(log: &Log, jobs: usize) -> (usize, usize) {
    let text = match fs::read_to_string("/modules") {
        Ok(s) => s,
        Err(e) => {
            log.warn(&format!("cannot read /modules: {e}; loading no modules"));
            return (0, 0);
        }
    };
    let list = parse_list(&text);
    load_list(log, &list, jobs, load_one)
}

/// The scheduler, with the loader as a parameter (tests pass a fake one).
pub(crate) fn load_list(
    log: &Log,
    list: &[Module],
    jobs: usize,
    load: impl Fn(&str) -> Result<(), rustix::io::Errno> + Sync,
) -> (usize, usize) {
    let sched = Mutex::new(Sched {
        steps: vec![Step::Waiting; list.len()],
        first_waiting: 0,
        loaded: 0,
        failed: 0,
    });
    let wake = Condvar::new();
    let start = Instant::now();
    let worker = || {
        loop {
            let i = {
                let Ok(mut s) = sched.lock() else { return };
                loop {
                    if let Some(i) = s.take_ready(list) {
                        break i;
                    }
                    if s.first_waiting >= list.len() {
                        return;
                    }
                    s = match wake.wait(s) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                }
            };
            let t = Instant::now();
            let res = load(&list[i].name);
            if log.debug {
                log.info(&format!(
                    "module {}: {res:?} in {} ms",
                    list[i].name,
                    t.elapsed().as_millis()
                ));
            }
            if let Err(e) = res {
                log.warn(&format!("module {}: {e}", list[i].name));
            }
            if let Ok(mut s) = sched.lock() {
                s.steps[i] = Step::Done;
                match res {
                    Ok(()) => s.loaded += 1,
                    Err(_) => s.failed += 1,
                }
            }
            wake.notify_all();
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..jobs.min(list.len()) {
            scope.spawn(worker);
        }
        worker();
    });
    if log.debug {
        log.info(&format!(
            "{} modules in {} ms on {} threads",
            list.len(),
            start.elapsed().as_millis(),
            jobs.clamp(1, list.len().max(1))
        ));
    }
    match sched.into_inner() {
        Ok(s) => (s.loaded, s.failed),
        Err(p) => {
            let s = p.into_inner();
            (s.loaded, s.failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn quiet() -> Log {
        Log {
            quiet: true,
            debug: false,
        }
    }

    #[test]
    fn parses_prerequisites_on_earlier_lines_only() {
        let l = parse_list("a.ko:\n- 250\nb.ko: a.ko\nc.ko: b.ko z.ko d.ko\nd.ko\n\n");
        assert_eq!(
            l,
            [
                Module {
                    name: "a.ko".into(),
                    after: vec![]
                },
                Module {
                    name: "b.ko".into(),
                    after: vec![0]
                },
                // z.ko is unknown, d.ko comes later: both ignored.
                Module {
                    name: "c.ko".into(),
                    after: vec![1]
                },
                Module {
                    name: "d.ko".into(),
                    after: vec![]
                },
            ]
        );
    }

    #[test]
    fn every_module_once_after_its_prerequisites_and_concurrently() {
        // A chain a -> b -> c, and independent slow ones that must overlap.
        let text = "a.ko:\nslow1.ko:\nb.ko: a.ko\nslow2.ko:\nc.ko: b.ko slow1.ko\nbad.ko:\nafter_bad.ko: bad.ko\n";
        let list = parse_list(text);
        let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let (loaded, failed) = load_list(&quiet(), &list, DEFAULT_JOBS, |name| {
            let n = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            {
                let d = done.lock().unwrap();
                let m = list.iter().find(|m| m.name == name).unwrap();
                for &p in &m.after {
                    assert!(d.contains(&list[p].name), "{name} before {}", list[p].name);
                }
            }
            if name.starts_with("slow") {
                std::thread::sleep(Duration::from_millis(100));
            }
            done.lock().unwrap().push(name.to_string());
            running.fetch_sub(1, Ordering::SeqCst);
            if name == "bad.ko" {
                Err(rustix::io::Errno::NOEXEC)
            } else {
                Ok(())
            }
        });
        let mut d = done.into_inner().unwrap();
        d.sort();
        assert_eq!(
            d,
            [
                "a.ko",
                "after_bad.ko",
                "b.ko",
                "bad.ko",
                "c.ko",
                "slow1.ko",
                "slow2.ko"
            ]
        );
        // A failure is counted; what needs it is still tried.
        assert_eq!((loaded, failed), (6, 1));
        assert!(peak.load(Ordering::SeqCst) >= 2, "nothing ran concurrently");
    }

    #[test]
    fn one_job_loads_in_list_order() {
        let list = parse_list("a.ko:\nb.ko:\nc.ko: a.ko\nd.ko:\n");
        let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let r = load_list(&quiet(), &list, 1, |name| {
            done.lock().unwrap().push(name.to_string());
            Ok(())
        });
        assert_eq!(r, (4, 0));
        assert_eq!(done.into_inner().unwrap(), ["a.ko", "b.ko", "c.ko", "d.ko"]);
    }

    #[test]
    fn an_empty_list_loads_nothing() {
        assert_eq!(load_list(&quiet(), &[], DEFAULT_JOBS, |_| Ok(())), (0, 0));
    }
}
