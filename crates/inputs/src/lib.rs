//! kiln's inputs stage: read the INPUT paths of a supermin appliance (`supermin.d`) into
//! ordered, parsed [`Inputs`].
//!
//! This crate owns *reading*: content sniffing, list parsing and base image (tar)
//! reading; decompression is `kiln-compress`'s. It never looks at the package database or the rest of the host; the file
//! set stage (`kiln-fileset`) turns [`Inputs`] into the entries of the appliance root.
//!
//! # Behaviour (supermin 5 compatible)
//! - Inputs are processed in command-line order; a directory (symlinks followed) is
//!   replaced in place by its entries (dot files included) sorted bytewise by name,
//!   depth-first.
//! - The type of a file is decided by its content, never its name: gzip, xz (and zstd)
//!   are decompressed first; then `ustar` at offset 257 → base image (tar), `070701` →
//!   cpio (rejected with supermin's message), first byte `/` → hostfiles, `-` →
//!   excludefiles, ASCII letter/digit → packages, empty → ignored, anything else → an
//!   error naming the file.
//! - Base images are read completely ([`Member`]s, in archive order), their file data
//!   streamed from the decoder into a spill file ([`crate::spill`]: unlinked, sparse, one
//!   buffer of memory whatever a member's size), so memory does not grow with member
//!   sizes; the headers of one member (GNU long names, PAX records) may take at most
//!   [`HEADER_LIMIT`] bytes (module `tarball`). Member paths containing `..` or starting with `/` are refused (error naming
//!   the tarball and the member), as are corrupt or truncated archives.
//! - Lists are read into memory; one larger than [`LIST_MAX`] is refused (a supermin
//!   list is kilobytes; a huge one is a mistake or a decompression bomb).
//!
//! # Differences from supermin (all compatible with valid supermin appliances)
//! - zstd-compressed inputs are accepted (supermin: "unknown file type").
//! - In all lists, after the first byte decided the type, empty lines and lines starting
//!   with `#` are ignored (supermin: a `#` line is a package name that never resolves, an
//!   empty excludefiles line is fatal). Package names are trimmed of surrounding blanks.
//! - A directory reached twice through symlinks (a loop) is an error instead of endless
//!   recursion.
//! - Base image members are read with numeric owners from the archive (GNU tar as root
//!   maps user *names* to host ids); the archive's own root entry (`./`) is ignored: the
//!   appliance root's metadata is kiln's, not the tarball's.
//! - Hard links inside a tarball must name an earlier regular file of the same tarball.
//!
//! Invariants of [`Inputs`]: member paths are absolute and normalised (no `.`/`..`, no
//! trailing `/`, never `/` itself); every list line carries its [`Origin`].

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub use crate::spill::{Region, Spill};

/// How an input file is compressed (detected by magic bytes, in `kiln-compress`).
pub use kiln_compress::Compression;

/// What an input file is (decided by its decompressed content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    BaseImage,
    Packages,
    Hostfiles,
    Excludefiles,
    Empty,
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputKind::BaseImage => "base image (tar)",
            InputKind::Packages => "packages",
            InputKind::Hostfiles => "hostfiles",
            InputKind::Excludefiles => "excludefiles",
            InputKind::Empty => "empty",
        })
    }
}

/// One input file visited, in processing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub path: PathBuf,
    pub compression: Compression,
    pub kind: InputKind,
}

/// Where a list line came from: the input file and the 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value read from a list, with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<T> {
    pub value: T,
    pub origin: Origin,
}

/// The kind of a base image member, with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    Dir,
    /// The member's bytes, in the spill file.
    File(Region),
    /// Target bytes, verbatim.
    Symlink(Vec<u8>),
    /// A hard link to an earlier regular file of the same tarball; `content` is that
    /// file's data (shared, not copied).
    HardLink {
        target: PathBuf,
        content: Region,
    },
    /// Device number in the kernel's `dev_t` encoding.
    CharDev(u64),
    BlockDev(u64),
    Fifo,
}

/// One member of a base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Absolute, normalised, never `/`.
    pub path: PathBuf,
    pub kind: MemberKind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

/// A base image (tarball), its members in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub source: PathBuf,
    pub members: Vec<Member>,
}

