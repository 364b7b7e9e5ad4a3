//! The owner index of `kiln run` ([`Index`]): every path the package database of one
//! installed system lists, with the first package (in the database's order) that lists
//! it. Finding a command's owner by asking the database reads every package's file
//! list (about 1000 files on a Debian host, and dpkg looks at every `/etc` path); the
//! index is read once per database instead, and kept in the per-user cache
//! (`kiln_cache::Cache::publish_private`) so that a run with the same database as the
//! last one answers from it and never opens a file list.
//!
//! Invariants:
//! - an index is stored under the [`Identity`] of its database: the installed system's
//!   canonical root, the driver, and the `lstat` identity (type, mode, owner, size,
//!   times, inode, device) of the files that date the database, the ones the cache key
//!   reads (`Database::fingerprint`: for dpkg `status` and `diversions`). A package
//!   installed or removed changes it, so the index is built again and the superseded
//!   one of the same root is removed when the new one is written. Another root (a
//!   sysroot) has indexes of its own; writing an index also removes those of roots
//!   that have no package database any more, so deleted sysroots leave nothing.
//! - an index is kept only when it is what the database says: every file list was read
//!   and the identity was the same before and after reading them (a database that
//!   changes meanwhile, or a list that cannot be read, gives a run that scans and keeps
//!   nothing); a database that names no file dating it is never stored.
//! - an index read back is trusted only whole: the magic, the identity it was made for
//!   and a BLAKE3 checksum over everything must match, and its table must be in bounds,
//!   sorted and name known packages; anything else (corrupt, truncated, another
//!   version, a link or a file of another user, which the cache refuses) is ignored
//!   and built again.
//! - lookups give what the scan of the database gives: the first package listing the
//!   path, paths compared as [`Path`]s are (component by component, so `/usr//bin/` is
//!   `/usr/bin`); the candidates and their ranking stay in the `contents` module.
//!
//! The file (little-endian): `kilnown1`, the 32-byte identity, the canonical root
//! (u32 length, bytes), the number of packages (u32) and of paths (u64); each package name (u32 length, bytes); the table, one u64
//! offset per path, in the paths' byte order; the paths (u32 package, u32 length,
//! bytes); the BLAKE3 hash of all that. A lookup is a binary search of the table.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_cache::Cache;
use kiln_packages::Database;

use crate::Sysroot;

const MAGIC: &[u8; 8] = b"kilnown1";
/// The checksum at the end.
const SUM: usize = 32;
/// Magic and identity; then the root's length.
const HEADER: usize = 8 + 32;
/// The longest root path an index records (`PATH_MAX`).
const MAX_ROOT: usize = 4096;
/// More than any index kiln writes (a Debian host's is about 10 MB).
const MAX_LEN: u64 = 1 << 31;

/// What an index is stored under: the database of one installed system, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    /// The installed system (its canonical root): the family superseded indexes share.
    root: [u8; 32],
    /// The root, the driver and the `lstat` identity of the files dating the database.
    state: [u8; 32],
    /// The canonical root, recorded in the index so that the index of a system that is
    /// gone can be told (see [`forget_vanished`]).
    path: PathBuf,
    /// One of the dating files exists: otherwise a changed database could not be told
    /// from this one, and no index is stored.
    dated: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Length-prefixed fields, so that no two different inputs hash the same.
