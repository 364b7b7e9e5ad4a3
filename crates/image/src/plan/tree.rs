//! The inode tree: one node per inode of the file set in path order (`/` first, then
//! `lost+found`, then the set's entries), each directory's entries, link counts and
//! hard links resolved to their target's inode.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kiln_fileset::{Entry, FileSet, Kind, Meta};

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
    let mut tree = Builder::new(entries, root, lost_found_meta);
    for e in &entries[1..] {
        tree.add(e)?;
    }
    Ok(tree.finish())
}

/// The path of `lost+found`: node 1, whether the set brings it or not.
const LOST_FOUND: &str = "/lost+found";

/// The tree while the set's entries are added in path order.
struct Builder<'a> {
    tree: Tree<'a>,
    /// Paths some hard link of the set points to.
    link_targets: HashSet<&'a Path>,
    /// The node of each hard link target added so far.
    target_node: HashMap<&'a Path, usize>,
    /// The directories above the entry being added (path, node), `/` first: in path
    /// order an entry's parent is on this stack, and what is popped is complete.
    stack: Vec<(&'a Path, usize)>,
    /// True once the set's own `lost+found` took node 1.
    lf_in_set: bool,
}

impl<'a> Builder<'a> {
    /// The root (node 0) and `lost+found` (node 1, with `lost_found_meta` until the set
    /// brings its own), both with no entries yet and `/` as their parent.
    fn new(entries: &'a [Entry], root: &'a Entry, lost_found_meta: &'a Meta) -> Builder<'a> {
        let mut nodes: Vec<Node<'a>> = Vec::with_capacity(entries.len() + 1);
        let mut children: Vec<Vec<DirEnt<'a>>> = Vec::with_capacity(entries.len() + 1);
        let mut parent_ino: Vec<u32> = Vec::with_capacity(entries.len() + 1);
        nodes.push(new_node(&root.path, S_IFDIR | perm(&root.meta), &root.meta));
        children.push(Vec::new());
        parent_ino.push(2);
        nodes.push(new_node(
            Path::new(LOST_FOUND),
            S_IFDIR | perm(lost_found_meta),
            lost_found_meta,
        ));
        children.push(Vec::new());
        parent_ino.push(2);
        let link_targets: HashSet<&Path> = entries
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::HardLink(t) => Some(t.as_path()),
                _ => None,
            })
            .collect();
        Builder {
            tree: Tree {
                nodes,
                children,
                parent_ino,
            },
            link_targets,
            target_node: HashMap::new(),
            stack: vec![(Path::new("/"), 0)],
            lf_in_set: false,
        }
    }

    /// Add entry `e` (not the root): a new node in its parent directory, or, for a
    /// hard link, one more entry and link for its target's node.
    fn add(&mut self, e: &'a Entry) -> Result<(), ImageError> {
        let pidx = self.parent_of(&e.path);
        let name = name_of(&e.path);
        if name.len() > 255 {
            return Err(ImageError::NameTooLong {
                path: e.path.clone(),
            });
        }
        if e.path == Path::new(LOST_FOUND) {
            return self.adopt_lost_found(e, name);
        }
        let (mode, ftype) = match &e.kind {
            Kind::Dir => (S_IFDIR, FT_DIR),
            Kind::File(_) => (S_IFREG, FT_REG),
            Kind::Symlink(_) => (S_IFLNK, FT_LNK),
            Kind::CharDev(_) => (S_IFCHR, FT_CHR),
            Kind::BlockDev(_) => (S_IFBLK, FT_BLK),
            Kind::Fifo => (S_IFIFO, FT_FIFO),
            Kind::Socket => (S_IFSOCK, FT_SOCK),
            Kind::HardLink(t) => return self.link(pidx, name, t),
        };
        let idx = self.tree.nodes.len();
        let node = node_of(e, mode)?;
        if matches!(e.kind, Kind::File(_)) && self.link_targets.contains(e.path.as_path()) {
            self.target_node.insert(&e.path, idx);
        }
        let tree = &mut self.tree;
        tree.children[pidx].push(DirEnt {
            name,
            ino: ino_of(idx),
            ftype,
        });
        tree.nodes.push(node);
        tree.children.push(Vec::new());
        tree.parent_ino.push(ino_of(pidx));
        if mode == S_IFDIR {
            // The new directory's `..` links its parent.
            let parent_path = tree.nodes[pidx].path;
            one_more_link(&mut tree.nodes[pidx], parent_path)?;
            self.stack.push((&e.path, idx));
        }
        Ok(())
    }

    /// The node of `path`'s parent directory: the directories on the stack that are
    /// not its parent are complete and leave it (`/` never does).
    fn parent_of(&mut self, path: &Path) -> usize {
        let parent = path.parent().unwrap_or(Path::new("/"));
        while self.stack.len() > 1 && self.stack.last().is_some_and(|t| t.0 != parent) {
            self.stack.pop();
        }
        self.stack.last().map_or(0, |t| t.1)
    }

    /// The set's own `lost+found` (it must be a directory) takes over node 1 with its
    /// metadata, and is entered in `/` where the set puts it.
    fn adopt_lost_found(&mut self, e: &'a Entry, name: &'a [u8]) -> Result<(), ImageError> {
        if e.kind != Kind::Dir {
            return Err(ImageError::LostFound);
        }
        self.lf_in_set = true;
        let nodes = &mut self.tree.nodes;
        nodes[1].meta = &e.meta;
        nodes[1].mode = S_IFDIR | perm(&e.meta);
        self.tree.children[0].push(DirEnt {
            name,
            ino: ino_of(1),
            ftype: FT_DIR,
        });
        nodes[0].links += 1;
        self.stack.push((&e.path, 1));
        Ok(())
    }

    /// A hard link named `name` in directory `pidx`: an entry for its target's node
    /// (planned earlier in path order) and one more link to it.
    fn link(&mut self, pidx: usize, name: &'a [u8], target: &Path) -> Result<(), ImageError> {
        let Some(&n) = self.target_node.get(target) else {
            return Err(ImageError::Internal("hard link target not planned"));
        };
        one_more_link(&mut self.tree.nodes[n], target)?;
        self.tree.children[pidx].push(DirEnt {
            name,
            ino: ino_of(n),
            ftype: FT_REG,
        });
        Ok(())
    }

    /// The finished tree: a `lost+found` the set did not bring is entered in `/` in
    /// name order.
    fn finish(mut self) -> Tree<'a> {
        if !self.lf_in_set {
            let name: &[u8] = b"lost+found";
            let root = &mut self.tree.children[0];
            let at = root.partition_point(|c| c.name < name);
            root.insert(
                at,
                DirEnt {
                    name,
                    ino: ino_of(1),
                    ftype: FT_DIR,
                },
            );
            self.tree.nodes[0].links += 1;
        }
        self.tree
    }
}

