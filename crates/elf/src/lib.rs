//! kiln's one reader of ELF files: the 64-bit little-endian file header, program
//! headers, notes (`PT_NOTE`), the program interpreter (`PT_INTERP`) and the dynamic
//! section (`DT_NEEDED`, `DT_RPATH`, `DT_RUNPATH`, `DT_SONAME` through `DT_STRTAB`).
//!
//! Its users: the initrd's check that the init is static (also from its build script),
//! the uncompressed-kernel path of `kiln-boot` (the PVH entry note of a `vmlinux`), and
//! `kiln run`'s library closure of a command no package owns, which reads the files
//! instead of running their loader.
//!
//! Invariant: the bytes are untrusted (a hostile `--kernel`, a command built to attack
//! the host, `KILN_INIT_BINARY`). Every offset is computed with checked arithmetic and
//! every read is bounds-checked, so no input makes this crate panic or allocate more
//! than a small multiple of the entries the input really holds; malformed input is an
//! [`Error`] (or, for notes, the end of the walk).

use std::fmt;

/// `PT_LOAD`: a segment mapped from the file.
pub const PT_LOAD: u32 = 1;
/// `PT_DYNAMIC`: the dynamic section.
pub const PT_DYNAMIC: u32 = 2;
/// `PT_INTERP`: the dynamic loader's path.
pub const PT_INTERP: u32 = 3;
/// `PT_NOTE`: notes.
pub const PT_NOTE: u32 = 4;

/// Dynamic section tags read here.
pub const DT_NULL: u64 = 0;
pub const DT_NEEDED: u64 = 1;
pub const DT_STRTAB: u64 = 5;
pub const DT_STRSZ: u64 = 10;
pub const DT_SONAME: u64 = 14;
pub const DT_RPATH: u64 = 15;
pub const DT_RUNPATH: u64 = 29;

/// `e_ident`: magic, class ELFCLASS64 (2), data ELFDATA2LSB (1).
const IDENT: [u8; 6] = [0x7f, b'E', b'L', b'F', 2, 1];
/// Offsets in the ELF64 file header.
const E_TYPE: usize = 16;
const E_MACHINE: usize = 18;
const E_PHOFF: usize = 32;
const E_PHENTSIZE: usize = 54;
const E_PHNUM: usize = 56;
const EHDR_LEN: usize = 64;
/// Size of an `Elf64_Phdr`, and of an `Elf64_Dyn`.
const PHDR_LEN: usize = 56;
const DYN_LEN: usize = 16;

/// Why the bytes cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not a 64-bit little-endian ELF file.
    NotElf64,
    /// The program headers do not fit in the file (or cannot be ELF64 ones).
    Truncated,
    /// A segment (interpreter, dynamic section) lies outside the file.
    BadSegment,
    /// The dynamic section or its string table is malformed.
    BadDynamic,
}

impl Error {
    /// The reason in words, for an error message.
    pub fn as_str(self) -> &'static str {
        match self {
            Error::NotElf64 => NOT_ELF64,
            Error::Truncated => TRUNCATED,
            Error::BadSegment => "an ELF segment lies outside the file",
            Error::BadDynamic => "a malformed ELF dynamic section",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Error {}

/// [`Error::NotElf64`] in words.
pub const NOT_ELF64: &str = "not a 64-bit little-endian ELF file";
/// [`Error::Truncated`] in words.
pub const TRUNCATED: &str = "truncated ELF program headers";

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// `b[off..off + len]` for file-provided 64-bit values, `None` when outside.
fn range(b: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let off = usize::try_from(off).ok()?;
    let len = usize::try_from(len).ok()?;
    b.get(off..off.checked_add(len)?)
}

/// One program header (the fields kiln reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub align: u64,
}

/// A validated ELF64 little-endian file: its identification is right and its program
/// header table lies inside the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    b: &'a [u8],
    phoff: usize,
    phentsize: usize,
    phnum: usize,
}

