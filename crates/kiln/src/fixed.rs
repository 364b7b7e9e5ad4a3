//! libguestfs *fixed appliances*: a directory holding `README.fixed`, `kernel`, `initrd`
//! and `root`, which libguestfs (found on `LIBGUESTFS_PATH`) and `kiln locate` boot as
//! they are, without building anything.
//!
//! This module owns the parts that are specific to that form of output:
//! - [`write_readme`]: the `README.fixed` marker, whose text is a function of the
//!   appliance (kiln version, kernel version, root UUID) and carries no date, so a
//!   rebuild from the same inputs writes the same bytes;
//! - [`check_layout`]: what makes a directory a usable fixed appliance (`kernel` a real
//!   file, not a link into the build host's `/boot`);
//! - [`tar`]: a reproducible, sparse-aware tarball of the directory.
//!
//! Building the kernel, initrd and root is the pipeline's job (`kiln::build_into`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub mod tar;

pub use tar::{Compression, TarOptions, TarReport, check_destination, write_tar};

/// The marker file libguestfs looks for.
pub const README: &str = "README.fixed";

/// The files of a fixed appliance, in the order they are archived.
pub const FILES: [&str; 4] = [README, "initrd", "kernel", "root"];

/// An error about a fixed appliance or its tarball, naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum FixedError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the tarball (or its temporary file beside it) failed: a full
    /// filesystem, a quota, an I/O error; `path` is the tarball.
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a fixed appliance: {why}")]
    Layout { path: PathBuf, why: String },
    #[error(
        "{path}: unknown tarball suffix; name it .tar, .tar.gz (.tgz), .tar.xz (.txz) or .tar.zst (.tzst)"
    )]
    Suffix { path: PathBuf },
    #[error(
        "{path}: refusing to write the tarball over a {what}; give the path of a regular file \
         (or of none yet)"
    )]
    Refused { path: PathBuf, what: &'static str },
}

pub(crate) fn write_err(path: &Path) -> impl FnOnce(io::Error) -> FixedError + '_ {
    move |source| FixedError::Write {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FixedError + '_ {
    move |source| FixedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `README.fixed` says about the appliance.
#[derive(Debug, Clone)]
pub struct ReadmeInfo {
    /// The version of kiln that built it.
    pub kiln_version: String,
    pub kernel_version: String,
    /// The root filesystem's UUID (as libguestfs passes it in `root=UUID=`).
    pub root_uuid: String,
}

/// The text of `README.fixed`.
pub fn readme_text(info: &ReadmeInfo) -> String {
    format!(
        "This directory is a libguestfs fixed appliance, built by kiln {kiln}.

  kernel   Linux {kernel} (a copy of the build host's kernel)
  initrd   kiln's mini initrd: a static init and the storage and filesystem modules
  root     the root filesystem, ext2, UUID {uuid} (a sparse file)

To use it, point libguestfs at this directory:

    export LIBGUESTFS_PATH=/path/to/this/directory

`kiln locate --path /path/to/this/directory` prints the same three files.
libguestfs opens root read-only (snapshot=on), so one copy serves every user of
the machine. Keep root sparse when copying or archiving it (cp --sparse=always,
tar -S); the tarball kiln writes with `kiln build --fixed --tar` already is.

The kernel, its modules and the files in root come from the build host's
packages and keep their licences: see /usr/share/doc/*/copyright inside root.
",
        kiln = info.kiln_version,
        kernel = info.kernel_version,
        uuid = info.root_uuid,
    )
}

/// Write `DIR/README.fixed` (mode 0644).
pub fn write_readme(dir: &Path, info: &ReadmeInfo) -> Result<(), FixedError> {
    let path = dir.join(README);
    let mut f = fs::File::create(&path).map_err(io_err(&path))?;
    f.write_all(readme_text(info).as_bytes())
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(0o644)))
        .and_then(|()| f.sync_all())
        .map_err(io_err(&path))
}

/// Check that `dir` holds a complete fixed appliance made of regular files: the marker,
/// and `kernel`, `initrd`, `root` that are not symlinks (a link would point into the
/// build host and dangle on any other machine).
pub fn check_layout(dir: &Path) -> Result<(), FixedError> {
    for name in FILES {
        let path = dir.join(name);
        let md = fs::symlink_metadata(&path).map_err(|e| FixedError::Layout {
            path: dir.to_path_buf(),
            why: format!("{name}: {e}"),
        })?;
        if !md.file_type().is_file() {
            return Err(FixedError::Layout {
                path: dir.to_path_buf(),
                why: format!("{name} is not a regular file"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn info() -> ReadmeInfo {
        ReadmeInfo {
            kiln_version: "0.1.0".into(),
            kernel_version: "6.1.0-1-amd64".into(),
            root_uuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
        }
    }

    #[test]
    fn readme_names_the_appliance_and_no_date() {
        let t = readme_text(&info());
        assert!(t.contains("fixed appliance, built by kiln 0.1.0"));
        assert!(t.contains("Linux 6.1.0-1-amd64"));
        assert!(t.contains("UUID 01234567-89ab-cdef-0123-456789abcdef"));
        assert_eq!(t, readme_text(&info()));
    }

    #[test]
    fn layout_refuses_a_symlinked_kernel_and_missing_files() {
        let d = tempfile::tempdir().unwrap();
        let e = check_layout(d.path()).unwrap_err().to_string();
        assert!(e.contains("README.fixed"), "{e}");
        write_readme(d.path(), &info()).unwrap();
        for f in ["initrd", "root"] {
            fs::write(d.path().join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/boot/vmlinuz", d.path().join("kernel")).unwrap();
        let e = check_layout(d.path()).unwrap_err().to_string();
        assert!(e.contains("kernel is not a regular file"), "{e}");
        fs::remove_file(d.path().join("kernel")).unwrap();
        fs::write(d.path().join("kernel"), b"k").unwrap();
        check_layout(d.path()).unwrap();
    }
}