/// Everything read from the INPUT paths, in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Every file visited (for `-v` and diagnostics).
    pub visited: Vec<Visit>,
    /// Base images in input order; later ones overwrite earlier ones.
    pub base_images: Vec<BaseImage>,
    /// Package names, in input order (duplicates kept).
    pub packages: Vec<Line<String>>,
    /// Host file glob patterns, in input order (bytes, no escaping).
    pub hostfiles: Vec<Line<PathBuf>>,
    /// Exclude patterns without the leading `-`, in input order.
    pub excludes: Vec<Line<Vec<u8>>>,
}

/// An error reading the inputs. Every variant names the input it is about.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: cpio files are not supported in this version of supermin \
         (kiln neither): repack it as a tar archive"
    )]
    Cpio { path: PathBuf },
    #[error(
        "{path}: unknown file type in supermin directory: expected a tar archive (plain, \
         gzip, xz or zstd) or a list whose first byte is `/` (hostfiles), `-` \
         (excludefiles) or a letter or digit (packages)"
    )]
    UnknownType { path: PathBuf },
    #[error("{path}: cannot decompress {compression} data")]
    Decompress {
        path: PathBuf,
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("base image {path}: {message}")]
    Tar { path: PathBuf, message: String },
    #[error("base image {path}: member {member:?}: {message}")]
    TarMember {
        path: PathBuf,
        member: String,
        message: String,
    },
    #[error("base image {path}: member {member:?}: cannot keep its data")]
    MemberData {
        path: PathBuf,
        member: String,
        #[source]
        source: crate::spill::AppendError,
    },
    #[error(
        "base image {path}: cannot create a temporary file for its data in {dir} (set \
         TMPDIR to a writable directory)"
    )]
    Spill {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("input {path}: a list of more than {max} bytes: not a supermin list")]
    ListTooLarge { path: PathBuf, max: u64 },
    #[error("{origin}: excludefiles line does not start with '-'")]
    BadExclude { origin: Origin },
    #[error("input {path}: directory loop (reached twice through symlinks)")]
    DirLoop { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InputError + '_ {
    move |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How many decompressed bytes sniffing looks at (as supermin).
const SNIFF_LEN: usize = 512;

/// What a decompressed sample says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Kind(InputKind),
    /// A newc cpio archive (refused, as supermin does).
    Cpio,
    Unknown,
}

/// The type of decompressed content whose first bytes are `sample` (up to 512 bytes).
pub fn classify(sample: &[u8]) -> Class {
    let l = sample.len();
    let kind = if l >= 262 && &sample[257..262] == b"ustar" {
        InputKind::BaseImage
    } else if l >= 6 && sample.starts_with(b"070701") {
        return Class::Cpio;
    } else if l >= 2 && sample[0] == b'/' {
        InputKind::Hostfiles
    } else if l >= 2 && sample[0] == b'-' {
        InputKind::Excludefiles
    } else if l >= 1 && sample[0].is_ascii_alphanumeric() {
        InputKind::Packages
    } else if l == 0 {
        InputKind::Empty
    } else {
        return Class::Unknown;
    };
    Class::Kind(kind)
}

/// Open `path` as a decompressing reader.
fn open_decoded(path: &Path, c: Compression) -> Result<Box<dyn Read>, InputError> {
    let f = io::BufReader::new(fs::File::open(path).map_err(io_err(path))?);
    kiln_compress::decoder(c, f).map_err(|source| InputError::Decompress {
        path: path.to_path_buf(),
        compression: c,
        source,
    })
}

