//! Sources that change between planning and copying: the build fails with an error
//! naming the source and leaves nothing behind. (Unit tests: they use the crate's
//! private hooks between the stages.)

use std::path::{Path, PathBuf};

use kiln_fileset::{FileSet, Meta};

use crate::{AFTER_OPEN, AFTER_PLAN, ImageError, ImageOptions, write_image};

/// Build an image of a one-file tree, running `change` on the source file between
/// planning and copying; return the error and what is left in the output directory.
fn change_mid_build(change: impl FnOnce(&Path) + 'static) -> (ImageError, Vec<PathBuf>) {
    let src = tempfile::tempdir().unwrap();
    let victim = src.path().join("victim");
    std::fs::write(&victim, vec![1u8; 100_000]).unwrap();
    let mut entries = kiln_fileset::scan::scan_tree(src.path(), Path::new("/")).unwrap();
    entries[0].meta = Meta::new(0o755);
    let set = FileSet::new(entries).unwrap();
    let v = victim.clone();
    AFTER_PLAN.with(|h| *h.borrow_mut() = Some(Box::new(move || change(&v))));
    let out = tempfile::tempdir().unwrap();
    let err = write_image(&set, &out.path().join("root"), &ImageOptions::default()).unwrap_err();
    let left = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let msg = err.to_string();
    assert!(msg.contains(victim.to_str().unwrap()), "{msg}");
    (err, left)
}

#[test]
fn source_shrinking_mid_build_is_an_error() {
    let (err, left) = change_mid_build(|p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(50_000)
            .unwrap()
    });
    assert!(
        matches!(
            err,
            ImageError::SourceChanged {
                expected: 100_000,
                found: Some(50_000),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("changed during the build"));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn source_shrinking_while_copied_is_an_error() {
    for fallback in [false, true] {
        let src = tempfile::tempdir().unwrap();
        let victim = src.path().join("victim");
        std::fs::write(&victim, vec![1u8; 100_000]).unwrap();
        let mut entries = kiln_fileset::scan::scan_tree(src.path(), Path::new("/")).unwrap();
        entries[0].meta = Meta::new(0o755);
        let set = FileSet::new(entries).unwrap();
        AFTER_OPEN.with(|h| {
            *h.borrow_mut() = Some(Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(50_000).unwrap();
            }))
        });
        // Output on tmpfs: copy_file_range gives EXDEV, the fallback reads.
        let out = if fallback {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir_in(src.path()).unwrap()
        };
        let opts = ImageOptions {
            threads: 1,
            ..ImageOptions::default()
        };
        let err = write_image(&set, &out.path().join("root"), &opts).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::SourceChanged {
                    found: Some(50_000),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(victim.to_str().unwrap()), "{err}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}

#[test]
fn source_growing_mid_build_is_an_error() {
    let (err, left) = change_mid_build(|p| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b"more").unwrap();
    });
    assert!(
        matches!(
            err,
            ImageError::SourceChanged {
                found: Some(100_004),
                ..
            }
        ),
        "{err}"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn source_vanishing_mid_build_is_an_error() {
    let (err, left) = change_mid_build(|p| std::fs::remove_file(p).unwrap());
    assert!(matches!(err, ImageError::Source { .. }), "{err}");
    // The cause is the error's source, printed after it by front ends.
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(cause.is_some_and(|c| c.contains("No such file")), "{err}");
    assert!(left.is_empty(), "{left:?}");
}
