//! Loading the initrd's kernel modules from the list `/modules` (written by
//! kiln-initrd): one line per module, `NAME.ko: PREREQUISITE.ko … [| BUS[,BUS] ALIAS …]`,
//! every prerequisite on an earlier line. A line with `|` is a device driver the init
//! loads only if a device on those buses has a matching `modalias` (see `devices.rs`),
//! decided when the module's turn comes, i.e. after its prerequisites (for a virtio
//! driver, the virtio transports that create the devices); `kiln.modules=all` loads
//! every module regardless, as supermin's initrd does.
//!
//! Modules are loaded by a few threads at once, each module as soon as its
//! prerequisites are loaded (hard dependencies, softdeps, and the order that gives disks
//! supermin's names), earliest line first. Loading is mostly CPU work in the kernel, but
//! device probes also wait (ATA port resets, SCSI scans, virtio devices): meanwhile the
//! other threads load the rest. `finit_module` returns only once the module's
//! asynchronous probes are done (the kernel's `async_synchronize_full`), so when every
//! module is loaded every disk the VM has is visible.
//!
//! Invariants: every module is tried (or skipped for want of a device) exactly once; a
//! failure is reported and counted, never fatal, and does not hold back the modules
//! after it, nor does a skipped driver (as with a sequential loader, they are tried and
//! fail on their own if they need it); the scheduler cannot deadlock, because prerequisites on later lines or unknown names are ignored, so the
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
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Module {
    pub(crate) name: String,
    /// Indices of earlier modules this one waits for.
    pub(crate) after: Vec<usize>,
    /// Load only if a device matches (a driver); `None`: always load.
    pub(crate) gate: Option<Gate>,
}

/// The devices a driver serves: sysfs bus names and modalias patterns.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Gate {
    pub(crate) buses: Vec<String>,
    pub(crate) aliases: Vec<String>,
}

/// What became of the modules.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) loaded: usize,
    pub(crate) failed: usize,
    /// Drivers not loaded because the VM has no device for them.
    pub(crate) skipped: usize,
}

