//! Finding the root device: the `root=` forms the init understands, and the scan of
//! `/sys/class/block` that recognises an ext2/3/4 root by its UUID *and* its magic.
//!
//! Invariants: every wait is bounded; the probe reads only the superblock through a
//! private device node, never through `/dev/NAME` (devtmpfs may create it late).

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{CWD, FileType, Mode};

use crate::{Log, fatal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Root {
    Uuid([u8; 16]),
    Dev(String),
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Uuid(u) => write!(f, "root UUID={} (with ext2/3/4 magic)", uuid_string(u)),
            Root::Dev(n) => write!(f, "root device /dev/{n}"),
        }
    }
}

pub(crate) fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

pub(crate) fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return Err(format!("root=UUID={s}: not a 16-byte UUID"));
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let txt = std::str::from_utf8(pair).map_err(|_| format!("root=UUID={s}: not hex"))?;
        out[i] = u8::from_str_radix(txt, 16).map_err(|_| format!("root=UUID={s}: not hex"))?;
    }
    Ok(out)
}

fn read_dev_number(sysdir: &Path) -> Option<(u32, u32)> {
    let s = fs::read_to_string(sysdir.join("dev")).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A private device node for probing: devtmpfs may create `/dev/NAME` a little after the
/// sysfs entry appears, so the init makes its own.
fn probe_node(maj: u32, min: u32) -> io::Result<fs::File> {
    let p = "/.kiln-probe";
    let _ = fs::remove_file(p);
    rustix::fs::mknodat(
        CWD,
        p,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(maj, min),
    )?;
    let f = fs::File::open(p);
    let _ = fs::remove_file(p);
    f
}

/// What the probe saw on one block device (for the timeout message).
enum Seen {
    Match,
    NoMagic,
    OtherUuid,
    Unreadable(String),
}

fn probe_ext(maj: u32, min: u32, uuid: &[u8; 16]) -> Seen {
    let mut f = match probe_node(maj, min) {
        Ok(f) => f,
        Err(e) => return Seen::Unreadable(e.to_string()),
    };
    let mut sb = [0u8; 0x478];
    if let Err(e) = f.read_exact(&mut sb) {
        return Seen::Unreadable(e.to_string());
    }
    if sb[0x438..0x43a] != [0x53, 0xef] {
        Seen::NoMagic
    } else if sb[0x468..0x478] == uuid[..] {
        Seen::Match
    } else {
        Seen::OtherUuid
    }
}

/// One scan for the root device. Returns (name, maj, min) or a description of what was
/// seen, for the timeout message.
fn find_root_once(root: &Root) -> Result<(String, u32, u32), Vec<String>> {
    let mut seen = Vec::new();
    match root {
        Root::Dev(name) => {
            let d = Path::new("/sys/class/block").join(name);
            if let Some((a, b)) = read_dev_number(&d) {
                return Ok((name.clone(), a, b));
            }
        }
        Root::Uuid(uuid) => {
            let mut names: Vec<String> = match fs::read_dir("/sys/class/block") {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect(),
                Err(_) => Vec::new(),
            };
            names.sort();
            for name in names {
                let d = Path::new("/sys/class/block").join(&name);
                let size: u64 = fs::read_to_string(d.join("size"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                if size == 0 {
                    continue;
                }
                let Some((a, b)) = read_dev_number(&d) else {
                    continue;
                };
                match probe_ext(a, b, uuid) {
                    Seen::Match => return Ok((name, a, b)),
                    Seen::NoMagic => seen.push(format!("{name} (no ext magic)")),
                    Seen::OtherUuid => seen.push(format!("{name} (other UUID)")),
                    Seen::Unreadable(e) => seen.push(format!("{name} ({e})")),
                }
            }
        }
    }
    Err(seen)
}

pub(crate) fn wait_for_root(log: &Log, root: &Root, timeout: Duration) -> (String, u32, u32) {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    let mut announced = false;
    loop {
        let seen = match find_root_once(root) {
            Ok(found) => return found,
            Err(seen) => seen,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            let seen = if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            };
            fatal(&format!(
                "gave up after {:.1} s waiting for {root}; block devices seen: {seen}. \
                 Check that the root disk is attached and that its driver (virtio-blk, \
                 virtio-scsi, ata, nvdimm) is in the initrd; kiln.rootwait=SECONDS changes the wait",
                waited.as_secs_f64()
            ));
        }
        if !announced && waited >= Duration::from_secs(1) {
            announced = true;
            log.info(&format!(
                "waiting up to {} s for {root}",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(delay.min(timeout.saturating_sub(waited)));
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_roundtrip() {
        let u = parse_uuid("cc33dc13-0000-4a5b-9c8d-0123456789ab").unwrap();
        assert_eq!(uuid_string(&u), "cc33dc13-0000-4a5b-9c8d-0123456789ab");
    }
}
