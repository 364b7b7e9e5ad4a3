//! kiln's per-user appliance cache: keyed slots, build locks, per-process pins and
//! garbage collection.
//!
//! The cache does not know how an appliance is built. [`Cache::get_or_build`] takes a
//! [`Key`] and a closure that writes `kernel`, `initrd` and `root` into a private
//! directory inside the cache; whatever the key means is the caller's business.
//!
//! # Layout of `<root>/.guestfs-<euid>/`
//!
//! - `slot-<key>/{kernel,initrd,root,slot-meta}`: one immutable appliance per key. It
//!   appears by a single rename of a complete directory and is never modified after.
//! - `tmp-<key>-<pid>-<n>/`: a build in progress, locked (flock) by its builder.
//! - `lock-<key>`: the build lock; its holder writes its PID into it.
//! - `pin-<pid>-<start>-<n>-<key>/{kernel,initrd,root}`: hard links of one slot's files
//!   for one process (PID and start time, so a reused PID does not keep them alive).
//! - `trash-<key>-<pid>-<n>/`: a slot being removed.
//! - `state-<key>-<shape>`: a saved VM start state of slot `<key>` (`kiln run`'s warm
//!   start), written privately and published by one rename; `lock-state-<key>-<shape>`
//!   lets one process write it. Removed with the slot (see `state`).
//! - private files (`Cache::read_private`, `Cache::publish_private`): small records a
//!   caller derives from the host, mode 0600, published by one rename; kiln keeps its
//!   owner index there (`owners-<root>-<fingerprint>`, one per installed system).
//!
//! Other names (libguestfs's own `appliance.d`, `lock`, …) are left alone.
//!
//! For the crash tests, `KILN_CACHE_CRASH_AT=<step>` makes the process SIGKILL itself at
//! that step of a build, publish or gc (`after-build`, `before-pin`, `pin-partial`,
//! `before-publish`, `after-publish`, `after-exchange`, `gc-after-rename`, and for a
//! saved VM state `state-before-publish`). The hook
//! exists only with the `test-hooks` cargo feature, which this crate's and kiln-cli's
//! tests turn on (as dev-dependencies); the shipped kiln binary does not contain it.
//!
//! # Invariants
//!
//! 1. A pin's three files come from one build: they are linked from one directory
//!    handle while holding a shared lock on it, and slot directories never change.
//! 2. Pinned files never change or vanish while the pin exists; gc removes a pin only
//!    when its process (PID + start time) is gone.
//! 3. One builder per key at a time (exclusive flock on `lock-<key>`); others wait and
//!    reuse the result.
//! 4. A crash leaves only `tmp-`, `trash-` or dead `pin-` entries, which no reader
//!    ever uses and gc removes.
//! 5. The directory is checked (owner = euid, a real directory, not group/other
//!    writable) and then only used through its handle, with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`
//!    everywhere; entries that are links, FIFOs or foreign-owned are refused with a
//!    `security:` error and never followed or opened for reading.
//! 6. Names, ownership checks and outputs use the effective UID/GID (setuid-safe).
//! 7. SIGINT, SIGTERM or SIGHUP during a build removes its `tmp-` directory and this
//!    process's pins before the process exits (`kiln_outdir::cleanup`); SIGKILL's leave
//!    invariant 4.
//! 8. Of the slots of one source ([`GetOptions::source`]) only the newest build stays
//!    once nothing pins the older ones; `keep` counts sources.
//!
//! # Example
//!
//! ```
//! use kiln_cache::{BuildMeta, Cache, GetOptions, Key};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let root = tmp.path();
//! // `Cache::open_default()` uses LIBGUESTFS_CACHEDIR, TMPDIR or /var/tmp.
//! let cache = Cache::open(root)?.on_wait(|w| eprintln!("{w}"));
//! let key = Key::new("0123456789abcdef")?;
//! let pinned = cache.get_or_build(&key, &GetOptions::default(), |dir| {
//!     for f in ["kernel", "initrd", "root"] {
//!         std::fs::write(dir.join(f), b"...")?;
//!     }
//!     Ok::<_, std::io::Error>(BuildMeta::default())
//! })?;
//! assert!(pinned.built());
//! println!("{} {} {}", pinned.kernel().display(), pinned.initrd().display(), pinned.root().display());
//! // The pin (and with it the guarantee that the files stay put) ends here.
//! drop(pinned);
//! // The next call finds the slot.
//! let again = cache.lookup(&key, None)?.expect("cached");
//! assert!(!again.built());
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! `cache` (opening, lookup, get-or-build), `security` (checks of the directory and its
//! entries), `lock` (the build lock and what a waiter is told), `slot` (build, seal,
//! publish, the slot record), `pin` (per-process hard links), `gc` (collection and
//! listing), `source` (superseded slots), `state` (saved VM start states), `fsx`
//! (openat wrappers that never follow links), `proc` (process identity), `private`
//! (private files beside the slots).

mod cache;
mod error;
mod fsx;
mod gc;
mod lock;
mod pin;
mod private;
mod proc;
#[cfg(test)]
mod props;
mod security;
mod slot;
mod slot_key;
mod source;
mod state;

pub use cache::{BuildMeta, Cache, GetOptions, default_root};
pub use error::{BuildError, CacheError};
pub use gc::{DEFAULT_KEEP, GcPolicy, GcReport, SlotInfo};
pub use lock::Waiting;
pub use pin::Pinned;
pub use proc::{ProcessId, process_start_time};
pub use slot_key::Key;
pub use state::{StateWriter, States};
