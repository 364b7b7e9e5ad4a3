//! kiln's mini initrd: a reproducible newc cpio holding the static init (crates/init,
//! embedded at build time), the list `/modules` and the kernel modules needed to mount the
//! appliance root, in load order.
//!
//! Module selection ([`select_stages`]): the dependency closure (modules.dep, plus
//! `pre:`/`post:` softdeps from modules.softdep resolved through modules.alias — Debian
//! 6.1's ext4 wants `crypto-crc32c`, i.e. crc32c_generic/crc32c_intel) of supermin's
//! module patterns (the floor: libguestfs relies on the initrd loading virtio_console,
//! virtio_rng, …) plus `ahci` and `crc32c_generic`, minus `virtio-gpu`. The list is
//! staged: the root filesystem, virtio-blk and everything else that is not a disk bus
//! first, then one stage per other root bus (SCSI/virtio-scsi, ATA, NVDIMM). At a stage
//! boundary the init stops when the root is already visible, so a virtio-blk root does
//! not pay for SCSI (~50 ms under TCG) or for probing the ATA controller (~0.2 s), and
//! libguestfs (root on virtio-scsi) not for ATA. The skipped drivers serve only disks on
//! buses the appliance does not boot from; `kiln.allmodules` loads them anyway.
//!
//! Invariants: output is byte-for-byte reproducible (mtime 0, owner 0:0, inode numbers by
//! position, names sorted bytewise, no padding surprises); compressed modules (.xz, .zst,
//! .gz) are decompressed at build time so the init only needs `finit_module`; the init
//! must be a static ELF ([`check_static_init`]); the initrd is written to a temporary
//! file beside the target and renamed, so a failure leaves nothing half-written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The static init built from crates/init by this crate's build script.
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init"));

/// blake3 of [`INIT`], computed by the build script.
static INIT_HASH: &[u8; 32] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init.blake3"));

