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

mod copy;
mod layout;
mod plan;
mod xattr;

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_fileset::{FileSet, Meta};

use crate::layout::{BLOCK, BLOCKS_PER_GROUP, FIRST_INO, INODE_SIZE, has_super};
use crate::plan::{AttrPlace, Body, Node, Plan, ino_of};

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
    #[error("{path:?}: a name longer than 255 bytes cannot be stored in ext2")]
    NameTooLong { path: PathBuf },
    #[error("{path:?}: symlink target of {len} bytes is too long (ext2 allows 4095)")]
    SymlinkTooLong { path: PathBuf, len: usize },
    #[error("{path:?}: more than {max} links (hard links or subdirectories); ext2 allows {max}")]
    TooManyLinks { path: PathBuf, max: u32 },
    #[error("{path:?}: file too large for an ext2 block map with 4 KiB blocks")]
    FileTooLarge { path: PathBuf },
    #[error("{path:?}: extended attribute {name:?} cannot be stored: {reason}")]
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
        "source file {source_path:?} (for {path:?}) changed during the build: expected \
         {expected} bytes, found {}; rebuild once it is stable",
        match found { Some(n) => format!("{n} bytes"), None => "no regular file".to_string() }
    )]
    SourceChanged {
        path: PathBuf,
        source_path: PathBuf,
        expected: u64,
        found: Option<u64>,
    },
    #[error("source file {source_path:?} (for {path:?}): {err}")]
    Source {
        path: PathBuf,
        source_path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("writing image {output:?}: {err}")]
    Output {
        output: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("internal error in the ext2 writer: {0} (please report)")]
    Internal(&'static str),
}

/// Errors parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cannot parse size {0:?}: use a number followed by b, K, M or G (for example 4G, \
     512M, 10737418240b)"
)]
pub struct SizeError(pub String);

