//! The cache key of a supermin appliance: a checksum of everything that ends up in it.
//!
//! What goes in (design.md, promise 7), and how cheaply:
//! - every file of `supermin.d` (directories recursed in byte order, links followed as
//!   supermin does): relative path and **content** (the files are small; hashing their
//!   content instead of their times means touching them does not force a rebuild);
//! - the host files named by `hostfiles` lists (glob(3) expanded as supermin does):
//!   path and `lstat` metadata (type, mode, owner, size, mtime, ctime, inode, device),
//!   plus the target and metadata of symlinks;
//! - the package database: `lstat` metadata of dpkg's `status` and `diversions` (dpkg
//!   rewrites `status` on every install, upgrade or removal);
//! - the kernel: the `SUPERMIN_KERNEL*` overrides and the metadata of the files they
//!   name, else of every kernel candidate (`/lib/modules/*/vmlinuz`, `/boot/vmlinu?-*`)
//!   and every `modules.dep` (rewritten by depmod whenever modules change);
//! - options (host CPU, size), kiln's appliance format version, euid and egid.
//!
//! Package files themselves are not stat'ed: like supermin, kiln trusts the package
//! database to change when they do. No file is read beyond `supermin.d` and the
//! hostfiles lists, so a cache hit costs a few hundred `lstat`s and a hash of
//! `supermin.d` (~2 MB for libguestfs), milliseconds.
//!
//! TODO(merge): when `kiln-inputs` and `kiln-kernel` are on main, take the hostfile
//! patterns from `kiln_inputs` and the chosen kernel from `kiln_kernel::choose`
//! instead of the local sniffing and the "all candidates" kernel identity here.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_cache::Key;

/// Bump when the appliance kiln builds changes in a way old cached slots lack.
pub const FORMAT_VERSION: u32 = 1;

/// Errors computing a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading supermin appliance {path:?}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("supermin appliance {0:?}: directories nested too deeply (a symlink loop?)")]
    TooDeep(PathBuf),
}

/// The `SUPERMIN_KERNEL`, `SUPERMIN_KERNEL_VERSION` and `SUPERMIN_MODULES` overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelOverrides {
    pub kernel: Option<OsString>,
    pub version: Option<OsString>,
    pub modules: Option<OsString>,
}

impl KernelOverrides {
    /// Read the overrides from the environment (empty values count as unset).
    pub fn from_env() -> KernelOverrides {
        let get = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
        KernelOverrides {
            kernel: get("SUPERMIN_KERNEL"),
            version: get("SUPERMIN_KERNEL_VERSION"),
            modules: get("SUPERMIN_MODULES"),
        }
    }
}

