//! The shared libraries a dynamic ELF file needs, found as the host's dynamic loader
//! would find them, by reading files only: nothing of the command (nor the loader it
//! names) is ever run on the host, so a command built to attack the host (a hostile
//! `PT_INTERP`, as `ldd` falls for) does nothing until it runs in the VM.
//!
//! The search follows glibc's `ld.so`, breadth first from the executable:
//! - a `DT_NEEDED` name with a `/` is a path;
//! - else, when the object asking has no `DT_RUNPATH`, the `DT_RPATH` of that object
//!   and of the objects that loaded it, up to the executable; then its own
//!   `DT_RUNPATH`; then the directories of `/etc/ld.so.conf` (with its `include`s, which
//!   is what `/etc/ld.so.cache` is built from); then the loader's default directories
//!   (multiarch `/lib/<triplet>`, `/usr/lib/<triplet>`, then `/lib64`, `/usr/lib64`,
//!   `/lib`, `/usr/lib`);
//! - `$ORIGIN` (the directory of the asking object; for the executable its resolved
//!   path's, as `/proc/self/exe`), `$LIB` and `$PLATFORM` are expanded; relative and
//!   empty entries (the guest's working directory) and `LD_LIBRARY_PATH` (the guest
//!   has it only from `--env`) are not searched;
//! - a file is taken only if it is an ELF64 file for the executable's machine (the
//!   loader skips others, e.g. 32-bit libraries in `/usr/lib`); a name already loaded
//!   (by `DT_SONAME`, the program interpreter's included) is not searched again.
//!
//! Invariant: every file is read through kiln-elf (bounds-checked; malformed input is an
//! error naming the file), and the closure is bounded by [`MAX_OBJECTS`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_elf::Elf;

/// More shared objects than any real program loads: a bound on hostile input.
const MAX_OBJECTS: usize = 4096;
/// `include` nesting in ld.so.conf.
const MAX_INCLUDE_DEPTH: u32 = 8;

/// `e_machine` values kiln knows the multiarch triplet of.
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// Why the libraries of a program could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {}", path.display())]
    Elf {
        path: PathBuf,
        #[source]
        source: kiln_elf::Error,
    },
    /// The program itself is a malformed ELF file.
    #[error("{}: {error}", path.display())]
    Malformed {
        path: PathBuf,
        error: kiln_elf::Error,
    },
    #[error(
        "{}: shared library {} (needed by {}) not found on the host",
        exe.display(),
        name.display(),
        by.display()
    )]
    NotFound {
        exe: PathBuf,
        name: PathBuf,
        by: PathBuf,
        #[source]
        why: Unfound,
    },
    #[error("{}: more than {MAX_OBJECTS} shared libraries; is it a real program?", exe.display())]
    TooMany { exe: PathBuf },
}

/// Why the loader would not find a `DT_NEEDED` name.
#[derive(Debug, thiserror::Error)]
pub enum Unfound {
    #[error("a relative path, which depends on the working directory in the VM")]
    Relative,
    #[error("no such ELF64 file for this machine")]
    NotUsable,
    #[error("searched its RPATH/RUNPATH, /etc/ld.so.conf and the default directories")]
    NotInSearchPath,
}

/// An I/O error reading `path`.
fn read_error(path: &Path) -> impl FnOnce(io::Error) -> LibsError + '_ {
    move |source| LibsError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// A malformed ELF structure in `path`.
fn elf_error(path: &Path) -> impl FnOnce(kiln_elf::Error) -> LibsError + '_ {
    move |source| LibsError::Elf {
        path: path.to_path_buf(),
        source,
    }
}

/// The loader's search directories on the host, apart from the objects' own paths.
#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    /// From `/etc/ld.so.conf` and what it includes, in order.
    pub conf: Vec<PathBuf>,
}

impl SearchPath {
    /// The host's: `/etc/ld.so.conf` (missing means none).
    pub fn host() -> SearchPath {
        let mut conf = Vec::new();
        read_conf(
            Path::new("/etc/ld.so.conf"),
            0,
            &mut conf,
            &mut HashSet::new(),
        );
        SearchPath { conf }
    }
}

