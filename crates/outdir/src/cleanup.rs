//! Nothing half-made outlives an interrupted kiln: a process-wide registry of what to
//! remove when SIGINT, SIGTERM or SIGHUP ends the process.
//!
//! Whoever makes something that must not survive an interruption (the staging
//! directory beside `-o`, a cache build directory, a pin) registers how to remove it
//! and holds the returned [`Guard`] until the thing is published or removed normally;
//! dropping the guard forgets it. The first registration starts one thread that waits
//! for the three signals (with `signal-hook`: the signal handler itself only writes to a
//! pipe). When one arrives, that thread runs every registered cleanup, newest first,
//! and then ends the process by the same signal with its default action, so the parent
//! sees "killed by SIGINT" and a shell reports the conventional status 128+N.
//!
//! Invariants:
//! - Creation and registration are one step under the registry's lock
//!   ([`create`]), and the signal thread holds that lock from the moment it starts
//!   cleaning until the process is gone: nothing can be made after the cleanup ran, and
//!   nothing made before it is missed.
//! - A signal the process ignored when kiln started (`nohup` ignores SIGHUP, a
//!   background job in a script ignores SIGINT) stays ignored.
//! - A second signal during the cleanup does not cut it short.
//! - SIGKILL cannot be caught: what it leaves is recognised by its owners (an `flock`
//!   held by the live process) and removed by the next build, not here.
//!
//! # Example
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! # let t = tempfile::tempdir()?;
//! let dir = t.path().join(".out.kiln-staging");
//! let (dir, guard) = kiln_outdir::cleanup::create(|| {
//!     std::fs::create_dir(&dir)?;
//!     let d = dir.clone();
//!     Ok::<_, std::io::Error>((dir, move || std::fs::remove_dir_all(&d)))
//! })?;
//! std::fs::write(dir.join("half-written"), b"...")?;
//! // A Ctrl-C from here on removes `dir` before the process exits.
//! std::fs::rename(&dir, t.path().join("out"))?;
//! drop(guard); // published: nothing left to clean up
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

type Cleanup = Box<dyn Fn() -> io::Result<()> + Send + Sync>;

struct Registry {
    next: u64,
    entries: BTreeMap<u64, Cleanup>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    entries: BTreeMap::new(),
});
static INSTALL: Once = Once::new();

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the map intact; keep using it.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A registered cleanup; dropping it forgets the cleanup (the thing was published or
/// removed in the normal way).
#[must_use = "dropping the guard forgets the cleanup at once"]
#[derive(Debug)]
pub struct Guard {
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        registry().entries.remove(&self.id);
    }
}

/// Make something and register how to remove it, as one step with respect to the
/// signal thread. `make` runs under the registry's lock, so it must be short and must
/// not register anything itself; it returns the value and its cleanup (which may be
/// called with the thing already gone, and should then succeed or fail with
/// `NotFound`).
pub fn create<T, E, C>(make: impl FnOnce() -> Result<(T, C), E>) -> Result<(T, Guard), E>
where
    C: Fn() -> io::Result<()> + Send + Sync + 'static,
{
    install();
    let mut reg = registry();
    let (value, cleanup) = make()?;
    let id = reg.next;
    reg.next += 1;
    reg.entries.insert(id, Box::new(cleanup));
    Ok((value, Guard { id }))
}

/// Register the removal of something that already exists (when a signal between its
/// making and this call cannot leave it behind, e.g. it is inside a registered
/// directory).
pub fn register(cleanup: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> Guard {
    match create(|| Ok::<_, std::convert::Infallible>(((), cleanup))) {
        Ok(((), g)) => g,
        Err(never) => match never {},
    }
}

/// Start the signal thread (once per process). Called by [`create`]; callers that want
/// the handlers in place earlier may call it themselves.
pub fn install() {
    INSTALL.call_once(|| {
        let wanted: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
            .into_iter()
            .filter(|&s| !ignored(s))
            .collect();
        let mut signals = match signal_hook::iterator::Signals::new(&wanted) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot handle SIGINT/SIGTERM/SIGHUP ({e}); an interrupted build may leave files behind");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("kiln-cleanup".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    clean_up_and_die(sig);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the cleanup thread ({e}); an interrupted build may leave files behind");
        }
    });
}

/// Run every cleanup (newest first) and end the process by `sig` (or, where the signal
/// is blocked, with status 128+`sig`). Keeps the registry locked to the end, so nothing
/// new is made meanwhile. For a program that takes the signals itself (`sigwait`)
/// instead of leaving them to this module's thread.
pub fn clean_up_and_die(sig: i32) -> ! {
    let reg = registry();
    for cleanup in reg.entries.values().rev() {
        // Another thread may still be writing into what is removed: retry briefly.
        for attempt in 0..50 {
            match cleanup() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if attempt == 49 => {
                    eprintln!("kiln: could not clean up after the signal: {e}");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    let _ = signal_hook::low_level::emulate_default_handler(sig);
    // Not reached for these signals; the conventional status in any case.
    std::process::exit(128 + sig)
}

/// Was `sig` ignored (`SIG_IGN`) when the process started?
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current disposition into
    // `old`, a zero-initialised plain C struct owned by this frame.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_forgets_the_cleanup() {
        let before = registry().entries.len();
        let g = register(|| Ok(()));
        assert_eq!(registry().entries.len(), before + 1);
        drop(g);
        assert_eq!(registry().entries.len(), before);
    }

    #[test]
    fn a_failed_make_registers_nothing() {
        let before = registry().entries.len();
        let r = create(|| Err::<((), fn() -> io::Result<()>), _>("no"));
        assert_eq!(r.err(), Some("no"));
        assert_eq!(registry().entries.len(), before);
    }
}
