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
            return Ok(true);
        }
    }
    Ok(false)
}
