//! Garbage collection and listing.
//!
//! Safe against racing collectors and users: a pin is removed only when the process it
//! names (PID *and* start time) is gone; a build or trash directory only while gc holds
//! its lock (a live builder holds it); a slot only under its exclusive lock, after
//! checking again, under that lock, that no live pin names it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::time::SystemTime;

use rustix::fs::{FileType, RenameFlags, Stat};

use crate::cache::{LOCK, PIN, SLOT, TMP, TRASH, next_seq};
use crate::fsx::{self, file_type, lstat_at, open_dir, still_named};
use crate::proc::ProcessId;
use crate::source::mtime_of;
use crate::{Cache, CacheError, Key};

/// How many sources gc keeps the appliances of by default (the most recently used).
pub const DEFAULT_KEEP: usize = 4;

/// Bounds for [`Cache::gc`]. Pinned slots are never removed, but they count towards
/// the bounds. Slots superseded by a newer build of their source
/// ([`crate::GetOptions::source`]) go whatever the bounds, once nothing pins them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPolicy {
    /// Keep the slots of at most this many sources (least recently used sources go
    /// first; a slot without a recorded source is a source of its own).
    pub keep: Option<usize>,
    /// Keep at most this many bytes (allocated) of slots.
    pub max_size: Option<u64>,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            keep: Some(DEFAULT_KEEP),
            max_size: None,
        }
    }
}

impl GcPolicy {
    /// Only dead pins and debris; no slot is removed.
    pub fn debris_only() -> GcPolicy {
        GcPolicy {
            keep: None,
            max_size: None,
        }
    }
}

/// What a gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Pins of processes that have exited (or whose PID now names another process).
    pub dead_pins: usize,
    /// Build directories of dead builders and leftovers of interrupted removals.
    pub debris: usize,
    /// Slots removed by the bounds.
    pub removed: Vec<Key>,
    /// Bytes freed by everything removed (dead pins, leftovers, slots): the allocated
    /// size of each file whose last link went, whatever the policy.
    pub freed: u64,
    /// Slots left, and their allocated bytes (always measured).
    pub slots: usize,
    pub bytes: u64,
}

/// One slot, for `kiln cache ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub key: Key,
    /// Allocated bytes of its files and of its saved start states.
    pub size: u64,
    /// Its saved VM start states (`kiln run`), one per VM shape.
    pub states: usize,
    /// When it was last located (or built).
    pub last_use: SystemTime,
    /// Live processes that hold a pin of it.
    pub pinned_by: Vec<u32>,
}

/// `pin-<pid>-<start>-<n>-<key>`.
pub(crate) fn parse_pin(name: &str) -> Option<(ProcessId, Key)> {
    let rest = name.strip_prefix(PIN)?;
    let mut it = rest.splitn(4, '-');
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    it.next()?.parse::<u64>().ok()?;
    let key = Key::new(it.next()?).ok()?;
    Some((ProcessId { pid, start }, key))
}

/// The key of `tmp-<key>-<pid>-<n>` / `trash-<key>-<pid>-<n>`.
fn private_key(name: &str) -> Option<&str> {
    let rest = name
        .strip_prefix(TMP)
        .or_else(|| name.strip_prefix(TRASH))?;
    rest.split('-').next()
}

/// Start times of processes, read once per gc however many pins a process holds.
#[derive(Default)]
struct Alive(HashMap<u32, Option<u64>>);

impl Alive {
    fn check(&mut self, p: &ProcessId) -> bool {
        *self
            .0
            .entry(p.pid)
            .or_insert_with(|| crate::proc::process_start_time(p.pid))
            == Some(p.start)
    }
}

impl Cache {
    /// Live pins by key: PIDs.
    fn live_pins(&self, names: &[String]) -> HashMap<Key, Vec<u32>> {
        let mut alive = Alive::default();
        let mut out: HashMap<Key, Vec<u32>> = HashMap::new();
        for n in names {
            if let Some((owner, key)) = parse_pin(n)
                && alive.check(&owner)
            {
                out.entry(key).or_default().push(owner.pid);
            }
        }
        out
    }

