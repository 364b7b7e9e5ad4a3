//! A base image with a huge member, through the real binary: memory stays bounded
//! (members are streamed into a sparse spill file, not held in memory), the image and
//! the chroot get the member's bytes and stay sparse, nothing is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use crate::common::text;

const GIB: u64 = 1 << 30;
/// The member: 3 GiB, zeros but for a head and a tail.
const BIG: u64 = 3 * GIB;
const HEAD: &[u8] = b"kiln big member head\n";
const TAIL: &[u8] = b"kiln big member tail\n";
/// The bound every build must stay under, whatever the member size.
const MAX_RSS: u64 = 128 << 20;

/// The member's bytes as a stream: HEAD, zeros, TAIL.
fn member() -> impl Read {
    HEAD.chain(io::repeat(0).take(BIG - (HEAD.len() + TAIL.len()) as u64))
        .chain(TAIL)
}

/// A GNU header owned by 0:0, time 0.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// `supermin.d/base.tar.zst` holding `./big` (3 GiB), a hard link to it and a small
/// file, written as a stream (never in memory).
fn make_supermin_d(dir: &Path) {
    fs::create_dir(dir).unwrap();
    let f = fs::File::create(dir.join("base.tar.zst")).unwrap();
    let mut z = zstd::Encoder::new(f, 1).unwrap();
    {
        let mut b = tar::Builder::new(&mut z);
        let mut h = header(tar::EntryType::Regular, 0o644, BIG);
        b.append_data(&mut h, "big", member()).unwrap();
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        b.append_link(&mut h, "big-link", "big").unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 6);
        b.append_data(&mut h, "small", &b"small\n"[..]).unwrap();
        b.finish().unwrap();
    }
    z.finish().unwrap().flush().unwrap();
}

/// Run `kiln ARGS` under `/usr/bin/time -v`, with `TMPDIR` at `tmp`; the peak RSS.
fn kiln_peak_rss(args: &[&std::ffi::OsStr], tmp: &Path, report: &Path) -> u64 {
    let o = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(report)
        .arg(crate::common::kiln())
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r = fs::read_to_string(report).unwrap();
    let kb: u64 = r
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .unwrap_or_else(|| panic!("no peak RSS in {r}"))
        .parse()
        .unwrap();
    kb * 1024
}

/// `debugfs -R CMD image`, its standard output.
fn debugfs(image: &Path, cmd: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The bytes of `path` at `off` inside an ext2 image with 4 KiB blocks, through the
/// block map (`bmap`), without reading the rest of the file.
fn image_bytes_at(image: &Path, path: &str, off: u64, len: usize) -> Vec<u8> {
    let lblk = off / 4096;
    let out = debugfs(image, &format!("bmap {path} {lblk}"));
    let pblk: u64 = out.trim().parse().unwrap_or_else(|_| panic!("bmap: {out}"));
    assert_ne!(pblk, 0, "{path}: block {lblk} is a hole");
    let mut buf = vec![0u8; len];
    fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, pblk * 4096 + off % 4096)
        .unwrap();
    buf
}

#[test]
fn a_3_gib_member_builds_in_bounded_memory_and_stays_sparse() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("supermin.d");
    make_supermin_d(&d);
    assert!(fs::metadata(d.join("base.tar.zst")).unwrap().len() < 10 << 20);
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();

    // ext2: the member in the image, mapped sparsely.
    let out = t.path().join("appliance");
    let rss = kiln_peak_rss(
        &[
            "build".as_ref(),
            "-f".as_ref(),
            "ext2".as_ref(),
            d.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        &tmp,
        &t.path().join("time-ext2"),
    );
    assert!(rss < MAX_RSS, "ext2 build peak RSS {} MiB", rss >> 20);
    let root = out.join("root");
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for p in ["/big", "/big-link"] {
        let st = debugfs(&root, &format!("stat {p}"));
        assert!(st.contains(&format!("Size: {BIG}")), "{p}: {st}");
        assert_eq!(image_bytes_at(&root, p, 0, HEAD.len()), HEAD, "{p} head");
        let end = BIG - TAIL.len() as u64;
        assert_eq!(image_bytes_at(&root, p, end, TAIL.len()), TAIL, "{p} tail");
    }
    // A block in the middle is a hole, in the file system and in the image file.
    let mid = debugfs(&root, &format!("bmap /big {}", BIG / 2 / 4096));
    assert_eq!(mid.trim(), "0", "middle of /big is mapped");
    assert_eq!(debugfs(&root, "cat /small"), "small\n");
    let allocated = fs::metadata(&root).unwrap().blocks() * 512;
    assert!(allocated < GIB, "image holds {} MiB", allocated >> 20);

    // chroot: the member as a sparse file.
    let chroot = t.path().join("chroot");
    let rss = kiln_peak_rss(
        &[
            "build".as_ref(),
            "-f".as_ref(),
            "chroot".as_ref(),
            d.as_os_str(),
            "-o".as_ref(),
            chroot.as_os_str(),
        ],
        &tmp,
        &t.path().join("time-chroot"),
    );
    assert!(rss < MAX_RSS, "chroot build peak RSS {} MiB", rss >> 20);
    let big = fs::File::open(chroot.join("big")).unwrap();
    let md = big.metadata().unwrap();
    assert_eq!(md.len(), BIG);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "chroot big holds {} blocks",
        md.blocks()
    );
    let mut head = vec![0u8; HEAD.len()];
    big.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, HEAD);
    let mut tail = vec![0u8; TAIL.len()];
    big.read_exact_at(&mut tail, BIG - TAIL.len() as u64)
        .unwrap();
    assert_eq!(tail, TAIL);

    // The spill files were never named: nothing is left in TMPDIR.
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// No room for the spill file: an error naming the tarball, the member and the
/// directory, exit status 1, no output, nothing left in the directory.
#[test]
#[ignore = "needs root"]
fn a_full_spill_directory_is_an_error_naming_the_member() {
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "kiln-spill-test"])
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(st.success());
    let _m = Mount(tmp.clone());

    let d = t.path().join("supermin.d");
    fs::create_dir(&d).unwrap();
    let f = fs::File::create(d.join("base.tar.zst")).unwrap();
    let mut z = zstd::Encoder::new(f, 1).unwrap();
    {
        let mut b = tar::Builder::new(&mut z);
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, "blob", &data[..]).unwrap();
        b.finish().unwrap();
    }
    z.finish().unwrap();

    let out = t.path().join("chroot");
    let o = Command::new(crate::common::kiln())
        .args(["build", "-f", "chroot"])
        .arg(&d)
        .arg("-o")
        .arg(&out)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "base.tar.zst",
        "member \"blob\"",
        &format!("temporary file in {}", tmp.display()),
        "No space left on device",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
    assert!(!out.exists());
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    let mut left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["supermin.d", "tmp"]);
}
