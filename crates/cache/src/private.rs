//! Private files: small records a user of the cache derives from the host and keeps
//! beside the slots, so that later runs need not derive them again (kiln's owner
//! index, `owners-<root>-<fingerprint>`). The cache does not know what they mean; it
//! only stores, hands out, lists and removes them safely.
//!
//! Invariants:
//! - a private file is a regular file owned by the effective UID, mode 0600, written
//!   under a temporary name (`NAME.tmp-<pid>-<n>`) and published by one rename, so a
//!   reader sees a whole file or none;
//! - a file that is not what kiln makes (a link, a FIFO, another owner, group or other
//!   writable) is refused with a `security:` error, never followed or read: callers
//!   then derive the data again, and publishing replaces the entry;
//! - publishing `NAME` removes the other entries of its family (the names starting
//!   with the prefix the caller gives, temporaries of crashed writers included), so
//!   superseded versions do not pile up;
//! - names are checked: lowercase letters, digits and `-`, never one of the slot
//!   prefixes (`slot-`, `tmp-`, `lock-`, `pin-`, `trash-`), which gc owns.
//!
//! Files are not fsynced: a record is derived data, and its user checks its content
//! (kiln's owner index carries a checksum), so a file cut short by a power loss is
//! just derived again.

use rustix::fs::{AtFlags, FileType};
use std::fs::File;
use std::io::{self, Read, Write};

use crate::cache::{LOCK, PIN, Result, SLOT, TMP, TRASH, next_seq};
use crate::fsx::{self, file_type};
use crate::security::describe;
use crate::{Cache, CacheError};

/// The suffix of a private file being written, before the PID and a sequence number.
const PART: &str = ".tmp-";

/// A name kiln may use for a private file.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && ![SLOT, TMP, LOCK, PIN, TRASH]
            .iter()
            .any(|p| name.starts_with(p))
}

fn bad_name(name: &str) -> CacheError {
    CacheError::Security(format!(
        "{name:?} is not a name for a private cache file (lowercase letters, digits and '-', \
         not a slot prefix)"
    ))
}

