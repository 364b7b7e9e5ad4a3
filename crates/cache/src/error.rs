//! Errors of the cache.
//!
//! Each error's `Display` is its own message only; the cause (an `io::Error`, the
//! build closure's error) is returned by `source()`, and front ends print the chain
//! joined by ": ".

use std::io;
use std::path::PathBuf;

/// The boxed error a build closure returns, kept as the source of [`CacheError::Build`].
pub type BuildError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory or an entry in it is not what kiln made: wrong owner, a
    /// symlink, a FIFO, group/other writable. The message says how to fix it.
    #[error("security: {0}")]
    Security(String),

    /// The cache root (`--cachedir`, `LIBGUESTFS_CACHEDIR`, `TMPDIR`, `/var/tmp`) is unusable.
    #[error(
        "cache root {} is unusable (set --cachedir or LIBGUESTFS_CACHEDIR to an existing directory)",
        path.display()
    )]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A system call on an entry of the cache directory failed.
    #[error("cache {}: {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The build closure failed; its temporary directory has been removed.
    #[error("building appliance {key} failed")]
    Build {
        key: String,
        #[source]
        source: BuildError,
    },

    /// The build closure returned, but its output is not a usable appliance.
    #[error("building appliance {key}: {msg}")]
    BadBuild { key: String, msg: String },

    /// `pin_to` named a process that is not running.
    #[error("cannot pin the appliance to process {0}: no such running process")]
    NoProcess(u32),

    /// A key that is not 1..=64 lowercase hex digits.
    #[error("invalid cache key {0:?}: expected 1 to 64 lowercase hex digits")]
    BadKey(String),
}

impl CacheError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
        source: impl Into<io::Error>,
    ) -> Self {
        CacheError::Io {
            path: path.into(),
            op,
            source: source.into(),
        }
    }

    /// True for errors that start with `security:`.
    pub fn is_security(&self) -> bool {
        matches!(self, CacheError::Security(_))
    }
}
