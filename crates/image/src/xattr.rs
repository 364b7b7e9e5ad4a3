//! Extended attributes in ext2's on-disk format: in the inode's extra space when they fit,
//! else in one external block (shared between inodes with identical attributes, with a
//! reference count).
//!
//! The entry and block hashes are e2fsprogs' `ext2fs_ext_attr_hash_entry` and
//! `ext2fs_ext_attr_block_rehash` (names hashed as signed `char`, as x86 kernels and
//! e2fsck do); e2fsck rejects entries whose hash does not match.
//! POSIX ACLs arrive in the VFS format (`posix_acl_xattr`, version 2) and are stored in
//! ext4's compact on-disk format (version 1), as the kernel does.

use kiln_fileset::Xattr;

use crate::layout::{BLOCK, INODE_SIZE};

pub const MAGIC: u32 = 0xEA02_0000;
/// Offset of the in-inode attribute area: 128-byte base inode + `i_extra_isize` 32.
pub const IN_INODE_START: usize = 160;
const ENTRY_HEADER: usize = 16;
const BLOCK_HEADER: usize = 32;

/// One attribute as stored: index of its name prefix, the rest of its name, its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskAttr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Why an attribute cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrProblem {
    UnknownPrefix,
    NameTooLong,
    BadAcl,
    TooBig,
}

impl AttrProblem {
    pub fn reason(self) -> &'static str {
        match self {
            AttrProblem::UnknownPrefix => {
                "ext2 stores only user., trusted., security. and system. attributes"
            }
            AttrProblem::NameTooLong => "the name is longer than 255 bytes after its prefix",
            AttrProblem::BadAcl => "the POSIX ACL value is malformed",
            AttrProblem::TooBig => "the attributes of this file do not fit in one 4 KiB block",
        }
    }
}

fn round4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// Convert the VFS attributes of one inode into their stored form, sorted as the kernel
/// keeps them (index, name length, name).
pub fn to_disk(attrs: &[Xattr]) -> Result<Vec<DiskAttr>, (Vec<u8>, AttrProblem)> {
    let mut out = Vec::with_capacity(attrs.len());
    for a in attrs {
        let fail = |p| (a.name.clone(), p);
        let (index, rest): (u8, &[u8]) = match a.name.as_slice() {
            b"system.posix_acl_access" => (2, b""),
            b"system.posix_acl_default" => (3, b""),
            n if n.starts_with(b"user.") => (1, &n[5..]),
            n if n.starts_with(b"trusted.") => (4, &n[8..]),
            n if n.starts_with(b"security.") => (6, &n[9..]),
            n if n.starts_with(b"system.") => (7, &n[7..]),
            _ => return Err(fail(AttrProblem::UnknownPrefix)),
        };
        if rest.len() > 255 {
            return Err(fail(AttrProblem::NameTooLong));
        }
        let value = if index == 2 || index == 3 {
            acl_to_disk(&a.value).ok_or_else(|| fail(AttrProblem::BadAcl))?
        } else {
            a.value.clone()
        };
        out.push(DiskAttr {
            index,
            name: rest.to_vec(),
            value,
        });
    }
    out.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(out)
}

/// VFS ACL (`version 2`, entries of tag u16, perm u16, id u32) to ext4's on-disk ACL
/// (`version 1`; the id is stored only for named users and groups).
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    const USER: u16 = 0x02;
    const GROUP: u16 = 0x08;
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) || v[..4] != 2u32.to_le_bytes() {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[0..4]);
        match tag {
            USER | GROUP => out.extend_from_slice(&e[4..8]),
            0x01 | 0x04 | 0x10 | 0x20 => {}
            _ => return None,
        }
    }
    Some(out)
}

