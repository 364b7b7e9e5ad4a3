//! Filesystem geometry: how many block groups, where each group's metadata sits, and the
//! sequential block allocator.
//!
//! Layout of every group (no `resize_inode`, no `flex_bg`):
//! `[superblock + GDT, only in groups 0, 1 and powers of 3, 5, 7] [block bitmap]
//! [inode bitmap] [inode table] [data ...]`.
//! Allocation is strictly sequential through the groups' data areas, so the used blocks
//! of every group are one prefix of its data area: the bitmaps and free counts follow
//! from the allocator's final cursor alone.

pub const BLOCK: u64 = 4096;
pub const INODE_SIZE: u64 = 256;
pub const BLOCKS_PER_GROUP: u64 = 8 * BLOCK;
pub const INODES_PER_BLOCK: u64 = BLOCK / INODE_SIZE;
/// One inode per this many bytes of image, as mke2fs's default `inode_ratio`.
const INODE_RATIO: u64 = 16384;
/// The last group is dropped when it would hold fewer data blocks than this (mke2fs
/// does the same), so no group is all overhead.
const MIN_LAST_GROUP_DATA: u64 = 50;
/// The first inode number available to files (`s_first_ino`); 1..=10 are reserved.
pub const FIRST_INO: u32 = 11;

/// Why a geometry could not be made for a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeomError {
    /// Too few blocks or inodes for the demand.
    TooSmall,
    /// More than 2^32 blocks: not addressable without the 64bit feature.
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub blocks: u64,
    pub groups: u64,
    pub inodes_per_group: u64,
    pub itable_blocks: u64,
    pub gdt_blocks: u64,
}

/// Does group `g` carry a backup superblock and GDT (sparse_super)?
pub fn has_super(g: u64) -> bool {
    fn power_of(mut n: u64, b: u64) -> bool {
        while n > 1 && n.is_multiple_of(b) {
            n /= b;
        }
        n == 1
    }
    g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
}

impl Geometry {
    /// The geometry for an image of `size` bytes holding at least `inodes` inodes.
    pub fn new(size: u64, inodes: u64) -> Result<Geometry, GeomError> {
        let mut blocks = size / BLOCK;
        if blocks > u64::from(u32::MAX) {
            return Err(GeomError::TooLarge);
        }
        loop {
            if blocks == 0 {
                return Err(GeomError::TooSmall);
            }
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            let by_ratio = (blocks * BLOCK / INODE_RATIO).div_ceil(groups);
            let ipg = by_ratio
                .max(inodes.div_ceil(groups))
                .max(INODES_PER_BLOCK)
                .next_multiple_of(INODES_PER_BLOCK);
            if ipg > BLOCKS_PER_GROUP || ipg * groups > u64::from(u32::MAX) {
                return Err(GeomError::TooSmall);
            }
            let g = Geometry {
                blocks,
                groups,
                inodes_per_group: ipg,
                itable_blocks: ipg * INODE_SIZE / BLOCK,
                gdt_blocks: (groups * 32).div_ceil(BLOCK),
            };
            let last = groups - 1;
            if g.group_blocks(last) < g.overhead(last) + MIN_LAST_GROUP_DATA {
                if groups == 1 {
                    return Err(GeomError::TooSmall);
                }
                blocks = last * BLOCKS_PER_GROUP;
                continue;
            }
            return Ok(g);
        }
    }

    pub fn inodes(&self) -> u64 {
        self.inodes_per_group * self.groups
    }

    pub fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    pub fn group_blocks(&self, g: u64) -> u64 {
        BLOCKS_PER_GROUP.min(self.blocks - self.group_start(g))
    }

    /// Blocks of group `g` taken by superblock, GDT, bitmaps and inode table.
    pub fn overhead(&self, g: u64) -> u64 {
        let sb = if has_super(g) { 1 + self.gdt_blocks } else { 0 };
        sb + 2 + self.itable_blocks
    }

    pub fn block_bitmap(&self, g: u64) -> u64 {
        let sb = if has_super(g) { 1 + self.gdt_blocks } else { 0 };
        self.group_start(g) + sb
    }

