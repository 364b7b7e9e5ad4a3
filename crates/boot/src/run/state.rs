//! The file format of a saved VM start state, and the VM shape it belongs to.
//!
//! A state file is a fixed [`HEADER_LEN`]-byte header followed by qemu's migration
//! stream, exactly as qemu wrote it (qemu reads it back from the same descriptor,
//! positioned at the stream, with `-incoming fd:N`). The header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `KILNVMST` |
//! | 8 | 4 | format version (u32 LE, [`VERSION`]) |
//! | 12 | 4 | header length (u32 LE, [`HEADER_LEN`]) |
//! | 16 | 8 | stream length in bytes (u64 LE) |
//! | 24 | 32 | BLAKE3 of the stream |
//! | 56 | 4 | length of the shape text (u32 LE) |
//! | 60 | … | the shape text ([`Shape::text`]), the rest zero |
//!
//! Invariants: a state is used only when its header parses, its file is exactly as
//! long as the header says (a truncated copy is refused before qemu sees it), its shape
//! text equals the running VM's byte for byte (another qemu, kernel, machine or device
//! layout is refused with the difference named) and, before the VM may run, the
//! stream's BLAKE3 matches (read in parallel with qemu's loading; qemu is started
//! paused and only continued after the check). A save hashes the stream as qemu
//! writes it (through a pipe, [`copy_in`]), so sealing needs no second read.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Bytes before qemu's stream: the header, padded.
pub(crate) const HEADER_LEN: u64 = 4096;
pub(crate) const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"KILNVMST";
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_STREAM_LEN: usize = 16;
const OFF_HASH: usize = 24;
const OFF_TEXT_LEN: usize = 56;
const OFF_TEXT: usize = 60;

/// Bumped whenever the devices or the guest's ready point change meaning.
const LAYOUT: u32 = 2;

/// Everything a saved state depends on besides the appliance's slot: a state is used
/// only by a VM of the same shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The state file's name part (`tcg-512m-1c-1s`: accelerator, memory, CPUs,
    /// shares).
    pub(crate) name: String,
    /// What the header records and a start compares.
    pub(crate) text: String,
}

/// A file's identity for the shape: device, inode, size and, with `mtime`, the
/// modification time. The appliance's files and the extracted kernel are never changed
/// in place (a new one is a new file, renamed into place), and their mtime is not
/// theirs to keep (the kernel's records its last use); qemu's binary is whatever its
/// package manager made it, so its mtime counts too.
fn identity(p: &Path, mtime: bool) -> io::Result<String> {
    let m = std::fs::metadata(p)?;
    let mut s = format!("{}:{} {} bytes", m.dev(), m.ino(), m.size());
    if mtime {
        s.push_str(&format!(" mtime {}.{:09}", m.mtime(), m.mtime_nsec()));
    }
    Ok(s)
}

impl Shape {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        qemu: &Path,
        accel: &str,
        memory_mib: u32,
        cpus: u32,
        shares: usize,
        kernel: &Path,
        initrd: &Path,
        root: &Path,
        cmdline: &[String],
    ) -> io::Result<Shape> {
        let qemu_abs = which(qemu);
        let text = format!(
            "kiln start state, layout {LAYOUT}\n\
             qemu {} ({})\n\
             machine pc, accel {accel}, cpu {}, memory {memory_mib} MiB, cpus {cpus}\n\
             devices virtio-blk root, virtio-serial 4 ports, {shares} virtio-9p, vmgenid\n\
             kernel {}\ninitrd {}\nroot {}\ncmdline {}\n",
            qemu_abs.display(),
            identity(&qemu_abs, true)?,
            if accel == "kvm" { "host" } else { "max" },
            identity(kernel, false)?,
            identity(initrd, false)?,
            identity(root, false)?,
            cmdline.join(" "),
        );
        Ok(Shape {
            name: format!("{accel}-{memory_mib}m-{cpus}c-{shares}s"),
            text,
        })
    }
}

