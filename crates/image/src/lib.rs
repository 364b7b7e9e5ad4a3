//! kiln's image stage: write a [`FileSet`] as an ext2 filesystem image (the appliance's
//! `root`).
//!
//! This crate owns the on-disk format and nothing else: it never looks at packages or
//! inputs, only at the file set. [`write_image`] plans the whole layout first (inode
//! numbers, directory blocks, block maps; see `plan`), then copies file data into the
//! planned, block-aligned places with `copy_file_range` from several threads, and writes
//! the metadata in a few large writes.
//!
//! Format: ext2 revision 1, 4 KiB blocks, 256-byte inodes (`i_extra_isize` 32, so
//! nanosecond times and in-inode attributes), features `ext_attr`, `filetype`,
//! `sparse_super`, `large_file`; no journal, no `resize_inode`, no `dir_index` (linear
//! directories, which e2fsck and the kernel accept at any size). The Linux ext4 driver
//! mounts it.
//!
//! Invariants:
//! - **Reproducible**: the image is a function of the file set (and the bytes of its
//!   host files) and [`ImageOptions`] only. No randomness, no wall-clock time: the UUID
//!   and directory hash seed are derived from [`FileSet::fingerprint`] and the size,
//!   superblock times are [`ImageOptions::timestamp`], directory entries are sorted,
//!   inodes and blocks are allocated in path order.
//! - **All or nothing**: the image is written to a temporary file beside the target and
//!   renamed over it only when complete; on any error nothing is left behind.
//! - Holes stay holes: sparse host files keep their holes (SEEK_DATA/SEEK_HOLE), and
//!   unused inode tables are never written, so the image file is sparse.
//! - File metadata is kept in full: 32-bit uid/gid, all mode bits, mtime with
//!   nanoseconds, every extended attribute (including `security.capability` and POSIX
//!   ACLs), hard links as hard links.
//!
//! Modules: `plan` (inode tree, directory packing, block maps, allocation), `layout`
//! (group geometry and the block allocator), `disk` (superblock, group descriptor and
//! inode records), `metadata` (writing them), `coalesce` (joining block writes),
//! `copy` (file data), `xattr` (extended attributes).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use kiln_fileset::{Content, Entry, FileSet, Kind, Meta};
//! use kiln_image::{ImageOptions, read_uuid, write_image};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let set = FileSet::new(vec![
//!     Entry { path: "/".into(), kind: Kind::Dir, meta: Meta::new(0o755) },
//!     Entry {
//!         path: "/hello".into(),
//!         kind: Kind::File(Content::Bytes(Arc::from(b"hello\n".to_vec()))),
//!         meta: Meta::new(0o644),
//!     },
//! ])?;
//! let dir = tempfile::tempdir()?;
//! let root = dir.path().join("root");
//! let opts = ImageOptions { size: 64 << 20, ..ImageOptions::default() };
//! let report = write_image(&set, &root, &opts)?;
//! // The UUID is a function of the file set and the size: libguestfs boots with
//! // root=UUID=<this>.
//! let uuid = read_uuid(&std::fs::File::open(&root)?)?;
//! assert_eq!(uuid, Some(report.uuid));
//! println!("root=UUID={}", report.uuid_string());
//! # Ok(()) }
//! ```

pub mod chroot;
mod coalesce;
mod copy;
mod disk;
mod layout;
mod metadata;
#[cfg(test)]
mod mid_build_tests;
mod plan;
mod xattr;

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_fileset::{FileSet, Meta};

use crate::layout::BLOCK;

pub use crate::layout::BLOCK as BLOCK_SIZE;

/// Default image size: 4 GiB, as supermin (sparse on disk).
pub const DEFAULT_SIZE: u64 = 4 << 30;

/// Byte offset of the ext2 magic (`53 EF`) in the image.
pub const MAGIC_OFFSET: u64 = 0x438;
/// Byte offset of the filesystem UUID (`s_uuid`) in the image, where libguestfs and the
/// init look for it.
pub const UUID_OFFSET: u64 = 0x468;

