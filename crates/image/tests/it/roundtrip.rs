//! Images of real trees, checked with e2fsck and read back with debugfs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::*;
use kiln_fileset::scan::scan_tree;
use kiln_fileset::{Content, Entry, FileSet, Kind, Meta, Xattr};
use kiln_image::{ImageOptions, write_image};

const B: usize = 4096;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

fn x(name: &str, value: &[u8]) -> Xattr {
    Xattr {
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    }
}

fn acl() -> Vec<u8> {
    // user::rw- user:1000:r-- group::r-- mask::r-- other::r-- (VFS format, version 2)
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn entry(path: &str, kind: Kind, perm: u32) -> Entry {
    Entry {
        path: path.into(),
        kind,
        meta: Meta {
            mtime: 1_700_000_000,
            mtime_nsec: 123_456_789,
            ..Meta::new(perm)
        },
    }
}

/// A tree with every entry kind and the size and name edge cases, part on disk (read
/// through the host file path) and part made up in memory.
fn synthetic(root: &Path) -> FileSet {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("one"), b"x").unwrap();
    fs::write(root.join("odd"), pattern(12_345, 1)).unwrap();
    fs::write(root.join("twelve"), pattern(12 * B, 2)).unwrap();
    fs::write(root.join("ind-full"), pattern((12 + 1024) * B, 3)).unwrap();
    fs::write(root.join("dind"), pattern((12 + 1024 + 1) * B, 4)).unwrap();
    fs::write(
        root.join("dind-partial"),
        pattern((12 + 1024 + 1) * B - 17, 5),
    )
    .unwrap();
    {
        let f = fs::File::create(root.join("sparse")).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&pattern(3 * B, 6), (5 << 20) + 100).unwrap();
        f.write_all_at(b"tail", (10 << 20) - 4).unwrap();
    }
    fs::write(root.join("n".repeat(255)), b"long name").unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level-{i:02}-{}", "d".repeat(30)));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep file").unwrap();
    symlink("a".repeat(59), root.join("link59")).unwrap();
    symlink("b".repeat(60), root.join("link60")).unwrap();
    symlink(format!("/{}", "c/".repeat(1000)), root.join("link-long")).unwrap();
    symlink("dir/sub", root.join("link-dir")).unwrap();
    fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("setgid")).unwrap();
    fs::set_permissions(root.join("setgid"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::hard_link(root.join("odd"), root.join("dir/odd-again")).unwrap();
    fs::hard_link(root.join("odd"), root.join("dir/sub/odd-thrice")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();

    let mut entries = scan_tree(root, Path::new("/")).unwrap();
    for e in entries.iter_mut() {
        match e.path.to_str().unwrap() {
            "/" => e.meta = Meta::new(0o755),
            "/one" => {
                e.meta.uid = 100_000;
                e.meta.gid = 65_536;
                e.meta.xattrs = vec![
                    x(
                        "security.capability",
                        &[
                            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        ],
                    ),
                    x("system.posix_acl_access", &acl()),
                    x("trusted.t", b"tv"),
                    x("user.empty", b""),
                ];
            }
            "/odd" => {
                e.meta.mtime = -31_536_000;
                e.meta.mtime_nsec = 1;
                e.meta.uid = u32::MAX - 1;
            }
            "/twelve" => {
                e.meta.mtime = 2_208_988_800; // 2040, past 2^31
                e.meta.mtime_nsec = 999_999_999;
            }
            // Too big for the inode: an attribute block, shared by both files.
            "/dind" | "/ind-full" => {
                e.meta.xattrs = vec![x("user.big", &pattern(1000, 9)), x("user.small", b"s")];
            }
            "/setgid" => e.meta.xattrs = vec![x("system.posix_acl_default", &acl())],
            // A file capability alone fits in the inode.
            "/setuid" => {
                e.meta.xattrs = vec![x(
                    "security.capability",
                    &[
                        0, 0, 0, 2, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                )]
            }
            _ => {}
        }
    }
    let mut dev = entry("/devs", Kind::Dir, 0o755);
    dev.meta.xattrs = vec![x("user.dir", b"on a directory")];
    entries.push(dev);
    entries.push(entry("/devs/null", Kind::CharDev(makedev(1, 3)), 0o666));
    entries.push(entry("/devs/loop0", Kind::BlockDev(makedev(7, 0)), 0o660));
    entries.push(entry(
        "/devs/big",
        Kind::CharDev(makedev(300, 70_000)),
        0o600,
    ));
    entries.push(entry("/devs/fifo", Kind::Fifo, 0o644));
    entries.push(entry("/devs/sock", Kind::Socket, 0o755));
    let mut mem = entry(
        "/mem",
        Kind::File(Content::Bytes(Arc::from(pattern(10_000, 7)))),
        0o6755,
    );
    mem.meta.uid = 65_536;
    mem.meta.gid = 4_000_000_000;
    entries.push(mem);
    entries.push(entry("/mem-link", Kind::HardLink("/mem".into()), 0));
    let mut lnk = entry(
        "/devs/symlink-xattr",
        Kind::Symlink(b"../mem".to_vec()),
        0o777,
    );
    lnk.meta.xattrs = vec![x("security.selinux", b"system_u:object_r:bin_t:s0\0")];
    entries.push(lnk);
    FileSet::new(entries).unwrap()
}

#[test]
fn every_kind_round_trips_and_is_reproducible() {
    let src = tempfile::tempdir().unwrap();
    let set = synthetic(src.path());
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("root");
    let opts = ImageOptions {
        size: 64 << 20,
        ..ImageOptions::default()
    };
    let report = write_image(&set, &img, &opts).unwrap();
    assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
    assert_eq!(
        fs::metadata(&img).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    verify(&set, &img);

    // The UUID is where libguestfs reads it, after the magic.
    let (magic, uuid) = magic_and_uuid(&img);
    assert_eq!(magic, [0x53, 0xef]);
    assert_eq!(uuid, report.uuid);
    let dumpe2fs = std::process::Command::new(tool("dumpe2fs"))
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dumpe2fs.stdout);
    assert!(text.contains(&report.uuid_string()), "{text}");
    assert!(text.contains("Inode size:\t          256"), "{text}");
    assert!(
        text.contains("Filesystem features:      ext_attr filetype sparse_super large_file"),
        "{text}"
    );

    // Attributes in the inode (no attribute block) and in a block shared by two files.
    let st = stat_all(
        &img,
        &[
            Path::new("/setuid"),
            Path::new("/dind"),
            Path::new("/ind-full"),
        ],
    );
    assert_eq!(
        st[Path::new("/setuid")].blockcount,
        8,
        "one data block, no xattr block"
    );
    let acl_block = |p: &str| {
        debugfs(&img, &format!("stat {p}\n"))
            .lines()
            .find_map(|l| {
                l.strip_prefix("File ACL: ")
                    .map(|v| v.split_whitespace().next().unwrap().to_string())
            })
            .unwrap()
    };
    assert_ne!(acl_block("/dind"), "0");
    assert_eq!(acl_block("/dind"), acl_block("/ind-full"));
    assert_eq!(acl_block("/setuid"), "0");

    // Hard links share an inode and count their names.
    let st = stat_all(&img, &[Path::new("/odd"), Path::new("/mem")]);
    assert_eq!(st[Path::new("/odd")].links, 3);
    assert_eq!(st[Path::new("/mem")].links, 2);
    // The sparse file keeps its holes: head, 2 or 3 middle blocks, tail (plus the
    // indirect blocks for the middle and tail).
    let st = stat_all(&img, &[Path::new("/sparse")]);
    assert!(st[Path::new("/sparse")].blockcount <= 8 * 10, "{:?}", st);

    // Same set, second build: byte-identical.
    let img2 = out.path().join("root2");
    let report2 = write_image(&set, &img2, &opts).unwrap();
    assert_eq!(report, report2);
    assert_eq!(sha256(&img), sha256(&img2));

    // Onto another filesystem (tmpfs: copy_file_range fails with EXDEV, the fallback
    // copies), still the same bytes.
    if Path::new("/dev/shm").is_dir() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let img3 = shm.path().join("root");
        let r3 = write_image(&set, &img3, &opts).unwrap();
        assert_eq!(r3.uuid, report.uuid);
        assert!(
            r3.used_fallback_copy,
            "tmpfs cannot take copy_file_range from here"
        );
        assert!(!report.used_fallback_copy);
        assert_eq!(sha256(&img), sha256(&img3));
    }

    // Replacing an existing image works, and leaves no temporary files.
    write_image(&set, &img, &opts).unwrap();
    assert_eq!(listing(out.path()), ["root", "root2"]);
}

#[test]
fn large_directory_and_sparse_5g_file() {
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    fs::create_dir(r.join("many")).unwrap();
    for i in 0..10_000 {
        let name = format!("entry-{i:05}-{}", "z".repeat(i % 40));
        if i % 10 == 0 {
            fs::create_dir(r.join("many").join(name)).unwrap();
        } else {
            fs::write(r.join("many").join(name), i.to_string()).unwrap();
        }
    }
    let big = r.join("sparse5g");
    {
        let f = fs::File::create(&big).unwrap();
        f.set_len(5 << 30).unwrap();
        f.write_all_at(&pattern(B, 1), 0).unwrap();
        f.write_all_at(&pattern(2 * B, 2), 3 << 30).unwrap();
        f.write_all_at(b"end", (5 << 30) - 3).unwrap();
    }
    let mut entries = scan_tree(r, Path::new("/")).unwrap();
    entries[0].meta = Meta::new(0o755);
    let set = FileSet::new(entries).unwrap();
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("root");
    let opts = ImageOptions {
        size: 8 << 30,
        ..ImageOptions::default()
    };
    write_image(&set, &img, &opts).unwrap();
    e2fsck_clean(&img);

    // Every entry of the big directory, with its type and content.
    let listing = debugfs(&img, "ls -l /many\n");
    let names = listing.lines().filter(|l| l.contains("entry-")).count();
    assert_eq!(names, 10_000);
    let st = stat_all(&img, &[Path::new("/many"), Path::new("/sparse5g")]);
    assert_eq!(st[Path::new("/many")].links, 2 + 1000);
    let sp = &st[Path::new("/sparse5g")];
    assert_eq!(sp.size, 5 << 30);
    // 4 data blocks and a few indirect blocks, not 5 GiB.
    assert!(sp.blockcount < 8 * 16, "{sp:?}");
    let dump = tempfile::tempdir().unwrap();
    let cat = |p: &str| {
        let f = dump.path().join("f");
        debugfs(&img, &format!("dump {p} {}\n", f.display()));
        fs::read(&f).unwrap()
    };
    assert_eq!(cat("/many/entry-00007-zzzzzzz"), b"7");
    // The data blocks of the sparse file, read through its block map.
    let img_file = fs::File::open(&img).unwrap();
    let block_of = |lblk: u64| -> u64 {
        let out = debugfs(&img, &format!("bmap /sparse5g {lblk}\n"));
        out.lines().last().unwrap().trim().parse().unwrap()
    };
    let read_block = |pblk: u64| {
        let mut b = vec![0u8; B];
        img_file.read_exact_at(&mut b, pblk * B as u64).unwrap();
        b
    };
    let first = (3u64 << 30) / B as u64;
    assert_eq!(read_block(block_of(0)), pattern(B, 1));
    assert_eq!(read_block(block_of(first + 1)), pattern(2 * B, 2)[B..]);
    assert_eq!(block_of(1), 0, "a hole stays a hole");
    let last = read_block(block_of((5u64 << 30) / B as u64 - 1));
    assert_eq!(&last[B - 3..], b"end");
}

fn kernel_modules() -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir("/lib/modules")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("modules.dep").exists())
        .collect();
    v.sort();
    v.pop()
        .expect("a kernel in /lib/modules (scripts/setup-host)")
}