/// e2fsprogs' `ext2fs_ext_attr_hash_entry` (signed-char name variant).
pub fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        // The name bytes are C `char`, signed on x86: sign-extend.
        h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
    }
    let mut padded = value.to_vec();
    padded.resize(round4(value.len()), 0);
    for w in padded.chunks_exact(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

fn block_hash(hashes: &[u32]) -> u32 {
    let mut h: u32 = 0;
    for &e in hashes {
        if e == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    h
}

/// Bytes an attribute list needs: entries (plus the 4-byte terminator) and values.
fn space(attrs: &[DiskAttr]) -> usize {
    attrs
        .iter()
        .map(|a| ENTRY_HEADER + round4(a.name.len()) + round4(a.value.len()))
        .sum::<usize>()
        + 4
}

/// Write entries at `buf[first..]` and values downward from the end of `buf`; value
/// offsets are relative to `base`. Returns the entry hashes.
fn write_entries(buf: &mut [u8], first: usize, base: usize, attrs: &[DiskAttr]) -> Vec<u32> {
    let mut pos = first;
    let mut vend = buf.len();
    let mut hashes = Vec::with_capacity(attrs.len());
    for a in attrs {
        let voff = if a.value.is_empty() {
            0
        } else {
            vend -= round4(a.value.len());
            buf[vend..vend + a.value.len()].copy_from_slice(&a.value);
            vend - base
        };
        let h = entry_hash(&a.name, &a.value);
        hashes.push(h);
        buf[pos] = a.name.len() as u8;
        buf[pos + 1] = a.index;
        buf[pos + 2..pos + 4].copy_from_slice(&(voff as u16).to_le_bytes());
        // e_value_inum stays 0.
        buf[pos + 8..pos + 12].copy_from_slice(&(a.value.len() as u32).to_le_bytes());
        buf[pos + 12..pos + 16].copy_from_slice(&h.to_le_bytes());
        buf[pos + 16..pos + 16 + a.name.len()].copy_from_slice(&a.name);
        pos += ENTRY_HEADER + round4(a.name.len());
    }
    hashes
}

/// Do these attributes fit in the inode's extra space?
pub fn fits_in_inode(attrs: &[DiskAttr]) -> bool {
    space(attrs) + 4 <= INODE_SIZE as usize - IN_INODE_START
}

/// Does this list fit in one external block?
pub fn fits_in_block(attrs: &[DiskAttr]) -> bool {
    space(attrs) + BLOCK_HEADER <= BLOCK as usize
}

/// Fill the in-inode area (`inode[160..256]`) with `attrs` (which must fit).
pub fn write_in_inode(inode: &mut [u8], attrs: &[DiskAttr]) {
    let area = &mut inode[IN_INODE_START..INODE_SIZE as usize];
    area[..4].copy_from_slice(&MAGIC.to_le_bytes());
    // In-inode value offsets count from the first entry, just past the magic.
    write_entries(area, 4, 4, attrs);
}

/// One external attribute block holding `attrs`, referenced by `refcount` inodes.
pub fn block(attrs: &[DiskAttr], refcount: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&refcount.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let hashes = write_entries(&mut b, BLOCK_HEADER, 0, attrs);
    b[12..16].copy_from_slice(&block_hash(&hashes).to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(n: &str, v: &[u8]) -> Xattr {
        Xattr {
            name: n.as_bytes().to_vec(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn prefixes_and_order() {
        let d = to_disk(&[
            x("user.zz", b"1"),
            x("security.capability", b"c"),
            x("user.a", b""),
        ])
        .unwrap();
        let got: Vec<_> = d.iter().map(|a| (a.index, a.name.clone())).collect();
        assert_eq!(
            got,
            [
                (1, b"a".to_vec()),
                (1, b"zz".to_vec()),
                (6, b"capability".to_vec())
            ]
        );
        assert_eq!(
            to_disk(&[x("os2.foo", b"")]).unwrap_err().1,
            AttrProblem::UnknownPrefix
        );
    }

    #[test]
    fn acl_becomes_compact() {
        // user::rw- user:1000:r-- group::r-- mask::r-- other::r--
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(&v).unwrap();
        assert_eq!(d.len(), 4 + 4 * 4 + 8);
        assert_eq!(&d[..4], &1u32.to_le_bytes());
        assert!(acl_to_disk(&v[..7]).is_none());
    }

    #[test]
    fn hash_matches_e2fsprogs() {
        // Reference: a name of one byte and an empty value hashes to that byte.
        assert_eq!(entry_hash(b"a", b""), 0x61);
        assert_eq!(entry_hash(b"ab", b""), (0x61 << 5) ^ 0x62);
        // Value words are mixed in little-endian.
        assert_eq!(entry_hash(b"", b"\x01\x00\x00\x00"), 1);
        // High-bit name bytes are sign-extended.
        assert_eq!(entry_hash(b"\xff", b""), 0xffff_ffff);
    }
}