/// Identity of what this crate puts into an initrd besides the modules themselves: the
/// init's bytes and the module selection rules. A cache key must include it, so that a
/// new init or a changed selection rebuilds cached initrds.
pub fn fingerprint() -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-initrd 1\0");
    h.update(INIT_HASH);
    let lists: [&[&str]; 3] = [SUPERMIN_PATTERNS, EXCLUDED_PATTERNS, ROOT_MODULES];
    for list in lists.into_iter().chain(BUS_STAGES.iter().map(|(p, _)| *p)) {
        for p in list {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        h.update(b"\n");
    }
    for (_, grace) in BUS_STAGES {
        h.update(&grace.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write initrd {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot decompress module {path}: {source}")]
    Decompress { path: PathBuf, source: io::Error },
    #[error(
        "{path}: no module for the root disk or filesystem found (looked for {wanted}); is this the modules tree of the chosen kernel?"
    )]
    NoModules { path: PathBuf, wanted: String },
    #[error("the init is not usable: {0}")]
    BadInit(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// supermin's module patterns (fnmatch on the basename, supermin-behaviour §5.1): the
/// floor of what kiln's initrd holds. libguestfs depends on it: its `/init` runs
/// `udevadm trigger` with the default `change` action, which does not autoload drivers,
/// so e.g. virtio_console (its channel) must be loaded by the initrd.
pub const SUPERMIN_PATTERNS: &[&str] = &[
    "ext2.ko*",
    "ext4.ko*",
    "virtio*.ko*",
    "libata*.ko*",
    "piix*.ko*",
    "sd_mod.ko*",
    "ata_piix.ko*",
    "crc*.ko*",
    "libcrc*.ko*",
    "ibmvscsic.ko*",
    "ibmvscsi.ko*",
    "libnvdimm.ko*",
    "nd_pmem.ko*",
    "nd_btt.ko*",
    "nfit.ko*",
];
/// supermin's exclusion.
pub const EXCLUDED_PATTERNS: &[&str] = &["virtio-gpu.ko*"];

/// Loaded first, always: the root filesystem (ext4 mounts ext2/ext3 too; crc32c_generic
/// named because ext4's softdep is only a hint) and virtio-blk (`kiln boot`), together
/// with the rest of supermin's list that is not a disk bus ([`BUS_STAGES`]).
pub const ROOT_MODULES: &[&str] = &["crc32c_generic", "ext4", "ext2", "virtio_pci", "virtio_blk"];

/// Drivers for the other root disk buses, one stage each, with how long the init waits
/// for the root to appear after loading the stage before it loads the next one (their
/// disks are found asynchronously). At each stage boundary the init stops loading if
/// the root is already visible (`kiln.allmodules` loads them anyway): probing the ATA
/// controller alone costs ~0.2 s under TCG, SCSI ~50 ms, and an appliance whose root is
/// on virtio-blk needs neither to boot. libguestfs's root is on virtio-scsi: it gets
/// stage 0 and SCSI.
pub const BUS_STAGES: &[(&[&str], u32)] = &[
    // SCSI disks on virtio-scsi (libguestfs attaches every disk there)
    (&["sd_mod.ko*", "virtio_scsi.ko*"], 250),
    // ATA/SATA (kiln adds ahci for q35 machines)
    (
        &["libata*.ko*", "piix*.ko*", "ata_piix.ko*", "ahci.ko*"],
        250,
    ),
    // NVDIMM, virtio-pmem, and IBM vSCSI (ppc64)
    (
        &[
            "libnvdimm.ko*",
            "nd_pmem.ko*",
            "nd_btt.ko*",
            "nfit.ko*",
            "virtio_pmem.ko*",
            "nd_virtio.ko*",
            "ibmvscsic.ko*",
            "ibmvscsi.ko*",
        ],
        0,
    ),
];

/// fnmatch(3) of a name (no `/` in it) against a supermin pattern.
fn glob_match(pat: &str, s: &str) -> bool {
    kiln_fileset::pattern::fnmatch(pat.as_bytes(), s.as_bytes())
}

fn basename_matches(key: &str, pats: &[&str]) -> bool {
    let base = key.rsplit('/').next().unwrap_or(key);
    pats.iter().any(|p| glob_match(p, base))
}

/// Lines in `/modules` that separate stages start with this, followed by a space and
/// the grace time in milliseconds (see [`BUS_STAGES`]).
pub const STAGE_SEPARATOR: &str = "-";

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name from a modules.dep key: basename without `.ko[.xz|.zst|.gz]`.
pub fn module_name(key: &str) -> String {
    let base = key.rsplit('/').next().unwrap_or(key);
    let base = base.split(".ko").next().unwrap_or(base);
    norm(base)
}

/// modules.dep: KEY → deps (paths relative to the modules tree). Lines without `:` are
/// skipped (supermin 5.3+ behaviour).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// modules.softdep: module name → (pre, post) names (possibly aliases).
pub fn parse_softdeps(text: &str) -> HashMap<String, (Vec<String>, Vec<String>)> {
    let mut out: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("softdep") {
            continue;
        }
        let Some(m) = w.next() else { continue };
        let e = out.entry(norm(m)).or_default();
        let mut post = false;
        for t in w {
            match t {
                "pre:" => post = false,
                "post:" => post = true,
                n if post => e.1.push(n.to_string()),
                n => e.0.push(n.to_string()),
            }
        }
    }
    out
}

/// modules.alias, exact (non-glob) aliases only: alias → module names.
pub fn parse_aliases(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("alias") {
            continue;
        }
        if let (Some(a), Some(m)) = (w.next(), w.next())
            && !a.contains(['*', '?', '['])
        {
            out.entry(a.to_string()).or_default().push(norm(m));
        }
    }
    out
}

/// The parsed module metadata of one kernel.
#[derive(Debug, Default)]
pub struct ModuleDb {
    pub deps: BTreeMap<String, Vec<String>>,
    pub softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    pub aliases: HashMap<String, Vec<String>>,
    by_name: HashMap<String, String>,
}

impl ModuleDb {
    pub fn new(dep: &str, softdep: &str, alias: &str) -> Self {
        let deps = parse_modules_dep(dep);
        let by_name = deps.keys().map(|k| (module_name(k), k.clone())).collect();
        ModuleDb {
            deps,
            softdeps: parse_softdeps(softdep),
            aliases: parse_aliases(alias),
            by_name,
        }
    }

    /// Read modules.dep (required), modules.softdep and modules.alias (optional).
    pub fn load(modules_dir: &Path) -> Result<Self> {
        let read = |n: &str, required: bool| -> Result<String> {
            let p = modules_dir.join(n);
            match fs::read_to_string(&p) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(Error::Read { path: p, source: e }),
            }
        };
        Ok(Self::new(
            &read("modules.dep", true)?,
            &read("modules.softdep", false)?,
            &read("modules.alias", false)?,
        ))
    }

    /// modules.dep keys for a module name or alias.
    fn resolve(&self, name: &str) -> Vec<String> {
        if let Some(k) = self.by_name.get(&norm(name)) {
            return vec![k.clone()];
        }
        let mut v: Vec<String> = self
            .aliases
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|m| self.by_name.get(m).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Dependency-ordered closure of `roots` (names or aliases; unknown names, e.g.
    /// built-in modules, are skipped): depth-first post-order, softdep `pre:` modules and
    /// hard deps before a module, `post:` modules after it.
    pub fn closure(&self, roots: &[&str]) -> Vec<String> {
        self.closure_keys(roots.iter().flat_map(|r| self.resolve(r)).collect())
    }

    /// [`ModuleDb::closure`] of modules.dep keys.
    pub fn closure_keys(&self, mut keys: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        keys.sort();
        keys.dedup();
        for k in keys {
            self.visit(&k, &mut seen, &mut out);
        }
        out
    }

    fn visit(&self, key: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(key.to_string()) {
            return;
        }
        let name = module_name(key);
        let soft = self.softdeps.get(&name);
        if let Some((pre, _)) = soft {
            for p in pre {
                for k in self.resolve(p) {
                    self.visit(&k, seen, out);
                }
            }
        }
        if let Some(deps) = self.deps.get(key) {
            let mut deps = deps.clone();
            deps.sort();
            for d in deps {
                self.visit(&d, seen, out);
            }
        }
        out.push(key.to_string());
        if let Some((_, post)) = soft {
            for p in post {
                for k in self.resolve(p) {
                    self.visit(&k, seen, out);
                }
            }
        }
    }
}

/// The modules of `modules_dir` kiln puts into the initrd, in load order (modules.dep
/// keys, relative to `modules_dir`), in stages: first [`ROOT_MODULES`] and everything
/// else supermin loads except other root buses, then one stage per [`BUS_STAGES`]
/// entry. A module appears only in the first stage that needs it; empty stages are kept.
pub fn select_stages(modules_dir: &Path) -> Result<Vec<Vec<String>>> {
    let db = ModuleDb::load(modules_dir)?;
    Ok(db.stages())
}

impl ModuleDb {
    /// See [`select_stages`].
    pub fn stages(&self) -> Vec<Vec<String>> {
        let bus: Vec<&str> = BUS_STAGES
            .iter()
            .flat_map(|(p, _)| p.iter().copied())
            .collect();
        let rest: Vec<String> = self
            .deps
            .keys()
            .filter(|k| basename_matches(k, SUPERMIN_PATTERNS))
            .filter(|k| !basename_matches(k, EXCLUDED_PATTERNS))
            .filter(|k| !basename_matches(k, &bus))
            .cloned()
            .collect();
        let mut first = self.closure(ROOT_MODULES);
        first.extend(self.closure_keys(rest));
        let mut all = vec![first];
        for (pats, _) in BUS_STAGES {
            let keys = self
                .deps
                .keys()
                .filter(|k| basename_matches(k, pats))
                .cloned()
                .collect();
            all.push(self.closure_keys(keys));
        }
        let mut seen = BTreeSet::new();
        all.into_iter()
            .map(|st| st.into_iter().filter(|k| seen.insert(k.clone())).collect())
            .collect()
    }
}

/// [`select_stages`] flattened: every module in load order.
pub fn select_modules(modules_dir: &Path) -> Result<Vec<String>> {
    Ok(select_stages(modules_dir)?.concat())
}

/// Refuse an init that is not a static 64-bit ELF executable (one with PT_INTERP would
/// fail as PID 1 with a kernel panic far from the cause).
pub fn check_static_init(b: &[u8]) -> Result<()> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err(Error::BadInit("not a 64-bit little-endian ELF file".into()));
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&b[32..40]);
    let phoff = u64::from_le_bytes(phoff) as usize;
    let (phentsize, phnum) = (u16at(54), u16at(56));
    for i in 0..phnum {
        let o = phoff.saturating_add(i.saturating_mul(phentsize));
        let Some(t) = b.get(o..o + 4) else {
            return Err(Error::BadInit("truncated ELF program headers".into()));
        };
        if t == [3, 0, 0, 0] {
            return Err(Error::BadInit(
                "it is dynamically linked (has PT_INTERP); build it with -Ctarget-feature=+crt-static".into(),
            ));
        }
    }
    Ok(())
}

