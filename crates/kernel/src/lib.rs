//! kiln's kernel stage: choose the kernel and its modules tree the way supermin 5 does,
//! and install the kernel into an appliance directory (`OUT/kernel`).
//!
//! Order (supermin-behaviour §3): the `SUPERMIN_KERNEL` environment override, then
//! `/lib/modules/*/vmlinuz` (newest version first), then `/boot` (names matching the
//! `--host-cpu` patterns, unbootable flavours dropped, newest first). The version of a
//! kernel comes from its bzImage header, else from its file name.
//!
//! Where supermin silently skips (an undetectable `SUPERMIN_KERNEL`, an unreadable
//! `/boot/vmlinuz-*`), kiln fails with an error naming the file and the fix: a kernel
//! that cannot be read would only fail later, inside qemu or libguestfs, with a worse
//! message.
//!
//! Invariants: the roots (`/boot`, `/lib/modules`) are parameters ([`Roots`]) so tests
//! can use fixture trees; the environment is a parameter ([`KernelEnv`]); nothing here
//! writes outside the output directory given to [`install`].

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Errors of kernel selection and installation. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "failed to find a suitable kernel (host_cpu={host_cpu}).\n\nI looked for kernels in {boot} and modules in {lib_modules}.\n\nIf this is a Xen guest, and you only have Xen domU kernels\ninstalled, try installing a fullvirt kernel (only for\nsupermin use, you shouldn't boot the Xen guest with it).\nOr set SUPERMIN_KERNEL (and SUPERMIN_MODULES) to a kernel and its modules tree."
    )]
    NotFound {
        host_cpu: String,
        boot: PathBuf,
        lib_modules: PathBuf,
    },
    #[error(
        "cannot read kernel {path}: {source}; make it readable by this user (e.g. `sudo chmod 0644 {path}`) or point SUPERMIN_KERNEL at a readable copy"
    )]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "SUPERMIN_KERNEL={path}: {why}; set SUPERMIN_KERNEL to an existing, readable x86 bzImage, or also set SUPERMIN_KERNEL_VERSION"
    )]
    BadOverride { path: PathBuf, why: String },
    #[error(
        "modules tree {path} for kernel {kernel} (version {version}) has no readable modules.dep; install the kernel's modules or set SUPERMIN_MODULES to its modules directory"
    )]
    NoModules {
        path: PathBuf,
        kernel: PathBuf,
        version: String,
    },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot install kernel {from} as {to}: {source}")]
    Install {
        from: PathBuf,
        to: PathBuf,
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

/// supermin's environment overrides.
#[derive(Debug, Clone, Default)]
pub struct KernelEnv {
    /// `SUPERMIN_KERNEL`
    pub kernel: Option<OsString>,
    /// `SUPERMIN_KERNEL_VERSION`
    pub version: Option<OsString>,
    /// `SUPERMIN_MODULES`
    pub modules: Option<OsString>,
}

impl KernelEnv {
    /// Read the three variables from the process environment (empty counts as unset).
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        KernelEnv {
            kernel: get("SUPERMIN_KERNEL"),
            version: get("SUPERMIN_KERNEL_VERSION"),
            modules: get("SUPERMIN_MODULES"),
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

/// Choose the kernel like supermin (see the crate doc), with the real roots and the
/// process environment.
pub fn choose_host(host_cpu: &str) -> Result<Kernel> {
    choose(host_cpu, &KernelEnv::from_process(), &Roots::default())
}

/// Choose the kernel like supermin with explicit environment and roots.
pub fn choose(host_cpu: &str, env: &KernelEnv, roots: &Roots) -> Result<Kernel> {
    if let Some(k) = from_env(env, roots)? {
        return Ok(k);
    }
    if let Some(k) = from_lib_modules(roots)? {
        return Ok(k);
    }
    if let Some(k) = from_boot(host_cpu, env, roots)? {
        return Ok(k);
    }
    Err(Error::NotFound {
        host_cpu: host_cpu.to_string(),
        boot: roots.boot.clone(),
        lib_modules: roots.lib_modules.clone(),
    })
}

fn from_env(env: &KernelEnv, roots: &Roots) -> Result<Option<Kernel>> {
    let Some(kernel) = &env.kernel else {
        return Ok(None);
    };
    let path = PathBuf::from(kernel);
    // Unlike supermin 5.2.2, the file is always checked: an unusable override is an error,
    // never a silent fall-through to another kernel.
    let version = match &env.version {
        Some(v) => {
            fs::File::open(&path).map_err(|e| Error::BadOverride {
                path: path.clone(),
                why: format!("cannot open it: {e}"),
            })?;
            v.to_string_lossy().into_owned()
        }
        None => match bzimage_version_of(&path) {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Err(Error::BadOverride {
                    path,
                    why: "no kernel version found in it (not an x86 bzImage)".into(),
                });
            }
            Err(e) => {
                return Err(Error::BadOverride {
                    path,
                    why: format!("cannot read it: {e}"),
                });
            }
        },
    };
    let modules = match &env.modules {
        Some(m) => PathBuf::from(m),
        None => roots.lib_modules.join(&version),
    };
    check_modules(&modules, &path, &version)?;
    Ok(Some(Kernel {
        path,
        version,
        modules,
        source: Source::Env,
    }))
}

fn check_modules(modules: &Path, kernel: &Path, version: &str) -> Result<()> {
    if is_regular(&modules.join("modules.dep")) {
        Ok(())
    } else {
        Err(Error::NoModules {
            path: modules.to_path_buf(),
            kernel: kernel.to_path_buf(),
            version: version.to_string(),
        })
    }
}

fn is_regular(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::List {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::List {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if let Some(n) = ent.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn from_lib_modules(roots: &Roots) -> Result<Option<Kernel>> {
    let mut cands: Vec<(String, PathBuf)> = Vec::new();
    for v in list_dir(&roots.lib_modules)? {
        let path = roots.lib_modules.join(&v).join("vmlinuz");
        if unbootable(&path.to_string_lossy(), "") {
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() >= 10000 => cands.push((v, path)),
            _ => {}
        }
    }
    cands.sort_by(|a, b| compare_versions(&b.0, &a.0));
    let Some((version, path)) = cands.into_iter().next() else {
        return Ok(None);
    };
    // supermin does not check readability here; kiln does, so the error names the file.
    fs::File::open(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    let modules = roots.lib_modules.join(&version);
    Ok(Some(Kernel {
        path,
        version,
        modules,
        source: Source::LibModules,
    }))
}

/// `--host-cpu` → the `vmlinu?-*-M` patterns of supermin §3.4.
pub fn host_cpu_patterns(host_cpu: &str) -> Vec<String> {
    let b = host_cpu.as_bytes();
    let models: Vec<&str> = match host_cpu {
        "x86_64" | "amd64" => vec!["amd64", "x86_64"],
        _ if b.len() >= 4 && b[0] == b'i' && b[2] == b'8' && b[3] == b'6' => vec!["?86"],
        _ if host_cpu.starts_with("armv7") => vec!["armmp"],
        "aarch64" => vec!["aarch64", "arm64"],
        "mips" | "mips64" => vec![host_cpu, "*-malta"],
        "ppc" | "powerpc" | "powerpc64" => vec!["ppc", "powerpc", "powerpc64"],
        "sparc" | "sparc64" => vec!["sparc", "sparc64"],
        "parisc" | "parisc64" => vec!["hppa", "hppa64"],
        "ppc64el" => vec!["powerpc64le"],
        other => vec![other],
    };
    models.iter().map(|m| format!("vmlinu?-*-{m}")).collect()
}

fn unbootable(name: &str, host_cpu: &str) -> bool {
    name.contains("xen")
        || name.contains("zfcpdump")
        || name.contains("+debug")
        || (host_cpu.starts_with("arm") && name.contains("tegra"))
}

fn from_boot(host_cpu: &str, env: &KernelEnv, roots: &Roots) -> Result<Option<Kernel>> {
    let names = list_dir(&roots.boot)?;
    let pick = |patterns: &[String]| -> Vec<String> {
        let mut v: Vec<String> = names
            .iter()
            .filter(|n| patterns.iter().any(|p| glob_match(p, n)))
            .filter(|n| !unbootable(n, host_cpu))
            .cloned()
            .collect();
        v.sort_by(|a, b| compare_versions(b, a));
        v
    };
    let mut cands = pick(&host_cpu_patterns(host_cpu));
    if cands.is_empty() {
        cands = pick(&["vmlinu?-*".to_string()]);
    }
    for name in cands {
        let path = roots.boot.join(&name);
        // An unreadable kernel is an error, not a reason to try an older one (Ubuntu
        // ships /boot/vmlinuz-* mode 0600; supermin would fall back or fail obscurely).
        let from_content = match bzimage_version_of(&path) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::Unreadable { path, source: e });
            }
            Err(_) => None,
        };
        let version = match from_content {
            Some(v) => v,
            None => {
                let Some(v) = name.get(8..).filter(|v| !v.is_empty()) else {
                    continue;
                };
                if !is_regular(&roots.lib_modules.join(v).join("modules.dep")) {
                    continue;
                }
                v.to_string()
            }
        };
        let modules = match &env.modules {
            Some(m) => PathBuf::from(m),
            None => roots.lib_modules.join(&version),
        };
        if is_regular(&modules.join("modules.dep")) {
            return Ok(Some(Kernel {
                path,
                version,
                modules,
                source: Source::Boot,
            }));
        }
    }
    Ok(None)
}

/// fnmatch(3) of a name (no `/` in it) against a supermin pattern.
fn glob_match(pat: &str, s: &str) -> bool {
    kiln_fileset::pattern::fnmatch(pat.as_bytes(), s.as_bytes())
}

/// The version string in an x86 bzImage header (supermin §3.5), or `None` when the
/// bytes are not a bzImage with a version.
pub fn bzimage_version(
    header: &[u8],
    read_at: impl FnOnce(u64) -> Option<Vec<u8>>,
) -> Option<String> {
    if header.len() < 528 || &header[514..518] != b"HdrS" {
        return None;
    }
    let proto = u16::from_le_bytes([header[518], header[519]]);
    if proto < 0x01ff {
        return None;
    }
    let off = u16::from_le_bytes([header[526], header[527]]) as u64 + 0x200;
    let buf = read_at(off)?;
    let end = buf
        .iter()
        .position(|&c| c == 0 || c == b' ' || c == b'\t' || c == b'\n')?;
    if end == 0 {
        return None;
    }
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// [`bzimage_version`] of a file. I/O errors are returned (so that "unreadable" can be
/// told apart from "not a bzImage").
pub fn bzimage_version_of(path: &Path) -> io::Result<Option<String>> {
    let mut f = fs::File::open(path)?;
    let mut header = vec![0u8; 528];
    let n = read_full(&mut f, &mut header)?;
    header.truncate(n);
    let mut err = None;
    let v = bzimage_version(&header, |off| {
        let mut buf = vec![0u8; 132];
        match f
            .seek(SeekFrom::Start(off))
            .and_then(|_| read_full(&mut f, &mut buf))
        {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) => {
                err = Some(e);
                None
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(v),
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[derive(Debug, PartialEq, Eq)]
enum Tok<'a> {
    Str(&'a [u8]),
    Num(u64),
    Char(u8),
}

impl Tok<'_> {
    // supermin's order at one position: String < Number < Char.
    fn rank(&self) -> u8 {
        match self {
            Tok::Str(_) => 0,
            Tok::Num(_) => 1,
            Tok::Char(_) => 2,
        }
    }
}

fn tokens(s: &str) -> Vec<Tok<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            match s[start..i].parse::<u64>() {
                Ok(n) if n < (1u64 << 62) => out.push(Tok::Num(n)),
                // OCaml int overflow: the run becomes a string.
                _ => out.push(Tok::Str(&b[start..i])),
            }
        } else if b[i].is_ascii_alphabetic() {
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Tok::Str(&b[start..i]));
        } else {
            out.push(Tok::Char(b[i]));
            i += 1;
        }
    }
    out
}

/// supermin's version comparison (§3.5): tokens compared left to right, numbers
/// numerically, letter runs bytewise, String < Number < Char at one position; a strict
/// prefix is smaller.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(tb.iter()) {
        let o = match (x, y) {
            (Tok::Num(m), Tok::Num(n)) => m.cmp(n),
            (Tok::Str(m), Tok::Str(n)) => m.cmp(n),
            (Tok::Char(m), Tok::Char(n)) => m.cmp(n),
            _ => x.rank().cmp(&y.rank()),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ta.len().cmp(&tb.len())
}

/// Install the kernel as `out_dir/kernel`: a symlink to the chosen path (supermin's
/// default) or, with `copy`, a copy (fresh mtime, mode 0644). An existing `kernel` in
/// `out_dir` is replaced.
pub fn install(kernel: &Kernel, out_dir: &Path, copy: bool) -> Result<PathBuf> {
    let to = out_dir.join("kernel");
    let err = |e: io::Error| Error::Install {
        from: kernel.path.clone(),
        to: to.clone(),
        source: e,
    };
    match fs::remove_file(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if copy {
        let tmp = out_dir.join(".kernel.tmp");
        let _ = fs::remove_file(&tmp);
        let res = (|| {
            let mut src = fs::File::open(&kernel.path)?;
            let mut dst = fs::File::create(&tmp)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
            fs::rename(&tmp, &to)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(err(e));
        }
    } else {
        std::os::unix::fs::symlink(&kernel.path, &to).map_err(err)?;
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut v = vec![0u8; 0x4000];
        v[514..518].copy_from_slice(b"HdrS");
        v[518..520].copy_from_slice(&0x020fu16.to_le_bytes());
        let off: u16 = 0x1000;
        v[526..528].copy_from_slice(&off.to_le_bytes());
        let s = format!("{version} (builder@example) #1 SMP");
        let at = off as usize + 0x200;
        v[at..at + s.len()].copy_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn version_from_real_host_kernel() {
        // The host's own kernel (linux-image-amd64 is required by scripts/setup-host).
        let mut found = false;
        for name in list_dir(Path::new("/boot")).unwrap() {
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                let got = bzimage_version_of(&Path::new("/boot").join(&name)).unwrap();
                assert_eq!(got.as_deref(), Some(v), "{name}");
                found = true;
            }
        }
        assert!(found, "no /boot/vmlinuz-* on this host");
    }

    #[test]
    fn version_parsing_edge_cases() {
        let img = fake_bzimage("6.1.0-56-amd64");
        let f = |off: u64| {
            img.get(off as usize..off as usize + 132)
                .map(|s| s.to_vec())
        };
        assert_eq!(
            bzimage_version(&img[..528], f).as_deref(),
            Some("6.1.0-56-amd64")
        );
        let mut bad = img.clone();
        bad[514] = b'X';
        assert_eq!(bzimage_version(&bad[..528], |_| None), None);
        let mut old = img.clone();
        old[518..520].copy_from_slice(&0x0100u16.to_le_bytes());
        assert_eq!(
            bzimage_version(&old[..528], |o| Some(img[o as usize..].to_vec())),
            None
        );
        // No terminator within 132 bytes → no version.
        let mut long = img.clone();
        for b in &mut long[0x1200..0x1200 + 200] {
            *b = b'a';
        }
        assert_eq!(
            bzimage_version(&long[..528], |o| Some(
                long[o as usize..o as usize + 132].to_vec()
            )),
            None
        );
        assert_eq!(bzimage_version(&img[..100], |_| None), None);
    }

    #[test]
    fn supermin_version_order() {
        use Ordering::*;
        assert_eq!(compare_versions("6.1.0-10", "6.1.0-9"), Greater);
        assert_eq!(compare_versions("6.1.0-rc1", "6.1.0-1"), Less);
        assert_eq!(compare_versions("6.1.0", "6.1.0-1"), Less);
        assert_eq!(compare_versions("6.1.0-56-amd64", "6.1.0-56-amd64"), Equal);
        // Char ranks above Number: "5.10-" vs "5.10a"? String < Number < Char.
        assert_eq!(compare_versions("1a", "1.0"), Less);
        assert_eq!(compare_versions("1.0", "10"), Less);
        assert_eq!(compare_versions("1-0", "1a"), Greater);
        assert_eq!(compare_versions("B", "a"), Less);
        let mut v = vec![
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-5.10.0-28-amd64",
            "vmlinuz-6.1.0-rc7-amd64",
        ];
        v.sort_by(|a, b| compare_versions(b, a));
        assert_eq!(
            v,
            [
                "vmlinuz-6.1.0-10-amd64",
                "vmlinuz-6.1.0-9-amd64",
                "vmlinuz-6.1.0-rc7-amd64",
                "vmlinuz-5.10.0-28-amd64"
            ]
        );
    }

    #[test]
    fn patterns_and_globs() {
        assert!(glob_match("vmlinu?-*-amd64", "vmlinuz-6.1.0-56-amd64"));
        assert!(!glob_match("vmlinu?-*-amd64", "vmlinuz-6.1.0-56-arm64"));
        assert!(glob_match("vmlinu?-*-?86", "vmlinuz-4.9-686"));
        assert_eq!(
            host_cpu_patterns("x86_64"),
            ["vmlinu?-*-amd64", "vmlinu?-*-x86_64"]
        );
        assert!(unbootable("vmlinuz-4.19-xen-amd64", "x86_64"));
    }

    struct Fixture {
        dir: tempfile::TempDir,
        roots: Roots,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            boot: dir.path().join("boot"),
            lib_modules: dir.path().join("lib/modules"),
        };
        fs::create_dir_all(&roots.boot).unwrap();
        fs::create_dir_all(&roots.lib_modules).unwrap();
        Fixture { dir, roots }
    }

    fn add_boot(fx: &Fixture, name: &str, version: &str, modules: bool) -> PathBuf {
        let p = fx.roots.boot.join(name);
        fs::write(&p, fake_bzimage(version)).unwrap();
        if modules {
            let m = fx.roots.lib_modules.join(version);
            fs::create_dir_all(&m).unwrap();
            fs::write(m.join("modules.dep"), "").unwrap();
        }
        p
    }

    #[test]
    fn boot_picks_newest_with_modules() {
        let fx = fixture();
        add_boot(&fx, "vmlinuz-6.1.0-9-amd64", "6.1.0-9-amd64", true);
        let want = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        // Newer but no modules tree: skipped as supermin does.
        add_boot(&fx, "vmlinuz-6.1.0-11-amd64", "6.1.0-11-amd64", false);
        add_boot(
            &fx,
            "vmlinuz-6.1.0-12-xen-amd64",
            "6.1.0-12-xen-amd64",
            true,
        );
        let k = choose("x86_64", &KernelEnv::default(), &fx.roots).unwrap();
        assert_eq!(k.path, want);
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(k.modules, fx.roots.lib_modules.join("6.1.0-10-amd64"));
        assert_eq!(k.source, Source::Boot);
        // --host-cpu only prioritises: another arch falls back to vmlinu?-*.
        let k = choose("aarch64", &KernelEnv::default(), &fx.roots).unwrap();
        assert_eq!(k.path, want);
    }

    #[test]
    fn lib_modules_vmlinuz_wins_over_boot() {
        let fx = fixture();
        add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        for v in ["5.14.0-1", "5.14.0-2"] {
            let d = fx.roots.lib_modules.join(v);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vmlinuz"), fake_bzimage(v)).unwrap();
        }
        let k = choose("x86_64", &KernelEnv::default(), &fx.roots).unwrap();
        assert_eq!(k.version, "5.14.0-2");
        assert_eq!(k.source, Source::LibModules);
    }

    #[test]
    fn env_override_and_its_errors() {
        let fx = fixture();
        let other = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        let custom = fx.dir.path().join("mykernel");
        fs::write(&custom, fake_bzimage("6.1.0-10-amd64")).unwrap();
        let env = KernelEnv {
            kernel: Some(custom.clone().into()),
            ..Default::default()
        };
        let k = choose("x86_64", &env, &fx.roots).unwrap();
        assert_eq!(
            (k.path.as_path(), k.source),
            (custom.as_path(), Source::Env)
        );

        // Not a bzImage and no version given: an error naming the file, not a silent
        // fall-through to /boot.
        let junk = fx.dir.path().join("junk");
        fs::write(&junk, b"not a kernel").unwrap();
        let env = KernelEnv {
            kernel: Some(junk.clone().into()),
            ..Default::default()
        };
        let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
        assert!(
            e.contains(&*junk.to_string_lossy()) && e.contains("SUPERMIN_KERNEL"),
            "{e}"
        );

        let env = KernelEnv {
            kernel: Some(fx.dir.path().join("missing").into()),
            version: Some("6.1.0-10-amd64".into()),
            ..Default::default()
        };
        let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");

        // Version given, SUPERMIN_MODULES overrides the tree; a tree without modules.dep fails.
        let env = KernelEnv {
            kernel: Some(other.clone().into()),
            version: Some("9.9".into()),
            modules: Some(fx.dir.path().join("nomods").into()),
        };
        let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
        assert!(
            e.contains("nomods") && e.contains("SUPERMIN_MODULES"),
            "{e}"
        );
    }

    /// Root reads any file, so as root the check re-runs this test binary as `nobody`
    /// (setpriv) on a fixture with a mode-0600 kernel owned by root.
    #[test]
    fn unreadable_boot_kernel_is_an_error() {
        if let Some(dir) = std::env::var_os("KILN_TEST_UNREADABLE_FIXTURE") {
            // The unprivileged half.
            let roots = Roots {
                boot: Path::new(&dir).join("boot"),
                lib_modules: Path::new(&dir).join("lib/modules"),
            };
            let e = choose("x86_64", &KernelEnv::default(), &roots)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("vmlinuz-6.1.0-10-amd64") && e.contains("chmod"),
                "{e}"
            );
            println!("UNREADABLE-CHECKED");
            return;
        }
        let fx = fixture();
        let p = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        add_boot(&fx, "vmlinuz-6.1.0-9-amd64", "6.1.0-9-amd64", true);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let as_root = fs::File::open("/proc/self/status")
            .and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).map(|_| s)
            })
            .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
            .unwrap_or(false);
        if !as_root {
            let e = choose("x86_64", &KernelEnv::default(), &fx.roots)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("vmlinuz-6.1.0-10-amd64") && e.contains("chmod"),
                "{e}"
            );
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args([
                "--exact",
                "tests::unreadable_boot_kernel_is_an_error",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KILN_TEST_UNREADABLE_FIXTURE", fx.dir.path())
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && all.contains("UNREADABLE-CHECKED"),
            "{all}"
        );
    }

    #[test]
    fn nothing_found_message() {
        let fx = fixture();
        let e = choose("x86_64", &KernelEnv::default(), &fx.roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("failed to find a suitable kernel (host_cpu=x86_64)."),
            "{e}"
        );
    }

    #[test]
    fn install_symlink_and_copy() {
        let fx = fixture();
        let p = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        let k = choose("x86_64", &KernelEnv::default(), &fx.roots).unwrap();
        let out = fx.dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let to = install(&k, &out, false).unwrap();
        assert_eq!(fs::read_link(&to).unwrap(), p);
        install(&k, &out, true).unwrap();
        let m = fs::symlink_metadata(&to).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        assert_eq!(fs::read(&to).unwrap(), fs::read(&p).unwrap());
    }
}