/// How to write an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Image size in bytes (the file is this long; the filesystem covers whole 4 KiB
    /// blocks of it). Default [`DEFAULT_SIZE`].
    pub size: u64,
    /// Threads copying file data (the calling thread is one of them). Default 2.
    pub threads: usize,
    /// `fsync` the image before renaming it into place. Default false: a cache that
    /// needs durability syncs its slot as a whole.
    pub fsync: bool,
    /// Superblock times (`s_wtime`, `s_mkfs_time`, `s_lastcheck`), seconds since the
    /// epoch. Default 0, so images are reproducible; set from `SOURCE_DATE_EPOCH` if
    /// wanted.
    pub timestamp: u32,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            size: DEFAULT_SIZE,
            threads: 2,
            fsync: false,
            timestamp: 0,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    /// The filesystem UUID (`s_uuid`, at byte [`UUID_OFFSET`]).
    pub uuid: [u8; 16],
    /// The image file's length in bytes.
    pub size: u64,
    pub block_size: u64,
    pub blocks_count: u64,
    /// Blocks in use (metadata and data).
    pub blocks_used: u64,
    pub inodes_count: u64,
    /// Inodes in use, including the reserved inodes 1–10.
    pub inodes_used: u64,
    /// Bytes of regular file content (each inode once, holes included).
    pub data_bytes: u64,
    /// True if some data went in with `pread`/`pwrite` because `copy_file_range`
    /// could not be used between the source and image filesystems.
    pub used_fallback_copy: bool,
}

impl ImageReport {
    /// The UUID as libguestfs prints it (`8-4-4-4-12`, lowercase).
    pub fn uuid_string(&self) -> String {
        uuid_string(&self.uuid)
    }
}

/// Errors writing an image. Each names the input or output concerned and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image size {size} bytes is too small for this file set: it needs at least \
         {needed_mib} MiB; use --size {needed_mib}M or more"
    )]
    TooSmall { size: u64, needed_mib: u64 },
    #[error(
        "image size {size} bytes is too large: ext2 with 4 KiB blocks and 32-bit block \
         numbers ends at 16 TiB; use a smaller --size"
    )]
    TooLarge { size: u64 },
    #[error("{path}: a name longer than 255 bytes cannot be stored in ext2")]
    NameTooLong { path: PathBuf },
    #[error("{path}: symlink target of {len} bytes is too long (ext2 allows 4095)")]
    SymlinkTooLong { path: PathBuf, len: usize },
    #[error("{path}: more than {max} links (hard links or subdirectories); ext2 allows {max}")]
    TooManyLinks { path: PathBuf, max: u32 },
    #[error("{path}: file too large for an ext2 block map with 4 KiB blocks")]
    FileTooLarge { path: PathBuf },
    #[error("{path}: extended attribute {name:?} cannot be stored: {reason}")]
    Xattr {
        path: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error(
        "file set entry /lost+found is not a directory; ext2 needs /lost+found to be \
         one (remove or rename that entry)"
    )]
    LostFound,
    #[error(
        "source file {source_path} (for {path}) changed during the build: expected \
         {expected} bytes, found {}; rebuild once it is stable",
        match found { Some(n) => format!("{n} bytes"), None => "no regular file".to_string() }
    )]
    SourceChanged {
        path: PathBuf,
        source_path: PathBuf,
        expected: u64,
        found: Option<u64>,
    },
    #[error("source file {source_path} (for {path})")]
    Source {
        path: PathBuf,
        source_path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("writing image {output}")]
    Output {
        output: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("internal error in the ext2 writer: {0} (please report)")]
    Internal(&'static str),
}