/// Parse `/modules`. Lines of the older staged format (`- MS`) are ignored; a line
/// without `:` is a module without prerequisites; a gate without buses or aliases is
/// ignored (the module is always loaded).
pub(crate) fn parse_list(text: &str) -> Vec<Module> {
    let mut out: Vec<Module> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('-') || line.starts_with('#') {
            continue;
        }
        let (line, gate) = line.split_once('|').unwrap_or((line, ""));
        let (name, pre) = line.split_once(':').unwrap_or((line, ""));
        let after = pre
            .split_whitespace()
            .filter_map(|p| out.iter().position(|m| m.name == p))
            .collect();
        let mut words = gate.split_whitespace();
        let buses: Vec<String> = words
            .next()
            .into_iter()
            .flat_map(|b| b.split(','))
            .filter(|b| !b.is_empty())
            .map(str::to_string)
            .collect();
        let aliases: Vec<String> = words.map(str::to_string).collect();
        let gate = (!buses.is_empty() && !aliases.is_empty()).then_some(Gate { buses, aliases });
        out.push(Module {
            name: name.trim().to_string(),
            after,
            gate,
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
    counts: Counts,
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

#[derive(Clone, Copy)]
enum Outcome {
    Loaded,
    Failed,
    Skipped,
}

/// Marks module `i` done (loaded, failed or skipped) and wakes the waiting workers when
/// dropped.
struct Finish<'a> {
    sched: &'a Mutex<Sched>,
    wake: &'a Condvar,
    i: usize,
    outcome: Outcome,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut s = match self.sched.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.steps[self.i] = Step::Done;
        match self.outcome {
            Outcome::Loaded => s.counts.loaded += 1,
            Outcome::Failed => s.counts.failed += 1,
            Outcome::Skipped => s.counts.skipped += 1,
        }
        drop(s);
        self.wake.notify_all();
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

/// Load the modules listed in `/modules` (see the module doc): the drivers for the VM's
/// devices only, or every one with `all`.
pub(crate) fn load_modules(log: &Log, jobs: usize, all: bool) -> Counts {
    let text = match fs::read_to_string("/modules") {
        Ok(s) => s,
        Err(e) => {
            log.warn(&format!("cannot read /modules: {e}; loading no modules"));
            return Counts::default();
        }
    };
    let list = parse_list(&text);
    let sys = std::path::Path::new("/sys");
    load_list(log, &list, jobs, load_one, |g| {
        all || crate::devices::any_matches(sys, &g.buses, &g.aliases) != Some(false)
    })
}

/// The scheduler, with the loader and the device check as parameters (tests pass fake
/// ones).
pub(crate) fn load_list(
    log: &Log,
    list: &[Module],
    jobs: usize,
    load: impl Fn(&str) -> Result<(), rustix::io::Errno> + Sync,
    wanted: impl Fn(&Gate) -> bool + Sync,
) -> Counts {
    let sched = Mutex::new(Sched {
        steps: vec![Step::Waiting; list.len()],
        first_waiting: 0,
        counts: Counts::default(),
    });
    let wake = Condvar::new();
    let start = Instant::now();
    let worker = || {
        loop {
            let i = {
                let mut s = match sched.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                loop {
                    if let Some(i) = s.take_ready(list) {
                        break i;
                    }
                    if s.first_waiting >= list.len() {
                        return;
                    }
                    s = match wake.wait(s) {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                }
            };
            // Marks the module done however this iteration ends, so that a panic in
            // one worker cannot leave the others waiting for it forever.
            let mut finish = Finish {
                sched: &sched,
                wake: &wake,
                i,
                outcome: Outcome::Failed,
            };
            let t = Instant::now();
            if let Some(g) = &list[i].gate
                && !wanted(g)
            {
                finish.outcome = Outcome::Skipped;
                if log.debug {
                    log.info(&format!(
                        "module {}: no device for it, not loaded ({} ms)",
                        list[i].name,
                        t.elapsed().as_millis()
                    ));
                }
                continue;
            }
            let res = load(&list[i].name);
            if res.is_ok() {
                finish.outcome = Outcome::Loaded;
            }
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
        Ok(s) => s.counts,
        Err(p) => p.into_inner().counts,
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
                    ..Default::default()
                },
                Module {
                    name: "b.ko".into(),
                    after: vec![0],
                    ..Default::default()
                },
                // z.ko is unknown, d.ko comes later: both ignored.
                Module {
                    name: "c.ko".into(),
                    after: vec![1],
                    ..Default::default()
                },
                Module {
                    name: "d.ko".into(),
                    ..Default::default()
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
        let n = load_list(
            &quiet(),
            &list,
            DEFAULT_JOBS,
            |name| {
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
            },
            |_| true,
        );
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
        assert_eq!((n.loaded, n.failed, n.skipped), (6, 1, 0));
        assert!(peak.load(Ordering::SeqCst) >= 2, "nothing ran concurrently");
    }

    #[test]
    fn one_job_loads_in_list_order() {
        let list = parse_list("a.ko:\nb.ko:\nc.ko: a.ko\nd.ko:\n");
        let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let r = load_list(
            &quiet(),
            &list,
            1,
            |name| {
                done.lock().unwrap().push(name.to_string());
                Ok(())
            },
            |_| true,
        );
        assert_eq!((r.loaded, r.failed), (4, 0));
        assert_eq!(done.into_inner().unwrap(), ["a.ko", "b.ko", "c.ko", "d.ko"]);
    }

    #[test]
    fn a_panicking_load_does_not_hang_the_others() {
        let list = parse_list("a.ko:\nb.ko: a.ko\nc.ko:\nd.ko: c.ko\n");
        let done = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            load_list(
                &quiet(),
                &list,
                DEFAULT_JOBS,
                |name| {
                    if name == "a.ko" {
                        panic!("injected");
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                },
                |_| true,
            )
        }));
        // The panic is passed on once every other module was tried.
        assert!(r.is_err());
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn an_empty_list_loads_nothing() {
        let n = load_list(&quiet(), &[], DEFAULT_JOBS, |_| Ok(()), |_| true);
        assert_eq!(n, Counts::default());
    }

    #[test]
    fn gates_parse_and_old_lines_stay_ungated() {
        let l = parse_list(
            "virtio_pci.ko: | pci pci:v00001AF4d*sv*sd*bc*sc*i*\n\
             virtio_blk.ko: virtio_pci.ko | virtio virtio:d00000002v*\n\
             nfit.ko: | acpi,platform acpi*:ACPI0012:* acpi:ACPI0012:\n\
             ext4.ko:\n\
             odd.ko: |\n",
        );
        assert_eq!(l[1].after, [0]);
        assert_eq!(
            l[2].gate,
            Some(Gate {
                buses: vec!["acpi".into(), "platform".into()],
                aliases: vec!["acpi*:ACPI0012:*".into(), "acpi:ACPI0012:".into()],
            })
        );
        assert_eq!(l[3].gate, None);
        assert_eq!((l[4].name.as_str(), &l[4].gate), ("odd.ko", &None));
    }

    #[test]
    fn drivers_without_a_device_are_skipped_and_hold_nothing_back() {
        // ahci has no device; sd_mod waits for it (disk naming) and is still loaded.
        let list = parse_list(
            "libata.ko:\n\
             ahci.ko: libata.ko | pci pci:v*d*sv*sd*bc01sc06i01*\n\
             ata_piix.ko: libata.ko | pci pci:v00008086d00007010sv*sd*bc*sc*i*\n\
             sd_mod.ko: ahci.ko ata_piix.ko\n",
        );
        let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let n = load_list(
            &quiet(),
            &list,
            DEFAULT_JOBS,
            |name| {
                done.lock().unwrap().push(name.to_string());
                Ok(())
            },
            |g| g.aliases[0].contains("8086"),
        );
        assert_eq!((n.loaded, n.failed, n.skipped), (3, 0, 1));
        let d = done.into_inner().unwrap();
        assert_eq!(d.last().map(String::as_str), Some("sd_mod.ko"), "{d:?}");
        assert!(!d.contains(&"ahci.ko".to_string()));
    }
}
