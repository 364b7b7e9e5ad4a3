//! kiln's mini initrd: a reproducible newc cpio holding the static init (the
//! `kiln-init` crate in crates/init, built and embedded by this crate's build script),
//! the list `/modules` and the kernel modules that make the appliance root and every
//! other disk of the VM visible.
//!
//! Module selection ([`select`]): the dependency closure (modules.dep, plus
//! `pre:`/`post:` softdeps from modules.softdep resolved through modules.alias — Debian
//! 6.1's ext4 wants `crypto-crc32c`, i.e. crc32c_generic/crc32c_intel) of supermin's
//! module patterns (the floor: libguestfs relies on the initrd loading virtio_console,
//! virtio_rng, …, and on every disk being visible before its `/init` runs) plus `ahci`,
//! minus `virtio-gpu`. `/modules` has one line per module, `NAME.ko: PREREQUISITE.ko …`,
//! in an order that satisfies the prerequisites; the init loads modules concurrently,
//! each once its prerequisites are loaded, so device probes that wait overlap with the
//! loading of the rest ([`EARLY`] starts the slow ones first), and disks keep supermin's
//! names ([`ORDER_AFTER`]).
//!
//! Invariants: output is byte-for-byte reproducible (mtime 0, owner 0:0, inode numbers by
//! position, names sorted bytewise, no padding surprises); compressed modules (.xz, .zst,
//! .gz; the format told by kiln-compress from the magic bytes) are decompressed at build
//! time so the init only needs `finit_module`; the init must be a static ELF
//! ([`check_static_init`]); the initrd is written to a temporary file beside the target
//! and renamed, so a failure leaves nothing half-written.
//!
//! | module | owns |
//! |---|---|
//! | `moddb` | modules.dep / softdep / alias and the dependency closure ([`ModuleDb`]) |
//! | `select` | the selection rules and load order ([`select`]) |
//! | `cpio` | the newc writer ([`CpioWriter`]) |
//! | this file | [`build`]: reading (decompressing) modules, `/modules`, the archive |
//!
//! ```
//! use kiln_initrd::{ModuleDb, module_name};
//!
//! // ext4 needs jbd2 and, through a softdep on an alias, a crc32c implementation.
//! let db = ModuleDb::new(
//!     "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n\
//!      kernel/fs/jbd2/jbd2.ko:\n\
//!      kernel/crypto/crc32c_generic.ko:\n",
//!     "softdep ext4 pre: crypto-crc32c\n",
//!     "alias crypto-crc32c crc32c_generic\n",
//! );
//! let order: Vec<String> = db.closure(&["ext4"]).iter().map(|k| module_name(k)).collect();
//! assert_eq!(order, ["crc32c_generic", "jbd2", "ext4"]);
//! ```
//!
//! For a kernel's modules tree, [`build`] writes the whole initrd:
//!
//! ```no_run
//! let report = kiln_initrd::build(
//!     std::path::Path::new("/lib/modules/6.1.0-28-amd64"),
//!     std::path::Path::new("initrd"),
//! )?;
//! println!("{} bytes, modules in load order: {:?}", report.bytes, report.modules);
//! # Ok::<(), kiln_initrd::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

mod cpio;
mod moddb;
mod select;

pub use cpio::CpioWriter;
pub use moddb::{
    ModuleDb, module_name, parse_aliases, parse_module_aliases, parse_modules_dep, parse_softdeps,
};
pub use select::{
    EARLY, EXCLUDED_PATTERNS, GATED_BUSES, Gate, KILN_PATTERNS, ORDER_AFTER, SUPERMIN_PATTERNS,
    Selection, VIRTIO_TRANSPORTS, select, select_modules,
};

/// What the root needs in any appliance kiln boots (named in the error for a modules
/// tree that has none of it).
pub const ROOT_MODULES: &[&str] = &["crc32c_generic", "ext4", "ext2", "virtio_pci", "virtio_blk"];

/// The static init built from crates/init by this crate's build script.
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init"));

/// blake3 of [`INIT`], computed by the build script.
static INIT_HASH: &[u8; 32] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init.blake3"));

/// Identity of what this crate puts into an initrd besides the modules themselves: the
/// init's bytes and the module selection rules. A cache key must include it, so that a
/// new init or a changed selection rebuilds cached initrds.
pub fn fingerprint() -> [u8; 32] {
    fingerprint_of(
        INIT_HASH,
        &[
            SUPERMIN_PATTERNS,
            EXCLUDED_PATTERNS,
            KILN_PATTERNS,
            EARLY,
            VIRTIO_TRANSPORTS,
        ],
        &[ORDER_AFTER, GATED_BUSES],
    )
}

