//! Read-back of images with the real e2fsprogs: `e2fsck -fn` must be clean, and
//! `debugfs` (rdump, stat, ea_list, ea_get) must give back every entry of the file set.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_fileset::{Content, FileSet, Kind};

pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install e2fsprogs (scripts/setup-host)");
}

/// `e2fsck -fn` must exit 0 and report nothing to fix.
pub fn e2fsck_clean(img: &Path) {
    let out = Command::new(tool("e2fsck"))
        .arg("-fn")
        .arg(img)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "e2fsck -fn {img:?} failed ({:?}):\n{text}",
        out.status
    );
    assert!(!text.contains("Fix?"), "e2fsck found problems:\n{text}");
}

/// Run debugfs with a command file; returns stdout.
pub fn debugfs(img: &Path, cmds: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cmds");
    fs::write(&f, cmds).unwrap();
    let out = Command::new(tool("debugfs"))
        .arg("-f")
        .arg(&f)
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug, Default, Clone)]
pub struct Stat {
    pub ino: u64,
    pub typ: String,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u32,
    pub blockcount: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub fast_link: bool,
    pub dev: Option<(u32, u32)>,
    pub xattr_names: Vec<String>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)?;
    line[i + key.len()..].split_whitespace().next()
}

fn quote(p: &Path) -> String {
    let s = p.to_str().expect("test paths are UTF-8");
    assert!(!s.contains('"'), "test paths have no quotes");
    format!("\"{s}\"")
}

/// `stat` and `ea_list` every path in one debugfs run.
pub fn stat_all(img: &Path, paths: &[&Path]) -> HashMap<PathBuf, Stat> {
    let mut cmds = String::new();
    for p in paths {
        cmds += &format!("stat {}\nea_list {}\n", quote(p), quote(p));
    }
    let out = debugfs(img, &cmds);
    let mut res: HashMap<PathBuf, Stat> = HashMap::new();
    let mut cur: Option<(PathBuf, bool)> = None;
    let mut in_attrs = false;
    for line in out.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ") {
            let (verb, arg) = cmd.split_once(' ').unwrap();
            let path = PathBuf::from(arg.trim_matches('"'));
            res.entry(path.clone()).or_default();
            cur = Some((path, verb == "stat"));
            in_attrs = false;
            continue;
        }
        let Some((path, is_stat)) = &cur else {
            continue;
        };
        let st = res.get_mut(path).unwrap();
        if !is_stat {
            if line.starts_with("Extended attributes:") {
                in_attrs = true;
            } else if in_attrs && let Some(rest) = line.strip_prefix("  ") {
                let name = rest.split(" (").next().unwrap();
                st.xattr_names.push(name.to_string());
            }
            continue;
        }
        if line.starts_with("Inode:") {
            st.ino = field(line, "Inode:").unwrap().parse().unwrap();
            st.typ = field(line, "Type:").unwrap().to_string();
            st.perm = u32::from_str_radix(field(line, "Mode:").unwrap(), 8).unwrap();
        } else if line.starts_with("User:") {
            // debugfs prints ids with %d: large ones come out negative.
            let id = |k| field(line, k).unwrap().parse::<i64>().unwrap() as u32;
            st.uid = id("User:");
            st.gid = id("Group:");
            st.size = field(line, "Size:").unwrap().parse().unwrap();
        } else if line.starts_with("Links:") {
            st.links = field(line, "Links:").unwrap().parse().unwrap();
            st.blockcount = field(line, "Blockcount:").unwrap().parse().unwrap();
        } else if let Some(v) = field(line, " mtime:").filter(|_| line.starts_with(" mtime:")) {
            let (lo, extra) = v.trim_start_matches("0x").split_once(':').unwrap();
            let lo = u32::from_str_radix(lo, 16).unwrap() as i32 as i64;
            let extra = u32::from_str_radix(extra, 16).unwrap();
            st.mtime = lo + (i64::from(extra & 3) << 32);
            st.mtime_nsec = extra >> 2;
        } else if line.starts_with("Fast link dest:") {
            st.fast_link = true;
        } else if let Some((_, v)) = line.split_once("Device major/minor number: ") {
            let mm = v.split_whitespace().next().unwrap();
            let (a, b) = mm.split_once(':').unwrap();
            st.dev = Some((a.parse().unwrap(), b.parse().unwrap()));
        }
    }
    res
}

pub fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

pub fn split_dev(d: u64) -> (u32, u32) {
    let major = ((d >> 8) & 0xfff) | ((d >> 32) & !0xfff);
    let minor = (d & 0xff) | ((d >> 12) & !0xff);
    (major as u32, minor as u32)
}

pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

/// ACL values compared with the ids of the unnamed entries (`USER_OBJ` etc.) zeroed:
/// the VFS reports them as -1, debugfs as 0; neither stores them.
fn normal_acl(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    for e in v[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        if tag != 2 && tag != 8 {
            e[4..8].copy_from_slice(&[0; 4]);
        }
    }
    v
}