impl<'a> Elf<'a> {
    /// Check the identification and that every program header is inside `b`.
    pub fn parse(b: &'a [u8]) -> Result<Elf<'a>, Error> {
        if b.len() < EHDR_LEN || b[..IDENT.len()] != IDENT {
            return Err(Error::NotElf64);
        }
        let phoff = u64_at(b, E_PHOFF).ok_or(Error::NotElf64)?;
        let phentsize = usize::from(u16_at(b, E_PHENTSIZE).ok_or(Error::NotElf64)?);
        let phnum = usize::from(u16_at(b, E_PHNUM).ok_or(Error::NotElf64)?);
        if phnum == 0 {
            return Ok(Elf {
                b,
                phoff: 0,
                phentsize: PHDR_LEN,
                phnum: 0,
            });
        }
        let phoff = usize::try_from(phoff).map_err(|_| Error::Truncated)?;
        if phentsize < PHDR_LEN {
            return Err(Error::Truncated);
        }
        // The last header must end inside the file; then every one does.
        let end = (phnum - 1)
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| o.checked_add(PHDR_LEN))
            .ok_or(Error::Truncated)?;
        if end > b.len() {
            return Err(Error::Truncated);
        }
        Ok(Elf {
            b,
            phoff,
            phentsize,
            phnum,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.b
    }

    /// `e_type` (2 for an executable, 3 for a shared object or PIE).
    pub fn file_type(&self) -> u16 {
        u16_at(self.b, E_TYPE).unwrap_or(0)
    }

    /// `e_machine` (62 for x86-64, 183 for AArch64).
    pub fn machine(&self) -> u16 {
        u16_at(self.b, E_MACHINE).unwrap_or(0)
    }

    /// `e_ident[EI_OSABI]`.
    pub fn osabi(&self) -> u8 {
        self.b[7]
    }

    /// The program headers, in file order.
    pub fn program_headers(&self) -> impl Iterator<Item = ProgramHeader> + 'a {
        let (b, phoff, phentsize) = (self.b, self.phoff, self.phentsize);
        (0..self.phnum).filter_map(move |i| {
            // In bounds by `parse`; checked again rather than trusted.
            let at = i.checked_mul(phentsize)?.checked_add(phoff)?;
            Some(ProgramHeader {
                p_type: u32_at(b, at)?,
                offset: u64_at(b, at.checked_add(8)?)?,
                vaddr: u64_at(b, at.checked_add(16)?)?,
                filesz: u64_at(b, at.checked_add(32)?)?,
                align: u64_at(b, at.checked_add(48)?)?,
            })
        })
    }

    /// The file bytes of a segment.
    pub fn segment(&self, ph: &ProgramHeader) -> Result<&'a [u8], Error> {
        range(self.b, ph.offset, ph.filesz).ok_or(Error::BadSegment)
    }

