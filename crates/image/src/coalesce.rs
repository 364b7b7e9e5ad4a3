//! Write coalescing: the metadata writer queues whole blocks by block number; writes to
//! consecutive blocks are joined into one `pwritev` (no copying), so the superblocks,
//! descriptors, bitmaps, inode tables and planned metadata blocks of a 4 GiB image go
//! out in a few large writes.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::layout::BLOCK;

/// Queues block-aligned writes; a write that does not continue the previous one starts
/// a new batch.
pub struct Coalescer<'f, 'a> {
    out: &'f File,
    start: u64,
    blocks: u64,
    items: Vec<Cow<'a, [u8]>>,
}

impl<'f, 'a> Coalescer<'f, 'a> {
    /// Linux's IOV_MAX.
    const MAX_ITEMS: usize = 1024;

    pub fn new(out: &'f File) -> Self {
        Coalescer {
            out,
            start: 0,
            blocks: 0,
            items: Vec::new(),
        }
    }

    /// Queue `bytes` (a whole number of blocks) for block `block`.
    pub fn put(&mut self, block: u64, bytes: Cow<'a, [u8]>) -> io::Result<()> {
        if self.start + self.blocks != block || self.items.len() == Self::MAX_ITEMS {
            self.flush()?;
            self.start = block;
        }
        self.blocks += (bytes.len() as u64).div_ceil(BLOCK);
        self.items.push(bytes);
        Ok(())
    }

    /// Write out what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut off = self.start * BLOCK;
        let slices: Vec<io::IoSlice<'_>> = self.items.iter().map(|b| io::IoSlice::new(b)).collect();
        let total: usize = self.items.iter().map(|b| b.len()).sum();
        let done = if slices.is_empty() {
            0
        } else {
            loop {
                match rustix::io::pwritev(self.out, &slices, off) {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if done < total {
            // A short write: finish item by item.
            let mut skip = done;
            off += done as u64;
            for b in &self.items {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                self.out.write_all_at(&b[skip..], off)?;
                off += (b.len() - skip) as u64;
                skip = 0;
            }
        }
        self.items.clear();
        self.blocks = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Consecutive, gapped and over-long batches all land where they were queued.
    #[test]
    fn queued_blocks_land_at_their_numbers() {
        let f = tempfile::tempfile().unwrap_or_else(|e| panic!("tempfile: {e}"));
        let blk = |v: u8| vec![v; BLOCK as usize];
        let mut w = Coalescer::new(&f);
        let mut want = Vec::new();
        for b in 0..(Coalescer::MAX_ITEMS as u64 + 3) {
            w.put(b, Cow::Owned(blk(b as u8)))
                .unwrap_or_else(|e| panic!("{e}"));
            want.push(b);
        }
        w.put(5000, Cow::Owned(blk(0xee)))
            .unwrap_or_else(|e| panic!("{e}"));
        w.flush().unwrap_or_else(|e| panic!("{e}"));
        let mut buf = vec![0u8; BLOCK as usize];
        for b in want {
            f.read_exact_at(&mut buf, b * BLOCK)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(buf.iter().all(|&x| x == b as u8), "block {b}");
        }
        f.read_exact_at(&mut buf, 5000 * BLOCK)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(buf.iter().all(|&x| x == 0xee));
    }
}
