//! Reading one tarball (a supermin base image) into [`BaseImage`] members, file data
//! streamed into a spill file.
//!
//! Memory is bounded whatever the archive holds: member data never passes through
//! memory (it is streamed into the spill file), and the headers of one member (its
//! 512-byte header plus any GNU long name, GNU long link and PAX records, which the
//! `tar` crate reads whole into memory) may take at most [`HEADER_LIMIT`] bytes of the
//! stream. A hostile archive with a gigabyte "long name" is refused with an error naming
//! the tarball after reading that limit, instead of being read into memory.
//!
//! Invariants: the budget is counted only while the `tar` crate reads headers (inside
//! `Entries::next`); every member's remaining data is read by this module before the
//! next header is asked for, so skipping data never counts against it.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::{
    BaseImage, InputError, Member, MemberKind, Region, Spill, makedev, new_spill, normalise_member,
};

/// How many bytes of the stream the headers of one member may take (see the module
/// doc). Linux paths are at most 4 KiB and PAX records of a real archive (long names,
/// times, xattrs, ACLs) kilobytes; 1 MiB leaves room for any of them.
pub const HEADER_LIMIT: u64 = 1 << 20;

/// A reader that, while a budget is set, fails once more than the budget is read.
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 {
            return Err(io::Error::other(format!(
                "the headers of one member (GNU long name or link, PAX records) take more \
                 than {HEADER_LIMIT} bytes; refused"
            )));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.left.set(Some(left - got as u64));
        Ok(got)
    }
}

/// Read a whole tar stream, file data into a spill file of its own. `path` names the
/// tarball in errors.
pub fn read_tar(path: &Path, r: impl Read) -> Result<BaseImage, InputError> {
    read_tar_into(path, r, &new_spill(path)?)
}

/// Read a whole tar stream, file data into `spill`. `path` names the tarball in errors.
pub fn read_tar_into(
    path: &Path,
    r: impl Read,
    spill: &Arc<Spill>,
) -> Result<BaseImage, InputError> {
    let corrupt = |e: io::Error| InputError::Tar {
        path: path.to_path_buf(),
        message: format!("corrupt or truncated archive: {e}"),
    };
    let budget = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(Budgeted {
        inner: r,
        left: Rc::clone(&budget),
    });
    let mut members = Vec::new();
    let mut files: HashMap<PathBuf, Region> = HashMap::new();
    let mut entries = archive.entries().map_err(corrupt)?;
    loop {
        budget.set(Some(HEADER_LIMIT));
        let next = entries.next();
        budget.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(corrupt)?;
        let member = read_member(path, &mut entry, spill, &mut files)?;
        // What of the member's data was not read (a global PAX header's, a directory's)
        // is skipped here, outside the header budget.
        io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?;
        members.extend(member);
    }
    Ok(BaseImage {
        source: path.to_path_buf(),
        members,
    })
}

