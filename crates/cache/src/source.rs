//! Sources: what a slot was built from (supermin.d, options, package database root),
//! as opposed to its key, which also covers the packages' state. Many appliances side
//! by side are meant for different sources; a newer build of one source supersedes
//! the older slots of that source, which go as soon as no pin holds them: right after
//! the newer build, when the last pin of the old one is dropped, or at the next gc
//! (for pins of other processes, once those have exited).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use rustix::fs::Stat;

use crate::cache::SLOT;
use crate::fsx::{self, open_dir};
use crate::gc::GcReport;
use crate::slot::read_meta;
use crate::{Cache, Key};

/// One slot as gc and the supersede checks see it.
pub(crate) struct SlotEntry {
    pub(crate) key: Key,
    /// Allocated bytes.
    pub(crate) size: u64,
    /// Last use (the directory's mtime, touched on every pin).
    pub(crate) used: SystemTime,
    /// The source's key, or `key:<KEY>` for a slot without one (its own source).
    pub(crate) source: String,
    /// A newer build of the same source exists.
    pub(crate) superseded: bool,
    /// Removed by this gc.
    pub(crate) gone: bool,
}

/// When a slot was last used (its directory's mtime, touched on every pin).
pub(crate) fn mtime_of(st: &Stat) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32)
}

impl Cache {
    /// The slots among `names` that are ours, with their sources, sizes and whether a
    /// newer build of their source exists.
    pub(crate) fn slots_by_source(&self, names: &[String]) -> Vec<SlotEntry> {
        let mut out = Vec::new();
        let mut built = Vec::new();
        for (n, key, st) in self.slot_dirs(names) {
            if st.st_uid != self.euid {
                continue; // not ours to judge; locate refuses it with a security error
            }
            let (size, meta) = match open_dir(self.fd(), n) {
                Ok(fd) => (
                    fsx::allocated_size(fd.as_fd()).unwrap_or(0),
                    read_meta(fd.as_fd(), &key).ok(),
                ),
                Err(_) => (0, None),
            };
            let (source, b) = match meta.and_then(|m| m.source.map(|s| (s, m.built))) {
                Some((s, b)) => (s.to_string(), b),
                None => (format!("key:{key}"), 0),
            };
            built.push(b);
            out.push(SlotEntry {
                key,
                size,
                used: mtime_of(&st),
                source,
                superseded: false,
                gone: false,
            });
        }
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (s, &b) in out.iter().zip(&built) {
            let e = newest.entry(&s.source).or_insert(b);
            *e = (*e).max(b);
        }
        let newest: HashMap<String, u64> =
            newest.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for (s, b) in out.iter_mut().zip(built) {
            s.superseded = newest.get(&s.source).is_some_and(|&n| n > b);
        }
        out
    }

    /// Remove slot `s` if nobody pins it; count it in `report`. True if removed.
    pub(crate) fn remove_counted(&self, s: &mut SlotEntry, report: &mut GcReport) -> bool {
        match self.remove_slot(&s.key) {
            Ok(Some(freed)) => {
                report.freed += freed;
                report.removed.push(s.key.clone());
                s.gone = true;
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!("gc: slot {}: {e}", s.key);
                false
            }
        }
    }

    /// After building `newest` from `source`: remove the older slots of that source
    /// that no pin holds.
    pub(crate) fn remove_superseded(&self, source: &Key, newest: &Key) {
        let Ok(names) = fsx::list(self.fd()) else {
            return;
        };
        let src = source.to_string();
        for s in self.slots_by_source(&names) {
            if s.source == src && s.key != *newest && s.superseded {
                match self.remove_slot(&s.key) {
                    Ok(Some(_)) => {
                        tracing::info!("removed appliance {} (superseded by {newest})", s.key)
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!("slot {}: {e}", s.key),
                }
            }
        }
    }

    /// When the last pin of a superseded slot goes, so does the slot.
    pub(crate) fn remove_if_superseded(&self, key: &Key) {
        let Ok(names) = fsx::list(self.fd()) else {
            return;
        };
        if !names
            .iter()
            .any(|n| n.strip_prefix(SLOT) == Some(key.as_str()))
        {
            return;
        }
        let slots = self.slots_by_source(&names);
        if slots.iter().any(|s| s.key == *key && s.superseded) {
            match self.remove_slot(key) {
                Ok(Some(_)) => {
                    tracing::info!("removed appliance {key} (superseded, no longer pinned)")
                }
                Ok(None) => {}
                Err(e) => tracing::debug!("slot {key}: {e}"),
            }
        }
    }
}