    /// The program interpreter (`PT_INTERP`'s path, without its NUL); `None` for a
    /// static file.
    pub fn interp(&self) -> Result<Option<&'a [u8]>, Error> {
        let Some(ph) = self.program_headers().find(|p| p.p_type == PT_INTERP) else {
            return Ok(None);
        };
        let path = self.segment(&ph)?;
        Ok(Some(path.split(|&c| c == 0).next().unwrap_or_default()))
    }

    /// The notes of every `PT_NOTE` segment, in order. A segment outside the file or a
    /// malformed note ends that segment's walk (notes are hints; a caller that needs
    /// one treats its absence as "no").
    pub fn notes(&self) -> impl Iterator<Item = Note<'a>> + 'a {
        let me = *self;
        self.program_headers()
            .filter(|p| p.p_type == PT_NOTE)
            .flat_map(move |p| {
                let bytes = me.segment(&p).unwrap_or_default();
                Notes {
                    rest: bytes,
                    align: if p.align == 8 { 8 } else { 4 },
                }
            })
    }

    /// The file offset of virtual address `addr`, through the `PT_LOAD` segment that
    /// maps it from the file.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.program_headers()
            .filter(|p| p.p_type == PT_LOAD)
            .find_map(|p| {
                let d = addr.checked_sub(p.vaddr)?;
                (d < p.filesz).then(|| p.offset.checked_add(d)).flatten()
            })
    }

    /// The dynamic section's names: `None` for a file without `PT_DYNAMIC`.
    pub fn dynamic(&self) -> Result<Option<Dynamic<'a>>, Error> {
        let Some(ph) = self.program_headers().find(|p| p.p_type == PT_DYNAMIC) else {
            return Ok(None);
        };
        let seg = self.segment(&ph)?;
        let mut strtab = None;
        let mut strsz = None;
        // (tag, value) of the string-valued entries, resolved once the table is known.
        let mut strings: Vec<(u64, u64)> = Vec::new();
        for e in seg.chunks_exact(DYN_LEN) {
            let tag = u64_at(e, 0).ok_or(Error::BadDynamic)?;
            let val = u64_at(e, 8).ok_or(Error::BadDynamic)?;
            match tag {
                DT_NULL => break,
                DT_STRTAB => strtab = Some(val),
                DT_STRSZ => strsz = Some(val),
                DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH => strings.push((tag, val)),
                _ => {}
            }
        }
        let mut d = Dynamic::default();
        if strings.is_empty() {
            return Ok(Some(d));
        }
        let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
            return Err(Error::BadDynamic);
        };
        let off = self.file_offset(strtab).ok_or(Error::BadDynamic)?;
        let table = range(self.b, off, strsz).ok_or(Error::BadDynamic)?;
        for (tag, val) in strings {
            let s = usize::try_from(val)
                .ok()
                .and_then(|o| table.get(o..))
                .ok_or(Error::BadDynamic)?;
            let end = s.iter().position(|&c| c == 0).ok_or(Error::BadDynamic)?;
            let s = &s[..end];
            match tag {
                DT_NEEDED => d.needed.push(s),
                DT_SONAME => d.soname = Some(s),
                DT_RPATH => d.rpath = Some(s),
                _ => d.runpath = Some(s),
            }
        }
        Ok(Some(d))
    }
}

/// The names of a dynamic section (strings without their NUL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic<'a> {
    /// `DT_NEEDED`, in order.
    pub needed: Vec<&'a [u8]>,
    pub soname: Option<&'a [u8]>,
    pub rpath: Option<&'a [u8]>,
    pub runpath: Option<&'a [u8]>,
}

/// One note: its name (without trailing NULs), type and descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub desc: &'a [u8],
}

struct Notes<'a> {
    rest: &'a [u8],
    align: usize,
}

impl<'a> Iterator for Notes<'a> {
    type Item = Note<'a>;

    fn next(&mut self) -> Option<Note<'a>> {
        let b = self.rest;
        // Whatever happens below, a malformed note ends the walk.
        self.rest = &[];
        let namesz = usize::try_from(u32_at(b, 0)?).ok()?;
        let descsz = usize::try_from(u32_at(b, 4)?).ok()?;
        let kind = u32_at(b, 8)?;
        let name = b.get(12..12usize.checked_add(namesz)?)?;
        let desc_at = 12usize.checked_add(namesz.checked_next_multiple_of(self.align)?)?;
        let desc = b.get(desc_at..desc_at.checked_add(descsz)?)?;
        let next = desc_at.checked_add(descsz.checked_next_multiple_of(self.align)?)?;
        self.rest = b.get(next..).unwrap_or_default();
        let trimmed = name.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        Some(Note {
            name: &name[..trimmed],
            kind,
            desc,
        })
    }
}

/// Does this 64-bit little-endian ELF file ask for a program interpreter?
pub fn has_interp(b: &[u8]) -> Result<bool, Error> {
    Ok(Elf::parse(b)?.interp()?.is_some())
}

/// The program interpreter this 64-bit little-endian ELF file asks for (the bytes of
/// PT_INTERP's path, without the NUL); `None` for a static file.
pub fn interp(b: &[u8]) -> Result<Option<&[u8]>, Error> {
    Elf::parse(b)?.interp()
}

#[cfg(test)]
mod tests;