/// A newc ("070701") cpio writer with fixed metadata: mtime 0, uid/gid 0, inode numbers
/// counting from 1 in write order. The caller writes entries in sorted order.
pub struct CpioWriter<W: Write> {
    w: W,
    ino: u32,
    pos: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(w: W) -> Self {
        CpioWriter { w, ino: 0, pos: 0 }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let n = (4 - (self.pos % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        self.ino += 1;
        let ino = if name == "TRAILER!!!" { 0 } else { self.ino };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, 0o040000 | perm, 2, 0, (0, 0))
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, 0o020000 | perm, 1, 0, (major, minor))
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: file too large for newc"),
            )
        })?;
        self.header(name, 0o100000 | perm, 1, size, (0, 0))?;
        self.put(data)?;
        self.pad4()
    }

    /// Write the trailer, pad to 512 bytes (as cpio(1) does) and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        let n = (512 - (self.pos % 512) as usize) % 512;
        self.put(&vec![0u8; n])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Read a module, decompressing `.xz`, `.zst` or `.gz`; returns (name in the initrd, bytes).
pub fn read_module(path: &Path) -> Result<(String, Vec<u8>)> {
    let base = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let f = fs::File::open(path).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut data = Vec::new();
    let dec = |e: io::Error| Error::Decompress {
        path: path.to_path_buf(),
        source: e,
    };
    let name = if let Some(n) = base.strip_suffix(".xz") {
        liblzma::read::XzDecoder::new(f)
            .read_to_end(&mut data)
            .map_err(dec)?;
        n
    } else if let Some(n) = base.strip_suffix(".zst") {
        zstd::stream::read::Decoder::new(f)
            .and_then(|mut d| d.read_to_end(&mut data))
            .map_err(dec)?;
        n
    } else if let Some(n) = base.strip_suffix(".gz") {
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut data)
            .map_err(dec)?;
        n
    } else {
        let mut f = f;
        f.read_to_end(&mut data).map_err(|e| Error::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        &base
    };
    Ok((name.to_string(), data))
}

