//! Allocation: where every planned block goes. Metadata-like blocks (directory and
//! slow-symlink blocks, attribute blocks, indirect blocks) first, in inode order, then
//! file data in inode order, through the sequential [`Allocator`]; then the block maps
//! are filled in, metadata blocks rendered and file data turned into copy jobs whose
//! runs coalesce consecutive (logical, physical) pairs.

use std::collections::BTreeMap;

use super::blockmap::{build_tree, logical_iter};
use super::{AttrPlace, Body, Job, Node, Plan};
use crate::ImageError;
use crate::layout::{Allocator, BLOCK, Geometry};
use crate::xattr::{self, DiskAttr};

/// Place the blocks of `nodes` and the shared attribute blocks in `geom`.
pub(super) fn allocate<'a>(
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
