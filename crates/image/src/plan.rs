//! Planning: inode numbers, directory contents, block maps and every metadata block,
//! computed before a single byte of the image is written.
//!
//! Inode numbers follow the file set's order (`/` is 2, `lost+found` 11, then 12, 13, ...
//! in path order; a hard link reuses its target's number). Blocks are allocated
//! sequentially: first all metadata-like blocks (directory blocks, slow symlink targets,
//! attribute blocks, indirect blocks) in inode order, then all file data in inode order,
//! so each file's data is one run (split only at group metadata) and the metadata is a
//! few large contiguous writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_fileset::{Content, FileSet, Kind, Meta};

use crate::ImageError;
use crate::layout::{Allocator, BLOCK, FIRST_INO, GeomError, Geometry, Run};
use crate::xattr::{self, DiskAttr};

pub const S_IFIFO: u16 = 0o010000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFSOCK: u16 = 0o140000;

const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;
const FT_CHR: u8 = 3;
const FT_BLK: u8 = 4;
const FT_FIFO: u8 = 5;
const FT_SOCK: u8 = 6;
const FT_LNK: u8 = 7;

/// ext2's link count limit for regular files and directories (`EXT2_LINK_MAX`).
const LINK_MAX: u32 = 32000;
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

struct DirEnt<'a> {
    name: &'a [u8],
    ino: u32,
    ftype: u8,
}

fn name_of(p: &Path) -> &[u8] {
    p.file_name().map(|n| n.as_bytes()).unwrap_or(b"")
}

/// Pack directory entries into blocks: no entry crosses a block, the last entry of each
/// block stretches to its end, and at least `min_blocks` blocks are produced.
fn pack_dir(ents: &[DirEnt<'_>], min_blocks: u64) -> Vec<u8> {
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

/// The data blocks of a host file: all of them, or for a sparse file only the blocks
/// holding data (found with SEEK_DATA/SEEK_HOLE), as `(first, count)` ranges.
fn host_ranges(dest: &Path, src: &Path, len: u64) -> Result<Vec<(u64, u64)>, ImageError> {
    let source_err = |err| ImageError::Source {
        path: dest.to_path_buf(),
        source_path: src.to_path_buf(),
        err,
    };
    let md = fs::symlink_metadata(src).map_err(source_err)?;
    if !md.is_file() || md.len() != len {
        return Err(ImageError::SourceChanged {
            path: dest.to_path_buf(),
            source_path: src.to_path_buf(),
            expected: len,
            found: if md.is_file() { Some(md.len()) } else { None },
        });
    }
    let nblocks = len.div_ceil(BLOCK);
    if nblocks == 0 {
        return Ok(Vec::new());
    }
    if md.blocks() * 512 >= nblocks * BLOCK {
        return Ok(vec![(0, nblocks)]);
    }
    // Fewer blocks on disk than the length needs: look for holes.
    let f = fs::File::open(src).map_err(source_err)?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA support: treat it all as data.
            Err(rustix::io::Errno::INVAL) => return Ok(vec![(0, nblocks)]),
            Err(e) => return Err(source_err(e.into())),
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(data))
            .map_err(|e| source_err(e.into()))?
            .min(len);
        let (a, b) = (data / BLOCK, hole.div_ceil(BLOCK));
        match out.last_mut() {
            Some(l) if l.0 + l.1 >= a => l.1 = l.1.max(b - l.0),
            _ => out.push((a, b - a)),
        }
        pos = hole.max(data + 1);
    }
    Ok(out)
}

