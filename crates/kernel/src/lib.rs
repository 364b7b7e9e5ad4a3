//! kiln's kernel stage: choose the kernel and its modules tree the way supermin 5 does,
//! and install the kernel into an appliance directory (`OUT/kernel`).
//!
//! Order (supermin 5's `src/format_ext2_kernel.ml`): the `SUPERMIN_KERNEL` environment
//! override, then `/lib/modules/*/vmlinuz` (newest version first), then `/boot` (names
//! matching the `--host-cpu` patterns, unbootable flavours dropped, newest first). The
//! version of a kernel comes from its bzImage header, else from its file name.
//!
//! Where supermin silently skips (an undetectable `SUPERMIN_KERNEL`, an unreadable
//! `/boot/vmlinuz-*`), kiln fails with an error naming the file and the fix: a kernel
//! that cannot be read would only fail later, inside qemu or libguestfs, with a worse
//! message.
//!
//! | module | owns |
//! |---|---|
//! | [`bzimage`] | the x86 setup header (named fields) and the version string in it |
//! | `version` | supermin's version order ([`compare_versions`]) |
//! | `choose` | the choice ([`choose`], [`choose_host`], [`host_cpu_patterns`]) |
//! | `install` | `OUT/kernel` as a symlink or a copy ([`install`]) |
//!
//! Invariants: the roots (`/boot`, `/lib/modules`) are parameters ([`Roots`]) so tests
//! can use fixture trees; the environment is a parameter ([`KernelEnv`]); nothing here
//! writes outside the output directory given to [`install`]; file contents are untrusted
//! and never make it panic.
//!
//! ```
//! use kiln_kernel::{KernelEnv, Roots, choose, compare_versions};
//!
//! // Newest first, in supermin's order: 6.1.0-10 is newer than 6.1.0-9 and than -rc7.
//! assert!(compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64").is_gt());
//! assert!(compare_versions("6.1.0-rc7", "6.1.0-1").is_lt());
//!
//! // An empty fixture tree has no kernel: the error says where kiln looked.
//! let dir = tempfile::tempdir()?;
//! let roots = Roots {
//!     boot: dir.path().join("boot"),
//!     lib_modules: dir.path().join("lib/modules"),
//! };
//! let err = choose("x86_64", &KernelEnv::default(), &roots).unwrap_err();
//! assert!(err.to_string().starts_with("failed to find a suitable kernel"));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! On a host, [`choose_host`] picks the kernel and [`install`] links it:
//!
//! ```no_run
//! let k = kiln_kernel::choose_host("x86_64")?;
//! println!("{} {} {}", k.path.display(), k.version, k.modules.display());
//! kiln_kernel::install(&k, std::path::Path::new("appliance.d"), false)?;
//! # Ok::<(), kiln_kernel::Error>(())
//! ```

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

pub mod bzimage;
mod choose;
mod install;
mod version;

pub use bzimage::{bzimage_version, bzimage_version_of};
pub use choose::{choose, choose_host, host_cpu_patterns};
pub use install::install;
pub use version::compare_versions;