/// What [`build`] put into the initrd.
#[derive(Debug, Clone)]
pub struct Report {
    /// Module file names in load order (as listed in `/modules`).
    pub modules: Vec<String>,
    pub bytes: u64,
}

/// Build the initrd for the modules tree `modules_dir` at `out` with the embedded init.
pub fn build(modules_dir: &Path, out: &Path) -> Result<Report> {
    build_with_init(modules_dir, out, INIT)
}

/// Is ext4 or ext2 built into the kernel (modules.builtin)?
fn fs_builtin(modules_dir: &Path) -> bool {
    fs::read_to_string(modules_dir.join("modules.builtin"))
        .map(|s| {
            s.lines()
                .any(|l| matches!(module_name(l.trim()).as_str(), "ext4" | "ext2"))
        })
        .unwrap_or(false)
}

/// [`build`] with another init program (must be static).
pub fn build_with_init(modules_dir: &Path, out: &Path, init: &[u8]) -> Result<Report> {
    check_static_init(init)?;
    let stages = select_stages(modules_dir)?;
    // A kernel with everything built in needs no modules; one with neither the root
    // filesystem as a module nor built in is the wrong modules tree.
    let has_fs_module = stages
        .iter()
        .flatten()
        .any(|k| matches!(module_name(k).as_str(), "ext4" | "ext2"));
    if !has_fs_module && !fs_builtin(modules_dir) {
        return Err(Error::NoModules {
            path: modules_dir.to_path_buf(),
            wanted: ROOT_MODULES.join(", "),
        });
    }
    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let mut order = Vec::new();
    let mut list = String::new();
    for (i, keys) in stages.iter().enumerate() {
        if i > 0 {
            // The grace after the stage before this boundary: none after stage 0
            // (virtio-blk disks appear during the driver's probe).
            let grace = if i == 1 { 0 } else { BUS_STAGES[i - 2].1 };
            list.push_str(&format!("{STAGE_SEPARATOR} {grace}\n"));
        }
        for k in keys {
            let (name, data) = read_module(&modules_dir.join(k))?;
            // Basenames are unique in a kernel's tree; keep the first if not.
            if let std::collections::btree_map::Entry::Vacant(v) = files.entry(name.clone()) {
                list.push_str(&name);
                list.push('\n');
                order.push(name);
                v.insert((0o644, data));
            }
        }
    }
    files.insert("init".into(), (0o755, init.to_vec()));
    files.insert("modules".into(), (0o644, list.into_bytes()));

    let bytes = write_atomically(out, |w| {
        let mut c = CpioWriter::new(w);
        // Names sorted bytewise; the directories the init needs and a console node (the
        // kernel's built-in initramfs usually has one; this does not rely on it).
        let mut names: Vec<&str> = files.keys().map(String::as_str).collect();
        names.extend([".", "dev", "dev/console", "proc", "root", "sys"]);
        names.sort_unstable();
        for n in names {
            match n {
                "." | "dev" | "proc" | "root" | "sys" => c.dir(n, 0o755)?,
                "dev/console" => c.char_dev(n, 0o600, 5, 1)?,
                _ => {
                    if let Some((mode, data)) = files.get(n) {
                        c.file(n, *mode, data)?;
                    }
                }
            }
        }
        c.finish()?;
        Ok(())
    })?;
    Ok(Report {
        modules: order,
        bytes,
    })
}