    pub fn inode_bitmap(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 1
    }

    pub fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    pub fn data_start(&self, g: u64) -> u64 {
        self.group_start(g) + self.overhead(g)
    }

    pub fn group_end(&self, g: u64) -> u64 {
        self.group_start(g) + self.group_blocks(g)
    }

    /// Blocks available for directories, file data and other metadata.
    pub fn data_capacity(&self) -> u64 {
        (0..self.groups)
            .map(|g| self.group_blocks(g) - self.overhead(g))
            .sum()
    }
}

/// Hands out blocks in order through the groups' data areas.
#[derive(Debug)]
pub struct Allocator<'g> {
    geom: &'g Geometry,
    group: u64,
    next: u64,
}

/// A run of contiguous physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub len: u64,
}

impl<'g> Allocator<'g> {
    pub fn new(geom: &'g Geometry) -> Allocator<'g> {
        Allocator {
            geom,
            group: 0,
            next: geom.data_start(0),
        }
    }

    /// Up to `n` contiguous blocks (fewer at the end of a group); `None` when full.
    pub fn run(&mut self, n: u64) -> Option<Run> {
        while self.next >= self.geom.group_end(self.group) {
            self.group += 1;
            if self.group >= self.geom.groups {
                return None;
            }
            self.next = self.geom.data_start(self.group);
        }
        let len = n.min(self.geom.group_end(self.group) - self.next);
        let r = Run {
            start: self.next,
            len,
        };
        self.next += len;
        Some(r)
    }

    /// Exactly `n` blocks as runs, or `None` when the image is full.
    pub fn alloc(&mut self, mut n: u64, out: &mut Vec<Run>) -> Option<()> {
        while n > 0 {
            let r = self.run(n)?;
            n -= r.len;
            match out.last_mut() {
                Some(l) if l.start + l.len == r.start => l.len += r.len,
                _ => out.push(r),
            }
        }
        Some(())
    }

    /// Blocks of the data area of group `g` handed out so far.
    pub fn used_in(&self, g: u64) -> u64 {
        if g < self.group {
            self.geom.group_blocks(g) - self.geom.overhead(g)
        } else if g == self.group {
            self.next.min(self.geom.group_end(g)) - self.geom.data_start(g)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_gib_matches_mke2fs_shape() {
        let g = Geometry::new(4 << 30, 100).unwrap();
        assert_eq!(g.blocks, 1 << 20);
        assert_eq!(g.groups, 32);
        assert_eq!(g.inodes(), 262_144);
        assert_eq!(g.itable_blocks, 512);
        assert_eq!(g.gdt_blocks, 1);
        let supers: Vec<u64> = (0..32).filter(|&g| has_super(g)).collect();
        assert_eq!(supers, [0, 1, 3, 5, 7, 9, 25, 27]);
    }

    #[test]
    fn drops_a_tiny_last_group_and_rejects_tiny_images() {
        let g = Geometry::new((BLOCKS_PER_GROUP + 10) * BLOCK, 10).unwrap();
        assert_eq!(g.groups, 1);
        assert_eq!(g.blocks, BLOCKS_PER_GROUP);
        assert_eq!(Geometry::new(4096 * 20, 10), Err(GeomError::TooSmall));
        assert_eq!(Geometry::new(1 << 45, 10), Err(GeomError::TooLarge));
    }

    #[test]
    fn allocator_skips_group_metadata() {
        let g = Geometry::new(256 << 20, 10).unwrap();
        let mut a = Allocator::new(&g);
        let mut runs = Vec::new();
        let first = g.group_blocks(0) - g.overhead(0);
        a.alloc(first + 5, &mut runs).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].start, g.data_start(0));
        assert_eq!(
            runs[1],
            Run {
                start: g.data_start(1),
                len: 5
            }
        );
        assert_eq!(a.used_in(0), first);
        assert_eq!(a.used_in(1), 5);
        assert_eq!(a.used_in(2), 0);
    }
}