/// Format a UUID as `8-4-4-4-12` lowercase hex.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The filesystem UUID of an ext2/3/4 image (bytes at [`UUID_OFFSET`]), or `None` when
/// the ext magic is not at [`MAGIC_OFFSET`] (not an ext filesystem, too short). This is
/// how libguestfs reads the root UUID it puts on the kernel command line.
pub fn read_uuid(file: &File) -> io::Result<Option<[u8; 16]>> {
    let mut magic = [0u8; 2];
    match file.read_exact_at(&mut magic, MAGIC_OFFSET) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if magic != [0x53, 0xef] {
        return Ok(None);
    }
    let mut u = [0u8; 16];
    match file.read_exact_at(&mut u, UUID_OFFSET) {
        Ok(()) => Ok(Some(u)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The UUID and hash seed of an image of `set` at `size` bytes.
fn identity(set: &FileSet, size: u64) -> ([u8; 16], [u8; 16]) {
    let mut h = blake3::Hasher::new_derive_key("kiln-image ext2 uuid and hash seed v1");
    h.update(&set.fingerprint());
    h.update(&size.to_le_bytes());
    let out = h.finalize();
    let b = out.as_bytes();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[..16]);
    // An RFC 4122 variant, version 4 layout (so tools accept it), but not random.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&b[16..32]);
    (uuid, seed)
}

#[cfg(test)]
thread_local! {
    /// Test hook run between planning and copying (to change sources mid-build).
    static AFTER_PLAN: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
type PathHook = Option<Box<dyn FnOnce(&Path)>>;

#[cfg(test)]
thread_local! {
    /// Test hook run once a source file is open and its size checked, before its data
    /// is copied (only seen by copies on the calling thread: use `threads: 1`).
    static AFTER_OPEN: std::cell::RefCell<PathHook> =
        const { std::cell::RefCell::new(None) };
}

/// Write `set` as an ext2 image at `path` (replacing any file there).
///
/// The image is built in a temporary file in `path`'s directory and renamed into place
/// on success; on error no file is left behind and `path` is untouched.
pub fn write_image(
    set: &FileSet,
    path: &Path,
    opts: &ImageOptions,
) -> Result<ImageReport, ImageError> {
    let root_meta = set
        .entries()
        .first()
        .map(|e| &e.meta)
        .ok_or(ImageError::Internal("file set without a root"))?;
    let lost_found = Meta {
        perm: 0o700,
        uid: 0,
        gid: 0,
        mtime: root_meta.mtime,
        mtime_nsec: root_meta.mtime_nsec,
        xattrs: Vec::new(),
    };
    let plan = plan::plan(set, opts.size, &lost_found)?;
    #[cfg(test)]
    if let Some(f) = AFTER_PLAN.with(|h| h.borrow_mut().take()) {
        f();
    }
    let (uuid, seed) = identity(set, opts.size);

    let out_err = |err: io::Error| ImageError::Output {
        output: path.to_path_buf(),
        err,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(out_err)?;
    let file: &File = tmp.as_file();
    file.set_len(opts.size).map_err(out_err)?;

    let copier = copy::Copier {
        out: file,
        output: path,
        no_cfr: AtomicBool::new(false),
        fallback_used: AtomicBool::new(false),
    };
    // Metadata goes in from its own thread while the data copy runs (it touches only
    // blocks no file data uses).
    let (copied, counts) = std::thread::scope(|s| {
        let meta = s.spawn(|| metadata::write_metadata(&plan, file, uuid, seed, opts));
        let copied = copier.run(&plan.jobs, opts.threads);
        (copied, meta.join())
    });
    copied?;
    let counts = counts
        .map_err(|_| ImageError::Internal("the metadata thread panicked"))?
        .map_err(out_err)?;
    if opts.fsync {
        file.sync_all().map_err(out_err)?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(out_err)?;
    let used_fallback_copy = copier.fallback_used.load(Ordering::Relaxed);
    tmp.persist(path).map_err(|e| out_err(e.error))?;
    Ok(ImageReport {
        uuid,
        size: opts.size,
        block_size: BLOCK,
        blocks_count: plan.geom.blocks,
        blocks_used: plan.geom.blocks - counts.free_blocks,
        inodes_count: plan.geom.inodes(),
        inodes_used: plan.geom.inodes() - counts.free_inodes,
        data_bytes: plan.data_bytes,
        used_fallback_copy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let u = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff,
        ];
        assert_eq!(uuid_string(&u), "01234567-89ab-cdef-0001-0203040506ff");
    }
}
