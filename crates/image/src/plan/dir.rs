//! Directory packing: ext2's linear directory blocks (`struct ext2_dir_entry_2`, with
//! the `filetype` feature). Entries never cross a block; the last entry of a block
//! stretches its record to the block's end, as e2fsck expects.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::layout::BLOCK;

/// File type codes of directory entries.
pub(super) const FT_REG: u8 = 1;
pub(super) const FT_DIR: u8 = 2;
pub(super) const FT_CHR: u8 = 3;
pub(super) const FT_BLK: u8 = 4;
pub(super) const FT_FIFO: u8 = 5;
pub(super) const FT_SOCK: u8 = 6;
pub(super) const FT_LNK: u8 = 7;

/// One directory entry: name, inode number, file type (`FT_*`).
pub(super) struct DirEnt<'a> {
    pub(super) name: &'a [u8],
    pub(super) ino: u32,
    pub(super) ftype: u8,
}

/// The last component of `p` as bytes.
pub(super) fn name_of(p: &Path) -> &[u8] {
    p.file_name().map(|n| n.as_bytes()).unwrap_or(b"")
}

/// Pack directory entries into blocks: no entry crosses a block, the last entry of each
/// block stretches to its end, and at least `min_blocks` blocks are produced.
pub(super) fn pack_dir(ents: &[DirEnt<'_>], min_blocks: u64) -> Vec<u8> {
    let bs = BLOCK as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(bs);
    let mut block_start = 0usize;
    let mut last = 0usize;
    let mut pos = 0usize;
    let set_rec = |buf: &mut Vec<u8>, at: usize, len: usize| {
        buf[at + 4..at + 6].copy_from_slice(&(len as u16).to_le_bytes());
    };
    for e in ents {
        let rec = 8 + e.name.len().next_multiple_of(4);
        if pos + rec > block_start + bs {
            set_rec(&mut buf, last, block_start + bs - last);
            block_start += bs;
            pos = block_start;
        }
        buf.resize(pos + rec, 0);
        buf[pos..pos + 4].copy_from_slice(&e.ino.to_le_bytes());
        set_rec(&mut buf, pos, rec);
        buf[pos + 6] = e.name.len() as u8;
        buf[pos + 7] = e.ftype;
        buf[pos + 8..pos + 8 + e.name.len()].copy_from_slice(e.name);
        last = pos;
        pos += rec;
    }
    buf.resize(block_start + bs, 0);
    set_rec(&mut buf, last, block_start + bs - last);
    while (buf.len() as u64) < min_blocks * BLOCK {
        let at = buf.len();
        buf.resize(at + bs, 0);
        set_rec(&mut buf, at, bs);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_blocks_never_split_entries() {
        let names: Vec<Vec<u8>> = (0..400)
            .map(|i| format!("name-{i:04}-xxxxxxxx").into_bytes())
            .collect();
        let ents: Vec<DirEnt> = names
            .iter()
            .map(|n| DirEnt {
                name: n,
                ino: 12,
                ftype: FT_REG,
            })
            .collect();
        let b = pack_dir(&ents, 1);
        assert_eq!(b.len() % 4096, 0);
        let mut count = 0;
        for blk in b.chunks(4096) {
            let mut pos = 0;
            while pos < 4096 {
                let rec = u16::from_le_bytes([blk[pos + 4], blk[pos + 5]]) as usize;
                assert!(rec >= 8 && pos + rec <= 4096);
                count += 1;
                pos += rec;
            }
            assert_eq!(pos, 4096);
        }
        assert_eq!(count, 400);
    }
}
