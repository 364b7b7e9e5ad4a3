use super::*;
use std::io::Write;

/// A ustar archive with one regular file per (name, data), names written raw into the
/// header (so `..` and absolute names can be made).
pub(crate) fn raw_tar(members: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

#[test]
fn sniffs_by_content_not_name() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tarball = raw_tar(&[(b"./etc/x", b"hello")]);
    let cases: Vec<(&str, Vec<u8>, Compression, InputKind)> = vec![
        (
            "a.txt",
            tarball.clone(),
            Compression::None,
            InputKind::BaseImage,
        ),
        ("b", gzip(&tarball), Compression::Gzip, InputKind::BaseImage),
        ("c", xz(&tarball), Compression::Xz, InputKind::BaseImage),
        ("d", zst(&tarball), Compression::Zstd, InputKind::BaseImage),
        (
            "base.tar.gz",
            b"/etc/hosts\n".to_vec(),
            Compression::None,
            InputKind::Hostfiles,
        ),
        (
            "e",
            gzip(b"-/usr/share/doc/*\n"),
            Compression::Gzip,
            InputKind::Excludefiles,
        ),
        (
            "f",
            xz(b"bash\ncoreutils\n"),
            Compression::Xz,
            InputKind::Packages,
        ),
        ("g", zst(b"9base\n"), Compression::Zstd, InputKind::Packages),
        ("h", Vec::new(), Compression::None, InputKind::Empty),
        ("i", gzip(b""), Compression::Gzip, InputKind::Empty),
    ];
    for (name, data, c, k) in cases {
        let p = write(d, name, &data);
        assert_eq!(sniff(&p).unwrap(), (c, k), "{name}");
    }
    // cpio: supermin's message, naming the file.
    let p = write(d, "initrd", b"070701000000000000");
    let e = sniff(&p).unwrap_err();
    assert!(matches!(e, InputError::Cpio { .. }));
    assert!(
        e.to_string().contains("cpio files are not supported"),
        "{e}"
    );
    assert!(e.to_string().contains("initrd"));
    // A comment as the first byte, a lone `/`, a bzip2 file: unknown.
    for (name, data) in [
        ("comment", &b"# packages\nbash\n"[..]),
        ("slash", b"/"),
        ("nul", b"\0\0"),
    ] {
        let p = write(d, name, data);
        let e = sniff(&p).unwrap_err();
        assert!(matches!(e, InputError::UnknownType { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name));
    }
    // A gzip header followed by garbage: a decompression error naming the file.
    let p = write(
        d,
        "badgz",
        &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
    );
    let e = sniff(&p).unwrap_err();
    assert!(matches!(e, InputError::Decompress { .. }), "{e}");
}

#[test]
fn directories_recurse_in_byte_order() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fs::create_dir(d.join("sub")).unwrap();
    write(d, "b", b"bash\n");
    write(d, "B", b"zsh\n");
    write(d, ".dot", b"dash\n");
    write(d, "sub/a", b"sed\n");
    write(d, "z", b"grep\n");
    let files = input_files(&[d.to_path_buf(), d.join("b")]).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.strip_prefix(d).unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [".dot", "B", "b", "sub/a", "z", "b"]);
    let inputs = read_inputs(&[d.to_path_buf()]).unwrap();
    let pk: Vec<_> = inputs.packages.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(pk, ["dash", "zsh", "bash", "sed", "grep"]);
}

#[test]
fn directory_loops_are_an_error() {
    let t = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(t.path(), t.path().join("loop")).unwrap();
    let e = read_inputs(&[t.path().to_path_buf()]).unwrap_err();
    assert!(matches!(e, InputError::DirLoop { .. }), "{e}");
}

#[test]
fn lists_parse_with_comments_and_origins() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let pk = write(
        d,
        "packages",
        b"bash\n# comment\n\n  coreutils \nperl:any\n",
    );
    let hf = write(d, "hostfiles", b"/etc/ld.so.cache\n#x\n/lib/lsb/*\n");
    let ex = write(d, "excludefiles", b"-/usr/share/doc/*\n\n-/boot/*");
    let inputs = read_inputs(&[pk, hf, ex.clone()]).unwrap();
    let names: Vec<_> = inputs.packages.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(names, ["bash", "coreutils", "perl:any"]);
    assert_eq!(inputs.packages[1].origin.line, 4);
    let hosts: Vec<_> = inputs.hostfiles.iter().map(|l| l.value.clone()).collect();
    assert_eq!(
        hosts,
        [PathBuf::from("/etc/ld.so.cache"), "/lib/lsb/*".into()]
    );
    assert_eq!(inputs.hostfiles[1].origin.line, 3);
    let ex_pats: Vec<_> = inputs.excludes.iter().map(|l| l.value.clone()).collect();
    assert_eq!(ex_pats, [b"/usr/share/doc/*".to_vec(), b"/boot/*".to_vec()]);
    assert_eq!(inputs.visited.len(), 3);

    let bad = write(d, "bad-ex", b"-/a\n/b\n");
    let e = read_inputs(&[bad]).unwrap_err();
    assert!(matches!(e, InputError::BadExclude { .. }));
    assert!(e.to_string().contains("bad-ex:2"), "{e}");
}

