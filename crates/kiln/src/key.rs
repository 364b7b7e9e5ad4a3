//! The cache key of a supermin appliance: a checksum of everything that ends up in it.
//!
//! What goes in (design.md, promise 7), and how cheaply:
//! - every file of `supermin.d` (directories recursed in byte order, links followed as
//!   supermin does): relative path and **content** (the files are small; hashing their
//!   content instead of their times means touching them does not force a rebuild);
//! - the host files named by `hostfiles` lists (glob(3) expanded as supermin does):
//!   path and `lstat` metadata (type, mode, owner, size, mtime, ctime, inode, device),
//!   plus the target and metadata of symlinks;
//! - the package database: the driver chosen for [`KeyOptions::sysroot`] (the same
//!   choice the build makes, `kiln_packages::fingerprint`) and the `lstat` metadata of the files
//!   that date it (for dpkg `status` and `diversions`: dpkg rewrites `status` on every
//!   install, upgrade or removal); when no database is found, that fact;
//! - the root's layout: its merged-/usr links (`/lib64 → usr/lib64`), name, target and
//!   `lstat` metadata, which the appliance has whatever the closure;
//! - the kernel: the `SUPERMIN_KERNEL*` overrides and the kernel `kiln-kernel` chooses
//!   (path, version, metadata of the file, of its modules tree and of `modules.dep`,
//!   which depmod rewrites whenever modules change); if no kernel can be chosen, every
//!   candidate's metadata, so the key changes when one appears;
//! - options (host CPU, size), kiln's appliance format version, the initrd's init and
//!   module rules ([`kiln_initrd::fingerprint`]), euid and egid.
//!
//! Package files themselves are not stat'ed: like supermin, kiln trusts the package
//! database to change when they do. No file is read beyond `supermin.d` and the
//! hostfiles lists, so a cache hit costs a few hundred `lstat`s and a hash of
//! `supermin.d` (~2 MB for libguestfs), milliseconds.
//!
//! Sniffing and file order come from `kiln-inputs`, decompression from
//! `kiln-compress`, glob expansion from `kiln-pattern` and the kernel choice from
//! `kiln-kernel`, so the key sees what the build will use.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_cache::Key;
use kiln_inputs::{Class, InputKind, classify};
pub use kiln_kernel::{Given, KernelEnv, Roots};
pub use kiln_packages::Sysroot;

/// Bump when the appliance kiln builds changes in a way old cached slots lack.
pub const FORMAT_VERSION: u32 = 1;

/// Errors computing a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading supermin appliance {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("reading supermin appliance {}", path.display())]
    Inputs {
        path: PathBuf,
        source: Box<kiln_inputs::InputError>,
    },
}

/// Everything besides `supermin.d` that the key depends on.
#[derive(Debug, Clone)]
pub struct KeyOptions {
    /// `--host-cpu` (default: this machine's architecture).
    pub host_cpu: String,
    /// `--size` of the root image in bytes (`None`: kiln's default, 4 GiB).
    pub size: Option<u64>,
    /// The installed system: its package database and hostfiles are read below it
    /// (the build reads the same: `BuildOptions::sysroot`). Set it with
    /// [`KeyOptions::set_sysroot`] so the kernel roots follow.
    pub sysroot: Sysroot,
    /// `SUPERMIN_KERNEL`, `SUPERMIN_KERNEL_VERSION`, `SUPERMIN_MODULES` (default: the
    /// process environment, which is also what the build pipeline reads).
    pub kernel: KernelEnv,
    /// Where kernels and modules are looked for (tests use fixture trees).
    pub roots: Roots,
    /// The effective IDs the appliance is built for.
    pub euid: u32,
    pub egid: u32,
}

impl KeyOptions {
    /// Read everything below `sysroot`: the package database, hostfiles, and the kernel
    /// from its `/boot` and `/lib/modules`.
    pub fn set_sysroot(&mut self, sysroot: Sysroot) {
        self.roots = crate::pipeline::kernel_roots(&sysroot);
        self.sysroot = sysroot;
    }
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            host_cpu: std::env::consts::ARCH.to_owned(),
            size: None,
            sysroot: Sysroot::default(),
            kernel: KernelEnv::from_process(),
            roots: Roots::default(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
        }
    }
}

