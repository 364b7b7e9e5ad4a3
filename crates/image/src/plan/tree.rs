//! The inode tree: one node per inode of the file set in path order (`/` first, then
//! `lost+found`, then the set's entries), each directory's entries, link counts and
//! hard links resolved to their target's inode.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kiln_fileset::{FileSet, Kind, Meta};

use super::dir::{DirEnt, FT_BLK, FT_CHR, FT_DIR, FT_FIFO, FT_LNK, FT_REG, FT_SOCK, name_of};
use super::{
    AttrPlace, Body, Node, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK, ino_of,
};
use crate::ImageError;
use crate::layout::BLOCK;

/// ext2's link count limit for regular files and directories (`EXT2_LINK_MAX`).
const LINK_MAX: u32 = 32000;

/// Nodes in inode order, with each directory's entries (without `.` and `..`) and
/// each node's parent inode.
pub(super) struct Tree<'a> {
    pub(super) nodes: Vec<Node<'a>>,
    pub(super) children: Vec<Vec<DirEnt<'a>>>,
    pub(super) parent_ino: Vec<u32>,
}

/// The nodes of `set`, with `lost+found` (from the set, or made with `lost_found_meta`).
pub(super) fn build<'a>(
    set: &'a FileSet,
    lost_found_meta: &'a Meta,
) -> Result<Tree<'a>, ImageError> {
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
    Ok(Tree {
        nodes,
        children,
        parent_ino,
    })
}