fn gnu() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_mode(0o644);
    h
}

#[test]
fn reads_tar_members_with_metadata() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o2755);
    h.set_uid(2952);
    h.set_gid(1009);
    h.set_mtime(1234);
    h.set_size(0);
    b.append_data(&mut h, "./usr/", &[][..]).unwrap();
    let mut h = gnu();
    h.set_mode(0o4755);
    h.set_size(3);
    b.append_data(&mut h, "usr/bin-x", &b"abc"[..]).unwrap();
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "usr/s", "/etc/abs").unwrap();
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "usr/hl", "usr/bin-x").unwrap();
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_size(0);
    b.append_data(&mut h, "dev-null", &[][..]).unwrap();
    // A long name (GNU long-name extension).
    let long = format!("usr/{}", "n".repeat(150));
    let mut h = gnu();
    h.set_size(1);
    b.append_data(&mut h, &long, &b"L"[..]).unwrap();
    let data = b.into_inner().unwrap();
    let img = read_tar(Path::new("t.tar"), &data[..]).unwrap();
    let m = &img.members;
    assert_eq!(m.len(), 6);
    assert_eq!(m[0].path, Path::new("/usr"));
    assert_eq!(m[0].kind, MemberKind::Dir);
    assert_eq!(
        (m[0].perm, m[0].uid, m[0].gid, m[0].mtime),
        (0o2755, 2952, 1009, 1234)
    );
    assert_eq!(m[1].perm, 0o4755);
    assert_eq!(
        m[1].kind,
        MemberKind::File(Region::from_bytes(b"abc").unwrap())
    );
    let MemberKind::File(r) = &m[1].kind else {
        unreachable!()
    };
    assert_eq!(r.to_vec().unwrap(), b"abc");
    assert_eq!(m[2].kind, MemberKind::Symlink(b"/etc/abs".to_vec()));
    assert!(
        matches!(&m[3].kind, MemberKind::HardLink { target, content }
        if target == Path::new("/usr/bin-x") && content.to_vec().unwrap() == b"abc")
    );
    assert_eq!(m[4].kind, MemberKind::CharDev(makedev(1, 3)));
    assert_eq!(m[5].path, PathBuf::from(format!("/{long}")));
}

#[test]
fn refuses_dotdot_and_absolute_members() {
    for name in [&b"../etc/passwd"[..], b"a/../../b", b"/etc/shadow"] {
        let data = raw_tar(&[(b"./ok", b"1"), (name, b"x")]);
        let e = read_tar(Path::new("evil.tar"), &data[..]).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, InputError::TarMember { .. }), "{s}");
        assert!(
            s.contains("evil.tar") && s.contains(std::str::from_utf8(name).unwrap()),
            "{s}"
        );
    }
}

#[test]
fn refuses_corrupt_and_truncated_archives() {
    let data = raw_tar(&[(b"./a", &[b'a'; 3000]), (b"./b", b"x")]);
    // Cut in the middle of the first member's data.
    let e = read_tar(Path::new("cut.tar"), &data[..1500]).unwrap_err();
    assert!(e.to_string().contains("cut.tar"), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    // Cut in the middle of the second header.
    let e = read_tar(Path::new("cut2.tar"), &data[..3584 + 100]).unwrap_err();
    assert!(e.to_string().contains("cut2.tar"), "{e}");
    // A flipped byte in a header: checksum mismatch.
    let mut bad = data.clone();
    bad[10] ^= 0x55;
    let e = read_tar(Path::new("bad.tar"), &bad[..]).unwrap_err();
    assert!(e.to_string().contains("bad.tar"), "{e}");
    // Truncated gzip stream around a valid tar, through read_inputs.
    let t = tempfile::tempdir().unwrap();
    let gz = gzip(&data);
    let p = write(t.path(), "cut.tar.gz", &gz[..gz.len() - 20]);
    let e = read_inputs(&[p]).unwrap_err();
    assert!(e.to_string().contains("cut.tar.gz"), "{e}");
}

#[test]
fn missing_input_names_it() {
    let e = read_inputs(&[PathBuf::from("/nonexistent/supermin.d")]).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/supermin.d"), "{e}");
}

#[test]
fn makedev_matches_glibc() {
    assert_eq!(makedev(1, 3), 0x103);
    assert_eq!(makedev(8, 0x123), (8 << 8) | 0x23 | (0x100 << 12));
}