/// Length-prefixed fields, so no two different inputs hash the same.
struct H(blake3::Hasher);

impl H {
    fn bytes(&mut self, tag: &str, b: &[u8]) {
        self.0.update(tag.as_bytes());
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn u64(&mut self, tag: &str, v: u64) {
        self.bytes(tag, &v.to_le_bytes());
    }
    fn path(&mut self, tag: &str, p: &Path) {
        self.bytes(tag, p.as_os_str().as_bytes());
    }
    /// `lstat` identity of a host path; a missing path hashes as such.
    fn meta(&mut self, p: &Path) {
        self.path("p", p);
        match fs::symlink_metadata(p) {
            Ok(m) => {
                self.meta_of(&m);
                if m.file_type().is_symlink() {
                    if let Ok(t) = fs::read_link(p) {
                        self.path("l", &t);
                    }
                    if let Ok(m) = fs::metadata(p) {
                        self.meta_of(&m);
                    }
                }
            }
            Err(e) => self.bytes("err", e.kind().to_string().as_bytes()),
        }
    }
    fn meta_of(&mut self, m: &fs::Metadata) {
        for v in stat_words(m) {
            self.u64("m", v);
        }
    }
}

/// The key of the appliance built from `supermin_d` with `opts`.
pub fn appliance_key(supermin_d: &Path, opts: &KeyOptions) -> Result<Key, KeyError> {
    let mut h = H(blake3::Hasher::new());
    h.bytes("kiln-key", b"1");
    h.u64("format", FORMAT_VERSION as u64);
    h.bytes("version", env!("CARGO_PKG_VERSION").as_bytes());
    // The init inside every initrd and the module selection rules: a kiln with another
    // init must not reuse an initrd built by this one, even at the same version.
    h.bytes("initrd", &kiln_initrd::fingerprint());
    h.bytes("host_cpu", opts.host_cpu.as_bytes());
    // The effective size, so "default" and "4G given" name the same appliance.
    h.u64("size", opts.size.unwrap_or(kiln_image::DEFAULT_SIZE));
    h.u64("euid", opts.euid as u64);
    h.u64("egid", opts.egid as u64);

    let mut patterns = Vec::new();
    hash_inputs(&mut h, supermin_d, &mut patterns)?;
    let root = &opts.sysroot;
    for pat in &patterns {
        h.bytes("glob", pat);
        if root.is_host() {
            // A pattern glob(3) cannot expand is hashed as such; the build reports it.
            for m in kiln_pattern::glob(OsStr::from_bytes(pat)).unwrap_or_default() {
                h.meta(&m);
            }
        } else {
            // Below another root, as the build expands it: links followed inside it.
            for m in kiln_pattern::glob_in(&root.root, OsStr::from_bytes(pat)) {
                let dir = m.parent().map(|d| kiln_pattern::resolve_in(&root.root, d));
                match (dir, m.file_name()) {
                    (Some(Ok(d)), Some(n)) => h.meta(&root.host_path(&d.join(n))),
                    _ => h.meta(&root.host_path(&m)),
                }
            }
        }
    }

    match kiln_packages::fingerprint(&opts.sysroot) {
        Some((driver, paths)) => {
            h.bytes("database", driver.as_bytes());
            for p in &paths {
                h.meta(p);
            }
        }
        None => h.bytes("database", b"\0none"),
    }

    // The root's merged-/usr links come with every appliance made from it, whatever the
    // closure (`kiln_fileset::layout`): name, target and the link's own metadata. A
    // classic root has none and adds nothing, so its keys are what they were.
    for l in kiln_fileset::layout::usr_links(root) {
        h.path("usr_link", &l.path);
        h.path("usr_link_target", &l.target);
        if let Ok(m) = fs::symlink_metadata(root.host_path(&l.path)) {
            h.meta_of(&m);
        }
    }

    hash_kernel(&mut h, opts);
    Ok(Key::from_digest(h.0.finalize().as_bytes()))
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Hash the files of `supermin_d` in supermin's order (relative path and content) and
/// collect the patterns of its hostfiles lists.
fn hash_inputs(h: &mut H, supermin_d: &Path, patterns: &mut Vec<Vec<u8>>) -> Result<(), KeyError> {
    let files =
        kiln_inputs::input_files(&[supermin_d.to_path_buf()]).map_err(|e| KeyError::Inputs {
            path: supermin_d.to_path_buf(),
            source: Box::new(e),
        })?;
    for path in files {
        let data = fs::read(&path).map_err(read_err(&path))?;
        h.path("file", path.strip_prefix(supermin_d).unwrap_or(&path));
        h.bytes("content", &data);
        // A corrupt compressed file is not a list; its bytes are hashed above and the
        // build reports it, naming the file.
        if let Ok(Some(text)) = hostfiles_text(&data) {
            patterns.extend(
                text.split(|&b| b == b'\n')
                    .filter(|l| l.first() == Some(&b'/'))
                    .map(<[u8]>::to_vec),
            );
        }
    }
    Ok(())
}

/// The decompressed text of a hostfiles list, else `None`.
pub(crate) fn hostfiles_text(data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut sample = Vec::with_capacity(512);
    kiln_compress::decompress(data)?
        .1
        .take(512)
        .read_to_end(&mut sample)?;
    if classify(&sample) != Class::Kind(InputKind::Hostfiles) {
        return Ok(None); // a tarball or another list: its bytes are already hashed
    }
    let mut text = Vec::new();
    kiln_compress::decompress(data)?.1.read_to_end(&mut text)?;
    Ok(Some(text))
}

fn hash_kernel(h: &mut H, opts: &KeyOptions) {
    let k = &opts.kernel;
    for (tag, v) in [
        ("SUPERMIN_KERNEL", &k.kernel),
        ("SUPERMIN_KERNEL_VERSION", &k.version),
        ("SUPERMIN_MODULES", &k.modules),
    ] {
        match v {
            Some(v) => h.bytes(tag, v.as_bytes()),
            None => h.bytes(tag, b"\0unset"),
        }
    }
    // The files the overrides name, whether or not the chooser accepts them.
    if let Some(kernel) = &k.kernel {
        h.meta(Path::new(kernel));
    }
    if let Some(m) = &k.modules {
        h.meta(&Path::new(m).join("modules.dep"));
    }
    match kiln_kernel::choose(&opts.host_cpu, &opts.kernel, &opts.roots) {
        Ok(chosen) => {
            h.bytes("version", chosen.version.as_bytes());
            h.meta(&chosen.path);
            h.meta(&chosen.modules);
            h.meta(&chosen.modules.join("modules.dep"));
        }
        Err(e) => {
            // The build will fail the same way; the key must still change when a
            // kernel appears, so take every candidate in.
            h.bytes("no-kernel", e.to_string().as_bytes());
            for p in list_sorted(&opts.roots.boot) {
                if p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"vmlinu"))
                {
                    h.meta(&p);
                }
            }
            for dir in list_sorted(&opts.roots.lib_modules) {
                h.meta(&dir.join("vmlinuz"));
                h.meta(&dir.join("modules.dep"));
            }
        }
    }
}

fn list_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    v
}

/// What of a file's status says it changed: mode, owner, size, modification and change
/// times, inode and device (the cache key and `kiln run`'s owner index hash these).
pub(crate) fn stat_words(m: &fs::Metadata) -> [u64; 10] {
    [
        m.mode() as u64,
        m.uid() as u64,
        m.gid() as u64,
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
        m.ino(),
        m.dev(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles_are_found_in_plain_and_compressed_lists() {
        assert_eq!(
            hostfiles_text(b"/etc/x\n").unwrap(),
            Some(b"/etc/x\n".to_vec())
        );
        assert_eq!(hostfiles_text(b"-/etc/x\n").unwrap(), None);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"/lib/*.so\n").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(hostfiles_text(&gz).unwrap(), Some(b"/lib/*.so\n".to_vec()));
    }
}