/// Errors of kernel selection and installation. Each names the file and what to do;
/// the underlying I/O error, if any, is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "failed to find a suitable kernel (host_cpu={host_cpu}).\n\nI looked for kernels in {boot} and modules in {lib_modules}.\n\nIf this is a Xen guest, and you only have Xen domU kernels\ninstalled, try installing a fullvirt kernel (only for\nsupermin use, you shouldn't boot the Xen guest with it).\nOr set SUPERMIN_KERNEL (and SUPERMIN_MODULES) to a kernel and its modules tree.",
        boot = boot.display(),
        lib_modules = lib_modules.display()
    )]
    NotFound {
        host_cpu: String,
        boot: PathBuf,
        lib_modules: PathBuf,
    },
    #[error(
        "cannot read kernel {path}; make it readable by this user (e.g. `sudo chmod 0644 {path}`) or point SUPERMIN_KERNEL at a readable copy",
        path = path.display()
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `SUPERMIN_KERNEL` (or `--kernel`) names a file that cannot be used.
    #[error("{}: {why}; {hint}", given.kernel(path))]
    BadOverride {
        path: PathBuf,
        /// Where the path came from, as the message names it.
        given: Given,
        /// What is wrong with the file.
        why: &'static str,
        /// What to do about it.
        hint: &'static str,
        #[source]
        source: Option<io::Error>,
    },
    #[error(
        "modules tree {path} for kernel {kernel} (version {version}) has no readable modules.dep; install the kernel's modules or {}",
        match given {
            Given::Environment => "set SUPERMIN_MODULES to its modules directory",
            Given::Options => "give --modules its modules directory",
        },
        path = path.display(),
        kernel = kernel.display()
    )]
    NoModules {
        path: PathBuf,
        kernel: PathBuf,
        version: String,
        /// How the user can name another tree.
        given: Given,
    },
    #[error("cannot list {path}", path = path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot install kernel {from} as {to}", from = from.display(), to = to.display())]
    Install {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where to look for kernels and modules (the real host: `/boot` and `/lib/modules`).
#[derive(Debug, Clone)]
pub struct Roots {
    pub boot: PathBuf,
    pub lib_modules: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            boot: PathBuf::from("/boot"),
            lib_modules: PathBuf::from("/lib/modules"),
        }
    }
}

/// supermin's environment overrides (or a command's options standing for them).
#[derive(Debug, Clone, Default)]
pub struct KernelEnv {
    /// `SUPERMIN_KERNEL`
    pub kernel: Option<OsString>,
    /// `SUPERMIN_KERNEL_VERSION`
    pub version: Option<OsString>,
    /// `SUPERMIN_MODULES`
    pub modules: Option<OsString>,
    /// Who set them: the messages name the variable or the option the user wrote.
    pub given: Given,
}

/// Where the kernel overrides came from, so an error names what the user wrote:
/// `SUPERMIN_KERNEL=FILE` or `--kernel FILE` (`kiln run`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Given {
    /// `SUPERMIN_KERNEL`, `SUPERMIN_KERNEL_VERSION`, `SUPERMIN_MODULES`.
    #[default]
    Environment,
    /// `--kernel FILE` and `--modules DIR`.
    Options,
}

impl Given {
    /// The kernel override as the user wrote it.
    pub fn kernel(self, path: &std::path::Path) -> String {
        match self {
            Given::Environment => format!("SUPERMIN_KERNEL={}", path.display()),
            Given::Options => format!("--kernel {}", path.display()),
        }
    }

    /// The advice for an unusable kernel override: `env` for the variable, `opt` for
    /// the option.
    pub(crate) fn pick(self, env: &'static str, opt: &'static str) -> &'static str {
        match self {
            Given::Environment => env,
            Given::Options => opt,
        }
    }
}

impl KernelEnv {
    /// The overrides of a command's `--kernel FILE` / `--modules DIR` (no version: it is
    /// read from the file).
    pub fn from_options(kernel: Option<PathBuf>, modules: Option<PathBuf>) -> Self {
        KernelEnv {
            kernel: kernel.map(Into::into),
            version: None,
            modules: modules.map(Into::into),
            given: Given::Options,
        }
    }

    /// Read the three variables from the process environment (empty counts as unset).
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        KernelEnv {
            kernel: get("SUPERMIN_KERNEL"),
            version: get("SUPERMIN_KERNEL_VERSION"),
            modules: get("SUPERMIN_MODULES"),
            given: Given::Environment,
        }
    }
}

/// Which rule picked the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    LibModules,
    Boot,
}

/// The chosen kernel: file, version string and modules tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub path: PathBuf,
    pub version: String,
    pub modules: PathBuf,
    pub source: Source,
}