fn fingerprint_of(
    init_hash: &[u8; 32],
    lists: &[&[&str]],
    tables: &[&[(&str, &[&str])]],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-initrd 3\0");
    h.update(init_hash);
    for list in lists.iter().copied() {
        for p in list {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        h.update(b"\n");
    }
    for table in tables.iter().copied() {
        for (m, afters) in table {
            h.update(m.as_bytes());
            h.update(b":");
            for a in *afters {
                h.update(a.as_bytes());
                h.update(b"\0");
            }
            h.update(b"\n");
        }
        h.update(b"\n");
    }
    *h.finalize().as_bytes()
}

/// Errors of building an initrd; each names the file at fault. The underlying I/O error,
/// if any, is the [`source`](std::error::Error::source), not part of the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write initrd {path}", path = path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot decompress module {path}", path = path.display())]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: no module for the root disk or filesystem found (looked for {wanted}); is this the modules tree of the chosen kernel?",
        path = path.display()
    )]
    NoModules { path: PathBuf, wanted: String },
    #[error("the init is not usable: {0}")]
    BadInit(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Refuse an init that is not a static 64-bit ELF executable (one with PT_INTERP would
/// fail as PID 1 with a kernel panic far from the cause), read by kiln-elf (as the
/// build script checks the init it embeds).
pub fn check_static_init(b: &[u8]) -> Result<()> {
    match kiln_elf::has_interp(b) {
        Ok(false) => Ok(()),
        Ok(true) => Err(Error::BadInit(
            "it is dynamically linked (has PT_INTERP); build it with -Ctarget-feature=+crt-static"
                .into(),
        )),
        Err(why) => Err(Error::BadInit(why.to_string())),
    }
}

/// Read a module, decompressing it if it is compressed (gzip, xz or zstd, told by its
/// magic bytes through kiln-compress); returns (name in the initrd, bytes). The name
/// drops a `.gz`, `.xz` or `.zst` suffix; a file with such a suffix that is not
/// compressed is refused as corrupt.
pub fn read_module(path: &Path) -> Result<(String, Vec<u8>)> {
    let base = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stripped = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| base.strip_suffix(s));
    let name = stripped.unwrap_or(&base).to_string();
    let read_err = |e: io::Error| Error::Read {
        path: path.to_path_buf(),
        source: e,
    };
    let f = fs::File::open(path).map_err(read_err)?;
    let (format, mut r) = kiln_compress::decompress(f).map_err(read_err)?;
    if stripped.is_some() && !format.is_compressed() {
        return Err(Error::Decompress {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "not gzip, xz or zstd data, although the name says it is compressed",
            ),
        });
    }
    let mut data = Vec::new();
    r.read_to_end(&mut data).map_err(|e| {
        if format.is_compressed() {
            Error::Decompress {
                path: path.to_path_buf(),
                source: e,
            }
        } else {
            read_err(e)
        }
    })?;
    Ok((name, data))
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
    let sel = select(modules_dir)?;
    // A kernel with everything built in needs no modules; one with neither the root
    // filesystem as a module nor built in is the wrong modules tree.
    let has_fs_module = sel
        .order
        .iter()
        .any(|k| matches!(module_name(k).as_str(), "ext4" | "ext2"));
    if !has_fs_module && !fs_builtin(modules_dir) {
        return Err(Error::NoModules {
            path: modules_dir.to_path_buf(),
            wanted: ROOT_MODULES.join(", "),
        });
    }
    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let mut order = Vec::new();
    let mut name_of: BTreeMap<&str, String> = BTreeMap::new();
    let mut list = String::new();
    for k in &sel.order {
        let (name, data) = read_module(&modules_dir.join(k))?;
        // Basenames are unique in a kernel's tree; keep the first if not.
        if let std::collections::btree_map::Entry::Vacant(v) = files.entry(name.clone()) {
            // `NAME.ko: PREREQUISITE.ko …`, prerequisites always on earlier lines.
            list.push_str(&name);
            list.push(':');
            for p in sel.prerequisites.get(k).into_iter().flatten() {
                if let Some(pn) = name_of.get(p.as_str()) {
                    list.push(' ');
                    list.push_str(pn);
                }
            }
            // ` | BUS[,BUS] ALIAS …`: loaded only if a device on those buses matches.
            if let Some(g) = sel.gates.get(k) {
                list.push_str(" | ");
                list.push_str(&g.buses.join(","));
                for a in &g.aliases {
                    list.push(' ');
                    list.push_str(a);
                }
            }
            list.push('\n');
            order.push(name.clone());
            v.insert((0o644, data));
            name_of.insert(k, name);
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

    #[test]
    fn embedded_init_is_static_and_others_are_refused() {
        assert!(INIT.len() > 10_000);
        check_static_init(INIT).unwrap();
        // A dynamic executable: INIT with its first program header turned into PT_INTERP.
        let mut dynamic = INIT.to_vec();
        let phoff = u64::from_le_bytes(dynamic[32..40].try_into().unwrap()) as usize;
        dynamic[phoff..phoff + 4].copy_from_slice(&3u32.to_le_bytes());
        let e = check_static_init(&dynamic).unwrap_err().to_string();
        assert!(e.contains("PT_INTERP"), "{e}");
        let e = check_static_init(b"#!/bin/sh\n").unwrap_err().to_string();
        assert!(e.contains("not a 64-bit little-endian ELF"), "{e}");
        // Program headers past the end of the file.
        let mut truncated = INIT[..64].to_vec();
        truncated[56..58].copy_from_slice(&1u16.to_le_bytes());
        let e = check_static_init(&truncated).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn fingerprint_covers_the_init_and_every_rule() {
        // The hash the build script recorded is the embedded init's.
        assert_eq!(INIT_HASH, blake3::hash(INIT).as_bytes());
        assert_eq!(
            fingerprint(),
            fingerprint_of(
                INIT_HASH,
                &[
                    SUPERMIN_PATTERNS,
                    EXCLUDED_PATTERNS,
                    KILN_PATTERNS,
                    EARLY,
                    VIRTIO_TRANSPORTS
                ],
                &[ORDER_AFTER, GATED_BUSES]
            )
        );
        let t: &[(&str, &[&str])] = &[("c", &["d"])];
        let base = fingerprint_of(INIT_HASH, &[&["a*"], &["b*"]], &[t, &[]]);
        let changed = [
            fingerprint_of(&[0; 32], &[&["a*"], &["b*"]], &[t, &[]]),
            fingerprint_of(INIT_HASH, &[&["a*"], &["b?"]], &[t, &[]]),
            // The same patterns in other lists.
            fingerprint_of(INIT_HASH, &[&["a*", "b*"], &[]], &[t, &[]]),
            fingerprint_of(INIT_HASH, &[&["a*"], &["b*"]], &[&[("c", &["e"])], &[]]),
            fingerprint_of(INIT_HASH, &[&["a*"], &["b*"]], &[&[("d", &["c"])], &[]]),
            // The same rule in the other table.
            fingerprint_of(INIT_HASH, &[&["a*"], &["b*"]], &[&[], t]),
        ];
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(*c, base, "change {i} not covered");
        }
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
        // The format is told by the content, not the suffix (kiln-compress).
        let mislabelled = dir.path().join("d.ko.xz");
        fs::write(&mislabelled, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let (name, got) = read_module(&mislabelled).unwrap();
        assert_eq!((name.as_str(), &got[..]), ("d.ko", &data[..]));
        // An uncompressed module passes through unchanged.
        let plain = dir.path().join("e.ko");
        fs::write(&plain, &data).unwrap();
        assert_eq!(
            read_module(&plain).unwrap(),
            ("e.ko".to_string(), data.clone())
        );
        // A truncated stream is a decompression error naming the file, with the cause
        // as its source.
        let zst_bytes = fs::read(&zst).unwrap();
        let cut = dir.path().join("f.ko.zst");
        fs::write(&cut, &zst_bytes[..zst_bytes.len() / 2]).unwrap();
        let e = read_module(&cut).unwrap_err();
        assert!(e.to_string().contains("f.ko.zst"), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        fs::write(dir.path().join("bad.ko.xz"), b"not xz").unwrap();
        let e = read_module(&dir.path().join("bad.ko.xz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.ko.xz"), "{e}");
    }

    /// Property-test configuration: a few thousand cases in the test suite,
    /// `PROPTEST_CASES=N` for a longer run.
    pub(crate) fn proptest_config() -> proptest::test_runner::Config {
        let mut c = proptest::test_runner::Config::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 4096;
        }
        c.failure_persistence = None;
        c
    }

    /// An ELF64 header with the right identification and arbitrary program-header
    /// fields, followed by arbitrary bytes: reaches the program-header walk.
    fn elf_like() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        (
            any::<u64>(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..512),
            prop_oneof![Just(0u64), 0u64..600, any::<u64>()],
        )
            .prop_map(|(_, phentsize, phnum, tail, phoff)| {
                let mut b = vec![0u8; 64];
                b[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
                b[32..40].copy_from_slice(&phoff.to_le_bytes());
                b[54..56].copy_from_slice(&phentsize.to_le_bytes());
                b[56..58].copy_from_slice(&phnum.to_le_bytes());
                b.extend(tail);
                b
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest_config())]

        #[test]
        fn elf_check_never_panics_on_arbitrary_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = check_static_init(&b);
        }

        #[test]
        fn elf_check_never_panics_on_hostile_headers(b in elf_like()) {
            let phnum = u16::from_le_bytes([b[56], b[57]]);
            let r = check_static_init(&b);
            // No program headers: nothing to refuse.
            if phnum == 0 {
                proptest::prop_assert!(r.is_ok());
            }
        }
    }
}
