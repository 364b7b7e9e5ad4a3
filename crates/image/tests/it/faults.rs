//! Bad input and faults: a clear error naming the problem, and nothing left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::common::*;
use kiln_fileset::scan::scan_tree;
use kiln_fileset::{Content, Entry, FileSet, Kind, Meta};
use kiln_image::{ImageError, ImageOptions, write_image};

fn bytes_file(path: &str, len: usize) -> Entry {
    Entry {
        path: path.into(),
        kind: Kind::File(Content::Bytes(Arc::from(vec![0x5au8; len]))),
        meta: Meta::new(0o644),
    }
}

fn root() -> Entry {
    Entry {
        path: "/".into(),
        kind: Kind::Dir,
        meta: Meta::new(0o755),
    }
}

#[test]
fn too_small_says_how_much_is_needed_and_that_much_works() {
    let set = FileSet::new(vec![
        root(),
        bytes_file("/a", 20 << 20),
        bytes_file("/b", 5 << 20),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root");
    fs::write(&img, b"previous image").unwrap();
    let opts = |size| ImageOptions {
        size,
        ..ImageOptions::default()
    };
    let err = write_image(&set, &img, &opts(8 << 20)).unwrap_err();
    let ImageError::TooSmall { needed_mib, .. } = err else {
        panic!("expected TooSmall, got {err}");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("needs at least") && msg.contains("--size"),
        "{msg}"
    );
    assert!((25..30).contains(&needed_mib), "{needed_mib}");
    // The old image is untouched and no temporary file is left.
    assert_eq!(fs::read(&img).unwrap(), b"previous image");
    assert_eq!(listing(dir.path()), ["root"]);
    // The size it names is enough (and one MiB less is not).
    assert!(matches!(
        write_image(&set, &img, &opts((needed_mib - 1) << 20)),
        Err(ImageError::TooSmall { .. })
    ));
    write_image(&set, &img, &opts(needed_mib << 20)).unwrap();
    verify(&set, &img);
}

#[test]
fn source_gone_before_the_build_is_named() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("victim"), b"data").unwrap();
    let mut entries = scan_tree(src.path(), Path::new("/")).unwrap();
    entries[0].meta = Meta::new(0o755);
    let set = FileSet::new(entries).unwrap();
    fs::remove_file(src.path().join("victim")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = write_image(&set, &dir.path().join("root"), &ImageOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::Source { .. }), "{msg}");
    assert!(msg.contains("victim"), "{msg}");
    assert!(listing(dir.path()).is_empty());
}

struct Tmpfs(tempfile::TempDir);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The image's filesystem fills up: the error names the output, nothing is left.
#[test]
#[ignore = "needs root"]
fn enospc_on_the_output_filesystem() {
    assert!(
        rustix::process::geteuid().is_root(),
        "mounting a small tmpfs needs root: run as root"
    );
    let mnt = Tmpfs(tempfile::tempdir().unwrap());
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "kiln-test"])
        .arg(mnt.0.path())
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs failed");
    // Host data (copy_file_range → EXDEV → pwrite fallback) and in-memory data.
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("big"), vec![7u8; 6 << 20]).unwrap();
    let mut entries = scan_tree(src.path(), Path::new("/")).unwrap();
    entries[0].meta = Meta::new(0o755);
    entries.push(bytes_file("/mem", 3 << 20));
    let set = FileSet::new(entries).unwrap();
    let img = mnt.0.path().join("root");
    let opts = ImageOptions {
        size: 64 << 20,
        ..ImageOptions::default()
    };
    let err = write_image(&set, &img, &opts).unwrap_err();
    // The message and its causes, as the CLI prints them.
    let mut msg = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        msg = format!("{msg}: {c}");
        cause = c.source();
    }
    assert!(matches!(err, ImageError::Output { .. }), "{msg}");
    assert!(msg.contains(img.to_str().unwrap()), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(
        listing(mnt.0.path()).is_empty(),
        "{:?}",
        listing(mnt.0.path())
    );
}