/// A node for `path` with nothing placed yet: no body, no blocks, no attributes.
fn new_node<'a>(path: &'a Path, mode: u16, meta: &'a Meta) -> Node<'a> {
    Node {
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
    }
}

/// The permission bits of `m` (with setuid, setgid and sticky) as inode mode bits.
fn perm(m: &Meta) -> u16 {
    (m.perm & 0o7777) as u16
}

/// The node of entry `e` of file type `mode`, with what its body is: a file's content
/// in blocks; a symlink's target in the inode when shorter than 60 bytes, else in one
/// block (ext2 refuses a target of a block or more); a device's number.
fn node_of<'a>(e: &'a Entry, mode: u16) -> Result<Node<'a>, ImageError> {
    let mut node = new_node(&e.path, mode | perm(&e.meta), &e.meta);
    match &e.kind {
        Kind::File(c) => {
            node.size = c.len();
            node.content = Some(c);
            node.body = Body::Blocks;
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
    Ok(node)
}

/// Count one more link to `node`; ext2 refuses more than [`LINK_MAX`], naming `path`.
fn one_more_link(node: &mut Node<'_>, path: &Path) -> Result<(), ImageError> {
    node.links += 1;
    if node.links > LINK_MAX {
        return Err(ImageError::TooManyLinks {
            path: path.to_path_buf(),
            max: LINK_MAX,
        });
    }
    Ok(())
}
