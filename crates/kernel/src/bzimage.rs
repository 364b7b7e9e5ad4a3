//! The x86 bzImage setup header, as far as kiln reads it: the magic, the boot protocol
//! version, the pointer to the kernel version string and the compressed payload
//! (Documentation/arch/x86/boot.rst in the Linux tree); kiln's one bzImage reader. Fields are named as in the kernel's `struct setup_header`, and
//! read from their documented offsets, never from magic numbers scattered in code.
//!
//! Invariants: the bytes are untrusted (any file a user names in `SUPERMIN_KERNEL`);
//! every read is bounds-checked and a malformed header is "not a bzImage" (`None`),
//! never a panic.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Offset of `header` (the magic `HdrS`) in the file.
pub const HEADER_OFFSET: usize = 0x202;
/// The value of `header`.
pub const HEADER_MAGIC: [u8; 4] = *b"HdrS";
/// Offset of `version`, the boot protocol version (u16, little-endian).
pub const VERSION_OFFSET: usize = 0x206;
/// Offset of `kernel_version`: a pointer to the version string, relative to 0x200.
pub const KERNEL_VERSION_OFFSET: usize = 0x20e;
/// `kernel_version` is relative to the end of the boot sector.
pub const KERNEL_VERSION_BASE: u64 = 0x200;
/// Bytes of the file needed to read the fields above.
pub const HEADER_LEN: usize = KERNEL_VERSION_OFFSET + 2;
/// Offset of `setup_sects`: 512-byte sectors of real-mode setup after the boot sector
/// (0 means 4).
pub const SETUP_SECTS_OFFSET: usize = 0x1f1;
/// Offset of `payload_offset` (u32): where the compressed kernel starts, relative to the
/// end of the real-mode setup (protocol 2.08+).
pub const PAYLOAD_OFFSET_OFFSET: usize = 0x248;
/// Offset of `payload_length` (u32): the compressed kernel's length.
pub const PAYLOAD_LENGTH_OFFSET: usize = 0x24c;
/// The first protocol with `payload_offset`/`payload_length`.
pub const MIN_PAYLOAD_PROTOCOL: u16 = 0x0208;
/// The oldest protocol whose `kernel_version` supermin 5 trusts.
pub const MIN_PROTOCOL: u16 = 0x01ff;
/// How much of the version string is read; supermin reads 132 bytes.
pub const VERSION_READ_LEN: usize = 132;

/// The named fields of the setup header that kiln uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, e.g. 0x020f.
    pub version: u16,
    /// Pointer to the version string, relative to [`KERNEL_VERSION_BASE`].
    pub kernel_version: u16,
    /// Sectors of real-mode setup, as stored (0 means 4).
    pub setup_sects: u8,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let bytes = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

impl SetupHeader {
    /// Parse the start of a file (at least [`HEADER_LEN`] bytes); `None` unless it
    /// carries the `HdrS` magic.
    pub fn parse(start: &[u8]) -> Option<SetupHeader> {
        let magic = start.get(HEADER_OFFSET..HEADER_OFFSET + HEADER_MAGIC.len())?;
        if magic != HEADER_MAGIC {
            return None;
        }
        Some(SetupHeader {
            version: u16_at(start, VERSION_OFFSET)?,
            kernel_version: u16_at(start, KERNEL_VERSION_OFFSET)?,
            setup_sects: *start.get(SETUP_SECTS_OFFSET)?,
        })
    }

    /// File offset of the protected-mode kernel: the boot sector and the setup sectors.
    pub fn setup_len(&self) -> usize {
        let sects = match self.setup_sects {
            0 => 4,
            n => usize::from(n),
        };
        (sects + 1) * 512
    }

    /// The compressed kernel inside `bz` (the whole file this header was parsed from),
    /// as `payload_offset` and `payload_length` say; `None` before protocol 2.08 or
    /// when the fields point outside the file.
    pub fn payload<'a>(&self, bz: &'a [u8]) -> Option<&'a [u8]> {
        if self.version < MIN_PAYLOAD_PROTOCOL {
            return None;
        }
        let off = usize::try_from(u32_at(bz, PAYLOAD_OFFSET_OFFSET)?).ok()?;
        let len = usize::try_from(u32_at(bz, PAYLOAD_LENGTH_OFFSET)?).ok()?;
        let start = self.setup_len().checked_add(off)?;
        bz.get(start..start.checked_add(len)?)
    }

    /// File offset of the version string.
    pub fn version_string_offset(&self) -> u64 {
        u64::from(self.kernel_version) + KERNEL_VERSION_BASE
    }
}