/// `qemu` as run: a bare name is looked up on `PATH` as the spawn does.
fn which(qemu: &Path) -> std::path::PathBuf {
    if qemu.components().count() > 1 {
        return qemu.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(qemu))
        .find(|p| p.is_file())
        .unwrap_or_else(|| qemu.to_path_buf())
}

/// Why a saved state is not used: said in one `-v` line before the VM boots instead.
pub(crate) type Unusable = String;

/// A header that checked out: the stream's length and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) stream_len: u64,
    pub(crate) hash: [u8; 32],
}

pub(crate) fn encode_header(h: &Header, shape: &Shape) -> Result<Vec<u8>, Unusable> {
    let text = shape.text.as_bytes();
    if OFF_TEXT + text.len() > HEADER_LEN as usize {
        return Err("the VM's shape does not fit a state header".into());
    }
    let mut b = vec![0u8; HEADER_LEN as usize];
    b[..8].copy_from_slice(MAGIC);
    b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
    b[OFF_HEADER_LEN..OFF_HEADER_LEN + 4].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    b[OFF_STREAM_LEN..OFF_STREAM_LEN + 8].copy_from_slice(&h.stream_len.to_le_bytes());
    b[OFF_HASH..OFF_HASH + 32].copy_from_slice(&h.hash);
    b[OFF_TEXT_LEN..OFF_TEXT_LEN + 4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    b[OFF_TEXT..OFF_TEXT + text.len()].copy_from_slice(text);
    Ok(b)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

/// Check a state file's header against its length and the running VM's shape.
pub(crate) fn check(file: &File, shape: &Shape) -> Result<Header, Unusable> {
    let len = file
        .metadata()
        .map_err(|e| format!("it cannot be read ({e})"))?
        .len();
    let mut b = vec![0u8; HEADER_LEN as usize];
    let got = read_full_at(file, &mut b, 0).map_err(|e| format!("it cannot be read ({e})"))?;
    if got < OFF_TEXT || &b[..8] != MAGIC {
        return Err("it is not a kiln start state (no header)".into());
    }
    let version = u32_at(&b, OFF_VERSION);
    if version != VERSION {
        return Err(format!(
            "it has format version {version}, this kiln writes {VERSION}"
        ));
    }
    if u64::from(u32_at(&b, OFF_HEADER_LEN)) != HEADER_LEN || got < HEADER_LEN as usize {
        return Err("its header is cut short or has another length".into());
    }
    let mut sl = [0u8; 8];
    sl.copy_from_slice(&b[OFF_STREAM_LEN..OFF_STREAM_LEN + 8]);
    let stream_len = u64::from_le_bytes(sl);
    if len != HEADER_LEN.saturating_add(stream_len) {
        return Err(format!(
            "it is truncated or damaged: {len} bytes, its header says {}",
            HEADER_LEN.saturating_add(stream_len)
        ));
    }
    let text_len = u32_at(&b, OFF_TEXT_LEN) as usize;
    let Some(text) = b.get(OFF_TEXT..OFF_TEXT.saturating_add(text_len)) else {
        return Err("its header is damaged".into());
    };
    if text != shape.text.as_bytes() {
        let text = String::from_utf8_lossy(text);
        let differs = shape
            .text
            .lines()
            .zip(text.lines().chain(std::iter::repeat("")))
            .find(|(a, b)| a != b)
            .map(|(now, then)| format!("it was made for {then:?}, this VM has {now:?}"))
            .unwrap_or_else(|| "it was made for another VM".to_string());
        return Err(differs);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[OFF_HASH..OFF_HASH + 32]);
    Ok(Header { stream_len, hash })
}

fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// BLAKE3 of `len` bytes of the stream (positional reads: qemu shares the file offset).
pub(crate) fn stream_hash(file: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(buf.len() as u64) as usize;
        let n = read_full_at(file, &mut buf[..want], HEADER_LEN + at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the state ends early",
            ));
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// Copy qemu's migration stream from `from` (the read end of the pipe qemu writes
/// to) into `file` after the header, hashing it on the way, until qemu closes the
/// pipe: the state can be sealed the moment qemu is done, with no second read of it.
pub(crate) fn copy_in(from: std::os::fd::OwnedFd, file: &File) -> io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    let mut from = File::from(from);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    let mut failed = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if failed.is_some() {
            // Keep reading: qemu's migration (and the paused VM) waits on this pipe.
            continue;
        }
        h.update(&buf[..n]);
        if let Err(e) = file.write_all_at(&buf[..n], HEADER_LEN + len) {
            failed = Some(e);
        }
        len += n as u64;
    }
    match failed {
        // A full disk: the state is not kept, the run goes on.
        Some(e) => Err(e),
        None => Ok((len, *h.finalize().as_bytes())),
    }
}