/// Parse a size as supermin's `--size` does: `^[.0-9]+[bKMG]$`, suffix required and
/// case-sensitive, `K`/`M`/`G` 1024-based, fractions allowed and the result truncated.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError(s.to_string());
    let (num, mult) = match s.as_bytes().last() {
        Some(b'b') => (&s[..s.len() - 1], 1u64),
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => return Err(bad()),
    };
    if num.is_empty() || !num.bytes().all(|c| c == b'.' || c.is_ascii_digit()) {
        return Err(bad());
    }
    if !num.contains('.') {
        return num
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(bad);
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
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
        let meta = s.spawn(|| write_metadata(&plan, file, uuid, seed, opts));
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

struct Counts {
    free_blocks: u64,
    free_inodes: u64,
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// ext4's encoding of a time: low 32 bits of seconds, and an "extra" word holding the
/// epoch bits (seconds >> 32, two of them) and nanoseconds << 2.
fn time_fields(sec: i64, nsec: u32) -> (u32, u32) {
    let sec = sec.clamp(-(1i64 << 31), (1i64 << 34) - (1i64 << 31) - 1);
    let lo = sec as i32;
    let epoch = ((sec - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, epoch | (nsec.min(999_999_999) << 2))
}

/// `dev_t` as made by glibc's `makedev` into (major, minor).
fn split_dev(d: u64) -> (u32, u32) {
    let major = ((d >> 8) & 0xfff) | ((d >> 32) & !0xfff);
    let minor = (d & 0xff) | ((d >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn encode_inode(node: &Node<'_>, b: &mut [u8]) {
    let m = node.meta;
    put16(b, 0, node.mode);
    put16(b, 2, m.uid as u16);
    put32(b, 4, node.size as u32);
    let (t, extra) = time_fields(m.mtime, m.mtime_nsec);
    for at in [8, 12, 16, 144] {
        put32(b, at, t);
    }
    for at in [132, 136, 140, 148] {
        put32(b, at, extra);
    }
    put16(b, 24, m.gid as u16);
    put16(b, 26, node.links as u16);
    put32(b, 28, node.blocks_512 as u32);
    match &node.body {
        Body::Blocks => {
            for (i, p) in node.i_block.iter().enumerate() {
                put32(b, 40 + 4 * i, *p);
            }
        }
        Body::FastLink(t) => b[40..40 + t.len()].copy_from_slice(t),
        Body::Dev(d) => {
            // As the kernel: the old 16-bit encoding when it fits, else the new one.
            let (major, minor) = split_dev(*d);
            if major < 256 && minor < 256 {
                put32(b, 40, (major << 8) | minor);
            } else {
                put32(
                    b,
                    44,
                    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                );
            }
        }
        Body::None => {}
    }
    put32(b, 104, node.file_acl as u32);
    put32(b, 108, (node.size >> 32) as u32);
    put16(b, 120, (m.uid >> 16) as u16);
    put16(b, 122, (m.gid >> 16) as u16);
    put16(b, 128, 32);
    if let AttrPlace::InInode(attrs) = &node.attrs {
        xattr::write_in_inode(b, attrs);
    }
}

fn superblock(
    plan: &Plan<'_>,
    counts: &Counts,
    uuid: [u8; 16],
    seed: [u8; 16],
    opts: &ImageOptions,
    group: u64,
) -> Vec<u8> {
    let g = &plan.geom;
    let mut s = vec![0u8; 1024];
    put32(&mut s, 0, g.inodes() as u32);
    put32(&mut s, 4, g.blocks as u32);
    put32(&mut s, 8, 0); // no reserved blocks: the appliance runs as root anyway
    put32(&mut s, 12, counts.free_blocks as u32);
    put32(&mut s, 16, counts.free_inodes as u32);
    put32(&mut s, 20, 0); // s_first_data_block
    put32(&mut s, 24, 2); // log2(4096) - 10
    put32(&mut s, 28, 2);
    put32(&mut s, 32, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 36, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 40, g.inodes_per_group as u32);
    put32(&mut s, 48, opts.timestamp); // s_wtime
    put16(&mut s, 54, 0xffff); // s_max_mnt_count = -1
    put16(&mut s, 56, 0xef53);
    put16(&mut s, 58, 1); // clean
    put16(&mut s, 60, 1); // errors=continue
    put32(&mut s, 64, opts.timestamp); // s_lastcheck
    put32(&mut s, 76, 1); // dynamic revision
    put32(&mut s, 84, FIRST_INO);
    put16(&mut s, 88, INODE_SIZE as u16);
    put16(&mut s, 90, group as u16);
    put32(&mut s, 92, 0x0008); // compat: ext_attr
    put32(&mut s, 96, 0x0002); // incompat: filetype
    put32(&mut s, 100, 0x0001 | 0x0002); // ro_compat: sparse_super, large_file
    s[104..120].copy_from_slice(&uuid);
    for i in 0..4 {
        s[236 + 4 * i..240 + 4 * i].copy_from_slice(&seed[4 * i..4 * i + 4]);
    }
    s[252] = 1; // s_def_hash_version: half_md4
    put32(&mut s, 256, 0x0004 | 0x0008); // default mount options: user_xattr, acl
    put32(&mut s, 264, opts.timestamp); // s_mkfs_time
    put16(&mut s, 348, 32); // s_min_extra_isize
    put16(&mut s, 350, 32); // s_want_extra_isize
    put32(&mut s, 352, 0x0001); // s_flags: signed directory hash (x86 char)
    s
}

/// Superblocks, group descriptors, bitmaps, inode tables and the planned metadata
/// blocks, coalesced into few large writes.
fn write_metadata(
    plan: &Plan<'_>,
    out: &File,
    uuid: [u8; 16],
    seed: [u8; 16],
    opts: &ImageOptions,
) -> io::Result<Counts> {
    let g = &plan.geom;
    let bs = BLOCK as usize;
    let ipg = g.inodes_per_group;
    let max_ino = u64::from(ino_of(plan.nodes.len() - 1));
    let used_inodes = |grp: u64| max_ino.saturating_sub(grp * ipg).min(ipg);

    let mut free_blocks = 0u64;
    let mut gdt = vec![0u8; (g.gdt_blocks * BLOCK) as usize];
    let mut dirs_per_group = vec![0u64; g.groups as usize];
    for (i, n) in plan.nodes.iter().enumerate() {
        if n.is_dir() {
            dirs_per_group[((u64::from(ino_of(i)) - 1) / ipg) as usize] += 1;
        }
    }
    for grp in 0..g.groups {
        let free = g.group_blocks(grp) - g.overhead(grp) - plan.used_per_group[grp as usize];
        free_blocks += free;
        let d = &mut gdt[(grp * 32) as usize..(grp * 32 + 32) as usize];
        put32(d, 0, g.block_bitmap(grp) as u32);
        put32(d, 4, g.inode_bitmap(grp) as u32);
        put32(d, 8, g.inode_table(grp) as u32);
        put16(d, 12, free as u16);
        put16(d, 14, (ipg - used_inodes(grp)) as u16);
        put16(d, 16, dirs_per_group[grp as usize] as u16);
    }
    let counts = Counts {
        free_blocks,
        free_inodes: g.inodes() - max_ino,
    };

    // Inode table contents for inodes 1..=max_ino (1 and 3..=10 stay zero).
    let mut itable = vec![0u8; (max_ino * INODE_SIZE).next_multiple_of(BLOCK) as usize];
    for (i, n) in plan.nodes.iter().enumerate() {
        let at = ((u64::from(ino_of(i)) - 1) * INODE_SIZE) as usize;
        encode_inode(n, &mut itable[at..at + INODE_SIZE as usize]);
    }

    let mut w = Coalescer::new(out);
    for grp in 0..g.groups {
        let start = g.group_start(grp);
        if has_super(grp) {
            let sb = superblock(plan, &counts, uuid, seed, opts, grp);
            let mut blk = vec![0u8; bs];
            // Group 0's superblock sits at byte 1024 of block 0; backups start their
            // group's first block.
            let at = if grp == 0 { 1024 } else { 0 };
            blk[at..at + 1024].copy_from_slice(&sb);
            w.put(start, Cow::Owned(blk))?;
            w.put(start + 1, Cow::Borrowed(&gdt))?;
        }
        let data_used = g.overhead(grp) + plan.used_per_group[grp as usize];
        let mut bb = vec![0u8; bs];
        set_bits(&mut bb, 0, data_used);
        set_bits(&mut bb, g.group_blocks(grp), BLOCKS_PER_GROUP);
        w.put(g.block_bitmap(grp), Cow::Owned(bb))?;
        let mut ib = vec![0u8; bs];
        set_bits(&mut ib, 0, used_inodes(grp));
        set_bits(&mut ib, ipg, BLOCKS_PER_GROUP);
        w.put(g.inode_bitmap(grp), Cow::Owned(ib))?;
        let used = used_inodes(grp);
        if used > 0 {
            let a = (grp * ipg * INODE_SIZE) as usize;
            let e = ((grp * ipg + used) * INODE_SIZE).next_multiple_of(BLOCK) as usize;
            w.put(g.inode_table(grp), Cow::Borrowed(&itable[a..e]))?;
        }
    }
    for (&blk, bytes) in &plan.meta {
        w.put(blk, Cow::Borrowed(bytes))?;
    }
    w.flush()?;
    Ok(counts)
}

fn set_bits(b: &mut [u8], from: u64, to: u64) {
    for i in from..to {
        b[(i / 8) as usize] |= 1 << (i % 8);
    }
}

/// Joins writes to consecutive blocks into one `pwritev` (no copying): a write that does
/// not continue the previous one starts a new batch.
struct Coalescer<'f, 'a> {
    out: &'f File,
    start: u64,
    blocks: u64,
    items: Vec<Cow<'a, [u8]>>,
}

impl<'f, 'a> Coalescer<'f, 'a> {
    /// Linux's IOV_MAX.
    const MAX_ITEMS: usize = 1024;

    fn new(out: &'f File) -> Self {
        Coalescer {
            out,
            start: 0,
            blocks: 0,
            items: Vec::new(),
        }
    }

    /// Queue `bytes` (a whole number of blocks) for block `block`.
    fn put(&mut self, block: u64, bytes: Cow<'a, [u8]>) -> io::Result<()> {
        if self.start + self.blocks != block || self.items.len() == Self::MAX_ITEMS {
            self.flush()?;
            self.start = block;
        }
        self.blocks += (bytes.len() as u64).div_ceil(BLOCK);
        self.items.push(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut off = self.start * BLOCK;
        let slices: Vec<io::IoSlice<'_>> = self.items.iter().map(|b| io::IoSlice::new(b)).collect();
        let total: usize = self.items.iter().map(|b| b.len()).sum();
        let done = if slices.is_empty() {
            0
        } else {
            loop {
                match rustix::io::pwritev(self.out, &slices, off) {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if done < total {
            // A short write: finish item by item.
            let mut skip = done;
            off += done as u64;
            for b in &self.items {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                self.out.write_all_at(&b[skip..], off)?;
                off += (b.len() - skip) as u64;
                skip = 0;
            }
        }
        self.items.clear();
        self.blocks = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_supermin() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10737418240b"), Ok(10_737_418_240));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("0.1b"), Ok(0));
        for bad in ["4096", "10k", "1T", "", "G", "1.2.3G", "-1G", "1 G", ".G"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
        assert!(
            parse_size("10k")
                .unwrap_err()
                .to_string()
                .contains("\"10k\"")
        );
    }

    #[test]
    fn uuid_format() {
        let u = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff,
        ];
        assert_eq!(uuid_string(&u), "01234567-89ab-cdef-0001-0203040506ff");
    }

    #[test]
    fn times_and_devices() {
        assert_eq!(time_fields(5, 7), (5, 7 << 2));
        assert_eq!(time_fields(-1, 0), (u32::MAX, 0));
        // 2040: past 2^31, epoch bit 1.
        let t = 2_208_988_800i64;
        assert_eq!(time_fields(t, 0), ((t - (1 << 32)) as i32 as u32, 1));
        assert_eq!(split_dev(libc_makedev(1, 3)), (1, 3));
        assert_eq!(split_dev(libc_makedev(300, 70000)), (300, 70000));
    }

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
        let err =
            write_image(&set, &out.path().join("root"), &ImageOptions::default()).unwrap_err();
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
        assert!(err.to_string().contains("No such file"), "{err}");
        assert!(left.is_empty(), "{left:?}");
    }

    fn libc_makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfffff000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffffff00) << 12)
            | (minor & 0xff)
    }
}