/// The real libguestfs appliance file set (its supermin.d resolved against this host's
/// dpkg database, plus the kernel's modules tree): thousands of files, ~700 MB.
#[test]
fn libguestfs_file_set_round_trips() {
    let supermin_d = Path::new("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d");
    assert!(
        supermin_d.is_dir(),
        "install libguestfs-tools (scripts/setup-host)"
    );
    let inputs = kiln_inputs::read_inputs(&[supermin_d.to_path_buf()]).unwrap();
    let db = kiln_packages::open(&kiln_packages::Sysroot::default()).unwrap();
    let mut r =
        kiln_fileset::resolve(&inputs, db.as_ref(), &kiln_fileset::Options::default()).unwrap();
    let m = kernel_modules();
    r.builder.add_host_tree(&m, &m).unwrap();
    let set = r.builder.finish().unwrap();
    assert!(set.len() > 5000, "{}", set.len());
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("root");
    let report = write_image(&set, &img, &ImageOptions::default()).unwrap();
    assert_eq!(report.data_bytes, set.content_bytes());
    verify(&set, &img);
}

struct Mount(tempfile::TempDir);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// The Linux ext4 driver (the one the appliance boots with) mounts the image and sees
/// exactly the file set: every path, kind, mode, owner, mtime with nanoseconds, device
/// number, symlink target, hard link, xattr (ACLs through the kernel's own conversion)
/// and content.
#[test]
#[ignore = "needs root"]
fn the_kernel_reads_back_the_file_set() {
    assert!(
        rustix::process::geteuid().is_root(),
        "a loop mount needs root: run as root"
    );
    let src = tempfile::tempdir().unwrap();
    let set = synthetic(src.path());
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("root");
    let opts = ImageOptions {
        size: 64 << 20,
        ..ImageOptions::default()
    };
    write_image(&set, &img, &opts).unwrap();
    let mnt = Mount(tempfile::tempdir().unwrap());
    let st = std::process::Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro"])
        .arg(&img)
        .arg(mnt.0.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount -o loop failed");
    let seen = scan_tree(mnt.0.path(), Path::new("/")).unwrap();
    let seen: std::collections::HashMap<PathBuf, Entry> =
        seen.into_iter().map(|e| (e.path.clone(), e)).collect();
    assert_eq!(seen.len(), set.len() + 1, "the set plus lost+found");
    assert!(seen.contains_key(Path::new("/lost+found")));
    for e in set.entries() {
        let s = &seen[&e.path];
        match (&e.kind, &s.kind) {
            (Kind::File(c), Kind::File(Content::Host { path, len })) => {
                assert_eq!(*len, c.len(), "size of {:?}", e.path);
                let want = match c {
                    Content::Host { path, .. } => hash_file(path),
                    Content::Bytes(b) => blake3::hash(b),
                    Content::Spilled(r) => blake3::Hash::from(r.hash()),
                };
                assert_eq!(hash_file(path), want, "content of {:?}", e.path);
            }
            (a, b) => assert_eq!(a, b, "kind of {:?}", e.path),
        }
        if !matches!(e.kind, Kind::HardLink(_)) {
            assert_eq!(s.meta, e.meta, "metadata of {:?}", e.path);
        }
    }
}