/// Read one ld.so.conf(5) file as ldconfig does: one directory a line (an `=TYPE`
/// suffix of old versions dropped), `#` comments, `include GLOB` (relative to the
/// file's directory), `hwcap` lines ignored. Unreadable files are skipped, as ldconfig
/// warns and goes on.
fn read_conf(file: &Path, depth: u32, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) {
    if depth > MAX_INCLUDE_DEPTH || !seen.insert(file.to_path_buf()) {
        return;
    }
    let Ok(text) = fs::read(file) else { return };
    for line in text.split(|&b| b == b'\n') {
        let line = line
            .split(|&b| b == b'#')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if line.is_empty() {
            continue;
        }
        let word_end = line
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(line.len());
        let (word, rest) = (&line[..word_end], line[word_end..].trim_ascii());
        if word == b"include" {
            for pat in rest
                .split(|b| b.is_ascii_whitespace())
                .filter(|p| !p.is_empty())
            {
                let pat = Path::new(OsStr::from_bytes(pat));
                let pat = match file.parent() {
                    Some(d) if pat.is_relative() => d.join(pat),
                    _ => pat.to_path_buf(),
                };
                for f in kiln_pattern::glob(pat.as_os_str()).unwrap_or_default() {
                    read_conf(&f, depth + 1, out, seen);
                }
            }
        } else if word == b"hwcap" {
            continue;
        } else {
            let dir = line.split(|&b| b == b'=').next().unwrap_or_default();
            let dir = PathBuf::from(OsStr::from_bytes(dir.trim_ascii()));
            if dir.is_absolute() && !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
}

/// What a dynamic ELF executable needs at run time.
#[derive(Debug, Default)]
pub struct Needs {
    /// Its program interpreter (`PT_INTERP`), as named: a path to find on the host
    /// and copy, never to run here.
    pub interp: Option<PathBuf>,
    /// The shared objects it loads, as the paths the loader finds them by.
    pub libs: Vec<PathBuf>,
}

/// One loaded object, for the search of what it needs.
struct Object {
    path: PathBuf,
    needed: Vec<Vec<u8>>,
    /// `DT_RUNPATH` directories; `Some` turns the RPATH chain off.
    runpath: Option<Vec<PathBuf>>,
    /// Its own `DT_RPATH` directories, then those of the objects that loaded it.
    rpath_chain: Vec<PathBuf>,
}

/// The needs of `exe`; `None` when it is not a 64-bit little-endian ELF file (a
/// script, or another kind of program whose loader kiln does not follow).
pub fn needs(exe: &Path, search: &SearchPath) -> Result<Option<Needs>, LibsError> {
    let bytes = read_regular(exe).map_err(read_error(exe))?;
    let elf = match Elf::parse(&bytes) {
        Ok(e) => e,
        Err(kiln_elf::Error::NotElf64) => return Ok(None),
        Err(error) => {
            return Err(LibsError::Malformed {
                path: exe.to_path_buf(),
                error,
            });
        }
    };
    let machine = elf.machine();
    let mut out = Needs {
        interp: elf
            .interp()
            .map_err(elf_error(exe))?
            .map(|p| PathBuf::from(OsStr::from_bytes(p))),
        libs: Vec::new(),
    };
    let origin = fs::canonicalize(exe)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    let Some(first) = object(exe, &elf, &origin, &[])? else {
        return Ok(Some(out));
    };

    // Names already loaded: the interpreter's soname (libc needs it by that name).
    let mut loaded: HashMap<Vec<u8>, PathBuf> = HashMap::new();
    if let Some(i) = &out.interp
        && let Ok(b) = read_regular(i)
        && let Ok(e) = Elf::parse(&b)
        && let Ok(Some(d)) = e.dynamic()
        && let Some(so) = d.soname
    {
        loaded.insert(so.to_vec(), i.clone());
    }
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut queue = VecDeque::from([first]);
    while let Some(obj) = queue.pop_front() {
        for name in &obj.needed {
            if loaded.contains_key(name) {
                continue;
            }
            let path = find(name, &obj, machine, search).map_err(|why| LibsError::NotFound {
                exe: exe.to_path_buf(),
                name: PathBuf::from(OsStr::from_bytes(name)),
                by: obj.path.clone(),
                why,
            })?;
            loaded.insert(name.clone(), path.clone());
            // The same file under another name is loaded once.
            if !files.insert(fs::canonicalize(&path).unwrap_or_else(|_| path.clone())) {
                continue;
            }
            if files.len() > MAX_OBJECTS {
                return Err(LibsError::TooMany {
                    exe: exe.to_path_buf(),
                });
            }
            let b = read_regular(&path).map_err(read_error(&path))?;
            let e = Elf::parse(&b).map_err(elf_error(&path))?;
            let origin = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            if let Some(o) = object(&path, &e, &origin, &obj.rpath_chain)? {
                if let Some(so) = e.dynamic().ok().flatten().and_then(|d| d.soname) {
                    loaded.entry(so.to_vec()).or_insert_with(|| path.clone());
                }
                queue.push_back(o);
            }
            out.libs.push(path);
        }
    }
    Ok(Some(out))
}

/// The search state of `path` (parsed as `elf`); `None` without a dynamic section.
fn object(
    path: &Path,
    elf: &Elf<'_>,
    origin: &Path,
    loader_chain: &[PathBuf],
) -> Result<Option<Object>, LibsError> {
    let Some(d) = elf.dynamic().map_err(elf_error(path))? else {
        return Ok(None);
    };
    let machine = elf.machine();
    let mut rpath_chain: Vec<PathBuf> = d
        .rpath
        .map(|r| expand(r, origin, machine))
        .unwrap_or_default();
    rpath_chain.extend_from_slice(loader_chain);
    Ok(Some(Object {
        path: path.to_path_buf(),
        needed: d.needed.iter().map(|n| n.to_vec()).collect(),
        runpath: d.runpath.map(|r| expand(r, origin, machine)),
        rpath_chain,
    }))
}

/// The directories of an RPATH/RUNPATH string, with `$ORIGIN`, `$LIB` and
/// `$PLATFORM` (and their `${…}` forms) expanded; relative and empty entries dropped.
fn expand(list: &[u8], origin: &Path, machine: u16) -> Vec<PathBuf> {
    let (lib, platform): (&[u8], &[u8]) = match machine {
        EM_X86_64 => (b"lib/x86_64-linux-gnu", b"x86_64"),
        EM_AARCH64 => (b"lib/aarch64-linux-gnu", b"aarch64"),
        _ => (b"lib", b""),
    };
    let origin = origin.as_os_str().as_bytes();
    list.split(|&b| b == b':')
        .filter_map(|entry| {
            let mut out = Vec::new();
            let mut rest = entry;
            while let Some(i) = rest.iter().position(|&b| b == b'$') {
                out.extend_from_slice(&rest[..i]);
                rest = &rest[i + 1..];
                let mut token = |name: &[u8], value: &[u8]| {
                    let braced = [b"{", name, b"}"].concat();
                    let n = if rest.starts_with(&braced) {
                        braced.len()
                    } else if rest.starts_with(name)
                        && !rest
                            .get(name.len())
                            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    {
                        name.len()
                    } else {
                        return false;
                    };
                    out.extend_from_slice(value);
                    rest = &rest[n..];
                    true
                };
                if !(token(b"ORIGIN", origin) || token(b"LIB", lib) || token(b"PLATFORM", platform))
                {
                    // An unknown token: the loader drops the whole entry.
                    return None;
                }
            }
            out.extend_from_slice(rest);
            (out.first() == Some(&b'/')).then(|| PathBuf::from(OsStr::from_bytes(&out)))
        })
        .collect()
}

/// The loader's built-in directories for `machine`.
fn default_dirs(machine: u16) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let triplet = match machine {
        EM_X86_64 => Some("x86_64-linux-gnu"),
        EM_AARCH64 => Some("aarch64-linux-gnu"),
        _ => None,
    };
    if let Some(t) = triplet {
        v.push(Path::new("/lib").join(t));
        v.push(Path::new("/usr/lib").join(t));
    }
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        v.push(PathBuf::from(d));
    }
    v
}