fn write_atomically(
    out: &Path,
    f: impl FnOnce(&mut io::BufWriter<&fs::File>) -> io::Result<()>,
) -> Result<u64> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let werr = |e: io::Error| Error::Write {
        path: out.to_path_buf(),
        source: e,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".initrd.")
        .tempfile_in(dir)
        .map_err(werr)?;
    {
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        f(&mut w).map_err(werr)?;
        w.flush().map_err(werr)?;
    }
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(werr)?;
    let len = tmp.as_file().metadata().map_err(werr)?.len();
    tmp.persist(out).map_err(|e| werr(e.error))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko
broken line without colon
";
    const SOFT: &str = "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\nsoftdep virtio_blk post: crc16\n";
    const ALIAS: &str = "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\n";

    #[test]
    fn closure_with_softdeps_in_dependency_order() {
        let db = ModuleDb::new(DEP, SOFT, ALIAS);
        let got: Vec<String> = db
            .closure(&["ext4", "virtio-blk", "no_such_module"])
            .iter()
            .map(|k| module_name(k))
            .collect();
        assert_eq!(
            got,
            [
                "virtio",
                "virtio_ring",
                "virtio_blk",
                "crc16", // virtio_blk's post softdep (made up for the test)
                "crc32c_intel",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "ext4",
            ]
        );
        // Every module comes after all its hard deps and pre-softdeps.
        let pos = |n: &str| got.iter().position(|g| g == n).unwrap();
        assert!(pos("crc32c_generic") < pos("ext4") && pos("jbd2") < pos("ext4"));
        assert!(!got.contains(&"virtio_net".to_string()));
    }

    #[test]
    fn real_kernel_selection() {
        // The host kernel's modules tree (linux-image-amd64 is installed by setup-host).
        let k = kiln_kernel::choose_host("x86_64").unwrap();
        let sel = select_modules(&k.modules).unwrap();
        let names: Vec<String> = sel.iter().map(|k| module_name(k)).collect();
        let pos = |n: &str| names.iter().position(|g| g == n);
        for want in [
            "virtio_pci",
            "virtio_blk",
            "virtio_scsi",
            "sd_mod",
            "ext4",
            "crc32c_generic",
            "jbd2",
            "nd_pmem",
        ] {
            assert!(pos(want).is_some(), "{want} missing from {names:?}");
        }
        assert!(
            pos("crc32c_generic") < pos("ext4"),
            "softdep order: {names:?}"
        );
        assert!(pos("scsi_mod") < pos("sd_mod") && pos("virtio") < pos("virtio_blk"));
        for unwanted in ["virtio_gpu", "xfs", "btrfs"] {
            assert!(
                pos(unwanted).is_none(),
                "{unwanted} should not be in {names:?}"
            );
        }
        // Dependency order: every dep of a module precedes it.
        let db = ModuleDb::load(&k.modules).unwrap();
        for (i, key) in sel.iter().enumerate() {
            for d in &db.deps[key] {
                let j = sel.iter().position(|s| s == d).unwrap();
                assert!(j < i, "{d} after {key}");
            }
        }
    }

    #[test]
    fn embedded_init_is_static_and_dynamic_is_refused() {
        assert!(INIT.len() > 10_000);
        check_static_init(INIT).unwrap();
        let dynamic = fs::read("/bin/true").unwrap();
        let e = check_static_init(&dynamic).unwrap_err().to_string();
        assert!(e.contains("PT_INTERP"), "{e}");
        assert!(check_static_init(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn fingerprint_is_stable_and_covers_the_init() {
        assert_eq!(fingerprint(), fingerprint());
        assert_ne!(fingerprint(), *blake3::hash(INIT).as_bytes());
        // The hash the build script recorded is the embedded init's.
        assert_eq!(INIT_HASH, blake3::hash(INIT).as_bytes());
    }

    #[test]
    fn cpio_bytes() {
        let mut c = CpioWriter::new(Vec::new());
        c.dir(".", 0o755).unwrap();
        c.file("a", 0o644, b"hello").unwrap();
        let out = c.finish().unwrap();
        let hdr = |ino: u32, mode: u32, nlink: u32, size: u32, namesize: u32| {
            format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
                0, 0, 0, 0, 0, 0, 0, 0
            )
        };
        let mut want = Vec::new();
        want.extend(hdr(1, 0o40755, 2, 0, 2).as_bytes());
        want.extend(b".\0"); // 110 + 2 = 112, aligned
        want.extend(hdr(2, 0o100644, 1, 5, 2).as_bytes());
        want.extend(b"a\0hello\0\0\0"); // name to 224, data 5 → pad 3
        want.extend(hdr(0, 0, 1, 0, 11).as_bytes());
        want.extend(b"TRAILER!!!\0\0\0\0"); // 232+110+11 = 353 → 356
        want.resize(512, 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(out, want);
    }

    #[test]
    fn real_initrd_reads_back_and_is_reproducible() {
        let k = kiln_kernel::choose_host("x86_64").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let rep = build(&k.modules, &a).unwrap();
        build(&k.modules, &b).unwrap();
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes, fs::read(&b).unwrap(), "not reproducible");
        assert_eq!(bytes.len() as u64, rep.bytes);
        assert_eq!(bytes.len() % 512, 0);
        let out = std::process::Command::new("cpio")
            .args(["-itv", "--quiet", "--numeric-uid-gid"])
            .stdin(fs::File::open(&a).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries not sorted");
        for l in listing.lines() {
            // mode links uid gid size date… name; owners 0 0, epoch dates.
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((f[2], f[3]), ("0", "0"), "{l}");
            assert!(l.contains("1970"), "{l}");
        }
        assert!(
            names.contains(&"init") && names.contains(&"modules") && names.contains(&"dev/console")
        );
        for m in &rep.modules {
            assert!(names.contains(&m.as_str()), "{m} not in the archive");
        }
        // /modules lists them in load order.
        let ex = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("cpio")
            .args(["-id", "--quiet", "modules", "init"])
            .current_dir(ex.path())
            .stdin(fs::File::open(&a).unwrap())
            .status()
            .unwrap();
        assert!(st.success());
        let list = fs::read_to_string(ex.path().join("modules")).unwrap();
        let listed: Vec<&str> = list
            .lines()
            .filter(|l| !l.starts_with(STAGE_SEPARATOR))
            .collect();
        assert_eq!(listed, rep.modules);
        assert_eq!(
            list.lines()
                .filter(|l| l.starts_with(STAGE_SEPARATOR))
                .count(),
            BUS_STAGES.len()
        );
        // Stage 0 alone mounts a virtio-blk root and has what libguestfs needs loaded;
        // SCSI, ATA and NVDIMM come after, each with its grace time.
        let first: Vec<&str> = list
            .lines()
            .take_while(|l| !l.starts_with(STAGE_SEPARATOR))
            .collect();
        for m in [
            "ext4.ko",
            "virtio_blk.ko",
            "virtio_pci.ko",
            "crc32c_generic.ko",
            "virtio_console.ko",
            "virtio-rng.ko",
        ] {
            assert!(first.contains(&m), "{m} not in stage 0: {first:?}");
        }
        for m in ["virtio_scsi.ko", "sd_mod.ko", "ata_piix.ko", "libnvdimm.ko"] {
            assert!(!first.contains(&m), "{m} in stage 0: {first:?}");
        }
        let seps: Vec<&str> = list
            .lines()
            .filter(|l| l.starts_with(STAGE_SEPARATOR))
            .collect();
        assert_eq!(seps, ["- 0", "- 250", "- 250"]);
        assert_eq!(fs::read(ex.path().join("init")).unwrap(), INIT);
    }

    #[test]
    fn built_in_filesystem_needs_no_modules_but_a_wrong_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        fs::write(m.join("modules.dep"), "kernel/drivers/net/dummy.ko:\n").unwrap();
        fs::create_dir_all(m.join("kernel/drivers/net")).unwrap();
        fs::write(m.join("kernel/drivers/net/dummy.ko"), b"x").unwrap();
        let out = m.join("initrd");
        let e = build(m, &out).unwrap_err().to_string();
        assert!(e.contains("modules tree of the chosen kernel"), "{e}");
        assert!(!out.exists());
        fs::write(m.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let rep = build(m, &out).unwrap();
        assert!(rep.modules.is_empty());
        assert!(out.exists());
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"\x7fELF fake module".repeat(100);
        let xz = dir.path().join("a.ko.xz");
        let mut enc = liblzma::write::XzEncoder::new(fs::File::create(&xz).unwrap(), 6);
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("b.ko.zst");
        fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let gz = dir.path().join("c.ko.gz");
        let mut enc = flate2::write::GzEncoder::new(
            fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        for (p, n) in [(&xz, "a.ko"), (&zst, "b.ko"), (&gz, "c.ko")] {
            let (name, got) = read_module(p).unwrap();
            assert_eq!((name.as_str(), &got[..]), (n, &data[..]));
        }
        fs::write(dir.path().join("bad.ko.xz"), b"not xz").unwrap();
        let e = read_module(&dir.path().join("bad.ko.xz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.ko.xz"), "{e}");
    }
}
