//! The uncompressed kernel for a fast start under TCG.
//!
//! A bzImage decompresses itself before Linux's clock starts: Debian's xz-compressed
//! kernel spends ~5 s of emulated CPU (15 s on a loaded machine) in that decompressor
//! under TCG, more than the rest of the boot to the first command. qemu also boots an
//! uncompressed ELF `vmlinux` through its PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`,
//! Linux's `CONFIG_PVH`), with the same `-initrd` and `-append`, skipping the real-mode
//! setup and the decompressor. [`uncompressed`] extracts that ELF from a bzImage's
//! payload (found by kiln-kernel's setup-header reader, decompressed with
//! kiln-compress; the PVH note is found by kiln-elf, kiln's one ELF reader: no offset of
//! the untrusted kernel is used unchecked) once and keeps it in a private per-user
//! directory, named by the BLAKE3 hash of the bzImage, so later runs only hash 8 MB.
//!
//! The directory is `.kiln-vmlinux-$EUID` beside the appliance cache
//! ([`crate::state_dir`]).
//! Each use sets the file's mtime, so the mtime is its last use. When a new kernel is
//! extracted (the host's kernel changed), files not used for [`STALE_AFTER`] go: the
//! directory holds the kernels in use, not every kernel the host ever had. `kiln cache
//! ls` lists them ([`list`]) and `kiln gc` removes those whose bzImage is in no
//! appliance left in the cache ([`remove_unused`]; a pinned appliance is never removed,
//! so neither is the kernel a running `kiln run` boots), once unused for [`GC_GRACE`]
//! (which covers a `kiln run` between extracting a kernel and qemu reading it).
//!
//! Invariants: the directory is created 0700 and used only if it is a real directory
//! owned by the caller (never through a symlink); a file appears by rename of a complete
//! temporary file; only regular files named `vmlinux-*` (or our temporary files) are
//! ever removed; anything unexpected (not a bzImage, no PVH note, an unknown
//! compression) returns `None` and the caller boots the bzImage as before.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The largest uncompressed kernel kiln extracts (Debian's is 66 MB): a hostile payload
/// that inflates beyond it is not extracted rather than filling memory.
const MAX_VMLINUX: u64 = 1 << 30;

/// How long an extracted kernel may go unused before the next extraction removes it.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long an extracted kernel no appliance uses survives `kiln gc` after its last use.
pub const GC_GRACE: Duration = Duration::from_secs(10 * 60);

/// The file name of the extracted kernel of a bzImage with these bytes.
fn name_of_bytes(bz: &[u8]) -> String {
    format!("vmlinux-{}", &blake3::hash(bz).to_hex()[..32])
}

/// The file name the extracted kernel of `bzimage` has (or would have) in the
/// directory: `vmlinux-` and a hash of the bzImage.
pub fn name_for(bzimage: &Path) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(fs::File::open(bzimage)?)?;
    Ok(format!("vmlinux-{}", &h.finalize().to_hex()[..32]))
}

/// One extracted kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// `vmlinux-HASH` (see [`name_for`]).
    pub name: String,
    pub path: PathBuf,
    /// Allocated bytes.
    pub size: u64,
    /// The last `kiln run` that used it (its mtime).
    pub last_use: SystemTime,
}

/// The extracted kernels in `dir`, most recently used first; none when `dir` does not
/// exist. An error when it is not a private directory of this user.
pub fn list(dir: &Path) -> io::Result<Vec<Extracted>> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
        Ok(_) => check_private(dir)?,
    }
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(String::from) else {
            continue;
        };
        if !name.starts_with("vmlinux-") {
            continue;
        }
        let m = e.metadata()?;
        if !m.is_file() {
            continue;
        }
        out.push(Extracted {
            name,
            path: e.path(),
            size: m.blocks() * 512,
            last_use: m.modified()?,
        });
    }
    out.sort_by_key(|x| std::cmp::Reverse(x.last_use));
    Ok(out)
}