/// Build the indirect block tree for the mapped blocks `(logical, physical)` (ascending
/// logical order), taking indirect blocks from `alloc`. Returns `i_block` and the
/// indirect blocks as `(physical, pointers)`.
pub fn build_tree(
    mapped: impl Iterator<Item = (u64, u64)>,
    alloc: &mut dyn FnMut() -> u64,
) -> ([u32; 15], Vec<(u64, Vec<u32>)>) {
    const P: u64 = 1024;
    let mut ib = [0u32; 15];
    let mut nodes: Vec<(u64, Vec<u32>)> = Vec::new();
    let mut mk = |nodes: &mut Vec<(u64, Vec<u32>)>| -> usize {
        nodes.push((alloc(), vec![0u32; P as usize]));
        nodes.len() - 1
    };
    let mut ind1: Option<usize> = None;
    let mut d2: Option<usize> = None;
    let mut d2_ind: Option<(u64, usize)> = None;
    let mut d3: Option<usize> = None;
    let mut d3_dind: Option<(u64, usize)> = None;
    let mut d3_ind: Option<(u64, usize)> = None;
    for (l, p) in mapped {
        let p = p as u32;
        if l < 12 {
            ib[l as usize] = p;
            continue;
        }
        let off = l - 12;
        if off < P {
            let n = match ind1 {
                Some(n) => n,
                None => {
                    let n = mk(&mut nodes);
                    ib[12] = nodes[n].0 as u32;
                    ind1 = Some(n);
                    n
                }
            };
            nodes[n].1[off as usize] = p;
            continue;
        }
        let off = off - P;
        if off < P * P {
            let root = match d2 {
                Some(n) => n,
                None => {
                    let n = mk(&mut nodes);
                    ib[13] = nodes[n].0 as u32;
                    d2 = Some(n);
                    n
                }
            };
            let key = off / P;
            let n = match d2_ind {
                Some((k, n)) if k == key => n,
                _ => {
                    let n = mk(&mut nodes);
                    nodes[root].1[key as usize] = nodes[n].0 as u32;
                    d2_ind = Some((key, n));
                    n
                }
            };
            nodes[n].1[(off % P) as usize] = p;
            continue;
        }
        let off = off - P * P;
        let root = match d3 {
            Some(n) => n,
            None => {
                let n = mk(&mut nodes);
                ib[14] = nodes[n].0 as u32;
                d3 = Some(n);
                n
            }
        };
        let dkey = off / (P * P);
        let dn = match d3_dind {
            Some((k, n)) if k == dkey => n,
            _ => {
                let n = mk(&mut nodes);
                nodes[root].1[dkey as usize] = nodes[n].0 as u32;
                d3_dind = Some((dkey, n));
                n
            }
        };
        let ikey = off / P;
        let n = match d3_ind {
            Some((k, n)) if k == ikey => n,
            _ => {
                let n = mk(&mut nodes);
                nodes[dn].1[(ikey % P) as usize] = nodes[n].0 as u32;
                d3_ind = Some((ikey, n));
                n
            }
        };
        nodes[n].1[(off % P) as usize] = p;
    }
    (ib, nodes)
}

/// Largest logical block an ext2 block map with 4 KiB blocks can address, plus one.
const MAX_LOGICAL: u64 = 12 + 1024 + 1024 * 1024 + 1024 * 1024 * 1024;

