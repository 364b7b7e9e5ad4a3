//! Planning: inode numbers, directory contents, block maps and every metadata block,
//! computed before a single byte of the image is written.
//!
//! Inode numbers follow the file set's order (`/` is 2, `lost+found` 11, then 12, 13, ...
//! in path order; a hard link reuses its target's number). Blocks are allocated
//! sequentially: first all metadata-like blocks (directory blocks, slow symlink targets,
//! attribute blocks, indirect blocks) in inode order, then all file data in inode order,
//! so each file's data is one run (split only at group metadata) and the metadata is a
//! few large contiguous writes.

mod alloc;
mod blockmap;
mod dir;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use kiln_fileset::{Content, FileSet, Meta};

use crate::ImageError;
use crate::layout::{BLOCK, FIRST_INO, GeomError, Geometry, Run};
use crate::xattr::{self, DiskAttr};

use self::blockmap::{MAX_LOGICAL, build_tree, host_ranges, logical_iter};
use self::dir::{DirEnt, FT_DIR, pack_dir};

pub const S_IFIFO: u16 = 0o010000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFSOCK: u16 = 0o140000;

/// mke2fs makes lost+found 16 KiB so e2fsck can reconnect files without allocating.
const LOST_FOUND_BLOCKS: u64 = 4;

/// Where an inode's extended attributes live.
#[derive(Debug, Clone)]
pub enum AttrPlace {
    None,
    InInode(Vec<DiskAttr>),
    /// Index into [`Plan::attr_blocks`].
    Block(usize),
}

/// What an inode's `i_block` area holds.
#[derive(Debug, Clone)]
pub enum Body<'a> {
    None,
    Dev(u64),
    FastLink(&'a [u8]),
    /// Blocks: directory contents, slow symlink target or file data.
    Blocks,
}

#[derive(Debug)]
pub struct Node<'a> {
    pub path: &'a Path,
    pub mode: u16,
    pub meta: &'a Meta,
    pub links: u32,
    pub size: u64,
    pub body: Body<'a>,
    pub attrs: AttrPlace,
    /// Mapped logical block ranges `(first, count)`, ascending.
    pub logical: Vec<(u64, u64)>,
    /// Content written from memory: directory blocks or a slow symlink target.
    pub inline: Option<Vec<u8>>,
    /// File data source, for regular files.
    pub content: Option<&'a Content>,
    pub n_indirect: u64,
    // Filled in by allocation.
    pub data_runs: Vec<Run>,
    pub ind_runs: Vec<Run>,
    pub i_block: [u32; 15],
    pub file_acl: u64,
    pub blocks_512: u64,
}

impl Node<'_> {
    pub fn data_blocks(&self) -> u64 {
        self.logical.iter().map(|r| r.1).sum()
    }

    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == S_IFDIR
    }
}

/// A file data copy: logical ranges of `content` going to physical blocks.
#[derive(Debug)]
pub struct Job<'a> {
    pub path: &'a Path,
    pub content: &'a Content,
    /// `(logical block, physical block, count)`.
    pub runs: Vec<(u64, u64, u64)>,
}

#[derive(Debug)]
pub struct Plan<'a> {
    pub geom: Geometry,
    /// Node `i` is inode [`ino_of`]`(i)`.
    pub nodes: Vec<Node<'a>>,
    /// Metadata blocks to write: physical block → bytes (a multiple of the block size).
    pub meta: BTreeMap<u64, Vec<u8>>,
    pub jobs: Vec<Job<'a>>,
    /// Data area blocks used in each group.
    pub used_per_group: Vec<u64>,
    pub data_bytes: u64,
}

/// Inode number of node index `i`: `/` is 2, then 11, 12, ...
pub fn ino_of(i: usize) -> u32 {
    if i == 0 { 2 } else { FIRST_INO - 1 + i as u32 }
}

/// Everything about the file set except where its blocks go.
struct Demand {
    meta_blocks: u64,
    data_blocks: u64,
    inodes: u64,
}