/// Remove the extracted kernels in `dir` whose name is not in `used` and that were not
/// used since `now - GC_GRACE`, and leftover temporary files as old; return what was
/// removed. What cannot be removed stays.
pub fn remove_unused(
    dir: &Path,
    used: &std::collections::HashSet<String>,
    now: SystemTime,
) -> io::Result<Vec<Extracted>> {
    let cutoff = now.checked_sub(GC_GRACE).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = Vec::new();
    for x in list(dir)? {
        if used.contains(&x.name) || x.last_use >= cutoff {
            continue;
        }
        if fs::remove_file(&x.path).is_ok() {
            removed.push(x);
        }
    }
    // Temporary files of an extraction that was interrupted.
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if !e.file_name().as_encoded_bytes().starts_with(b".tmp") {
                continue;
            }
            if let Ok(m) = fs::symlink_metadata(e.path())
                && m.is_file()
                && m.modified().is_ok_and(|t| t < cutoff)
                && fs::remove_file(e.path()).is_ok()
            {
                removed.push(Extracted {
                    name: e.file_name().to_string_lossy().into_owned(),
                    path: e.path(),
                    size: m.blocks() * 512,
                    last_use: m.modified()?,
                });
            }
        }
    }
    Ok(removed)
}

/// The uncompressed PVH-bootable kernel for `bzimage`, extracted into `dir` (created
/// if missing) the first time. `None` when it cannot be used.
pub fn uncompressed(bzimage: &Path, dir: &Path) -> Option<PathBuf> {
    match try_uncompressed(bzimage, dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(
                "not using an uncompressed kernel for {}: {e}",
                bzimage.display()
            );
            None
        }
    }
}

fn try_uncompressed(bzimage: &Path, dir: &Path) -> io::Result<Option<PathBuf>> {
    let bz = fs::read(bzimage)?;
    let Some(payload) = payload(&bz) else {
        return Ok(None);
    };
    private_dir(dir)?;
    let dest = dir.join(name_of_bytes(&bz));
    if let Ok(m) = fs::symlink_metadata(&dest)
        && m.is_file()
        && m.uid() == rustix::process::geteuid().as_raw()
        // Gone meanwhile (a `kiln gc`): extracted again below.
        && let Ok(f) = fs::File::open(&dest)
    {
        // Last use, for forget_stale and gc; failing to record it is harmless.
        let _ = f.set_modified(SystemTime::now());
        return Ok(Some(dest));
    }
    let (c, r) = kiln_compress::decompress(payload)?;
    if !c.is_compressed() {
        return Ok(None);
    }
    let mut elf = Vec::new();
    // The payload ends with the uncompressed size after the stream: read the stream
    // only, and accept a complaint about what follows it once an ELF came out.
    let read = r.take(MAX_VMLINUX).read_to_end(&mut elf);
    if elf.len() as u64 >= MAX_VMLINUX {
        return Ok(None);
    }
    if let Err(e) = read
        && kiln_elf::Elf::parse(&elf).is_err()
    {
        return Err(e);
    }
    if !is_pvh_elf(&elf) {
        return Ok(None);
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&elf)?;
    tmp.persist(&dest).map_err(|e| e.error)?;
    tracing::info!(
        "extracted the uncompressed kernel of {} to {}",
        bzimage.display(),
        dest.display()
    );
    forget_stale(dir, &dest, SystemTime::now());
    Ok(Some(dest))
}

/// Remove the kernels (and leftover temporary files) in `dir` not used since
/// `now - STALE_AFTER`, except `keep`. Best effort: what cannot be removed stays.
fn forget_stale(dir: &Path, keep: &Path, now: SystemTime) {
    let Some(cutoff) = now.checked_sub(STALE_AFTER) else {
        return;
    };
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.as_encoded_bytes();
        let ours = name.starts_with(b"vmlinux-") || name.starts_with(b".tmp");
        let p = e.path();
        if !ours || p == keep {
            continue;
        }
        if let Ok(m) = fs::symlink_metadata(&p)
            && m.is_file()
            && m.modified().is_ok_and(|t| t < cutoff)
            && fs::remove_file(&p).is_ok()
        {
            tracing::info!(
                "removed {}, unused for {} days",
                p.display(),
                STALE_AFTER.as_secs() / 86400
            );
        }
    }
}

/// `dir`, created 0700 if missing, must be a directory (not a symlink) owned by us.
/// Also where the KVM verdict ([`crate::Memo`]) is kept.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private(dir)
}

/// `dir` must be a directory (not a symlink) owned by us, not writable by others.
fn check_private(dir: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != rustix::process::geteuid().as_raw() || m.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of this user",
            dir.display()
        )));
    }
    Ok(())
}