fn logical_iter(ranges: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|&(a, n)| a..a + n)
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
    let entries = set.entries();
    let root = entries
        .first()
        .ok_or(ImageError::Internal("file set without a root"))?;
    let mut nodes: Vec<Node<'a>> = Vec::with_capacity(entries.len() + 1);
    let mut children: Vec<Vec<DirEnt<'a>>> = Vec::with_capacity(entries.len() + 1);
    let mut parent_ino: Vec<u32> = Vec::with_capacity(entries.len() + 1);
    let new_node = |path: &'a Path, mode: u16, meta: &'a Meta| Node {
        path,
        mode,
        meta,
        // A directory is linked from its parent and from its own `.`.
        links: if mode & 0o170000 == S_IFDIR { 2 } else { 1 },
        size: 0,
        body: Body::None,
        attrs: AttrPlace::None,
        logical: Vec::new(),
        inline: None,
        content: None,
        n_indirect: 0,
        data_runs: Vec::new(),
        ind_runs: Vec::new(),
        i_block: [0; 15],
        file_acl: 0,
        blocks_512: 0,
    };
    let perm = |m: &Meta| (m.perm & 0o7777) as u16;
    nodes.push(new_node(&root.path, S_IFDIR | perm(&root.meta), &root.meta));
    children.push(Vec::new());
    parent_ino.push(2);
    let lf_path = Path::new("/lost+found");
    nodes.push(new_node(
        lf_path,
        S_IFDIR | perm(lost_found_meta),
        lost_found_meta,
    ));
    children.push(Vec::new());
    parent_ino.push(2);
    let mut lf_in_set = false;

    let link_targets: HashSet<&Path> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::HardLink(t) => Some(t.as_path()),
            _ => None,
        })
        .collect();
    let mut target_node: HashMap<&Path, usize> = HashMap::new();
    let mut stack: Vec<(&Path, usize)> = vec![(Path::new("/"), 0)];

    for e in &entries[1..] {
        let parent = e.path.parent().unwrap_or(Path::new("/"));
        while stack.len() > 1 && stack.last().is_some_and(|t| t.0 != parent) {
            stack.pop();
        }
        let pidx = stack.last().map_or(0, |t| t.1);
        let name = name_of(&e.path);
        if name.len() > 255 {
            return Err(ImageError::NameTooLong {
                path: e.path.clone(),
            });
        }
        if e.path == lf_path {
            if e.kind != Kind::Dir {
                return Err(ImageError::LostFound);
            }
            lf_in_set = true;
            nodes[1].meta = &e.meta;
            nodes[1].mode = S_IFDIR | perm(&e.meta);
            children[0].push(DirEnt {
                name,
                ino: ino_of(1),
                ftype: FT_DIR,
            });
            nodes[0].links += 1;
            stack.push((&e.path, 1));
            continue;
        }
        let (mode, ftype) = match &e.kind {
            Kind::Dir => (S_IFDIR, FT_DIR),
            Kind::File(_) => (S_IFREG, FT_REG),
            Kind::Symlink(_) => (S_IFLNK, FT_LNK),
            Kind::CharDev(_) => (S_IFCHR, FT_CHR),
            Kind::BlockDev(_) => (S_IFBLK, FT_BLK),
            Kind::Fifo => (S_IFIFO, FT_FIFO),
            Kind::Socket => (S_IFSOCK, FT_SOCK),
            Kind::HardLink(t) => {
                let Some(&n) = target_node.get(t.as_path()) else {
                    return Err(ImageError::Internal("hard link target not planned"));
                };
                nodes[n].links += 1;
                if nodes[n].links > LINK_MAX {
                    return Err(ImageError::TooManyLinks {
                        path: t.clone(),
                        max: LINK_MAX,
                    });
                }
                children[pidx].push(DirEnt {
                    name,
                    ino: ino_of(n),
                    ftype: FT_REG,
                });
                continue;
            }
        };
        let idx = nodes.len();
        let mut node = new_node(&e.path, mode | perm(&e.meta), &e.meta);
        match &e.kind {
            Kind::File(c) => {
                node.size = c.len();
                node.content = Some(c);
                node.body = Body::Blocks;
                if link_targets.contains(e.path.as_path()) {
                    target_node.insert(&e.path, idx);
                }
            }
            Kind::Symlink(t) => {
                node.size = t.len() as u64;
                if t.len() < 60 {
                    node.body = Body::FastLink(t);
                } else if t.len() < BLOCK as usize {
                    node.body = Body::Blocks;
                    node.logical = vec![(0, 1)];
                    let mut b = t.clone();
                    b.resize(BLOCK as usize, 0);
                    node.inline = Some(b);
                } else {
                    return Err(ImageError::SymlinkTooLong {
                        path: e.path.clone(),
                        len: t.len(),
                    });
                }
            }
            Kind::CharDev(d) | Kind::BlockDev(d) => node.body = Body::Dev(*d),
            _ => {}
        }
        children[pidx].push(DirEnt {
            name,
            ino: ino_of(idx),
            ftype,
        });
        nodes.push(node);
        children.push(Vec::new());
        parent_ino.push(ino_of(pidx));
        if mode == S_IFDIR {
            nodes[pidx].links += 1;
            if nodes[pidx].links > LINK_MAX {
                return Err(ImageError::TooManyLinks {
                    path: nodes[pidx].path.to_path_buf(),
                    max: LINK_MAX,
                });
            }
            stack.push((&e.path, idx));
        }
    }
    if !lf_in_set {
        let name: &[u8] = b"lost+found";
        let at = children[0].partition_point(|c| c.name < name);
        children[0].insert(
            at,
            DirEnt {
                name,
                ino: ino_of(1),
                ftype: FT_DIR,
            },
        );
        nodes[0].links += 1;
    }

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
    allocate(geom, nodes, attr_blocks)
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

