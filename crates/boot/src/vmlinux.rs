//! The uncompressed kernel for a fast start under TCG.
//!
//! A bzImage decompresses itself before Linux's clock starts: Debian's xz-compressed
//! kernel spends ~5 s of emulated CPU (15 s on a loaded machine) in that decompressor
//! under TCG, more than the rest of the boot to the first command. qemu also boots an
//! uncompressed ELF `vmlinux` through its PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`,
//! Linux's `CONFIG_PVH`), with the same `-initrd` and `-append`, skipping the real-mode
//! setup and the decompressor. [`uncompressed`] extracts that ELF from a bzImage's
//! payload (setup header fields `payload_offset`/`payload_length`, decompressed with
//! kiln-compress) once and keeps it in a private per-user directory, named by the
//! BLAKE3 hash of the bzImage, so later runs only hash 8 MB.
//!
//! Each use sets the file's mtime, so the mtime is its last use. When a new kernel is
//! extracted (the host's kernel changed), files not used for [`STALE_AFTER`] go: the
//! directory holds the kernels in use, not every kernel the host ever had.
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

/// How long an extracted kernel may go unused before the next extraction removes it.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

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
    let hash = blake3::hash(&bz).to_hex();
    let dest = dir.join(format!("vmlinux-{}", &hash[..32]));
    if let Ok(m) = fs::symlink_metadata(&dest)
        && m.is_file()
        && m.uid() == rustix::process::geteuid().as_raw()
    {
        // Last use, for forget_stale; failing to record it is harmless.
        if let Ok(f) = fs::File::open(&dest) {
            let _ = f.set_modified(SystemTime::now());
        }
        return Ok(Some(dest));
    }
    let (c, mut r) = kiln_compress::decompress(payload)?;
    if !c.is_compressed() {
        return Ok(None);
    }
    let mut elf = Vec::new();
    // The payload ends with the uncompressed size after the stream: read the stream
    // only, and accept a complaint about what follows it once an ELF came out.
    if let Err(e) = r.read_to_end(&mut elf)
        && !is_elf(&elf)
    {
        return Err(e);
    }
    if !is_elf(&elf) || !has_pvh_note(&elf) {
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
                "removed {}, unused since before {STALE_AFTER:?}",
                p.display()
            );
        }
    }
}

/// `dir`, created 0700 if missing, must be a directory (not a symlink) owned by us.
fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
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
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes([bz[0x206], bz[0x207]]);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32at = |o: usize| u32::from_le_bytes([bz[o], bz[o + 1], bz[o + 2], bz[o + 3]]) as usize;
    let start = (setup_sects + 1) * 512 + u32at(0x248);
    bz.get(start..start.checked_add(u32at(0x24c))?)
}

fn is_elf(b: &[u8]) -> bool {
    b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2 && b[5] == 1
}

/// Does the ELF carry the Xen `PHYS32_ENTRY` note qemu's PVH loader needs?
fn has_pvh_note(b: &[u8]) -> bool {
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
    let u64at = |o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x) as usize
    };
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 56 > b.len() {
            return false;
        }
        if u32at(o) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64at(o + 8), u64at(o + 32));
        let Some(mut notes) = b.get(off..off.saturating_add(size)) else {
            return false;
        };
        while notes.len() >= 12 {
            let namesz = u32::from_le_bytes([notes[0], notes[1], notes[2], notes[3]]) as usize;
            let descsz = u32::from_le_bytes([notes[4], notes[5], notes[6], notes[7]]) as usize;
            let kind = u32::from_le_bytes([notes[8], notes[9], notes[10], notes[11]]);
            let name_end = 12 + namesz.div_ceil(4) * 4;
            let next = name_end + descsz.div_ceil(4) * 4;
            // XEN_ELFNOTE_PHYS32_ENTRY
            if kind == 18 && notes.get(12..12 + namesz) == Some(&b"Xen\0"[..]) {
                return true;
            }
            if next > notes.len() {
                break;
            }
            notes = &notes[next..];
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!is_elf(b"\x7fELF"));
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
        assert!(is_elf(&elf) && has_pvh_note(&elf));
        let first = fs::metadata(&a).unwrap();
        assert_eq!(uncompressed(&k, &d), Some(a.clone()));
        // The same file, not extracted again; its use is recorded in its mtime.
        let again = fs::metadata(&a).unwrap();
        assert_eq!(again.ino(), first.ino());
        assert!(again.modified().unwrap() >= first.modified().unwrap());
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
    }
}