/// Everything besides `supermin.d` that the key depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOptions {
    /// `--host-cpu` (default: this machine's architecture).
    pub host_cpu: String,
    /// `--size` of the root image in bytes, if given.
    pub size: Option<u64>,
    /// dpkg's status file (its directory's `diversions` is covered too).
    pub dpkg_status: PathBuf,
    pub kernel: KernelOverrides,
    /// Where kernels and modules are looked for (tests use fixture trees).
    pub boot_dir: PathBuf,
    pub lib_modules: PathBuf,
    /// The effective IDs the appliance is built for.
    pub euid: u32,
    pub egid: u32,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            host_cpu: std::env::consts::ARCH.to_owned(),
            size: None,
            dpkg_status: PathBuf::from("/var/lib/dpkg/status"),
            kernel: KernelOverrides::from_env(),
            boot_dir: PathBuf::from("/boot"),
            lib_modules: PathBuf::from("/lib/modules"),
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
        for v in [
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
        ] {
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
    h.bytes("host_cpu", opts.host_cpu.as_bytes());
    h.u64("size", opts.size.map_or(u64::MAX, |s| s));
    h.u64("euid", opts.euid as u64);
    h.u64("egid", opts.egid as u64);

    let mut patterns = Vec::new();
    hash_inputs(&mut h, supermin_d, Path::new(""), 0, &mut patterns)?;
    for pat in &patterns {
        h.bytes("glob", pat);
        for m in glob(pat) {
            h.meta(&m);
        }
    }

    h.meta(&opts.dpkg_status);
    h.meta(&opts.dpkg_status.with_file_name("diversions"));

    hash_kernel(&mut h, opts);
    Ok(Key::from_digest(h.0.finalize().as_bytes()))
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Hash a supermin.d entry (file or directory, links followed) and collect the
/// patterns of hostfiles lists.
fn hash_inputs(
    h: &mut H,
    path: &Path,
    rel: &Path,
    depth: u32,
    patterns: &mut Vec<Vec<u8>>,
) -> Result<(), KeyError> {
    if depth > 32 {
        return Err(KeyError::TooDeep(path.to_path_buf()));
    }
    let md = fs::metadata(path).map_err(read_err(path))?;
    if md.is_dir() {
        h.path("dir", rel);
        let mut names: Vec<OsString> = fs::read_dir(path)
            .map_err(read_err(path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err(path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            hash_inputs(h, &path.join(&n), &rel.join(&n), depth + 1, patterns)?;
        }
        return Ok(());
    }
    let data = fs::read(path).map_err(read_err(path))?;
    h.path("file", rel);
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
    Ok(())
}

/// The decompressed text of a hostfiles list (first byte `/`), else `None`.
fn hostfiles_text(data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut reader: Box<dyn Read + '_> = if data.starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::read::MultiGzDecoder::new(data))
    } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new(data))
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(data)?)
    } else {
        return Ok(if data.first() == Some(&b'/') {
            Some(data.to_vec())
        } else {
            None
        });
    };
    let mut first = [0u8; 1];
    if reader.read(&mut first)? == 0 || first[0] != b'/' {
        return Ok(None); // a tarball or another list: its bytes are already hashed
    }
    let mut text = first.to_vec();
    reader.read_to_end(&mut text)?;
    Ok(Some(text))
}

/// glob(3) without escapes, as supermin expands hostfiles; sorted matches.
fn glob(pattern: &[u8]) -> Vec<PathBuf> {
    let Ok(c) = CString::new(pattern) else {
        return Vec::new();
    };
    // SAFETY: glob_t is a plain C struct for which all-zero is the documented initial
    // state; glob() fills it and globfree() releases what it allocated. gl_pathv holds
    // gl_pathc valid NUL-terminated strings until globfree, and we copy them first.
    unsafe {
        let mut g: libc::glob_t = std::mem::zeroed();
        let r = libc::glob(c.as_ptr(), libc::GLOB_NOESCAPE, None, &mut g);
        let mut out = Vec::new();
        if r == 0 {
            for i in 0..g.gl_pathc {
                let p = *g.gl_pathv.add(i);
                if !p.is_null() {
                    let bytes = std::ffi::CStr::from_ptr(p).to_bytes();
                    out.push(PathBuf::from(OsStr::from_bytes(bytes)));
                }
            }
        }
        libc::globfree(&mut g);
        out
    }
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
    if let Some(kernel) = &k.kernel {
        h.meta(Path::new(kernel));
    }
    if let Some(m) = &k.modules {
        h.meta(Path::new(m));
        h.meta(&Path::new(m).join("modules.dep"));
    }
    // Every candidate the chooser could pick, so installing or removing a kernel or
    // rebuilding modules changes the key (a superset of what the choice depends on).
    let mut boot: Vec<PathBuf> = list_sorted(&opts.boot_dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"vmlinu"))
        })
        .collect();
    boot.sort();
    for p in boot {
        h.meta(&p);
    }
    for dir in list_sorted(&opts.lib_modules) {
        h.meta(&dir.join("vmlinuz"));
        h.meta(&dir.join("modules.dep"));
    }
}

fn list_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    v
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

    #[test]
    fn glob_matches_like_the_shell() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a.aug", "b.aug", ".h.aug", "c.txt"] {
            fs::write(d.path().join(n), "").unwrap();
        }
        let pat = format!("{}/*.aug", d.path().display());
        let got: Vec<_> = glob(pat.as_bytes())
            .into_iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(got, ["a.aug", "b.aug"]);
        assert!(glob(b"/nonexistent/*").is_empty());
    }
}
