#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::fixed::{ReadmeInfo, write_readme};
use std::process::Command;

/// A fixed appliance whose `root` is 64 MiB with 30 scattered data blocks (enough
/// segments to need extended sparse headers) and a tail that is not block-aligned.
fn appliance(dir: &Path, explicit_zeros: bool) {
    write_readme(
        dir,
        &ReadmeInfo {
            kiln_version: "0.1.0".into(),
            kernel_version: "6.1.0-test".into(),
            root_uuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
        },
    )
    .unwrap();
    fs::write(dir.join("kernel"), vec![7u8; 10_000]).unwrap();
    fs::write(dir.join("initrd"), b"070701 not really a cpio").unwrap();
    let size = (64 << 20) + 100;
    let f = File::create(dir.join("root")).unwrap();
    if explicit_zeros {
        f.write_all_at(&vec![0u8; size as usize], 0).unwrap();
    } else {
        f.set_len(size).unwrap();
    }
    for i in 0..30u64 {
        f.write_all_at(&[i as u8 + 1; 100], i * 2 * (1 << 20) + 5000)
            .unwrap();
    }
    f.write_all_at(b"tail", size - 4).unwrap();
}

#[test]
fn data_map_is_a_function_of_content() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    appliance(a.path(), false);
    appliance(b.path(), true);
    let fa = File::open(a.path().join("root")).unwrap();
    let fb = File::open(b.path().join("root")).unwrap();
    let size = fa.metadata().unwrap().len();
    let ma = data_map(&fa, size).unwrap();
    assert_eq!(ma, data_map(&fb, size).unwrap());
    assert_eq!(ma.len(), 31);
    assert_eq!(ma[0], (4096, 4096));
    // The tail block is cut at the file's size.
    assert_eq!(*ma.last().unwrap(), (64 << 20, 100));
}

#[test]
fn tarball_is_reproducible_sparse_and_readable_by_gnu_tar() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    appliance(a.path(), false);
    appliance(b.path(), true);
    let out = tempfile::tempdir().unwrap();
    let t1 = out.path().join("one.tar");
    let t2 = out.path().join("two.tar");
    let opts = TarOptions::for_path(&t1, 1_700_000_000).unwrap();
    let r = write_tar(a.path(), &t1, &opts).unwrap();
    write_tar(b.path(), &t2, &opts).unwrap();
    assert_eq!(fs::read(&t1).unwrap(), fs::read(&t2).unwrap());
    assert_eq!(r.sparse_files, vec!["root".to_string()]);
    // 64 MiB of root became a few dozen blocks.
    assert!(r.bytes < 1 << 20, "tarball is {} bytes", r.bytes);

    let list = Command::new("tar").arg("-tvf").arg(&t1).output().unwrap();
    assert!(list.status.success(), "{list:?}");
    let list = String::from_utf8(list.stdout).unwrap();
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "appliance/",
            "appliance/README.fixed",
            "appliance/initrd",
            "appliance/kernel",
            "appliance/root"
        ]
    );
    assert!(list.lines().all(|l| l.contains("root/root")), "{list}");
    assert!(list.contains("2023-11-14"), "{list}");

    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xSf")
        .arg(&t1)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    for f in FILES {
        assert_eq!(
            fs::read(x.path().join("appliance").join(f)).unwrap(),
            fs::read(a.path().join(f)).unwrap(),
            "{f} differs after extraction"
        );
    }
    // GNU tar recreated the holes.
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(x.path().join("appliance/root")).unwrap();
    assert!(md.blocks() * 512 < 4 << 20, "{} blocks", md.blocks());

    // And the tar crate reads it back too.
    let mut ar = tar::Archive::new(File::open(&t1).unwrap());
    let y = tempfile::tempdir().unwrap();
    ar.unpack(y.path()).unwrap();
    assert_eq!(
        fs::read(y.path().join("appliance/root")).unwrap(),
        fs::read(a.path().join("root")).unwrap()
    );
}

#[test]
fn every_compression_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    appliance(a.path(), false);
    let out = tempfile::tempdir().unwrap();
    for suffix in ["tar.gz", "tgz", "tar.xz", "tar.zst"] {
        let p1 = out.path().join(format!("a.{suffix}"));
        let p2 = out.path().join(format!("b.{suffix}"));
        let opts = TarOptions::for_path(&p1, 0).unwrap();
        write_tar(a.path(), &p1, &opts).unwrap();
        write_tar(a.path(), &p2, &opts).unwrap();
        assert_eq!(fs::read(&p1).unwrap(), fs::read(&p2).unwrap(), "{suffix}");
        let st = Command::new("tar").arg("-tf").arg(&p1).output().unwrap();
        assert!(st.status.success(), "{suffix}: {st:?}");
    }
}

#[test]
fn bad_destinations_are_refused_and_leave_nothing() {
    let a = tempfile::tempdir().unwrap();
    appliance(a.path(), false);
    let out = tempfile::tempdir().unwrap();
    let e = TarOptions::for_path(&out.path().join("x.zip"), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.zip: unknown tarball suffix"), "{e}");
    assert!(Compression::from_path(Path::new(".tar")).is_err());
    let d = out.path().join("dir.tar");
    fs::create_dir(&d).unwrap();
    let opts = TarOptions::for_path(&d, 0).unwrap();
    let e = write_tar(a.path(), &d, &opts).unwrap_err().to_string();
    assert!(e.contains("over a directory"), "{e}");
    // Not an appliance: refused before anything is written.
    let t = out.path().join("t.tar");
    let e = write_tar(out.path(), &t, &opts).unwrap_err().to_string();
    assert!(e.contains("is not a fixed appliance"), "{e}");
    let left: Vec<_> = fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