fn field(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

fn meta(h: &mut blake3::Hasher, m: &fs::Metadata) {
    for v in crate::key::stat_words(m) {
        h.update(&v.to_le_bytes());
    }
}

impl Identity {
    /// The identity of the database below `root` now; `None` when there is none.
    pub(super) fn of(root: &Sysroot) -> Option<Identity> {
        let (driver, paths) = kiln_packages::fingerprint(root)?;
        let canonical = fs::canonicalize(&root.root).unwrap_or_else(|_| root.root.clone());
        let mut r = blake3::Hasher::new_derive_key("kiln owner index root v1");
        field(&mut r, canonical.as_os_str().as_bytes());
        let mut s = blake3::Hasher::new_derive_key("kiln owner index v1");
        field(&mut s, canonical.as_os_str().as_bytes());
        field(&mut s, driver.as_bytes());
        let mut dated = false;
        for p in &paths {
            field(&mut s, p.as_os_str().as_bytes());
            match fs::symlink_metadata(p) {
                Ok(m) => {
                    dated = true;
                    meta(&mut s, &m);
                    if m.file_type().is_symlink() {
                        if let Ok(t) = fs::read_link(p) {
                            field(&mut s, t.as_os_str().as_bytes());
                        }
                        if let Ok(m) = fs::metadata(p) {
                            meta(&mut s, &m);
                        }
                    }
                }
                Err(e) => field(&mut s, e.kind().to_string().as_bytes()),
            }
        }
        Some(Identity {
            root: *r.finalize().as_bytes(),
            state: *s.finalize().as_bytes(),
            path: canonical,
            dated,
        })
    }

    /// The private file of the cache the index is kept in.
    pub(super) fn name(&self) -> String {
        format!("{}{}", self.family(), hex(&self.state[..16]))
    }

    /// The names of this root's indexes, whatever the database's state.
    fn family(&self) -> String {
        format!("owners-{}-", hex(&self.root[..8]))
    }
}

/// Who lists which path: the index of one database (see the module doc).
#[derive(Debug)]
pub(super) struct Index {
    data: Vec<u8>,
    names: Vec<String>,
    /// Where the table of path offsets starts, and how many paths there are.
    table: usize,
    count: usize,
}

/// Why a stored index is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Corrupt(&'static str);

const MALFORMED: Corrupt = Corrupt("malformed");

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl Index {
    /// The index of `db` read from its file lists; the flag says whether every list was
    /// read (an index missing a list is not kept).
    pub(super) fn scan(db: &dyn Database, state: &[u8; 32], root: &Path) -> (Index, bool) {
        let mut paths: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut complete = true;
        let packages = db.packages();
        for (i, pkg) in packages.iter().enumerate() {
            let listed = match db.paths(i) {
                Ok(p) => p,
                // A package without a file list owns nothing we can use (as the scan
                // has always had it), but the index is not kept.
                Err(e) => {
                    tracing::debug!("owner index: the files of {}: {e}", pkg.name);
                    complete = false;
                    continue;
                }
            };
            for p in listed {
                let b = p.into_os_string().into_vec();
                let b = match key(&b) {
                    Cow::Borrowed(_) => b,
                    Cow::Owned(k) => k,
                };
                // Lengths are u32 in the file; no path is that long.
                if u32::try_from(b.len()).is_ok() {
                    paths.push((b, i as u32));
                }
            }
        }
        // Stable: of the packages listing one path, the first in the database's order
        // comes first, and is the one kept.
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        paths.dedup_by(|later, first| later.0 == first.0);
        let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
        let data = encode(state, root.as_os_str().as_bytes(), &names, &paths);
        match Index::decode(data, state) {
            Ok(ix) => (ix, complete),
            // Only a bug gets here: the bytes were just made. Nothing is kept, and the
            // run finds no owner rather than a wrong one.
            Err(Corrupt(why)) => {
                tracing::warn!("kiln's owner index is inconsistent ({why}); please report it");
                (Index::empty(), false)
            }
        }
    }

    fn empty() -> Index {
        Index {
            data: Vec::new(),
            names: Vec::new(),
            table: 0,
            count: 0,
        }
    }

    /// The index in `data`, made for the database in `state`, after checking all of it.
    pub(super) fn decode(data: Vec<u8>, state: &[u8; 32]) -> Result<Index, Corrupt> {
        if data.len() < HEADER + SUM {
            return Err(Corrupt("too short"));
        }
        let body = data.len() - SUM;
        if blake3::hash(&data[..body]).as_bytes() != &data[body..] {
            return Err(Corrupt("checksum mismatch"));
        }
        if &data[..8] != MAGIC {
            return Err(Corrupt("not an owner index of this kiln"));
        }
        if &data[8..40] != state {
            return Err(Corrupt("made for another database"));
        }
        let d = &data[..body];
        let root_len = u32_at(d, HEADER).ok_or(MALFORMED)? as usize;
        if root_len > MAX_ROOT {
            return Err(MALFORMED);
        }
        let at = HEADER + 4 + root_len;
        let npkgs = u32_at(d, at).ok_or(MALFORMED)? as usize;
        let count = usize::try_from(u64_at(d, at + 4).ok_or(MALFORMED)?).map_err(|_| MALFORMED)?;
        let mut at = at + 12;
        let mut names = Vec::with_capacity(npkgs.min(1 << 16));
        for _ in 0..npkgs {
            let len = u32_at(d, at).ok_or(MALFORMED)? as usize;
            at += 4;
            let end = at.checked_add(len).ok_or(MALFORMED)?;
            let name = d.get(at..end).ok_or(MALFORMED)?;
            names.push(std::str::from_utf8(name).map_err(|_| MALFORMED)?.to_owned());
            at = end;
        }
        let table = at;
        let paths = count
            .checked_mul(8)
            .and_then(|n| table.checked_add(n))
            .filter(|&end| end <= body)
            .ok_or(MALFORMED)?;
        let ix = Index {
            names,
            table,
            count,
            data: Vec::new(),
        };
        // Every entry in bounds, after the table, naming a package, in strictly
        // increasing order: lookups can then trust the table.
        let mut prev: Option<&[u8]> = None;
        for i in 0..count {
            let off = u64_at(d, table + 8 * i).ok_or(MALFORMED)?;
            let off = usize::try_from(off).map_err(|_| MALFORMED)?;
            if off < paths {
                return Err(MALFORMED);
            }
            let (pkg, path) = entry(d, off).ok_or(MALFORMED)?;
            if pkg as usize >= ix.names.len() {
                return Err(Corrupt("names a package it does not hold"));
            }
            if prev.is_some_and(|p| p >= path) {
                return Err(Corrupt("not sorted"));
            }
            prev = Some(path);
        }
        Ok(Index { data, ..ix })
    }

    /// How many paths the index holds.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// The package that lists `path` first in the database's order.
    pub(super) fn get(&self, path: &Path) -> Option<&str> {
        let want = key(path.as_os_str().as_bytes());
        let want = &*want;
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let off = usize::try_from(u64_at(&self.data, self.table + 8 * mid)?).ok()?;
            let (pkg, p) = entry(&self.data, off)?;
            match p.cmp(want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.names.get(pkg as usize).map(|s| &**s),
            }
        }
        None
    }

    /// The bytes of the file.
    fn bytes(&self) -> &[u8] {
        &self.data
    }
}

