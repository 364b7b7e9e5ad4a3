//! The one check kiln makes of its init's ELF headers: a 64-bit little-endian ELF whose
//! program headers hold no PT_INTERP (a dynamically linked PID 1 would make the kernel
//! panic far from the cause).
//!
//! Shared by the library and its build script (which includes this file with
//! `#[path]`), so it depends on nothing but `core`.
//!
//! Invariant: the bytes are untrusted (`KILN_INIT_BINARY` may name any file); every
//! offset is computed with checked arithmetic and every read is bounds-checked, so no
//! input makes it panic.

/// `PT_INTERP`, the program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;
/// `e_ident`: magic, class ELFCLASS64 (2), data ELFDATA2LSB (1).
const IDENT: [u8; 6] = [0x7f, b'E', b'L', b'F', 2, 1];
/// Offsets in the ELF64 file header.
const E_PHOFF: usize = 32;
const E_PHENTSIZE: usize = 54;
const E_PHNUM: usize = 56;
const EHDR_LEN: usize = 64;

/// Why the bytes are not a usable init, in words for an error message.
pub const NOT_ELF64: &str = "not a 64-bit little-endian ELF file";
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

/// Does this 64-bit little-endian ELF file ask for a program interpreter? `Err` with
/// [`NOT_ELF64`] or [`TRUNCATED`] when the bytes cannot answer.
pub fn has_interp(b: &[u8]) -> Result<bool, &'static str> {
    Ok(interp_header(b)?.is_some())
}

/// The offset of the PT_INTERP program header, if there is one.
fn interp_header(b: &[u8]) -> Result<Option<usize>, &'static str> {
    if b.len() < EHDR_LEN || b[..IDENT.len()] != IDENT {
        return Err(NOT_ELF64);
    }
    let phoff = u64_at(b, E_PHOFF).ok_or(NOT_ELF64)?;
    let phoff = usize::try_from(phoff).map_err(|_| TRUNCATED)?;
    let phentsize = usize::from(u16_at(b, E_PHENTSIZE).ok_or(NOT_ELF64)?);
    let phnum = usize::from(u16_at(b, E_PHNUM).ok_or(NOT_ELF64)?);
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(TRUNCATED)?;
        if u32_at(b, at).ok_or(TRUNCATED)? == PT_INTERP {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// The program interpreter this 64-bit little-endian ELF file asks for (the bytes of
/// PT_INTERP's path, without the NUL); `None` for a static file. `Err` with
/// [`NOT_ELF64`] or [`TRUNCATED`] when the bytes cannot answer.
// The build script includes this file for `has_interp` only.
#[allow(dead_code)]
pub fn interp(b: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    let Some(at) = interp_header(b)? else {
        return Ok(None);
    };
    // p_offset at +8, p_filesz at +32 of an Elf64_Phdr.
    let off = at
        .checked_add(8)
        .and_then(|o| u64_at(b, o))
        .ok_or(TRUNCATED)?;
    let len = at
        .checked_add(32)
        .and_then(|o| u64_at(b, o))
        .ok_or(TRUNCATED)?;
    let off = usize::try_from(off).map_err(|_| TRUNCATED)?;
    let len = usize::try_from(len).map_err(|_| TRUNCATED)?;
    let path = b
        .get(off..off.checked_add(len).ok_or(TRUNCATED)?)
        .ok_or(TRUNCATED)?;
    Ok(Some(path.split(|&c| c == 0).next().unwrap_or_default()))
}

#[cfg(test)]
mod interp_tests {
    use super::*;

    /// A minimal ELF64 header with one PT_INTERP program header pointing at `path`.
    fn with_interp(path: &[u8], off: u64, len: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..6].copy_from_slice(&IDENT);
        b[E_PHOFF..E_PHOFF + 8].copy_from_slice(&64u64.to_le_bytes());
        b[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&56u16.to_le_bytes());
        b[E_PHNUM..E_PHNUM + 2].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&PT_INTERP.to_le_bytes());
        b[64 + 8..64 + 16].copy_from_slice(&off.to_le_bytes());
        b[64 + 32..64 + 40].copy_from_slice(&len.to_le_bytes());
        b.extend_from_slice(path);
        b
    }

    #[test]
    fn interp_reads_the_loader_path_and_refuses_what_is_out_of_bounds() {
        let p = b"/lib64/ld-linux-x86-64.so.2\0";
        let b = with_interp(p, 120, p.len() as u64);
        assert_eq!(interp(&b), Ok(Some(&p[..p.len() - 1])));
        assert_eq!(has_interp(&b), Ok(true));
        assert_eq!(interp(&with_interp(p, 120, 1 << 40)), Err(TRUNCATED));
        assert_eq!(interp(&with_interp(p, u64::MAX, 2)), Err(TRUNCATED));
        assert_eq!(interp(&with_interp(p, 120, u64::MAX)), Err(TRUNCATED));
        assert_eq!(interp(b"#!/bin/sh\n"), Err(NOT_ELF64));
    }
}