/// One member of the archive: `None` for what is not kept (a global PAX header, the
/// archive's root).
fn read_member<R: Read>(
    path: &Path,
    entry: &mut tar::Entry<'_, R>,
    spill: &Arc<Spill>,
    files: &mut HashMap<PathBuf, Region>,
) -> Result<Option<Member>, InputError> {
    let raw = entry.path_bytes().into_owned();
    let member_name = String::from_utf8_lossy(&raw).into_owned();
    let member_err = |message: String| InputError::TarMember {
        path: path.to_path_buf(),
        member: member_name.clone(),
        message,
    };
    let et = entry.header().entry_type();
    if matches!(et, tar::EntryType::XGlobalHeader) {
        return Ok(None);
    }
    let Some(mpath) = normalise_member(Path::new(std::ffi::OsStr::from_bytes(&raw)))
        .map_err(|m| member_err(m.to_string()))?
    else {
        return Ok(None);
    };
    let h = entry.header();
    let perm = h.mode().map_err(|e| member_err(e.to_string()))? & 0o7777;
    let uid = h.uid().map_err(|e| member_err(e.to_string()))?;
    let gid = h.gid().map_err(|e| member_err(e.to_string()))?;
    let mtime = h.mtime().map_err(|e| member_err(e.to_string()))?;
    let dev = || -> Result<u64, InputError> {
        let ma = h.device_major().map_err(|e| member_err(e.to_string()))?;
        let mi = h.device_minor().map_err(|e| member_err(e.to_string()))?;
        Ok(makedev(ma.unwrap_or(0), mi.unwrap_or(0)))
    };
    let kind = match et {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let want = entry.size();
            let data = spill.append(entry).map_err(|e| match e {
                crate::spill::AppendError::Read(e) => {
                    member_err(format!("corrupt or truncated archive: {e}"))
                }
                source => InputError::MemberData {
                    path: path.to_path_buf(),
                    member: member_name.clone(),
                    source,
                },
            })?;
            if data.len() != want {
                return Err(member_err(format!(
                    "truncated archive: member has {} of {want} bytes",
                    data.len()
                )));
            }
            files.insert(mpath.clone(), data.clone());
            MemberKind::File(data)
        }
        tar::EntryType::Directory => MemberKind::Dir,
        tar::EntryType::Symlink => MemberKind::Symlink(
            entry
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default(),
        ),
        tar::EntryType::Link => {
            let raw_t = entry.link_name_bytes().unwrap_or_default().into_owned();
            let target = normalise_member(Path::new(std::ffi::OsStr::from_bytes(&raw_t)))
                .map_err(|m| member_err(format!("hard link target: {m}")))?
                .ok_or_else(|| member_err("hard link to the archive root".into()))?;
            let content = files.get(&target).cloned().ok_or_else(|| {
                member_err(format!(
                    "hard link to {}, which is not an earlier regular file of this archive",
                    target.display()
                ))
            })?;
            files.insert(mpath.clone(), content.clone());
            MemberKind::HardLink { target, content }
        }
        tar::EntryType::Char => MemberKind::CharDev(dev()?),
        tar::EntryType::Block => MemberKind::BlockDev(dev()?),
        tar::EntryType::Fifo => MemberKind::Fifo,
        other => {
            return Err(member_err(format!("unsupported member type {other:?}")));
        }
    };
    if !matches!(kind, MemberKind::File(_) | MemberKind::HardLink { .. }) {
        files.remove(&mpath);
    }
    Ok(Some(Member {
        path: mpath,
        kind,
        perm,
        uid: uid as u32,
        gid: gid as u32,
        mtime: mtime as i64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts what is read from it.
    struct Counting<R>(R, Arc<AtomicU64>);

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n as u64, Ordering::SeqCst);
            Ok(n)
        }
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn a_huge_long_name_or_pax_record_is_refused_after_the_limit() {
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
            tar::EntryType::XHeader,
        ] {
            // A 4 GiB "long name", made as it is read: never in memory here either.
            let size = 4u64 << 30;
            let read = Arc::new(AtomicU64::new(0));
            let stream = Counting(
                io::Cursor::new(header(kind, "././@LongLink", size))
                    .chain(io::repeat(b'a').take(size)),
                Arc::clone(&read),
            );
            let e = read_tar(Path::new("bomb.tar"), stream)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("bomb.tar") && e.contains(&format!("more than {HEADER_LIMIT} bytes")),
                "{kind:?}: {e}"
            );
            assert!(read.load(Ordering::SeqCst) <= HEADER_LIMIT, "{kind:?}");
        }
    }

    #[test]
    fn long_names_and_big_members_stay_readable() {
        // A 3000-byte path (GNU long name) and a member far larger than the header limit,
        // after a directory whose (odd) data the reader skips.
        let long = format!("{}/f", "d".repeat(2998));
        let mut b = tar::Builder::new(Vec::new());
        let file = |size: usize| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            h
        };
        b.append_data(&mut file(0), &long, &[][..]).unwrap();
        let big = vec![7u8; (HEADER_LIMIT * 3) as usize];
        b.append_data(&mut file(big.len()), "big", &big[..])
            .unwrap();
        let mut data = header(tar::EntryType::Directory, "odd/", 1000);
        data.resize(data.len() + 1024, b'x');
        data.extend(b.into_inner().unwrap());
        let img = read_tar(Path::new("ok.tar"), &data[..]).unwrap();
        let paths: Vec<String> = img
            .members
            .iter()
            .map(|m| m.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["/odd", &format!("/{long}"), "/big"]);
        match &img.members[2].kind {
            MemberKind::File(r) => assert_eq!(r.len(), big.len() as u64),
            k => panic!("{k:?}"),
        }
    }
}