    /// Remove dead pins, debris of crashed builds and, beyond `policy`, the least
    /// recently used unpinned slots.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let names = fsx::list(self.fd()).map_err(|e| CacheError::io(&self.path, "readdir", e))?;
        let mut pinned: HashSet<Key> = HashSet::new();
        for n in &names {
            let Some((owner, key)) = parse_pin(n) else {
                continue;
            };
            if owner.is_alive() {
                pinned.insert(key);
            } else {
                // Never entered if it is a link; a FIFO or file is just unlinked.
                match fsx::remove_tree_freeing(self.fd(), n) {
                    Ok(freed) => {
                        report.dead_pins += 1;
                        report.freed += freed;
                    }
                    Err(e) => tracing::debug!("gc: {}: {e}", self.path.join(n).display()),
                }
            }
        }
        let mut busy_keys: HashSet<String> = HashSet::new();
        for n in &names {
            let Some(k) = private_key(n) else { continue };
            match self.remove_if_unlocked(n) {
                Ok(Some(freed)) => {
                    report.debris += 1;
                    report.freed += freed;
                }
                Ok(None) => {
                    busy_keys.insert(k.to_owned());
                }
                Err(e) => tracing::debug!("gc: {}: {e}", self.path.join(n).display()),
            }
        }

        let mut slots = self.slots_by_source(&names);
        // A newer build of the same source supersedes the older ones.
        for s in slots.iter_mut().filter(|s| s.superseded) {
            if !pinned.contains(&s.key) {
                self.remove_counted(s, &mut report);
            }
        }
        slots.retain(|s| !s.gone);
        // The bounds: least recently used sources first; pinned slots stay but count.
        let mut sources: Vec<(&str, SystemTime)> = Vec::new();
        for s in &slots {
            match sources.iter_mut().find(|(src, _)| *src == s.source) {
                Some(e) => e.1 = e.1.max(s.used),
                None => sources.push((&s.source, s.used)),
            }
        }
        sources.sort_by_key(|s| std::cmp::Reverse(s.1));
        let sources: Vec<String> = sources.into_iter().map(|s| s.0.to_owned()).collect();
        let mut count = sources.len();
        let mut bytes: u64 = slots.iter().map(|s| s.size).sum();
        let over = |count: usize, bytes: u64| {
            policy.keep.is_some_and(|k| count > k) || policy.max_size.is_some_and(|m| bytes > m)
        };
        for src in sources.iter().rev() {
            if !over(count, bytes) {
                break;
            }
            let mut all_gone = true;
            for s in slots.iter_mut().filter(|s| &s.source == src) {
                if pinned.contains(&s.key) || !self.remove_counted(s, &mut report) {
                    all_gone = false;
                } else {
                    bytes = bytes.saturating_sub(s.size);
                }
            }
            if all_gone {
                count -= 1;
            }
        }
        slots.retain(|s| !s.gone);
        report.slots = slots.len();
        report.bytes = bytes;

        // States whose slot is gone (removed above, or before they were published),
        // and their writers' lock files when free.
        let has_slot = |k: &Key| {
            names
                .iter()
                .any(|m| m.strip_prefix(SLOT) == Some(k.as_str()))
                && !report.removed.contains(k)
        };
        let orphans: HashSet<Key> = names
            .iter()
            .filter_map(|n| crate::state::state_key(n))
            .filter(|k| !has_slot(k))
            .collect();
        for k in &orphans {
            report.freed += self.remove_states(&names, k);
        }
        for n in &names {
            if let Some(k) = crate::state::state_lock_key(n)
                && !has_slot(&k)
            {
                let _ = self.remove_lock_if_free(n);
            }
        }

