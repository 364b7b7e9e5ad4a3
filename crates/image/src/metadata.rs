//! The metadata writer: superblocks and their backups, group descriptors, bitmaps,
//! inode tables and the planned metadata blocks (directories, indirect blocks,
//! attribute blocks, slow symlinks), from a finished [`Plan`].

use std::borrow::Cow;
use std::fs::File;
use std::io;

use crate::ImageOptions;
use crate::coalesce::Coalescer;
use crate::disk::{self, GroupDesc, IBlock, Inode, Superblock, Time};
use crate::layout::{BLOCK, BLOCKS_PER_GROUP, FIRST_INO, INODE_SIZE, has_super};
use crate::plan::{AttrPlace, Body, Node, Plan, ino_of};
use crate::xattr;

/// Free blocks and inodes of the whole image.
pub struct Counts {
    pub free_blocks: u64,
    pub free_inodes: u64,
}

/// The on-disk inode of a planned node.
fn inode_of<'a>(node: &'a Node<'_>) -> Inode<'a> {
    let m = node.meta;
    let t = Time::new(m.mtime, m.mtime_nsec);
    let block = match &node.body {
        Body::Blocks => IBlock::Pointers(node.i_block),
        Body::FastLink(t) => IBlock::Inline(t),
        Body::Dev(d) => {
            let (major, minor) = disk::split_dev(*d);
            IBlock::Device { major, minor }
        }
        Body::None => IBlock::Empty,
    };
    Inode {
        mode: node.mode,
        uid: m.uid,
        size: node.size,
        atime: t,
        ctime: t,
        mtime: t,
        crtime: t,
        gid: m.gid,
        links_count: node.links as u16,
        blocks: node.blocks_512 as u32,
        block,
        file_acl: node.file_acl as u32,
        extra_isize: 32,
    }
}

fn superblock(
    plan: &Plan<'_>,
    counts: &Counts,
    uuid: [u8; 16],
    seed: [u8; 16],
    opts: &ImageOptions,
    group: u64,
) -> Superblock {
    let g = &plan.geom;
    Superblock {
        inodes_count: g.inodes() as u32,
        blocks_count: g.blocks as u32,
        // No reserved blocks: the appliance runs as root anyway.
        r_blocks_count: 0,
        free_blocks_count: counts.free_blocks as u32,
        free_inodes_count: counts.free_inodes as u32,
        first_data_block: 0,
        log_block_size: BLOCK.ilog2() - 10,
        log_frag_size: BLOCK.ilog2() - 10,
        blocks_per_group: BLOCKS_PER_GROUP as u32,
        frags_per_group: BLOCKS_PER_GROUP as u32,
        inodes_per_group: g.inodes_per_group as u32,
        wtime: opts.timestamp,
        max_mnt_count: 0xffff,
        magic: disk::EXT2_MAGIC,
        state: disk::STATE_CLEAN,
        errors: disk::ERRORS_CONTINUE,
        lastcheck: opts.timestamp,
        rev_level: disk::DYNAMIC_REV,
        first_ino: FIRST_INO,
        inode_size: INODE_SIZE as u16,
        block_group_nr: group as u16,
        feature_compat: disk::COMPAT_EXT_ATTR,
        feature_incompat: disk::INCOMPAT_FILETYPE,
        feature_ro_compat: disk::RO_COMPAT_SPARSE_SUPER | disk::RO_COMPAT_LARGE_FILE,
        uuid,
        hash_seed: seed,
        def_hash_version: disk::HASH_HALF_MD4,
        default_mount_opts: disk::DEFM_XATTR_USER | disk::DEFM_ACL,
        mkfs_time: opts.timestamp,
        min_extra_isize: 32,
        want_extra_isize: 32,
        flags: disk::FLAGS_SIGNED_HASH,
        ..Superblock::default()
    }
}

