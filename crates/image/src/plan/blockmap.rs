//! Block maps: which logical blocks of a file hold data (holes of sparse host files
//! stay unmapped), and ext2's indirect block tree (12 direct pointers, then single,
//! double and triple indirect blocks of 1024 pointers each) over the mapped blocks.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::ImageError;
use crate::layout::BLOCK;

/// The data blocks of a host file: all of them, or for a sparse file only the blocks
/// holding data (found with SEEK_DATA/SEEK_HOLE), as `(first, count)` ranges.
pub(super) fn host_ranges(
    dest: &Path,
    src: &Path,
    len: u64,
) -> Result<Vec<(u64, u64)>, ImageError> {
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
pub(super) const MAX_LOGICAL: u64 = 12 + 1024 + 1024 * 1024 + 1024 * 1024 * 1024;

/// Every logical block of `ranges`, ascending.
pub(super) fn logical_iter(ranges: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|&(a, n)| a..a + n)
}

#[cfg(test)]
mod tests {
    use super::*;

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