/// Where the loader finds `name` for `obj`.
fn find(name: &[u8], obj: &Object, machine: u16, search: &SearchPath) -> Result<PathBuf, Unfound> {
    let shown = Path::new(OsStr::from_bytes(name));
    if name.contains(&b'/') {
        if name.first() != Some(&b'/') {
            return Err(Unfound::Relative);
        }
        if usable(shown, machine) {
            return Ok(shown.to_path_buf());
        }
        return Err(Unfound::NotUsable);
    }
    let rpath: &[PathBuf] = if obj.runpath.is_none() {
        &obj.rpath_chain
    } else {
        &[]
    };
    let dirs = rpath
        .iter()
        .chain(obj.runpath.iter().flatten())
        .chain(search.conf.iter())
        .cloned()
        .chain(default_dirs(machine));
    for d in dirs {
        let p = d.join(shown);
        if usable(&p, machine) {
            return Ok(p);
        }
    }
    Err(Unfound::NotInSearchPath)
}

/// `p` opened for reading if it is a regular file (after symlinks). Opened without
/// blocking, so a FIFO or device planted where a library is looked for cannot stall
/// kiln; what is not a regular file is an error.
pub fn open_regular(p: &Path) -> io::Result<fs::File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let f = fs::File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// The contents of the regular file `p` (see [`open_regular`]).
fn read_regular(p: &Path) -> io::Result<Vec<u8>> {
    let mut b = Vec::new();
    open_regular(p)?.read_to_end(&mut b)?;
    Ok(b)
}