/// Superblocks, group descriptors, bitmaps, inode tables and the planned metadata
/// blocks, coalesced into few large writes.
pub fn write_metadata(
    plan: &Plan<'_>,
    out: &File,
    uuid: [u8; 16],
    seed: [u8; 16],
    opts: &ImageOptions,
) -> io::Result<Counts> {
    let g = &plan.geom;
    let bs = BLOCK as usize;
    let ipg = g.inodes_per_group;
    let max_ino = u64::from(ino_of(plan.nodes.len() - 1));
    let used_inodes = |grp: u64| max_ino.saturating_sub(grp * ipg).min(ipg);

    let mut free_blocks = 0u64;
    let mut gdt = vec![0u8; (g.gdt_blocks * BLOCK) as usize];
    let mut dirs_per_group = vec![0u64; g.groups as usize];
    for (i, n) in plan.nodes.iter().enumerate() {
        if n.is_dir() {
            dirs_per_group[((u64::from(ino_of(i)) - 1) / ipg) as usize] += 1;
        }
    }
    for grp in 0..g.groups {
        let free = g.group_blocks(grp) - g.overhead(grp) - plan.used_per_group[grp as usize];
        free_blocks += free;
        let at = grp as usize * disk::GROUP_DESC_SIZE;
        GroupDesc {
            block_bitmap: g.block_bitmap(grp) as u32,
            inode_bitmap: g.inode_bitmap(grp) as u32,
            inode_table: g.inode_table(grp) as u32,
            free_blocks_count: free as u16,
            free_inodes_count: (ipg - used_inodes(grp)) as u16,
            used_dirs_count: dirs_per_group[grp as usize] as u16,
        }
        .encode(&mut gdt[at..at + disk::GROUP_DESC_SIZE]);
    }
    let counts = Counts {
        free_blocks,
        free_inodes: g.inodes() - max_ino,
    };

    // Inode table contents for inodes 1..=max_ino (1 and 3..=10 stay zero).
    let mut itable = vec![0u8; (max_ino * INODE_SIZE).next_multiple_of(BLOCK) as usize];
    for (i, n) in plan.nodes.iter().enumerate() {
        let at = ((u64::from(ino_of(i)) - 1) * INODE_SIZE) as usize;
        let b = &mut itable[at..at + INODE_SIZE as usize];
        inode_of(n).encode(b);
        if let AttrPlace::InInode(attrs) = &n.attrs {
            xattr::write_in_inode(b, attrs);
        }
    }

    let mut w = Coalescer::new(out);
    for grp in 0..g.groups {
        let start = g.group_start(grp);
        if has_super(grp) {
            let sb = superblock(plan, &counts, uuid, seed, opts, grp).encode();
            let mut blk = vec![0u8; bs];
            // Group 0's superblock sits at byte 1024 of block 0; backups start their
            // group's first block.
            let at = if grp == 0 { 1024 } else { 0 };
            blk[at..at + disk::SUPERBLOCK_SIZE].copy_from_slice(&sb);
            w.put(start, Cow::Owned(blk))?;
            w.put(start + 1, Cow::Borrowed(&gdt))?;
        }
        let data_used = g.overhead(grp) + plan.used_per_group[grp as usize];
        let mut bb = vec![0u8; bs];
        set_bits(&mut bb, 0, data_used);
        set_bits(&mut bb, g.group_blocks(grp), BLOCKS_PER_GROUP);
        w.put(g.block_bitmap(grp), Cow::Owned(bb))?;
        let mut ib = vec![0u8; bs];
        set_bits(&mut ib, 0, used_inodes(grp));
        set_bits(&mut ib, ipg, BLOCKS_PER_GROUP);
        w.put(g.inode_bitmap(grp), Cow::Owned(ib))?;
        let used = used_inodes(grp);
        if used > 0 {
            let a = (grp * ipg * INODE_SIZE) as usize;
            let e = ((grp * ipg + used) * INODE_SIZE).next_multiple_of(BLOCK) as usize;
            w.put(g.inode_table(grp), Cow::Borrowed(&itable[a..e]))?;
        }
    }
    for (&blk, bytes) in &plan.meta {
        w.put(blk, Cow::Borrowed(bytes))?;
    }
    w.flush()?;
    Ok(counts)
}

fn set_bits(b: &mut [u8], from: u64, to: u64) {
    for i in from..to {
        b[(i / 8) as usize] |= 1 << (i % 8);
    }
}