impl Cache {
    /// The private file `name`, opened for reading; `None` when there is none. Refused
    /// with a `security:` error when the entry is not a regular file this user made
    /// (see the module doc).
    pub fn open_private(&self, name: &str) -> Result<Option<File>> {
        if !valid_name(name) {
            return Err(bad_name(name));
        }
        let path = self.path.join(name);
        let f = match fsx::open_file_ro(self.fd(), name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(CacheError::Security(format!(
                    "cache entry {} is a symbolic link, not a file kiln made; remove it",
                    path.display()
                )));
            }
            Err(e) => return Err(CacheError::io(&path, "open", e)),
        };
        let st = rustix::fs::fstat(&f).map_err(|e| CacheError::io(&path, "fstat", e))?;
        let ft = file_type(&st);
        if ft != FileType::RegularFile {
            return Err(CacheError::Security(format!(
                "cache entry {} is {}, not a file kiln made; remove it",
                path.display(),
                describe(ft)
            )));
        }
        self.check_owned(&path, &st)?;
        Ok(Some(f))
    }

    /// The private file `name`, read whole; `None` when there is none. Refused as
    /// [`Cache::open_private`] refuses, and when larger than `max_len` bytes.
    pub fn read_private(&self, name: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        let Some(mut f) = self.open_private(name)? else {
            return Ok(None);
        };
        let path = self.path.join(name);
        let len = f
            .metadata()
            .map_err(|e| CacheError::io(&path, "fstat", e))?
            .len();
        if len > max_len {
            return Err(CacheError::Security(format!(
                "cache entry {} is {len} bytes, more than kiln ever writes there ({max_len}); \
                 remove it",
                path.display()
            )));
        }
        let mut data = Vec::with_capacity(len as usize);
        // One byte more than allowed: a file that grew since fstat is seen.
        (&mut f)
            .take(max_len.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| CacheError::io(&path, "read", e))?;
        if data.len() as u64 > max_len {
            return Err(CacheError::Security(format!(
                "cache entry {} grew past {max_len} bytes while kiln read it; remove it",
                path.display()
            )));
        }
        Ok(Some(data))
    }

    /// The names of the private files starting with `prefix` (temporaries excluded).
    pub fn private_names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names =
            fsx::list(self.fd()).map_err(|e| CacheError::io(&self.path, "readdir", e))?;
        names.retain(|n| n.starts_with(prefix) && valid_name(n));
        names.sort();
        Ok(names)
    }

    /// Remove the private file `name` (whatever it is, but a directory, which is left
    /// alone); gone already is fine.
    pub fn remove_private(&self, name: &str) -> Result<()> {
        if !valid_name(name) {
            return Err(bad_name(name));
        }
        let path = self.path.join(name);
        match fsx::lstat_at(self.fd(), name) {
            Ok(st) if file_type(&st) == FileType::Directory => Ok(()),
            Ok(_) => match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(CacheError::io(&path, "unlink", e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io(&path, "lstat", e)),
        }
    }

    /// Publish `data` as the private file `name` (mode 0600, by one rename over any
    /// entry of that name), then remove the other entries whose names start with
    /// `family` (`name` must start with it): older versions of the record and the
    /// temporaries of writers that died.
    pub fn publish_private(&self, name: &str, family: &str, data: &[u8]) -> Result<()> {
        if !valid_name(name) || !valid_name(family) || !name.starts_with(family) {
            return Err(bad_name(name));
        }
        let tmp = format!("{name}{PART}{}-{}", std::process::id(), next_seq());
        let tmp_path = self.path.join(&tmp);
        let written = fsx::create_file(self.fd(), &tmp, 0o600)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| CacheError::io(&tmp_path, "write", e))
            .and_then(|()| {
                rustix::fs::renameat(self.fd(), &tmp, self.fd(), name)
                    .map_err(|e| CacheError::io(self.path.join(name), "rename", e))
            });
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(self.fd(), &tmp, AtFlags::empty());
            return Err(e);
        }
        self.remove_family(name, family);
        Ok(())
    }

    /// Unlink the entries starting with `family` other than `keep`. Directories are
    /// never entered (unlink fails on them); links are unlinked, not followed. A
    /// concurrent writer's temporary may go too: its rename then fails and it publishes
    /// nothing, which is harmless since `keep` holds the same record.
    fn remove_family(&self, keep: &str, family: &str) {
        let names = match fsx::list(self.fd()) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("listing {}: {e}", self.path.display());
                return;
            }
        };
        for n in names
            .iter()
            .filter(|n| n.starts_with(family) && n.as_str() != keep)
        {
            match fsx::lstat_at(self.fd(), n) {
                Ok(st) if file_type(&st) != FileType::Directory => {
                    if let Err(e) = rustix::fs::unlinkat(self.fd(), n, AtFlags::empty()) {
                        tracing::debug!("removing {}: {e}", self.path.join(n).display());
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn cache() -> (tempfile::TempDir, Cache) {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        (t, c)
    }

    #[test]
    fn published_files_read_back_private_and_supersede_their_family() {
        let (_t, c) = cache();
        assert_eq!(c.read_private("owners-a-1", 100).unwrap(), None);
        c.publish_private("owners-a-1", "owners-a-", b"one")
            .unwrap();
        assert_eq!(
            c.read_private("owners-a-1", 100).unwrap().as_deref(),
            Some(&b"one"[..])
        );
        let m = std::fs::metadata(c.path().join("owners-a-1")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        // Another family stays; a crashed writer's temporary of this family goes.
        c.publish_private("owners-b-1", "owners-b-", b"b").unwrap();
        std::fs::write(c.path().join("owners-a-2.tmp-1-0"), b"half").unwrap();
        c.publish_private("owners-a-2", "owners-a-", b"two")
            .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(c.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["owners-a-2", "owners-b-1"]);
        assert_eq!(
            c.private_names("owners-").unwrap(),
            ["owners-a-2", "owners-b-1"]
        );
        assert_eq!(c.private_names("owners-b").unwrap(), ["owners-b-1"]);
        let mut head = [0u8; 2];
        c.open_private("owners-a-2")
            .unwrap()
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head, b"tw");
        c.remove_private("owners-b-1").unwrap();
        c.remove_private("owners-b-1").unwrap();
        assert_eq!(c.private_names("owners-").unwrap(), ["owners-a-2"]);
        // Republishing replaces.
        c.publish_private("owners-a-2", "owners-a-", b"again")
            .unwrap();
        assert_eq!(
            c.read_private("owners-a-2", 100).unwrap().as_deref(),
            Some(&b"again"[..])
        );
        // Too large is refused, not read.
        assert!(c.read_private("owners-a-2", 3).unwrap_err().is_security());
    }

    #[test]
    fn links_fifos_and_writable_files_are_refused() {
        let (_t, c) = cache();
        let p = c.path().join("owners-x");
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        let e = c.read_private("owners-x", 1 << 20).unwrap_err();
        assert!(
            e.is_security() && e.to_string().contains("symbolic link"),
            "{e}"
        );
        // Publishing replaces the link itself, never writes through it.
        c.publish_private("owners-x", "owners-x", b"ok").unwrap();
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
        std::fs::remove_file(&p).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let e = c.read_private("owners-x", 1 << 20).unwrap_err();
        assert!(e.is_security() && e.to_string().contains("FIFO"), "{e}");
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = c.read_private("owners-x", 1 << 20).unwrap_err();
        assert!(e.is_security() && e.to_string().contains("writable"), "{e}");
    }

    #[test]
    #[ignore = "needs root"]
    fn foreign_owned_files_are_refused() {
        assert!(
            rustix::process::geteuid().is_root(),
            "chown needs root: run as root"
        );
        let (_t, c) = cache();
        c.publish_private("owners-y", "owners-y", b"ok").unwrap();
        let p = c.path().join("owners-y");
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let e = c.read_private("owners-y", 1 << 20).unwrap_err();
        assert!(
            e.is_security() && e.to_string().contains("owned by UID 65534"),
            "{e}"
        );
        // Publishing again replaces it with this user's file.
        c.publish_private("owners-y", "owners-y", b"ok").unwrap();
        assert_eq!(
            c.read_private("owners-y", 1 << 20).unwrap().as_deref(),
            Some(&b"ok"[..])
        );
    }

    #[test]
    fn names_are_checked() {
        let (_t, c) = cache();
        for bad in [
            "", "../x", "Owners", "slot-abc", "tmp-x", "pin-1", "a/b", "a.b",
        ] {
            assert!(c.read_private(bad, 10).is_err(), "{bad}");
            assert!(c.publish_private(bad, "", b"").is_err(), "{bad}");
        }
        // The name must belong to the family it supersedes.
        assert!(c.publish_private("owners-a", "owners-b", b"").is_err());
    }
}