/// Is `p` a file the loader would take: ELF64 little-endian for `machine`?
fn usable(p: &Path, machine: u16) -> bool {
    let mut head = [0u8; 64];
    let Ok(mut f) = open_regular(p) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    // Only the file header: a header table past 64 bytes is not an error here.
    head[56..58].fill(0);
    Elf::parse(&head).is_ok_and(|e| e.machine() == machine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_lib_and_platform_expand_unknown_tokens_drop_the_entry() {
        let o = Path::new("/opt/app/bin");
        let got = expand(
            b"$ORIGIN/../lib:${ORIGIN}/x:/usr/$LIB/a:rel:$ORIGINX/y:/p/$PLATFORM::$FOO/z",
            o,
            EM_X86_64,
        );
        let want: Vec<PathBuf> = [
            "/opt/app/bin/../lib",
            "/opt/app/bin/x",
            "/usr/lib/x86_64-linux-gnu/a",
            "/p/x86_64",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ld_so_conf_with_includes_comments_and_cycles() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir(d.join("conf.d")).unwrap();
        fs::write(
            d.join("ld.so.conf"),
            "# top\n/opt/a/lib  # trailing\ninclude conf.d/*.conf\nhwcap 0 nosegneg\n\n/opt/old=libc6\n",
        )
        .unwrap();
        fs::write(d.join("conf.d/1.conf"), "/opt/b\ninclude ../ld.so.conf\n").unwrap();
        fs::write(d.join("conf.d/2.conf"), "relative/dir\n/opt/a/lib\n").unwrap();
        fs::write(d.join("conf.d/skip.txt"), "/opt/never\n").unwrap();
        let mut out = Vec::new();
        read_conf(&d.join("ld.so.conf"), 0, &mut out, &mut HashSet::new());
        let want: Vec<PathBuf> = ["/opt/a/lib", "/opt/b", "/opt/old"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(out, want);
    }

    /// The host's shell: its C library, found in the multiarch directory, and the
    /// loader named by PT_INTERP (not searched again as libc's DT_NEEDED).
    #[test]
    fn host_shell_needs_libc_and_its_loader() {
        let sh = fs::canonicalize("/bin/sh").unwrap();
        let n = needs(&sh, &SearchPath::host()).unwrap().unwrap();
        let interp = n.interp.unwrap();
        assert!(
            interp.ends_with("ld-linux-x86-64.so.2"),
            "{}",
            interp.display()
        );
        assert!(
            n.libs
                .iter()
                .any(|l| l.file_name() == Some(OsStr::new("libc.so.6"))),
            "{:?}",
            n.libs
        );
        assert!(
            !n.libs
                .iter()
                .any(|l| l.file_name() == Some(OsStr::new("ld-linux-x86-64.so.2"))),
            "{:?}",
            n.libs
        );
        // A script is not an ELF file: no needs.
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("s");
        fs::write(&s, "#!/bin/sh\n").unwrap();
        assert!(needs(&s, &SearchPath::default()).unwrap().is_none());
    }

    /// The host's loader agrees: for host programs (trusted, so running the host's own
    /// `ld.so --list` on them in a test is fine), the files found by reading are the
    /// files the loader maps, by their resolved paths.
    #[test]
    fn agrees_with_the_host_loader_on_host_programs() {
        let loader = Path::new("/lib64/ld-linux-x86-64.so.2");
        let search = SearchPath::host();
        let mut checked = 0;
        let mut names: Vec<PathBuf> = fs::read_dir("/usr/bin")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for exe in names {
            if checked == 60 {
                break;
            }
            let Ok(b) = read_regular(&exe) else { continue };
            let Ok(e) = Elf::parse(&b) else { continue };
            if !e.interp().is_ok_and(|i| i.is_some()) {
                continue;
            }
            let out = std::process::Command::new(loader)
                .arg("--list")
                .arg(&exe)
                .output()
                .unwrap();
            if !out.status.success() {
                continue;
            }
            let mut want = HashSet::new();
            for line in out.stdout.split(|&c| c == b'\n') {
                let line = line.trim_ascii();
                let p = match line.windows(4).position(|w| w == b" => ") {
                    Some(i) => &line[i + 4..],
                    None => line,
                };
                if p.first() == Some(&b'/') {
                    let end = p.iter().position(|&c| c == b' ').unwrap_or(p.len());
                    want.insert(fs::canonicalize(OsStr::from_bytes(&p[..end])).unwrap());
                }
            }
            let n = needs(&exe, &search).unwrap().unwrap();
            let got: HashSet<PathBuf> = n
                .libs
                .iter()
                .chain(n.interp.as_ref())
                .map(|p| fs::canonicalize(p).unwrap())
                .collect();
            assert_eq!(got, want, "{}", exe.display());
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} dynamic programs in /usr/bin");
    }

    /// DT_RPATH is inherited down the loading chain, DT_RUNPATH is not (as ld.so):
    /// libb, needed by liba, is found through the program's RPATH but not through its
    /// RUNPATH.
    #[test]
    fn rpath_is_inherited_runpath_is_not() {
        let t = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(d.join("lib")).unwrap();
        let cc = |args: &[&str]| {
            let o = std::process::Command::new("cc")
                .current_dir(&d)
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        fs::write(d.join("b.c"), "int b(void) { return 1; }\n").unwrap();
        fs::write(d.join("a.c"), "int b(void); int a(void) { return b(); }\n").unwrap();
        fs::write(
            d.join("m.c"),
            "int a(void); int main(void) { return a(); }\n",
        )
        .unwrap();
        cc(&["-shared", "-fPIC", "-o", "lib/libb.so", "b.c"]);
        // liba needs libb and says nothing of where it is.
        cc(&[
            "-shared",
            "-fPIC",
            "-o",
            "lib/liba.so",
            "a.c",
            "-Llib",
            "-lb",
        ]);
        for (dtags, found) in [("--disable-new-dtags", true), ("--enable-new-dtags", false)] {
            cc(&[
                "-o",
                "prog",
                "m.c",
                "-Llib",
                "-la",
                "-Wl,-rpath-link,lib",
                &format!("-Wl,{dtags}"),
                "-Wl,-rpath,$ORIGIN/lib",
            ]);
            let r = needs(&d.join("prog"), &SearchPath::default());
            if found {
                let libs = r.unwrap().unwrap().libs;
                assert_eq!(libs.len(), 3, "{libs:?}");
                assert!(libs.contains(&d.join("lib/libb.so")), "{libs:?}");
            } else {
                let e = crate::run::tests::chain(&r.unwrap_err());
                assert!(e.contains("libb.so") && e.contains("liba.so"), "{e}");
            }
        }
    }
}