fn allocate<'a>(
    geom: Geometry,
    mut nodes: Vec<Node<'a>>,
    mut attr_blocks: Vec<(Vec<DiskAttr>, u32, u64)>,
) -> Result<Plan<'a>, ImageError> {
    let full = || ImageError::Internal("allocation ran past the planned capacity");
    let mut meta: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut used_per_group = Vec::new();
    let mut jobs = Vec::new();
    let mut data_bytes = 0u64;
    {
        let mut alloc = Allocator::new(&geom);
        // Pass 1: directory and symlink blocks, attribute blocks, indirect blocks.
        for node in nodes.iter_mut() {
            if node.inline.is_some() {
                alloc
                    .alloc(node.data_blocks(), &mut node.data_runs)
                    .ok_or_else(full)?;
            }
            if let AttrPlace::Block(k) = node.attrs
                && attr_blocks[k].2 == 0
            {
                attr_blocks[k].2 = alloc.run(1).ok_or_else(full)?.start;
            }
            alloc
                .alloc(node.n_indirect, &mut node.ind_runs)
                .ok_or_else(full)?;
        }
        // Pass 2: file data.
        for node in nodes.iter_mut() {
            if node.inline.is_none() && !node.logical.is_empty() {
                alloc
                    .alloc(node.data_blocks(), &mut node.data_runs)
                    .ok_or_else(full)?;
            }
        }
        used_per_group.extend((0..geom.groups).map(|g| alloc.used_in(g)));
    }
    for (attrs, refs, phys) in &attr_blocks {
        meta.insert(*phys, xattr::block(attrs, *refs));
    }
    // Block maps: logical → physical, then the indirect trees.
    for node in nodes.iter_mut() {
        let mapped = || {
            let phys = node.data_runs.iter().flat_map(|r| r.start..r.start + r.len);
            logical_iter(&node.logical).zip(phys)
        };
        let mut ind = node.ind_runs.iter().flat_map(|r| r.start..r.start + r.len);
        let (ib, tree) = build_tree(mapped(), &mut || ind.next().unwrap_or(0));
        if tree.len() as u64 != node.n_indirect || tree.iter().any(|t| t.0 == 0) {
            return Err(ImageError::Internal("indirect block count changed"));
        }
        for (p, ptrs) in tree {
            let mut b = Vec::with_capacity(BLOCK as usize);
            for x in ptrs {
                b.extend_from_slice(&x.to_le_bytes());
            }
            meta.insert(p, b);
        }
        let mut blocks = node.data_blocks() + node.n_indirect;
        if let AttrPlace::Block(k) = node.attrs {
            node.file_acl = attr_blocks[k].2;
            blocks += 1;
        }
        node.blocks_512 = blocks * (BLOCK / 512);
        if node.blocks_512 > u64::from(u32::MAX) {
            return Err(ImageError::FileTooLarge {
                path: node.path.to_path_buf(),
            });
        }
        if let Some(bytes) = &node.inline {
            let mut off = 0usize;
            for r in &node.data_runs {
                let n = (r.len * BLOCK) as usize;
                meta.insert(r.start, bytes[off..off + n].to_vec());
                off += n;
            }
        } else if let Some(content) = node.content {
            data_bytes += content.len();
            // Consecutive (logical, physical) pairs make one run.
            let mut runs: Vec<(u64, u64, u64)> = Vec::new();
            for (l, p) in mapped() {
                match runs.last_mut() {
                    Some(r) if r.0 + r.2 == l && r.1 + r.2 == p => r.2 += 1,
                    _ => runs.push((l, p, 1)),
                }
            }
            if !runs.is_empty() {
                jobs.push(Job {
                    path: node.path,
                    content,
                    runs,
                });
            }
        }
        node.inline = None;
        if matches!(node.body, Body::Blocks) {
            node.i_block = ib;
        }
    }
    Ok(Plan {
        geom,
        nodes,
        meta,
        jobs,
        used_per_group,
        data_bytes,
    })
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

    #[test]
    fn tree_shapes_at_the_boundaries() {
        let count = |n: u64| {
            let mut c = 0;
            let _ = build_tree((0..n).map(|l| (l, 100 + l)), &mut || {
                c += 1;
                c
            });
            c
        };
        assert_eq!(count(12), 0);
        assert_eq!(count(13), 1);
        assert_eq!(count(12 + 1024), 1);
        assert_eq!(count(12 + 1024 + 1), 3);
        assert_eq!(count(12 + 1024 + 1024 * 1024), 1 + 1 + 1024);
        // One block far into the triple-indirect range: TIND, DIND, IND.
        let mut c = 0;
        let (ib, nodes) = build_tree(std::iter::once((MAX_LOGICAL - 1, 7)), &mut || {
            c += 1;
            1000 + c
        });
        assert_eq!(nodes.len(), 3);
        assert_eq!(ib[14], 1001);
        assert_eq!(nodes[2].1[1023], 7);
    }
}