/// The version string in an x86 bzImage header (as supermin 5 reads it), or `None` when the
/// bytes are not a bzImage with a version. `read_at(off)` returns the bytes of the file
/// from `off` (supermin, and [`bzimage_version_of`], read [`VERSION_READ_LEN`]); the
/// string ends at the first NUL, space, tab or newline among them.
pub fn bzimage_version(
    header: &[u8],
    read_at: impl FnOnce(u64) -> Option<Vec<u8>>,
) -> Option<String> {
    if header.len() < HEADER_LEN {
        return None;
    }
    let h = SetupHeader::parse(header)?;
    if h.version < MIN_PROTOCOL {
        return None;
    }
    let buf = read_at(h.version_string_offset())?;
    let end = buf
        .iter()
        .position(|&c| c == 0 || c == b' ' || c == b'\t' || c == b'\n')?;
    if end == 0 {
        return None;
    }
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// The compressed kernel of a bzImage (see [`SetupHeader::payload`]); `None` when `bz`
/// is not a bzImage of protocol 2.08 or later with a payload inside the file.
pub fn payload(bz: &[u8]) -> Option<&[u8]> {
    SetupHeader::parse(bz)?.payload(bz)
}

/// [`bzimage_version`] of a file. I/O errors are returned (so that "unreadable" can be
/// told apart from "not a bzImage").
pub fn bzimage_version_of(path: &Path) -> io::Result<Option<String>> {
    let mut f = fs::File::open(path)?;
    let mut header = vec![0u8; HEADER_LEN];
    let n = read_full(&mut f, &mut header)?;
    header.truncate(n);
    let mut err = None;
    let v = bzimage_version(&header, |off| {
        let mut buf = vec![0u8; VERSION_READ_LEN];
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

/// A minimal bzImage with `version` as its version string (for tests).
#[cfg(test)]
pub(crate) fn fake_bzimage(version: &str) -> Vec<u8> {
    let mut v = vec![0u8; 0x4000];
    v[HEADER_OFFSET..HEADER_OFFSET + 4].copy_from_slice(&HEADER_MAGIC);
    v[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    let off: u16 = 0x1000;
    v[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2].copy_from_slice(&off.to_le_bytes());
    let s = format!("{version} (builder@example) #1 SMP");
    let at = off as usize + 0x200;
    v[at..at + s.len()].copy_from_slice(s.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_offsets_are_the_documented_ones() {
        // boot.rst: header at 0x202, version at 0x206, kernel_version at 0x20E.
        assert_eq!(
            (HEADER_OFFSET, VERSION_OFFSET, KERNEL_VERSION_OFFSET),
            (514, 518, 526)
        );
        assert_eq!(HEADER_LEN, 528);
        let img = fake_bzimage("6.1.0-56-amd64");
        let h = SetupHeader::parse(&img).unwrap();
        assert_eq!(h.version, 0x020f);
        assert_eq!(h.version_string_offset(), 0x1200);
        // boot.rst: setup_sects at 0x1F1, payload_offset at 0x248, payload_length at 0x24C.
        assert_eq!(
            (
                SETUP_SECTS_OFFSET,
                PAYLOAD_OFFSET_OFFSET,
                PAYLOAD_LENGTH_OFFSET
            ),
            (497, 584, 588)
        );
        assert_eq!(h.setup_len(), 5 * 512, "setup_sects 0 means 4");
    }

    #[test]
    fn payload_is_where_the_header_says_or_none() {
        let mut img = fake_bzimage("6.1.0-56-amd64");
        img[SETUP_SECTS_OFFSET] = 2;
        img[PAYLOAD_OFFSET_OFFSET..PAYLOAD_OFFSET_OFFSET + 4]
            .copy_from_slice(&0x10u32.to_le_bytes());
        img[PAYLOAD_LENGTH_OFFSET..PAYLOAD_LENGTH_OFFSET + 4]
            .copy_from_slice(&0x20u32.to_le_bytes());
        let start = 3 * 512 + 0x10;
        assert_eq!(payload(&img), Some(&img[start..start + 0x20]));
        // Past the end, wrapping, or too old a protocol: no payload.
        let mut far = img.clone();
        far[PAYLOAD_LENGTH_OFFSET..PAYLOAD_LENGTH_OFFSET + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(payload(&far), None);
        let mut old = img.clone();
        old[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&0x0207u16.to_le_bytes());
        assert_eq!(payload(&old), None);
        assert_eq!(payload(&img[..0x24e]), None, "the length field is cut");
        assert_eq!(payload(b"not a kernel"), None);
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

    fn proptest_config() -> proptest::test_runner::Config {
        let mut c = proptest::test_runner::Config::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 4096;
        }
        c.failure_persistence = None;
        c
    }

    proptest::proptest! {
        #![proptest_config(proptest_config())]

        /// Arbitrary headers (with the magic, so the pointer is followed) and arbitrary
        /// version bytes: an answer or `None`, never a panic.
        #[test]
        fn arbitrary_headers_never_panic(
            mut start in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            magic in proptest::prelude::any::<bool>(),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            if magic && start.len() >= HEADER_OFFSET + 4 {
                start[HEADER_OFFSET..HEADER_OFFSET + 4].copy_from_slice(&HEADER_MAGIC);
            }
            let _ = payload(&start);
            let v = bzimage_version(&start, |_| Some(rest.clone()));
            if let Some(v) = v {
                proptest::prop_assert!(!v.is_empty() && !v.contains([' ', '\0', '\t', '\n']));
            }
        }
    }
}
