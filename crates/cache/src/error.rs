//! Errors of the cache.

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
        "cache root {path:?}: {source}; set --cachedir or LIBGUESTFS_CACHEDIR to an existing directory"
    )]
    Root { path: PathBuf, source: io::Error },

    /// A system call on an entry of the cache directory failed.
    #[error("cache {path:?}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },

    /// The build closure failed; its temporary directory has been removed.
    #[error("building appliance {key} failed: {source}")]
    Build { key: String, source: BuildError },

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