/// Plan the image of `set` at `size` bytes.
pub fn plan<'a>(
    set: &'a FileSet,
    size: u64,
    lost_found_meta: &'a Meta,
) -> Result<Plan<'a>, ImageError> {
    let tree::Tree {
        mut nodes,
        mut children,
        parent_ino,
    } = tree::build(set, lost_found_meta)?;

    // Contents of directories, block maps of files, attributes, indirect block counts.
    let mut attr_index: HashMap<Vec<DiskAttr>, usize> = HashMap::new();
    let mut attr_blocks: Vec<(Vec<DiskAttr>, u32, u64)> = Vec::new();
    let mut demand = Demand {
        meta_blocks: 0,
        data_blocks: 0,
        inodes: u64::from(ino_of(nodes.len() - 1)),
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        if node.is_dir() {
            let mut ents = Vec::with_capacity(children[i].len() + 2);
            ents.push(DirEnt {
                name: b".",
                ino: ino_of(i),
                ftype: FT_DIR,
            });
            ents.push(DirEnt {
                name: b"..",
                ino: parent_ino[i],
                ftype: FT_DIR,
            });
            ents.append(&mut children[i]);
            let min = if i == 1 { LOST_FOUND_BLOCKS } else { 1 };
            let bytes = pack_dir(&ents, min);
            let n = bytes.len() as u64 / BLOCK;
            node.size = bytes.len() as u64;
            node.body = Body::Blocks;
            node.logical = vec![(0, n)];
            node.inline = Some(bytes);
        }
        if let (Some(Content::Host { path, len }), true) = (node.content, node.logical.is_empty()) {
            node.logical = host_ranges(node.path, path, *len)?;
        } else if let Some(Content::Spilled(r)) = node.content {
            node.logical = crate::copy::spilled_ranges(node.path, r)?;
        } else if let Some(Content::Bytes(b)) = node.content {
            let n = (b.len() as u64).div_ceil(BLOCK);
            if n > 0 {
                node.logical = vec![(0, n)];
            }
        }
        if node
            .logical
            .last()
            .is_some_and(|&(a, n)| a + n > MAX_LOGICAL)
        {
            return Err(ImageError::FileTooLarge {
                path: node.path.to_path_buf(),
            });
        }
        let mut count = 0u64;
        let _ = build_tree(logical_iter(&node.logical).map(|l| (l, 0)), &mut || {
            count += 1;
            count
        });
        node.n_indirect = count;
        if !node.meta.xattrs.is_empty() {
            let attrs =
                xattr::to_disk(&node.meta.xattrs).map_err(|(name, p)| ImageError::Xattr {
                    path: node.path.to_path_buf(),
                    name: String::from_utf8_lossy(&name).into_owned(),
                    reason: p.reason(),
                })?;
            if xattr::fits_in_inode(&attrs) {
                node.attrs = AttrPlace::InInode(attrs);
            } else if !xattr::fits_in_block(&attrs) {
                return Err(ImageError::Xattr {
                    path: node.path.to_path_buf(),
                    name: String::new(),
                    reason: xattr::AttrProblem::TooBig.reason(),
                });
            } else {
                let k = match attr_index.get(&attrs) {
                    Some(&k) => k,
                    None => {
                        attr_blocks.push((attrs.clone(), 0, 0));
                        demand.meta_blocks += 1;
                        attr_index.insert(attrs, attr_blocks.len() - 1);
                        attr_blocks.len() - 1
                    }
                };
                attr_blocks[k].1 += 1;
                node.attrs = AttrPlace::Block(k);
            }
        }
        let blocks = node.data_blocks();
        if node.inline.is_some() {
            demand.meta_blocks += blocks;
        } else {
            demand.data_blocks += blocks;
        }
        demand.meta_blocks += node.n_indirect;
    }

    let geom = geometry_for(size, &demand)?;
    alloc::allocate(geom, nodes, attr_blocks)
}

fn fits(size: u64, d: &Demand) -> Result<Geometry, GeomError> {
    let g = Geometry::new(size, d.inodes)?;
    if g.data_capacity() < d.meta_blocks + d.data_blocks {
        return Err(GeomError::TooSmall);
    }
    Ok(g)
}

fn geometry_for(size: u64, d: &Demand) -> Result<Geometry, ImageError> {
    match fits(size, d) {
        Ok(g) => Ok(g),
        Err(GeomError::TooLarge) => Err(ImageError::TooLarge { size }),
        Err(GeomError::TooSmall) => {
            // Smallest whole number of MiB that fits: double, then bisect.
            const MIB: u64 = 1 << 20;
            let mut hi = ((d.meta_blocks + d.data_blocks) * BLOCK)
                .div_ceil(MIB)
                .max(1);
            while fits(hi * MIB, d).is_err() {
                hi *= 2;
                if hi * MIB > (1u64 << 44) {
                    return Err(ImageError::TooLarge { size: hi * MIB });
                }
            }
            let mut lo = 0;
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if fits(mid * MIB, d).is_ok() {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Err(ImageError::TooSmall {
                size,
                needed_mib: hi,
            })
        }
    }
}