/// `p` as the index holds it: its components joined by single `/`, so that paths that
/// are equal as [`Path`]s (`/usr//bin/`, `/usr/./bin` and `/usr/bin`) are one key, as
/// they were one path to the scan the index replaces.
fn key(p: &[u8]) -> Cow<'_, [u8]> {
    // Most paths are already so (every one a database lists): an absolute path without
    // empty or `.` components, or `/` itself.
    let normal = p == b"/"
        || (p.first() == Some(&b'/')
            && p[1..]
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"."));
    if normal {
        return Cow::Borrowed(p);
    }
    Cow::Owned(
        Path::new(OsStr::from_bytes(p))
            .components()
            .collect::<PathBuf>()
            .into_os_string()
            .into_vec(),
    )
}

/// The entry at `off`: its package and path.
fn entry(d: &[u8], off: usize) -> Option<(u32, &[u8])> {
    let pkg = u32_at(d, off)?;
    let len = u32_at(d, off.checked_add(4)?)? as usize;
    let start = off.checked_add(8)?;
    Some((pkg, d.get(start..start.checked_add(len)?)?))
}

/// The file of an index (see the module doc).
fn encode(state: &[u8; 32], root: &[u8], names: &[&str], paths: &[(Vec<u8>, u32)]) -> Vec<u8> {
    let len = HEADER
        + 4
        + root.len()
        + 12
        + names.iter().map(|n| 4 + n.len()).sum::<usize>()
        + paths.iter().map(|(p, _)| 16 + p.len()).sum::<usize>()
        + SUM;
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(MAGIC);
    d.extend_from_slice(state);
    // A root longer than any path is recorded as none (its index is then forgotten
    // once another system's is written).
    let root = if root.len() <= MAX_ROOT { root } else { &[] };
    d.extend_from_slice(&(root.len() as u32).to_le_bytes());
    d.extend_from_slice(root);
    d.extend_from_slice(&(names.len() as u32).to_le_bytes());
    d.extend_from_slice(&(paths.len() as u64).to_le_bytes());
    for n in names {
        d.extend_from_slice(&(n.len() as u32).to_le_bytes());
        d.extend_from_slice(n.as_bytes());
    }
    let table = d.len();
    d.resize(table + 8 * paths.len(), 0);
    for (i, (p, pkg)) in paths.iter().enumerate() {
        let off = d.len() as u64;
        d[table + 8 * i..table + 8 * i + 8].copy_from_slice(&off.to_le_bytes());
        d.extend_from_slice(&pkg.to_le_bytes());
        d.extend_from_slice(&(p.len() as u32).to_le_bytes());
        d.extend_from_slice(p);
    }
    let sum = blake3::hash(&d);
    d.extend_from_slice(sum.as_bytes());
    d
}