/// Everything in `set` must come back from `img` as it went in.
pub fn verify(set: &FileSet, img: &Path) {
    e2fsck_clean(img);
    let dump = tempfile::tempdir().unwrap();
    let out = Command::new(tool("debugfs"))
        .arg("-R")
        .arg(format!("rdump / {}", dump.path().display()))
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "rdump failed: {out:?}");
    let paths: Vec<&Path> = set.entries().iter().map(|e| e.path.as_path()).collect();
    let stats = stat_all(img, &paths);
    let in_dump = |p: &Path| dump.path().join(p.strip_prefix("/").unwrap());

    // Names per inode, for the link counts of files.
    let mut names: HashMap<&Path, u32> = HashMap::new();
    for e in set.entries() {
        match &e.kind {
            Kind::File(_) => *names.entry(&e.path).or_default() += 1,
            Kind::HardLink(t) => *names.entry(t).or_default() += 1,
            _ => {}
        }
    }

    let mut attr_cmds = String::new();
    let mut attr_expect = Vec::new();
    let attr_dir = tempfile::tempdir().unwrap();
    for e in set.entries() {
        let st = stats
            .get(&e.path)
            .unwrap_or_else(|| panic!("{:?} missing from debugfs output", e.path));
        assert!(st.ino > 0, "{:?} not found in the image", e.path);
        let (meta, kind) = match &e.kind {
            Kind::HardLink(t) => {
                let target = &stats[t];
                assert_eq!(
                    st.ino, target.ino,
                    "{:?} is not a hard link to {t:?}",
                    e.path
                );
                continue;
            }
            k => (&e.meta, k),
        };
        let typ = match kind {
            Kind::Dir => "directory",
            Kind::File(_) => "regular",
            Kind::Symlink(_) => "symlink",
            Kind::CharDev(_) => "character",
            Kind::BlockDev(_) => "block",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::HardLink(_) => unreachable!(),
        };
        assert_eq!(st.typ, typ, "type of {:?}", e.path);
        assert_eq!(st.perm, meta.perm, "mode of {:?}", e.path);
        assert_eq!(
            (st.uid, st.gid),
            (meta.uid, meta.gid),
            "owner of {:?}",
            e.path
        );
        assert_eq!(
            (st.mtime, st.mtime_nsec),
            (meta.mtime, meta.mtime_nsec),
            "mtime of {:?}",
            e.path
        );
        match kind {
            Kind::File(c) => {
                assert_eq!(st.size, c.len(), "size of {:?}", e.path);
                assert_eq!(st.links, names[e.path.as_path()], "links of {:?}", e.path);
                let got = hash_file(&in_dump(&e.path));
                let want = match c {
                    Content::Host { path, .. } => hash_file(path),
                    Content::Bytes(b) => blake3::hash(b),
                    Content::Spilled(r) => blake3::Hash::from(r.hash()),
                };
                assert_eq!(got, want, "content of {:?}", e.path);
            }
            Kind::Symlink(t) => {
                assert_eq!(st.size, t.len() as u64, "size of {:?}", e.path);
                assert_eq!(st.fast_link, t.len() < 60, "fast/slow link {:?}", e.path);
                let got = fs::read_link(in_dump(&e.path)).unwrap();
                assert_eq!(got.as_os_str().as_bytes(), &t[..], "target of {:?}", e.path);
            }
            Kind::CharDev(d) | Kind::BlockDev(d) => {
                assert_eq!(st.dev, Some(split_dev(*d)), "device number of {:?}", e.path);
            }
            _ => {}
        }
        let mut want_names: Vec<String> = meta
            .xattrs
            .iter()
            .map(|x| String::from_utf8(x.name.clone()).unwrap())
            .collect();
        let mut got_names = st.xattr_names.clone();
        want_names.sort();
        got_names.sort();
        assert_eq!(got_names, want_names, "xattr names of {:?}", e.path);
        for x in &meta.xattrs {
            let f = attr_dir.path().join(attr_expect.len().to_string());
            attr_cmds += &format!(
                "ea_get -f {} {} {}\n",
                f.display(),
                quote(&e.path),
                String::from_utf8(x.name.clone()).unwrap()
            );
            attr_expect.push((e.path.clone(), x.clone(), f));
        }
    }
    if !attr_cmds.is_empty() {
        debugfs(img, &attr_cmds);
        for (p, x, f) in attr_expect {
            let got = fs::read(&f).unwrap_or_else(|e| panic!("xattr {x:?} of {p:?}: {e}"));
            if x.name.starts_with(b"system.posix_acl_") {
                assert_eq!(normal_acl(&got), normal_acl(&x.value), "ACL of {p:?}");
            } else {
                assert_eq!(
                    got,
                    x.value,
                    "xattr {:?} of {p:?}",
                    String::from_utf8_lossy(&x.name)
                );
            }
        }
    }
}

/// The ext2 magic at 0x438 and the UUID at 0x468, read from the file.
pub fn magic_and_uuid(img: &Path) -> ([u8; 2], [u8; 16]) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(img).unwrap();
    let mut m = [0u8; 2];
    let mut u = [0u8; 16];
    f.read_exact_at(&mut m, 0x438).unwrap();
    f.read_exact_at(&mut u, 0x468).unwrap();
    (m, u)
}

pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Files left in a directory (to check that failures leave nothing behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