/// The compressed kernel inside a bzImage (Linux boot protocol ≥ 2.08).
fn payload(bz: &[u8]) -> Option<&[u8]> {
    kiln_kernel::bzimage::payload(bz)
}

/// `XEN_ELFNOTE_PHYS32_ENTRY`, the note of the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Is `b` an ELF64 file carrying the Xen `PHYS32_ENTRY` note qemu's PVH loader needs?
fn is_pvh_elf(b: &[u8]) -> bool {
    kiln_elf::Elf::parse(b).is_ok_and(|e| {
        e.notes()
            .any(|n| n.kind == XEN_ELFNOTE_PHYS32_ENTRY && n.name == b"Xen")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn kernels_unused_for_a_month_go_the_rest_stay() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let now = SystemTime::now();
        let make = |n: &str, age_days: u64| {
            let p = d.join(n);
            let f = fs::File::create(&p).unwrap();
            f.set_modified(now - Duration::from_secs(age_days * 24 * 3600))
                .unwrap();
            p
        };
        let keep = make("vmlinux-new", 0);
        let recent = make("vmlinux-recent", 29);
        let old = make("vmlinux-old", 31);
        let old_tmp = make(".tmpAbCd", 40);
        let other = make("notes", 400);
        fs::create_dir(d.join("vmlinux-dir")).unwrap();
        forget_stale(d, &keep, now);
        for p in [&keep, &recent, &other] {
            assert!(p.exists(), "{} removed", p.display());
        }
        assert!(d.join("vmlinux-dir").is_dir());
        assert!(!old.exists() && !old_tmp.exists());
    }

    #[test]
    fn not_a_bzimage() {
        assert!(payload(b"not a kernel").is_none());
        assert!(!is_pvh_elf(b"\x7fELF"));
    }

    /// An ELF64 file with one PT_NOTE segment holding a GNU note and, when `pvh`, the
    /// Xen PHYS32_ENTRY note.
    fn pvh_elf(pvh: bool) -> Vec<u8> {
        let mut notes = Vec::new();
        let mut note = |name: &[u8], kind: u32, desc: &[u8]| {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        };
        note(b"GNU\0", 3, b"0123456789abcdef0123");
        if pvh {
            note(
                b"Xen\0",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &0x100_0000u32.to_le_bytes(),
            );
        }
        let mut b = vec![0u8; 64 + 56];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&4u32.to_le_bytes());
        b[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        b[64 + 32..64 + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        b[64 + 48..64 + 56].copy_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&notes);
        b
    }

    /// A bzImage (protocol 2.15, one setup sector) whose payload is `elf` gzipped and
    /// followed by its length, as Linux's build lays it out.
    fn bzimage_of(elf: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(elf).unwrap();
        let mut payload = gz.finish().unwrap();
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut bz = vec![0u8; 2 * 512];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&payload);
        bz
    }

    #[test]
    fn crafted_kernels_extract_only_with_the_pvh_note() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("k");
        let k = dir.path().join("bzImage");
        fs::write(&k, bzimage_of(&pvh_elf(true))).unwrap();
        let v = uncompressed(&k, &d).expect("a PVH ELF inside");
        assert_eq!(fs::read(&v).unwrap(), pvh_elf(true));
        fs::write(&k, bzimage_of(&pvh_elf(false))).unwrap();
        assert_eq!(uncompressed(&k, &d), None, "no PVH note: boot the bzImage");
        fs::write(&k, b"HdrS").unwrap();
        assert_eq!(uncompressed(&k, &d), None);
    }

    fn proptest_config(cases: u32) -> proptest::test_runner::Config {
        let mut c = proptest::test_runner::Config::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = cases;
        }
        c.failure_persistence = None;
        c
    }

    /// `b` with a few bytes overwritten (mostly in the first `hot` bytes, where the
    /// headers are) and possibly cut short.
    fn mutate(b: Vec<u8>, hot: usize) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let len = b.len();
        (
            proptest::collection::vec((prop_oneof![0..hot.min(len), 0..len], any::<u8>()), 0..8),
            prop_oneof![3 => Just(len), 1 => 0..=len],
        )
            .prop_map(move |(edits, cut)| {
                let mut b = b.clone();
                for (at, v) in edits {
                    b[at] = v;
                }
                b.truncate(cut);
                b
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest_config(4096))]

        /// The PVH check on arbitrary bytes and on mutated PVH kernels: an answer, never
        /// a panic; an unmutated one is found.
        #[test]
        fn pvh_check_never_panics(
            b in proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
                mutate(pvh_elf(true), 240),
            ]
        ) {
            let unchanged = b == pvh_elf(true);
            proptest::prop_assert!(is_pvh_elf(&b) || !unchanged);
        }

        /// The payload lookup on arbitrary and mutated setup headers: a slice of the
        /// input or `None`, never a panic.
        #[test]
        fn payload_never_panics(
            b in proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..0x300),
                mutate(bzimage_of(&pvh_elf(true)), 0x260),
            ]
        ) {
            if let Some(p) = payload(&b) {
                proptest::prop_assert!(p.len() <= b.len());
            }
        }
    }

    proptest::proptest! {
        // Each case writes and reads files: fewer of them.
        #![proptest_config(proptest_config(128))]

        /// The whole extraction on hostile kernels (mutated headers, payloads and inner
        /// ELF files): never a panic, and whatever is extracted is a PVH ELF.
        #[test]
        fn hostile_kernels_never_panic_end_to_end(
            inner in mutate(pvh_elf(true), 240),
            edits in proptest::collection::vec(
                (0usize..0x500, proptest::prelude::any::<u8>()), 0..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut bz = bzimage_of(&inner);
            let n = bz.len();
            for (at, v) in edits {
                bz[at % n] = v;
            }
            let k = dir.path().join("bzImage");
            fs::write(&k, &bz).unwrap();
            if let Some(v) = uncompressed(&k, &dir.path().join("k")) {
                proptest::prop_assert!(is_pvh_elf(&fs::read(v).unwrap()));
            }
        }
    }

    /// Listed with their size and last use; gc removes only the unused and old ones.
    #[test]
    fn unused_kernels_go_after_the_grace_the_used_and_recent_stay() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("k");
        assert_eq!(list(&d).unwrap(), vec![], "no directory: nothing");
        private_dir(&d).unwrap();
        let now = SystemTime::now();
        let make = |n: &str, age: Duration| {
            let p = d.join(n);
            fs::write(&p, vec![1u8; 10_000]).unwrap();
            fs::File::open(&p).unwrap().set_modified(now - age).unwrap();
            p
        };
        let hour = Duration::from_secs(3600);
        let used = make("vmlinux-used", 100 * hour);
        let recent = make("vmlinux-recent", GC_GRACE / 2);
        let old = make("vmlinux-old", 2 * GC_GRACE);
        let tmp = make(".tmpXyZ", 2 * hour);
        let other = make("notes", 100 * hour);
        let l = list(&d).unwrap();
        let names: Vec<&str> = l.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["vmlinux-recent", "vmlinux-old", "vmlinux-used"]);
        assert!(l.iter().all(|x| x.size >= 10_000), "{l:?}");
        let keep = std::collections::HashSet::from(["vmlinux-used".to_string()]);
        let gone = remove_unused(&d, &keep, now).unwrap();
        let gone: Vec<&str> = gone.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(gone, ["vmlinux-old", ".tmpXyZ"]);
        assert!(used.exists() && recent.exists() && other.exists());
        assert!(!old.exists() && !tmp.exists());
        // Not a private directory: refused, nothing removed.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(list(&d).is_err());
        assert!(remove_unused(&d, &keep, now + 1000 * hour).is_err());
        assert!(used.exists());
    }

    /// The host's Debian kernel: extracted once, reused, and PVH-bootable.
    #[test]
    fn host_kernel_extracts_once() {
        let Some(k) = fs::read_dir("/boot").ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().contains("vmlinuz-"))
        }) else {
            panic!("no /boot/vmlinuz-* (scripts/setup-host installs linux-image-amd64)");
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("k");
        let a = uncompressed(&k, &d).expect("Debian kernels have CONFIG_PVH");
        let elf = fs::read(&a).unwrap();
        assert!(is_pvh_elf(&elf));
        let first = fs::metadata(&a).unwrap();
        assert_eq!(uncompressed(&k, &d), Some(a.clone()));
        // The same file, not extracted again; its use is recorded in its mtime.
        let again = fs::metadata(&a).unwrap();
        assert_eq!(again.ino(), first.ino());
        assert_eq!(
            a.file_name().unwrap().to_str().unwrap(),
            name_for(&k).unwrap()
        );
        assert!(again.modified().unwrap() >= first.modified().unwrap());
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
    }
}