/// The index of `db` (the database below `root`, whose identity was `id` before it
/// was opened): the one kept in `cache` when it is there and sound, else read from the
/// file lists and, when it can be trusted, kept there for the next run.
pub(super) fn open(
    cache: Option<&Cache>,
    id: Option<&Identity>,
    root: &Sysroot,
    db: &dyn Database,
) -> Index {
    let stored = match (cache, id) {
        (Some(c), Some(id)) if id.dated => Some((c, id)),
        _ => None,
    };
    if let Some((c, id)) = stored {
        let name = id.name();
        let t = Instant::now();
        match c.read_private(&name, MAX_LEN) {
            Ok(Some(data)) => match Index::decode(data, &id.state) {
                Ok(ix) => {
                    tracing::debug!(
                        "owner index {}: {} paths, read in {:.1} ms",
                        c.path().join(&name).display(),
                        ix.len(),
                        t.elapsed().as_secs_f64() * 1e3
                    );
                    return ix;
                }
                Err(Corrupt(why)) => tracing::debug!(
                    "owner index {}: {why}; reading the file lists again",
                    c.path().join(&name).display()
                ),
            },
            Ok(None) => {}
            Err(e) => tracing::debug!("owner index: {e}; reading the file lists again"),
        }
    }
    let t = Instant::now();
    let state = id.map_or([0; 32], |id| id.state);
    let (ix, complete) = Index::scan(db, &state, id.map_or(&root.root, |id| &id.path));
    tracing::debug!(
        "owner index: read the file lists of {} packages ({} paths) in {:.1} ms",
        db.packages().len(),
        ix.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let Some((c, id)) = stored else {
        return ix;
    };
    if !complete {
        tracing::debug!("owner index: not every file list could be read; not kept");
    } else if Identity::of(root).as_ref() != Some(id) {
        tracing::debug!("owner index: the package database changed while kiln read it; not kept");
    } else if let Err(e) = c.publish_private(&id.name(), &id.family(), ix.bytes()) {
        tracing::debug!("owner index: not kept: {e}");
    } else {
        forget_vanished(c, id);
    }
    ix
}

/// The root recorded in an index file, from its first bytes.
fn stored_root(f: std::fs::File) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; HEADER + 4];
    let mut f = f;
    f.read_exact(&mut head).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let len = u32_at(&head, HEADER)? as usize;
    if len == 0 || len > MAX_ROOT {
        return None;
    }
    let mut root = vec![0u8; len];
    f.read_exact(&mut root).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(root)))
}