/// Write the header of a state whose stream (`len` bytes hashing to `hash`) is in
/// `file`; its whole size.
pub(crate) fn seal(file: &File, shape: &Shape, len: u64, hash: [u8; 32]) -> Result<u64, String> {
    if len == 0 {
        return Err("qemu wrote no state".into());
    }
    let h = encode_header(
        &Header {
            stream_len: len,
            hash,
        },
        shape,
    )?;
    file.write_all_at(&h, 0).map_err(|e| e.to_string())?;
    Ok(HEADER_LEN + len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn shape(t: &str) -> Shape {
        Shape {
            name: "tcg-512m-1c".into(),
            text: format!("kiln start state, layout 1\nqemu {t}\n"),
        }
    }

    /// A state sealed as a save does: the stream through a pipe into the file.
    fn sealed(stream: &[u8]) -> (tempfile::NamedTempFile, Shape) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let s = shape("/usr/bin/qemu-system-x86_64 (1:2)");
        let (r, w) = rustix::pipe::pipe().unwrap();
        let data = stream.to_vec();
        let writer = std::thread::spawn(move || File::from(w).write_all(&data).unwrap());
        let (len, hash) = copy_in(r, f.as_file()).unwrap();
        writer.join().unwrap();
        assert_eq!(len, stream.len() as u64);
        seal(f.as_file(), &s, len, hash).unwrap();
        (f, s)
    }

    /// A write error (here /dev/full's ENOSPC) is reported only after the whole
    /// stream was read: qemu, writing it, never waits on a copier that gave up.
    #[test]
    fn a_full_disk_still_drains_the_stream() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            for _ in 0..64 {
                w.write_all(&[1u8; 65536]).unwrap();
            }
        });
        let e = copy_in(r, &full).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
        writer.join().unwrap();
    }

    #[test]
    fn a_sealed_state_checks_out_and_hashes() {
        let (f, s) = sealed(b"QEVM stream bytes");
        let h = check(f.as_file(), &s).unwrap();
        assert_eq!(h.stream_len, 17);
        assert_eq!(stream_hash(f.as_file(), h.stream_len).unwrap(), h.hash);
    }

    #[test]
    fn truncated_damaged_and_foreign_states_are_refused() {
        let (f, s) = sealed(&[5u8; 300_000]);
        assert_eq!(check(f.as_file(), &s).unwrap().stream_len, 300_000);
        let (f, s) = sealed(&[5u8; 10000]);
        // Another qemu: the line that differs is named.
        let e = check(f.as_file(), &shape("/opt/qemu (3:4)")).unwrap_err();
        assert!(e.contains("/opt/qemu (3:4)"), "{e}");
        // Truncated: refused from its length alone.
        f.as_file().set_len(HEADER_LEN + 9999).unwrap();
        let e = check(f.as_file(), &s).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // Damaged in the stream: the header is fine, the hash is not.
        let (f, s) = sealed(&[5u8; 10000]);
        f.as_file().write_all_at(b"x", HEADER_LEN + 5000).unwrap();
        let h = check(f.as_file(), &s).unwrap();
        assert_ne!(stream_hash(f.as_file(), h.stream_len).unwrap(), h.hash);
        // Not a state at all.
        let g = tempfile::NamedTempFile::new().unwrap();
        g.as_file().write_all_at(&[0u8; 5000], 0).unwrap();
        assert!(check(g.as_file(), &s).unwrap_err().contains("not a kiln"));
    }
}