/// Read up to `n` bytes (fewer only at end of stream).
fn read_up_to(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Sniff one input file: its compression and type.
pub fn sniff(path: &Path) -> Result<(Compression, InputKind), InputError> {
    let head = {
        let mut f = fs::File::open(path).map_err(io_err(path))?;
        read_up_to(&mut f, SNIFF_LEN).map_err(io_err(path))?
    };
    let c = kiln_compress::detect(&head);
    let sample = if c == Compression::None {
        head
    } else {
        let mut r = open_decoded(path, c)?;
        read_up_to(&mut *r, SNIFF_LEN).map_err(|source| InputError::Decompress {
            path: path.to_path_buf(),
            compression: c,
            source,
        })?
    };
    match classify(&sample) {
        Class::Kind(k) => Ok((c, k)),
        Class::Unknown => Err(InputError::UnknownType {
            path: path.to_path_buf(),
        }),
        Class::Cpio => Err(InputError::Cpio {
            path: path.to_path_buf(),
        }),
    }
}

/// Expand the INPUT paths into the files to visit, in supermin's order.
pub fn input_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    let mut seen_dirs = HashSet::new();
    let mut work: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    while let Some(p) = work.pop() {
        let md = fs::metadata(&p).map_err(io_err(&p))?;
        if md.is_dir() {
            if !seen_dirs.insert((md.dev(), md.ino())) {
                return Err(InputError::DirLoop { path: p });
            }
            let mut names = Vec::new();
            for de in fs::read_dir(&p).map_err(io_err(&p))? {
                names.push(de.map_err(io_err(&p))?.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            work.extend(names.iter().rev().map(|n| p.join(n)));
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// The largest list (packages, hostfiles, excludefiles) read, decompressed.
pub const LIST_MAX: u64 = 64 << 20;

/// Read all INPUT paths (files or supermin.d directories). Base image data goes to a
/// spill file in the first usable of [`crate::spill::default_dirs`].
pub fn read_inputs(paths: &[PathBuf]) -> Result<Inputs, InputError> {
    let mut inputs = Inputs::default();
    let mut spill: Option<Arc<Spill>> = None;
    for path in input_files(paths)? {
        let (compression, kind) = sniff(&path)?;
        tracing::info!("visiting {} type {compression} {kind}", path.display());
        match kind {
            InputKind::Empty => {}
            InputKind::BaseImage => {
                let r = open_decoded(&path, compression)?;
                let s = match &spill {
                    Some(s) => s,
                    None => spill.insert(new_spill(&path)?),
                };
                inputs.base_images.push(read_tar_into(&path, r, s)?);
            }
            InputKind::Packages | InputKind::Hostfiles | InputKind::Excludefiles => {
                let r = open_decoded(&path, compression)?;
                let mut data = Vec::new();
                r.take(LIST_MAX + 1).read_to_end(&mut data).map_err(
                    |source| match compression {
                        Compression::None => InputError::Io {
                            path: path.clone(),
                            source,
                        },
                        _ => InputError::Decompress {
                            path: path.clone(),
                            compression,
                            source,
                        },
                    },
                )?;
                if data.len() as u64 > LIST_MAX {
                    return Err(InputError::ListTooLarge {
                        path,
                        max: LIST_MAX,
                    });
                }
                parse_list(&path, kind, &data, &mut inputs)?;
            }
        }
        inputs.visited.push(Visit {
            path,
            compression,
            kind,
        });
    }
    Ok(inputs)
}

/// Split a list into (1-based line number, line) pairs, skipping empty and `#` lines.
fn list_lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty() && l[0] != b'#')
}

fn parse_list(
    path: &Path,
    kind: InputKind,
    data: &[u8],
    inputs: &mut Inputs,
) -> Result<(), InputError> {
    let origin = |line| Origin {
        file: path.to_path_buf(),
        line,
    };
    for (n, l) in list_lines(data) {
        match kind {
            InputKind::Packages => {
                let name = String::from_utf8_lossy(l).trim().to_string();
                if !name.is_empty() {
                    inputs.packages.push(Line {
                        value: name,
                        origin: origin(n),
                    });
                }
            }
            InputKind::Hostfiles => inputs.hostfiles.push(Line {
                value: PathBuf::from(std::ffi::OsStr::from_bytes(l)),
                origin: origin(n),
            }),
            InputKind::Excludefiles => match l.strip_prefix(b"-") {
                Some(p) => inputs.excludes.push(Line {
                    value: p.to_vec(),
                    origin: origin(n),
                }),
                None => return Err(InputError::BadExclude { origin: origin(n) }),
            },
            InputKind::BaseImage | InputKind::Empty => {}
        }
    }
    Ok(())
}

/// Normalise a tar member path to an absolute path; `None` for the archive root.
pub(crate) fn normalise_member(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::from("/");
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`: refusing to extract it"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path: refusing to extract it");
            }
        }
    }
    Ok((out.as_os_str().len() > 1).then_some(out))
}

/// glibc's `makedev` encoding.
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (u64::from(major), u64::from(minor));
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

pub(crate) fn new_spill(path: &Path) -> Result<Arc<Spill>, InputError> {
    Spill::new().map_err(|(dir, source)| InputError::Spill {
        path: path.to_path_buf(),
        dir,
        source,
    })
}

pub mod spill;
mod tarball;
pub use tarball::{HEADER_LIMIT, read_tar, read_tar_into};

#[cfg(test)]
mod tests;