/// Remove the indexes of the other installed systems that have no package database
/// any more (a sysroot deleted since): nothing would read or supersede them again.
/// An index whose root cannot be read from it goes too; a system that is back later
/// just has its index built again. Runs after an index is written, so a warm run
/// never pays for it.
fn forget_vanished(c: &Cache, id: &Identity) {
    let names = match c.private_names("owners-") {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("owner index: listing the others: {e}");
            return;
        }
    };
    for n in names.iter().filter(|n| !n.starts_with(&id.family())) {
        let root = c.open_private(n).ok().flatten().and_then(stored_root);
        if root.is_some_and(|r| kiln_packages::choose(&Sysroot::new(r)).is_some()) {
            continue;
        }
        tracing::debug!("owner index {n}: its system has no package database now; removed");
        if let Err(e) = c.remove_private(n) {
            tracing::debug!("owner index: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sample() -> (Vec<(Vec<u8>, u32)>, Vec<&'static str>) {
        let mut m: Vec<(Vec<u8>, u32)> = [
            ("/usr/bin/a", 0),
            ("/usr/bin", 1),
            ("/etc/b.conf", 1),
            ("/", 0),
        ]
        .iter()
        .map(|(p, i)| (p.as_bytes().to_vec(), *i))
        .collect();
        m.sort();
        (m, vec!["a", "b"])
    }

    #[test]
    fn keys_are_paths_as_components() {
        for (p, k) in [
            ("/", "/"),
            ("/usr/bin", "/usr/bin"),
            ("/usr//bin/", "/usr/bin"),
            ("/./usr/./bin/.", "/usr/bin"),
            ("/usr/../bin", "/usr/../bin"),
            ("//", "/"),
            ("usr/bin", "usr/bin"),
            ("./usr", "./usr"),
            ("", ""),
        ] {
            assert_eq!(&*key(p.as_bytes()), k.as_bytes(), "{p}");
            // What Path's equality says, the key says.
            let via: PathBuf = Path::new(p).components().collect();
            assert_eq!(via.as_os_str().as_bytes(), k.as_bytes(), "{p}");
        }
        assert!(matches!(key(b"/usr/bin/a"), Cow::Borrowed(_)));
    }

    #[test]
    fn an_index_reads_back_what_was_written() {
        let (m, names) = sample();
        let state = [7; 32];
        let ix = Index::decode(encode(&state, b"/r", &names, &m), &state).unwrap();
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.get(Path::new("/usr/bin/a")), Some("a"));
        assert_eq!(ix.get(Path::new("/usr/bin")), Some("b"));
        assert_eq!(ix.get(Path::new("/etc/b.conf")), Some("b"));
        assert_eq!(ix.get(Path::new("/")), Some("a"));
        // Equal as paths, equal as keys.
        assert_eq!(ix.get(Path::new("/usr//bin/./a")), Some("a"));
        assert_eq!(ix.get(Path::new("/usr/bin/")), Some("b"));
        for absent in ["/usr/bin/b", "/usr/bin/../bin/a", "/etc", "", "/zzz"] {
            assert_eq!(ix.get(Path::new(absent)), None, "{absent}");
        }
        let empty = Index::decode(encode(&state, b"/", &[], &[]), &state).unwrap();
        assert_eq!(empty.get(Path::new("/")), None);
    }

    /// Every truncation and every flipped byte is refused, as is the index of another
    /// database; a well-checksummed file whose table lies is refused too.
    #[test]
    fn corrupt_truncated_and_foreign_indexes_are_refused() {
        let (m, names) = sample();
        let state = [7; 32];
        let good = encode(&state, b"/r", &names, &m);
        for n in 0..good.len() {
            assert!(
                Index::decode(good[..n].to_vec(), &state).is_err(),
                "cut at {n}"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(Index::decode(bad, &state).is_err(), "byte {i} flipped");
        }
        assert_eq!(
            Index::decode(good.clone(), &[8; 32]).unwrap_err(),
            Corrupt("made for another database")
        );
        // The table points before itself, with a valid checksum.
        let resum = |mut d: Vec<u8>| {
            let body = d.len() - SUM;
            let s = *blake3::hash(&d[..body]).as_bytes();
            d[body..].copy_from_slice(&s);
            d
        };
        let table = HEADER + 4 + 2 + 12 + 4 + 1 + 4 + 1;
        let mut lie = good.clone();
        lie[table..table + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(Index::decode(resum(lie), &state).is_err());
        // Two entries swapped: not sorted.
        let mut swap = good.clone();
        let (a, b) = (table, table + 8);
        let ta: [u8; 8] = swap[a..a + 8].try_into().unwrap();
        let tb: [u8; 8] = swap[b..b + 8].try_into().unwrap();
        swap[a..a + 8].copy_from_slice(&tb);
        swap[b..b + 8].copy_from_slice(&ta);
        assert_eq!(
            Index::decode(resum(swap), &state).unwrap_err(),
            Corrupt("not sorted")
        );
        // A package index beyond the names.
        let mut pkg = good.clone();
        let off = u64_at(&good, table).unwrap() as usize;
        pkg[off..off + 4].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            Index::decode(resum(pkg), &state).unwrap_err(),
            Corrupt("names a package it does not hold")
        );
    }

    /// A dpkg root of `(package, files)`.
    fn dpkg_root(dir: &Path, packages: &[(&str, &[&str])]) {
        let admin = dir.join("var/lib/dpkg");
        fs::create_dir_all(admin.join("info")).unwrap();
        let mut status = String::new();
        for (name, files) in packages {
            status.push_str(&format!(
                "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n"
            ));
            let mut list = String::from("/.\n");
            for f in *files {
                list.push_str(f);
                list.push('\n');
            }
            fs::write(admin.join(format!("info/{name}.list")), list).unwrap();
        }
        // A new file, as dpkg writes it: a changed identity even within one tick.
        let tmp = admin.join("status-new");
        fs::write(&tmp, status).unwrap();
        fs::rename(&tmp, admin.join("status")).unwrap();
    }

    fn index_names(cache: &Cache) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("owners-"))
            .collect();
        v.sort();
        v
    }

    /// An index is kept, used while the database is unchanged (even with its file
    /// lists gone), rebuilt (the old one removed) when a package is installed, and
    /// rebuilt when its file is damaged; another root keeps an index of its own.
    #[test]
    fn the_kept_index_follows_the_database() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap().join("sys");
        let other = fs::canonicalize(t.path()).unwrap().join("other");
        let cache = Cache::open(t.path()).unwrap();
        let sys = Sysroot::new(&root);
        let open_here = |sys: &Sysroot| {
            let id = Identity::of(sys).unwrap();
            let db = kiln_packages::open(sys).unwrap();
            (open(Some(&cache), Some(&id), sys, db.as_ref()), id)
        };
        dpkg_root(&root, &[("a", &["/usr", "/usr/bin", "/usr/bin/a"])]);
        let (ix, id) = open_here(&sys);
        assert_eq!(ix.get(Path::new("/usr/bin/a")), Some("a"));
        assert_eq!(index_names(&cache), [id.name()]);

        // Unchanged database, file lists unreadable: the kept index answers.
        let info = root.join("var/lib/dpkg/info");
        fs::rename(&info, root.join("var/lib/dpkg/info-away")).unwrap();
        let (ix, _) = open_here(&sys);
        assert_eq!(ix.get(Path::new("/usr/bin/a")), Some("a"));
        fs::rename(root.join("var/lib/dpkg/info-away"), &info).unwrap();

        // A package installed: a new identity, a new index, the old one gone.
        dpkg_root(
            &root,
            &[
                ("a", &["/usr", "/usr/bin", "/usr/bin/a"]),
                ("b", &["/usr", "/usr/bin", "/usr/bin/b"]),
            ],
        );
        let (ix, id2) = open_here(&sys);
        assert_ne!(id2, id);
        assert_eq!(ix.get(Path::new("/usr/bin/b")), Some("b"));
        // The first package listing a shared directory owns it, as in the scan.
        assert_eq!(ix.get(Path::new("/usr/bin")), Some("a"));
        assert_eq!(index_names(&cache), [id2.name()]);

        // Truncated on disk: ignored, read from the lists again and rewritten.
        let file = cache.path().join(id2.name());
        let len = fs::metadata(&file).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let (ix, _) = open_here(&sys);
        assert_eq!(ix.get(Path::new("/usr/bin/b")), Some("b"));
        assert_eq!(fs::metadata(&file).unwrap().len(), len);

        // Another root: its own index, beside this one.
        dpkg_root(&other, &[("c", &["/usr/bin/c"])]);
        let (ix, id3) = open_here(&Sysroot::new(&other));
        assert_eq!(ix.get(Path::new("/usr/bin/c")), Some("c"));
        assert_eq!(ix.get(Path::new("/usr/bin/a")), None);
        let mut both = vec![id2.name(), id3.name()];
        both.sort();
        assert_eq!(index_names(&cache), both);

        // That root deleted: the next index written removes its index.
        fs::remove_dir_all(&other).unwrap();
        fs::remove_file(cache.path().join(id2.name())).unwrap();
        open_here(&sys);
        assert_eq!(index_names(&cache), [id2.name()]);

        // A list that cannot be read: answered from what was read, nothing kept.
        fs::remove_file(cache.path().join(id2.name())).unwrap();
        fs::remove_file(info.join("b.list")).unwrap();
        let (ix, _) = open_here(&sys);
        assert_eq!(ix.get(Path::new("/usr/bin/a")), Some("a"));
        assert_eq!(ix.get(Path::new("/usr/bin/b")), None);
        assert!(index_names(&cache).is_empty());
    }

    /// A kept index that is not a file this user made is not trusted, however sound
    /// its bytes: a link (to a good index) and, as root, a file of another user are
    /// ignored, the lists read again, and the entry replaced by this user's own file.
    fn replaced_when_not_ours(spoil: impl Fn(&Path)) {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap().join("sys");
        dpkg_root(&root, &[("a", &["/usr/bin/a"])]);
        let cache = Cache::open(t.path()).unwrap();
        let sys = Sysroot::new(&root);
        let id = Identity::of(&sys).unwrap();
        let db = kiln_packages::open(&sys).unwrap();
        open(Some(&cache), Some(&id), &sys, db.as_ref());
        let file = cache.path().join(id.name());
        spoil(&file);
        let ix = open(Some(&cache), Some(&id), &sys, db.as_ref());
        assert_eq!(ix.get(Path::new("/usr/bin/a")), Some("a"));
        let m = fs::symlink_metadata(&file).unwrap();
        assert!(m.is_file());
        assert_eq!(m.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(m.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_linked_index_is_replaced() {
        replaced_when_not_ours(|file| {
            let good = file.with_extension("elsewhere");
            fs::rename(file, &good).unwrap();
            std::os::unix::fs::symlink(&good, file).unwrap();
        });
    }

    #[test]
    #[ignore = "needs root"]
    fn a_foreign_index_is_replaced() {
        assert!(
            rustix::process::geteuid().is_root(),
            "chown needs root: run as root"
        );
        replaced_when_not_ours(|file| {
            std::os::unix::fs::chown(file, Some(65534), Some(65534)).unwrap();
        });
    }
}