        // Lock files of keys with no slot and nobody building.
        let removed: HashSet<&Key> = report.removed.iter().collect();
        for n in &names {
            let Some(k) = n.strip_prefix(LOCK) else {
                continue;
            };
            let Ok(key) = Key::new(k) else { continue };
            let has_slot =
                names.iter().any(|m| m.strip_prefix(SLOT) == Some(k)) && !removed.contains(&key);
            if has_slot || busy_keys.contains(k) {
                continue;
            }
            let _ = self.remove_lock_if_free(n);
        }
        Ok(report)
    }

    /// Remove a `tmp-`/`trash-` directory if nobody holds its lock (its builder or
    /// remover is dead). Returns the bytes freed if it was removed.
    fn remove_if_unlocked(&self, name: &str) -> io::Result<Option<u64>> {
        let st = match lstat_at(self.fd(), name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let f = match file_type(&st) {
            FileType::Directory => File::from(open_dir(self.fd(), name)?),
            // A state being written where there is no O_TMPFILE: locked by its writer.
            FileType::RegularFile => fsx::open_file_ro(self.fd(), name)?,
            _ => return fsx::remove_tree_freeing(self.fd(), name).map(Some),
        };
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        if !still_named(self.fd(), name, f.as_fd())? {
            return Ok(None);
        }
        fsx::remove_tree_freeing(self.fd(), name).map(Some)
    }

    /// Remove slot `key` unless someone is pinning from it or a live pin names it.
    /// Returns the bytes freed if it was removed.
    pub(crate) fn remove_slot(&self, key: &Key) -> io::Result<Option<u64>> {
        let name = format!("{SLOT}{key}");
        let f = File::from(open_dir(self.fd(), &name)?);
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        if !still_named(self.fd(), &name, f.as_fd())? {
            return Ok(None);
        }
        // Under the exclusive lock no reader can be half-way through pinning, so the
        // pins listed now are all there will be for this directory.
        let names = fsx::list(self.fd())?;
        if self.live_pins(&names).contains_key(key) {
            return Ok(None);
        }
        let trash = format!("{TRASH}{key}-{}-{}", std::process::id(), next_seq());
        rustix::fs::renameat_with(self.fd(), &name, self.fd(), &trash, RenameFlags::NOREPLACE)
            .or_else(|e| {
                if e == rustix::io::Errno::INVAL {
                    rustix::fs::renameat(self.fd(), &name, self.fd(), &trash)
                } else {
                    Err(e)
                }
            })?;
        crate::cache::fault("gc-after-rename");
        let states = self.remove_states(&names, key);
        fsx::remove_tree_freeing(self.fd(), &trash).map(|f| Some(f + states))
    }

    fn remove_lock_if_free(&self, name: &str) -> io::Result<()> {
        let f = match fsx::open_file_ro(self.fd(), name) {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        if f.try_lock().is_err() || !still_named(self.fd(), name, f.as_fd())? {
            return Ok(());
        }
        let st = rustix::fs::fstat(&f)?;
        if file_type(&st) == FileType::RegularFile {
            rustix::fs::unlinkat(self.fd(), name, rustix::fs::AtFlags::empty())?;
        }
        Ok(())
    }

    /// The `slot-KEY` entries among `names` that are directories (lstat), with their
    /// key and status.
    pub(crate) fn slot_dirs<'n>(&self, names: &'n [String]) -> Vec<(&'n String, Key, Stat)> {
        names
            .iter()
            .filter_map(|n| {
                let key = Key::new(n.strip_prefix(SLOT)?).ok()?;
                let st = lstat_at(self.fd(), n).ok()?;
                (file_type(&st) == FileType::Directory).then_some((n, key, st))
            })
            .collect()
    }

    /// The kernel file of the slot of `key`, by path: for reading its bytes (e.g. to
    /// tell which extracted kernel belongs to it), knowing that a concurrent gc may
    /// remove it at any time. Use a pin ([`Cache::lookup`]) to boot it.
    pub fn slot_kernel(&self, key: &Key) -> std::path::PathBuf {
        self.path
            .join(format!("{SLOT}{}", key.as_str()))
            .join(crate::cache::FILES[0])
    }

    /// The slots in the cache, most recently used first.
    pub fn list(&self) -> Result<Vec<SlotInfo>, CacheError> {
        let names = fsx::list(self.fd()).map_err(|e| CacheError::io(&self.path, "readdir", e))?;
        let pins = self.live_pins(&names);
        let state_sizes = self.state_sizes(&names);
        let mut out = Vec::new();
        for (n, key, st) in self.slot_dirs(&names) {
            let size = open_dir(self.fd(), n)
                .and_then(|fd| fsx::allocated_size(fd.as_fd()))
                .unwrap_or(0);
            let last_use = mtime_of(&st);
            let (states, state_bytes) = state_sizes
                .iter()
                .filter(|(k, _)| *k == key)
                .fold((0, 0), |(n, b), (_, s)| (n + 1, b + s));
            let mut pinned_by = pins.get(&key).cloned().unwrap_or_default();
            pinned_by.sort_unstable();
            pinned_by.dedup();
            out.push(SlotInfo {
                key,
                size: size + state_bytes,
                states,
                last_use,
                pinned_by,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.last_use));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_parse() {
        let (p, k) = parse_pin("pin-12-345-0-abc").unwrap();
        assert_eq!((p.pid, p.start, k.as_str()), (12, 345, "abc"));
        assert!(parse_pin("pin-12-345-abc").is_none());
        assert!(parse_pin("pin-x-345-0-abc").is_none());
        assert!(parse_pin("pin-1-2-3-../../etc").is_none());
        assert_eq!(private_key("tmp-abc-1-2"), Some("abc"));
        assert_eq!(private_key("trash-abc-1-2"), Some("abc"));
    }
}
